"""The agent's GetFlows over gRPC, as the CLI asks: the last or first N, since and until,
filters, field masks and follow, each answered with the Converter's messages."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from bng_operator._hubble.flow import flow_pb2
from bng_operator._hubble.observer import observer_pb2, observer_pb2_grpc
from bng_operator.agent.observe.flow import Flow, Point, Source, Verdict
from bng_operator.agent.observe.hub import FlowHub
from bng_operator.agent.observe.hubble import Converter, serve

pytestmark = pytest.mark.unit

SECOND = 1_000_000_000
CONV = Converter("node-a", "bng-system", lambda f: f.subscriber, lambda i: f"if{i}")
Request = observer_pb2.GetFlowsRequest


def flow(i: int) -> Flow:
    """The i-th flow, at second i: a fast-path ACK, or a spoofed drop for odd i."""
    if i % 2:
        return Flow(i * SECOND, Source.ACCESS, Verdict.DROPPED, Point.NONE, "spoof_source", 3,
                    "", "02:00:00:00:00:01", "02:aa:00:00:00:01", (100,), f"100.64.0.{i}",
                    "192.0.2.1", 6, 40000 + i, 443, subscriber=f"mac-{i}")
    return Flow(i * SECOND + 7, Source.DHCP, Verdict.FORWARDED, Point.TO_NETWORK, "ack", 3,
                "access0", "02:aa:00:00:00:01", "02:00:00:00:00:01", (100,), "100.64.0.1",
                f"100.64.0.{i}", 17, 67, 68, 5, f"100.64.0.{i}", i, subscriber=f"mac-{i}")


def expected(*numbers: int) -> list[observer_pb2.GetFlowsResponse]:
    return [CONV.response(flow(i), f"mac-{i}") for i in numbers]


async def ask(hub: FlowHub, tmp: Path, request: observer_pb2.GetFlowsRequest,
              during: Sequence[Flow] = (), count: int | None = None
              ) -> list[observer_pb2.GetFlowsResponse]:
    """GetFlows' answer (its first ``count`` messages); ``during`` is added once the first
    message came, so after the server took its position."""
    listen = f"unix://{tmp}/hubble.sock"
    server = await serve(hub, CONV, listen, "test", listen)
    got: list[observer_pb2.GetFlowsResponse] = []

    async def read() -> None:
        async with grpc.aio.insecure_channel(listen) as channel:
            call = observer_pb2_grpc.ObserverStub(channel).GetFlows(request)
            async for r in call:
                got.append(r)
                if len(got) == 1:
                    for f in during:
                        hub.add(f)
                if len(got) == count:
                    call.cancel()
                    return
    try:
        await asyncio.wait_for(read(), 20)
        return got
    finally:
        await server.stop(0)


def hub_of(n: int) -> FlowHub:
    hub = FlowHub(capacity=5000)
    for i in range(n):
        hub.add(flow(i))
    return hub


@pytest.mark.parametrize(("request_", "numbers"), [
    (Request(), range(2000)),
    (Request(number=3), [1997, 1998, 1999]),
    (Request(number=3, first=True), [0, 1, 2]),
    (Request(since=Timestamp(seconds=1995)), range(1995, 2000)),
    (Request(since=Timestamp(seconds=10), until=Timestamp(seconds=12)), [10, 11]),
    (Request(number=2, whitelist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])]),
     [1997, 1999]),
    (Request(number=2, blacklist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])]),
     [1996, 1998]),
])
def test_the_past(tmp_path: Path, request_: observer_pb2.GetFlowsRequest,
                  numbers: list[int]) -> None:
    assert asyncio.run(ask(hub_of(2000), tmp_path, request_)) == expected(*numbers)


def test_a_field_mask_keeps_only_its_fields(tmp_path: Path) -> None:
    got = asyncio.run(ask(hub_of(10), tmp_path, Request(
        number=2, field_mask=FieldMask(paths=["verdict", "IP.source"]))))
    assert [r.flow for r in got] == [
        flow_pb2.Flow(verdict=flow_pb2.DROPPED, IP=flow_pb2.IP(source="100.64.0.9")),
        flow_pb2.Flow(verdict=flow_pb2.FORWARDED, IP=flow_pb2.IP(source="100.64.0.1"))][::-1]
    assert got[0].node_name == "node-a" and got[0].time.seconds == 8


def test_follow_sends_the_last_n_then_what_comes(tmp_path: Path) -> None:
    got = asyncio.run(ask(hub_of(10), tmp_path, Request(number=2, follow=True),
                          during=[flow(i) for i in range(10, 2010)], count=2002))
    assert got == expected(8, 9, *range(10, 2010))


def test_follow_ends_at_until(tmp_path: Path) -> None:
    got = asyncio.run(ask(hub_of(10), tmp_path, Request(number=1, follow=True,
                                                       until=Timestamp(seconds=12)),
                          during=[flow(i) for i in range(10, 20)]))
    assert got == expected(9, 10, 11)

"""The pieces of a Hubble API fit: Cilium's hubble CLI talks to a server built on our stubs.

The server here is a stand-in written with bng_operator._hubble (it is not the agent's): the
grpc.health check the CLI makes first, ServerStatus with fixed numbers, and GetFlows yielding
two flows. The real `hubble status` and `hubble observe` (hack/hubble/build.sh) must accept
them, so the stubs' wire names and the CLI's expectations agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import UInt32Value
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bng_lab.hubble import REPO, HubbleMissing, hubble, hubble_binary
from bng_operator._hubble.flow import flow_pb2
from bng_operator._hubble.observer import observer_pb2, observer_pb2_grpc

NODE = "edge-1"
FLOWS = [("100.64.0.10", "192.0.2.1", 40001, 443), ("100.64.0.11", "192.0.2.2", 40002, 53)]


def _flow(src: str, dst: str, sport: int, dport: int, second: int) -> flow_pb2.Flow:
    return flow_pb2.Flow(
        time=Timestamp(seconds=1_800_000_000 + second), verdict=flow_pb2.FORWARDED,
        IP=flow_pb2.IP(source=src, destination=dst, ipVersion=flow_pb2.IPv4),
        l4=flow_pb2.Layer4(TCP=flow_pb2.TCP(source_port=sport, destination_port=dport)),
        Type=flow_pb2.L3_L4, node_name=NODE, event_type=flow_pb2.CiliumEventType(type=4),
        traffic_direction=flow_pb2.EGRESS)


class Observer(observer_pb2_grpc.ObserverServicer):
    def __init__(self) -> None:
        self.requests: list[observer_pb2.GetFlowsRequest] = []

    def ServerStatus(self, request: observer_pb2.ServerStatusRequest,
                     context: grpc.ServicerContext) -> observer_pb2.ServerStatusResponse:
        return observer_pb2.ServerStatusResponse(
            num_flows=2, max_flows=4095, seen_flows=7, uptime_ns=60_000_000_000,
            version="bng-test", num_connected_nodes=UInt32Value(value=1),
            num_unavailable_nodes=UInt32Value(value=0), flows_rate=0.5)

    def GetFlows(self, request: observer_pb2.GetFlowsRequest,
                 context: grpc.ServicerContext) -> Iterator[observer_pb2.GetFlowsResponse]:
        self.requests.append(request)
        for i, (src, dst, sport, dport) in enumerate(FLOWS):
            f = _flow(src, dst, sport, dport, i)
            yield observer_pb2.GetFlowsResponse(flow=f, node_name=NODE, time=f.time)


@pytest.fixture
def server() -> Iterator[tuple[str, Observer]]:
    """The stand-in server on a free loopback port: its address and its servicer."""
    try:
        hubble_binary()
    except HubbleMissing as e:
        pytest.fail(str(e), pytrace=False)
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    observer = Observer()
    observer_pb2_grpc.add_ObserverServicer_to_server(observer, s)
    checks = health.HealthServicer()
    checks.set("hubble.server.Observer", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, s)
    port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    try:
        yield f"127.0.0.1:{port}", observer
    finally:
        s.stop(grace=None)


def _ok(*args: str) -> str:
    r = hubble(*args)
    assert r.returncode == 0, f"hubble {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_cli_is_the_pinned_release(server: tuple[str, Observer]) -> None:
    version = (REPO / "hack" / "hubble" / "VERSION").read_text().strip()
    assert _ok("version").startswith(f"hubble v{version} "), "rebuild: hack/hubble/build.sh"


def test_status_reads_server_status(server: tuple[str, Observer]) -> None:
    addr, _ = server
    out = _ok("status", "--server", addr)
    assert f"Healthcheck (via {addr}): Ok" in out, out
    for line in ("Current/Max Flows: 2/4,095 (0.05%)", "Flows/s: 0.50", "Connected Nodes: 1/1"):
        assert line in out.splitlines(), out


def test_observe_prints_the_flows(server: tuple[str, Observer]) -> None:
    addr, observer = server
    out = _ok("observe", "--server", addr, "-o", "json", "--last", "2")
    flows: list[dict[str, Any]] = [json.loads(line)["flow"] for line in out.splitlines() if line]
    got = [(f["IP"]["source"], f["IP"]["destination"], f["l4"]["TCP"]["source_port"],
            f["l4"]["TCP"]["destination_port"]) for f in flows]
    assert got == FLOWS
    assert {f["verdict"] for f in flows} == {"FORWARDED"} and {f["node_name"] for f in flows} == {NODE}
    [request] = observer.requests
    assert request.number == 2 and not request.follow

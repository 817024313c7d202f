"""Flows: the kernel event's decoding, summaries, the hub's ring and followers, and the
Hubble filters, table-driven."""

from __future__ import annotations

import asyncio

import pytest

from bng_operator._hubble.flow import flow_pb2
from bng_operator.agent.observe.flow import EVENT, Flow, Point, Source, Verdict, from_kernel
from bng_operator.agent.observe.hub import FlowHub
from bng_operator.agent.observe.hubble import (
    EVENT_DROP,
    EVENT_TRACE,
    TRACE_TO_NETWORK,
    TRACE_TO_STACK,
    BadFilter,
    Converter,
    Resolved,
    compile_filters,
)

pytestmark = pytest.mark.unit


def kernel_event(**kw: object) -> bytes:
    f: dict[str, object] = dict(jiffies=1_000, ifindex=7, source=1, verdict=1, point=1, reason=1,
                                src_mac=bytes.fromhex("020000000001"),
                                dst_mac=bytes.fromhex("02000000aaaa"), outer=100, inner=0,
                                saddr=bytes([100, 64, 0, 1]), daddr=bytes([100, 64, 0, 20]),
                                sport=(67).to_bytes(2, "big"), dport=(68).to_bytes(2, "big"),
                                proto=17, dhcp_type=5, yiaddr=bytes([100, 64, 0, 20]),
                                xid=(0x1234).to_bytes(4, "big"), xaddr=bytes(4),
                                xport=bytes(2))
    f.update(kw)
    return EVENT.pack(f["jiffies"], f["ifindex"], f["source"], f["verdict"], f["point"],
                      f["reason"], f["src_mac"], f["dst_mac"], f["outer"], f["inner"],
                      f["saddr"], f["daddr"], f["sport"], f["dport"], f["proto"],
                      f["dhcp_type"], 0, f["yiaddr"], f["xid"], f["xaddr"], f["xport"], 0)


def test_the_event_is_64_bytes() -> None:
    assert EVENT.size == 64


def test_a_fast_path_ack_decodes_and_reads_as_hubble_shows_it() -> None:
    f = from_kernel(kernel_event(), lambda j: j * 4_000_000 + 5_000)
    assert (f.time_ns, f.source, f.verdict, f.point, f.reason) == \
        (4_000_005_000, Source.DHCP, Verdict.FORWARDED, Point.TO_NETWORK, "ack")
    assert (f.saddr, f.daddr, f.sport, f.dport, f.vlans, f.xid) == \
        ("100.64.0.1", "100.64.0.20", 67, 68, (100,), 0x1234)
    assert f.summary() == "DHCP ACK 100.64.0.20 (fast path)"


@pytest.mark.parametrize(("event", "summary"), [
    (dict(source=1, verdict=1, point=2, reason=4, dhcp_type=1, yiaddr=bytes(4)),
     "DHCP DISCOVER to the slow path: pass_miss"),
    (dict(source=2, verdict=2, point=0, reason=8, dhcp_type=0, proto=6),
     "dropped: spoof_source"),
    (dict(source=3, verdict=7, point=0, reason=16, dhcp_type=0, proto=6,
          sport=(40000).to_bytes(2, "big"), xaddr=bytes([203, 0, 113, 1]),
          xport=(1024).to_bytes(2, "big")),
     "NAT TCP 100.64.0.1:40000 as 203.0.113.1:1024"),
])
def test_summaries(event: dict[str, object], summary: str) -> None:
    assert from_kernel(kernel_event(**event), int).summary() == summary


def test_an_event_of_an_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError):
        from_kernel(kernel_event(source=9), int)


def flow(**kw: object) -> Flow:
    base: dict[str, object] = dict(time_ns=10, source=Source.DHCP, verdict=Verdict.FORWARDED,
                                   point=Point.TO_NETWORK, reason="ack", saddr="100.64.0.1",
                                   daddr="100.64.0.20", proto=17, sport=67, dport=68,
                                   dhcp_type=5, yiaddr="100.64.0.20")
    base.update(kw)
    return Flow(**base)  # type: ignore[arg-type]


def test_the_hub_keeps_the_last_n_and_builds_lazy_flows_when_read() -> None:
    hub = FlowHub(capacity=3)
    built = []

    def build(n: int) -> Flow:
        built.append(n)
        return flow(time_ns=n)

    for n in range(5):
        hub.add_lazy(build, n)
    assert built == []
    assert [f.time_ns for f in hub.recent()] == [2, 3, 4]
    flows, at, lost = hub.since(1)
    assert ([f.time_ns for f in flows], at, lost) == ([2, 3, 4], 5, 1)


@pytest.mark.parametrize("added, position, expected", [
    (5, 5, ([], 5, 0)),           # nothing new
    (5, 4, ([4], 5, 0)),          # the newest alone
    (5, 3, ([3, 4], 5, 0)),
    (5, 2, ([2, 3, 4], 5, 0)),    # exactly what the ring holds
    (5, 0, ([2, 3, 4], 5, 2)),    # two went round before they were read
    (2, 0, ([0, 1], 2, 0)),       # a ring not yet full
])
def test_since_reads_the_new_flows_in_order(added: int, position: int,
                                            expected: tuple[list[int], int, int]) -> None:
    hub = FlowHub(capacity=3)
    for n in range(added):
        hub.add(flow(time_ns=n))
    flows, at, lost = hub.since(position)
    assert ([f.time_ns for f in flows], at, lost) == expected


def test_followers_get_new_flows_and_observers_switch_the_programs_on_and_off() -> None:
    switched: list[bool] = []
    counts: list[int] = []

    async def scenario() -> list[int]:
        hub = FlowHub(capacity=10, linger=0.01, on_watch=switched.append,
                      on_observers=counts.append)
        got: list[int] = []

        async def follow() -> None:
            with hub.observer():
                async for f in hub.follow():
                    got.append(f.time_ns)
                    if len(got) == 2:
                        return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.01)
        hub.add(flow(time_ns=1))
        await asyncio.sleep(0.01)
        hub.add(flow(time_ns=2))
        await asyncio.wait_for(task, 2)
        assert switched == [True]
        await asyncio.sleep(0.05)  # the linger
        return got

    assert asyncio.run(scenario()) == [1, 2]
    assert switched == [True, False]
    assert counts == [1, 0]


CONV = Converter("node-a", "bng-system")


def resolved(f: Flow, subscriber: str = "mac-02-00-00-00-aa-aa") -> Resolved:
    return Resolved(f, subscriber)


DROP = flow(source=Source.ACCESS, verdict=Verdict.DROPPED, point=Point.NONE,
            reason="spoof_source", saddr="100.64.0.99", daddr="192.0.2.1", proto=6, sport=5000,
            dport=80, dhcp_type=0, yiaddr="")
TO_STACK = flow(point=Point.TO_STACK, reason="pass_miss", saddr="0.0.0.0",
                daddr="255.255.255.255", sport=68, dport=67, dhcp_type=1, yiaddr="")
NAT = flow(source=Source.NAT, verdict=Verdict.TRANSLATED, point=Point.NONE,
           reason="new_mapping", saddr="100.64.0.20", daddr="192.0.2.1", proto=6,
           sport=40000, dport=443, xlated_addr="203.0.113.1", xlated_port=1024, dhcp_type=0)
ACK = flow()

F = flow_pb2.FlowFilter
ET = flow_pb2.EventTypeFilter


@pytest.mark.parametrize(("white", "black", "matches"), [
    ([], [], {"ACK", "DROP", "TO_STACK", "NAT"}),
    ([F(destination_port=["67"])], [], {"TO_STACK"}),
    ([F(source_port=["67"]), F(destination_port=["67"])], [], {"ACK", "TO_STACK"}),
    ([F(verdict=[flow_pb2.DROPPED])], [], {"DROP"}),
    ([F(drop_reason_desc=[flow_pb2.INVALID_SOURCE_IP])], [], {"DROP"}),
    ([F(event_type=[ET(type=EVENT_DROP)])], [], {"DROP"}),
    ([F(event_type=[ET(type=EVENT_TRACE, match_sub_type=True, sub_type=TRACE_TO_STACK)])],
     [], {"TO_STACK"}),
    # a mapping is made as its first packet leaves by the uplink: to the network too
    ([F(event_type=[ET(type=EVENT_TRACE, match_sub_type=True, sub_type=TRACE_TO_NETWORK)])],
     [], {"ACK", "NAT"}),
    ([F(source_ip=["100.64.0.0/24"])], [], {"ACK", "DROP", "NAT"}),
    ([F(destination_ip=["100.64.0.20"])], [], {"ACK"}),
    ([F(source_ip_xlated=["203.0.113.1"])], [], {"NAT"}),
    ([F(protocol=["TCP"])], [], {"DROP", "NAT"}),
    ([F(protocol=["udp"], destination_port=["68"])], [], {"ACK"}),
    ([], [F(protocol=["udp"])], {"DROP", "NAT"}),
    ([F(source_pod=["bng-system/mac-02"])], [], {"DROP", "TO_STACK", "NAT"}),
    ([F(destination_pod=["bng-system/"])], [], {"ACK"}),
    ([F(source_pod=["other/"])], [], set()),
    ([F(reply=[True])], [], {"ACK"}),
    ([F(node_name=["node-*"])], [], {"ACK", "DROP", "TO_STACK", "NAT"}),
    ([F(node_name=["node-b"])], [], set()),
])
def test_filters(white: list[flow_pb2.FlowFilter], black: list[flow_pb2.FlowFilter],
                 matches: set[str]) -> None:
    m = compile_filters(white, black, "node-a", "bng-system")
    flows = {"ACK": ACK, "DROP": DROP, "TO_STACK": TO_STACK, "NAT": NAT}
    assert {name for name, f in flows.items() if m(resolved(f))} == matches


@pytest.mark.parametrize(("ff", "message"), [
    (F(http_method=["GET"]), "the filter http_method is not supported"),
    (F(dns_query=["x"]), "the filter dns_query is not supported"),
    (F(protocol=["sctp"]), "protocol: sctp not supported"),
    (F(source_ip=["not-an-ip"]), "source_ip: 'not-an-ip' is not an IP address"),
    (F(destination_port=["http"]), "destination_port: ports are numbers"),
])
def test_unsupported_filters_are_refused_with_a_reason(ff: flow_pb2.FlowFilter,
                                                        message: str) -> None:
    with pytest.raises(BadFilter, match=message):
        compile_filters([ff], [], "node-a", "bng-system")


def test_the_proto_of_each_kind() -> None:
    ack = CONV.to_proto(ACK, "mac-02-00-00-00-aa-aa")
    assert ack.verdict == flow_pb2.FORWARDED and ack.is_reply.value
    assert (ack.event_type.type, ack.event_type.sub_type) == (EVENT_TRACE, TRACE_TO_NETWORK)
    assert ack.trace_observation_point == flow_pb2.TO_NETWORK
    assert ack.destination.pod_name == "mac-02-00-00-00-aa-aa" and not ack.source.pod_name
    assert ack.destination.namespace == "bng-system"
    assert ack.l4.UDP.destination_port == 68 and ack.IP.destination == "100.64.0.20"
    assert ack.Summary == "DHCP ACK 100.64.0.20 (fast path)"
    drop = CONV.to_proto(DROP, "")
    assert drop.verdict == flow_pb2.DROPPED and drop.drop_reason_desc == \
        flow_pb2.INVALID_SOURCE_IP
    assert drop.event_type.type == EVENT_DROP and drop.l4.TCP.destination_port == 80
    nat = CONV.to_proto(NAT, "x")
    assert nat.verdict == flow_pb2.TRANSLATED and nat.IP.source_xlated == "203.0.113.1"
    assert nat.source.pod_name == "x"


def test_a_nat_block_reads_as_who_had_which_ports() -> None:
    from ipaddress import IPv4Address

    from bng_operator.agent.nat.log import Holder, Record
    from bng_operator.agent.observe.slowpath import block_flow

    r = Record(1.5, "allocated", "cgnat", IPv4Address("203.0.113.1"), 1024, 1535,
               Holder(IPv4Address("100.64.0.20"), "mac:02:00:00:00:00:01", "02:00:00:00:00:01"),
               "bound")
    f = block_flow(r)
    assert (f.time_ns, f.verdict, f.saddr, f.xlated_addr, f.xlated_port) == \
        (1_500_000_000, Verdict.TRANSLATED, "100.64.0.20", "203.0.113.1", 1024)
    assert f.summary() == "NAT block 203.0.113.1:1024-1535 allocated to 100.64.0.20 (bound)"
    p = CONV.to_proto(f, "mac-02-00-00-00-00-01")
    assert p.IP.source_xlated == "203.0.113.1" and p.source.pod_name == "mac-02-00-00-00-00-01"

"""`bng status`'s reading of an agent's metrics, and `bng observe`'s requests and merge."""

from __future__ import annotations

import pytest

from bng_operator._hubble.flow import flow_pb2
from bng_operator._hubble.observer import observer_pb2
from bng_operator.agent.observe.client import compact, request
from bng_operator.status import render, summary

pytestmark = pytest.mark.unit

METRICS = """\
# TYPE bng_ebpf_program_attached gauge
bng_ebpf_program_attached{program="xdp_dhcp",interface="access0"} 1.0
bng_ebpf_program_attached{program="qos_up",interface="access0"} 0.0
# TYPE bng_ebpf_map_entries gauge
bng_ebpf_map_entries{map="subscribers"} 250.0
# TYPE bng_ebpf_map_capacity gauge
bng_ebpf_map_capacity{map="subscribers"} 1000.0
# TYPE bng_leases_active gauge
bng_leases_active 250.0
# TYPE bng_pool_addresses gauge
bng_pool_addresses{pool="residential",state="bound"} 250.0
bng_pool_addresses{pool="residential",state="free"} 750.0
# TYPE bng_radius_server_up gauge
bng_radius_server_up{server="10.0.0.1:1812"} 0.0
# TYPE bng_kube_reachable gauge
bng_kube_reachable 0.0
# TYPE bng_kube_requests_total counter
bng_kube_requests_total{verb="patch"} 12.0
"""


def test_status_reads_the_node_at_a_glance() -> None:
    st = summary(METRICS, ready=False, ready_reason="lease store failing")
    assert st.programs == [("xdp_dhcp", "access0", True), ("qos_up", "access0", False)]
    assert st.maps == [("subscribers", 250, 1000)] and st.leases == 250
    assert st.radius == {"10.0.0.1:1812": False} and st.apiserver == "unreachable"
    text = render(st)
    for line in ("agent:      NOT READY: lease store failing", "apiserver:  unreachable",
                 "pool residential: 25% used (bound 250, free 750)",
                 "program qos_up on access0: NOT ATTACHED", "map subscribers: 250 of 1000 (25%)",
                 "RADIUS 10.0.0.1:1812: DOWN"):
        assert line in text, text


def test_a_standalone_agent_has_no_apiserver_to_miss() -> None:
    assert summary("bng_kube_reachable 0.0\n", True, "ok").apiserver == "standalone"


@pytest.mark.parametrize(("kw", "filters"), [
    (dict(verdicts=[], ips=[], ports=[]), []),
    (dict(verdicts=["dropped"], ips=[], ports=[]), [{"verdict": [flow_pb2.DROPPED]}]),
    (dict(verdicts=[], ips=["100.64.0.20"], ports=[]),
     [{"source_ip": ["100.64.0.20"]}, {"destination_ip": ["100.64.0.20"]}]),
    (dict(verdicts=["FORWARDED"], ips=[], ports=[67]),
     [{"source_port": ["67"], "verdict": [flow_pb2.FORWARDED]},
      {"destination_port": ["67"], "verdict": [flow_pb2.FORWARDED]}]),
])
def test_observe_asks_as_the_hubble_cli_does(kw: dict[str, list[object]],
                                            filters: list[dict[str, list[object]]]) -> None:
    req = request(20, False, **kw)  # type: ignore[arg-type]
    assert req.number == 20 and not req.follow
    got = [{d.name: list(v) for d, v in f.ListFields()} for f in req.whitelist]
    assert got == filters


def test_a_follow_without_last_starts_now() -> None:
    assert request(0, True, [], [], []).number == 0


def test_compact_lines_name_the_subscriber() -> None:
    r = observer_pb2.GetFlowsResponse(node_name="node-a")
    r.time.seconds = 1_700_000_000
    r.flow.verdict = flow_pb2.FORWARDED
    r.flow.IP.source, r.flow.IP.destination = "100.64.0.1", "100.64.0.20"
    r.flow.destination.pod_name = "mac-02-00-00-00-00-01"
    r.flow.Summary = "DHCP ACK 100.64.0.20 (fast path)"
    assert compact(r).endswith("node-a: 100.64.0.1 -> mac-02-00-00-00-00-01 FORWARDED "
                               "DHCP ACK 100.64.0.20 (fast path)")


@pytest.mark.parametrize(("before", "now", "changes"), [
    ({}, {"a": "1:4245"}, [("a", "1:4245", "PEER_ADDED")]),
    ({"a": "1:4245"}, {"a": "1:4245"}, []),
    ({"a": "1:4245"}, {"a": "2:4245"}, [("a", "2:4245", "PEER_UPDATED")]),
    ({"a": "1:4245", "b": "3:4245"}, {"a": "1:4245"}, [("b", "3:4245", "PEER_DELETED")]),
])
def test_peer_changes(before: dict[str, str], now: dict[str, str],
                      changes: list[tuple[str, str, str]]) -> None:
    from bng_operator._hubble.peer import peer_pb2
    from bng_operator.agent.observe.hubble import peer_changes

    got = [(n, a, peer_pb2.ChangeNotificationType.Name(t))
           for n, a, t in peer_changes(before, now)]
    assert got == changes

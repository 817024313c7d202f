"""The whole system on a real apiserver: operator plus two agents, each node a network
namespace with real dhclient subscribers behind an access node that inserts option 82.

The tests run in order on one site (module scope): leases and Subscriber objects, address
uniqueness across nodes, a pool edit reaching both nodes, writes during fast-path renewals,
and DHCP with the operator killed.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from bng_lab import clients
from bng_lab.k8s_site import K8sSite, wait_for
from bng_lab.site import requests, subscriber_mac
from tests.conftest import Cluster

RENEW_EVERY = 2
# node -> subscriber index -> (circuit-id, remote-id) the access node inserts
OPTION82 = {
    "edge-a": {0: ("olt-a-1", "res-1"), 1: ("olt-a-2", "res-2"), 2: ("biz-olt1-1/1/7", "")},
    "edge-b": {0: ("olt-b-1", "res-11"), 1: ("olt-b-2", "res-12"), 2: ("olt-b-3", "res-13")},
}


@pytest.fixture(scope="module")
def site(k8s: Cluster, tmp_path_factory: pytest.TempPathFactory, bpffs: Path,
         _netlab_leftovers: None) -> Iterator[K8sSite]:
    s = K8sSite(k8s.cp, tmp_path_factory.mktemp("operator")).prepare()
    procs: list[Any] = []
    try:
        for name, o82 in OPTION82.items():
            s.add_node(name, subscribers=3, option82=o82)
        s.apply_samples()
        s.start_operator()
        s.start_agents()
        for site in s.nodes.values():  # two renewing subscribers per node; the third waits
            procs += [clients.dhclient_renewing(ns, "eth0", site.workdir, RENEW_EVERY)
                      for ns in site.subscribers[:2]]
        yield s
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        s.close()
        for kind in ("bngnodes", "nodes", "subscribers"):
            s.kubectl("delete", kind, "--all", "-A", "--wait=false", check=False)


def lease_of(site: K8sSite, node: str, i: int) -> dict[str, str] | None:
    n = site.nodes[node]
    h = clients.lease_history(n.subscribers[i], n.workdir)
    return h[-1] if h else None


def subscriber_rows(site: K8sSite) -> dict[str, tuple[str, str, str]]:
    """address -> (node, state, name), from `kubectl get subscribers` itself."""
    out = site.kubectl("get", "subscribers", "-n", "bng-system", "-o", "wide").stdout.splitlines()
    if not out:
        return {}
    # a fixed-width table: each column starts where its header does; empty cells are blank
    starts = [m.start() for m in re.finditer(r"\S+", out[0])]
    names = out[0].split()
    rows = {}
    for line in out[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        row = dict(zip(names, cells, strict=True))
        if row["ADDRESS"] not in ("", "<none>"):
            rows[row["ADDRESS"]] = (row["NODE"], row["STATE"], row["NAME"])
    return rows


def test_subscribers_show_their_node_and_address_within_5s(site: K8sSite) -> None:
    for node in OPTION82:
        for i in range(2):
            lease = wait_for(f"{node} subscriber {i} bound", lambda n=node, i=i: lease_of(site, n, i),
                             30)
            bound = time.monotonic()
            addr = lease["fixed-address"]
            wait_for(f"Subscriber for {addr} on {node}",
                     lambda a=addr, n=node: subscriber_rows(site).get(a, ("",))[0] == n, 5)
            assert time.monotonic() - bound < 5
    header = site.kubectl("get", "subscribers", "-n", "bng-system", "-o", "wide").stdout
    for column in ("MAC", "ADDRESS", "NODE", "CLASS", "STATE", "EXPIRES", "AGE", "CIRCUIT-ID",
                   "REMOTE-ID"):
        assert column in header.splitlines()[0]


def test_no_address_is_handed_out_twice_across_nodes(site: K8sSite) -> None:
    # the third subscriber of each node binds now, while the others hold theirs
    for node in site.nodes.values():
        clients.dhclient(node.subscribers[2], "eth0", node.workdir)
    pools = {p["metadata"]["name"]: p for p in site.get("ippools")["items"]}
    blocks = {(b["node"], IPv4Network(b["cidr"])) for p in pools.values()
              for b in p["status"]["blocks"]}
    seen: dict[str, str] = {}
    for name in OPTION82:
        for i in range(3):
            lease = lease_of(site, name, i)
            assert lease is not None
            addr = lease["fixed-address"]
            assert addr not in seen, f"{addr} given to {seen.get(addr)} and {name}/{i}"
            seen[addr] = f"{name}/{i}"
            # from a block this node holds (or the reservation, which is the user's)
            assert addr == "198.51.100.10" or any(
                n == name and IPv4Address(addr) in net for n, net in blocks), (addr, name, blocks)
    assert lease_of(site, "edge-a", 2)["fixed-address"] == "198.51.100.10"  # reservation
    nodes = {b[0] for b in blocks}
    assert nodes == set(OPTION82)
    cidrs = [str(b[1]) for b in blocks]
    assert len(cidrs) == len(set(cidrs))  # a block never belongs to two nodes
    rows = subscriber_rows(site)
    assert rows["198.51.100.10"][2] == "acme-hq"  # the reservation object reports it
    assert len(rows) == 6


def test_subscribers_show_their_qos_policy_and_rates(site: K8sSite) -> None:
    def shown() -> dict[str, Any] | None:
        st = {o["status"].get("address"): o["status"] for o in site.subscribers()
              if o.get("status")}
        return st if len(st) == 6 and all("qos" in s for s in st.values()) else None

    statuses = wait_for("every Subscriber's QoS", shown, 15, 0.3)
    for address, st in statuses.items():
        business = address == "198.51.100.10"
        assert st["qos"] == ({"policy": "business-1g", "download": "1Gbit", "upload": "1Gbit"}
                             if business else {"policy": "residential-100m",
                                               "download": "100Mbit", "upload": "20Mbit"}), st
        assert set(st["counters"]) == {"rxBytes", "rxPackets", "txBytes", "txPackets"}


def test_each_agent_reports_its_bngnode_status(site: K8sSite) -> None:
    for name in OPTION82:
        def reported(name: str = name) -> Any:
            n = site.get("bngnode", name)
            st = n.get("status") or {}
            return n if sum(b["leases"] for b in st.get("blocks", [])) == 3 and \
                all(p["attached"] for p in st.get("programs", [{"attached": False}])) and \
                {m["name"]: m["entries"] for m in st.get("maps", [])}.get("qos_sessions") == 3 \
                else None

        node = wait_for(f"{name} reports its 3 leases", reported, 10, 0.3)
        st = node["status"]
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Ready"]["status"] == "True", conds
        # The samples' residential class NATs behind cgnat, and these nodes have no uplink:
        # every program is attached, and the node says what it cannot do.
        assert conds["Degraded"]["status"] == "True", conds
        assert "no uplink interface" in conds["Degraded"]["message"], conds
        assert conds["Ready"]["observedGeneration"] == node["metadata"]["generation"]
        assert st["observedGeneration"] == node["metadata"]["generation"]
        access = site.nodes[name].access
        assert st["programs"] == [
            {"hook": "xdp", "interface": access, "name": "xdp_dhcp", "attached": True},
            {"hook": "tc-egress", "interface": access, "name": "qos_down", "attached": True},
            {"hook": "tc-ingress", "interface": access, "name": "qos_up", "attached": True},
            {"hook": "xdp", "interface": access, "name": "access_arp", "attached": True}]
        assert st["leasesActive"] == 3 and st["lastSync"]
        maps = {m["name"]: m["entries"] for m in st["maps"]}
        assert set(maps) >= {"subscribers", "circuits", "subnet_options", "qos_sessions"}
        assert maps["qos_sessions"] == 3  # every class of the samples has a QoSPolicy
        held = {c for p in node["spec"]["pools"] for c in p["blocks"]}
        assert {b["cidr"] for b in st["blocks"]} == held


_NOTIFY = """
import sys, grpc
from bng_operator._hubble.peer import peer_pb2, peer_pb2_grpc
want = int(sys.argv[1])
with grpc.insecure_channel(sys.argv[2]) as ch:
    stream = peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest(), timeout=10)
    for n, change in enumerate(stream, 1):
        print(peer_pb2.ChangeNotificationType.Name(change.type), change.name, change.address)
        if n == want:
            break
"""


def test_every_agent_publishes_its_hubble_api_and_lists_every_nodes(site: K8sSite) -> None:
    # the default address: the node's name and the port (the chart gives the node's IP)
    want = {name: f"{name}:{n.hubble_port}" for name, n in site.nodes.items()}
    wait_for("every BNGNode to show its Hubble address", lambda: all(
        (site.get("bngnode", name).get("status") or {}).get("hubble") == address
        for name, address in want.items()) or None, 15, 0.3)
    # hubble-relay asks any agent's Peer service and learns every node's
    for n in site.nodes.values():
        r = n.lab.run(n.bng or "", sys.executable, "-c", _NOTIFY, str(len(want)),
                      f"127.0.0.1:{n.hubble_port}")
        assert sorted(r.stdout.splitlines()) == sorted(
            f"PEER_ADDED {name} {address}" for name, address in want.items()), r.stdout


def test_pool_dns_edit_reaches_both_nodes_next_reply(site: K8sSite) -> None:
    site.kubectl("patch", "ippool", "residential", "--type", "merge",
                 "-p", '{"spec": {"dns": ["192.0.2.99", "192.0.2.98"]}}')
    for node in OPTION82:
        for i in range(2):
            wait_for(f"{node}/{i} told the new DNS servers",
                     lambda n=node, i=i: (lease_of(site, n, i) or {}).get(
                         "domain-name-servers") == "192.0.2.99,192.0.2.98", 20, 0.3)


def test_1000_fast_path_renewals_make_no_apiserver_writes(site: K8sSite) -> None:
    node = site.nodes["edge-b"]
    lease = lease_of(site, "edge-b", 0)
    assert lease is not None
    frames = clients.renewal_frames(lease, subscriber_mac(0), node.access_mac(), 10)
    before_m = node.metrics()
    before = len(site.cp.writes())
    assert before > 0, "the audit log records no writes at all: it would prove nothing"
    clients.send_frames(node.subscribers[0], "eth0", frames, repeat=100, interval=0.001)
    wait_for("1000 renewals answered by XDP",
             lambda: requests(node.metrics(), "fast") - requests(before_m, "fast") >= 1000, 20, 0.2)
    time.sleep(3)  # longer than the status interval: a write caused by them would show
    after_m = node.metrics()
    writes = site.cp.writes()[before:]
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]
    assert requests(after_m, "slow") - requests(before_m, "slow") < 10  # dhclients' own, at most


def test_dhcp_goes_on_with_the_operator_killed(site: K8sSite) -> None:
    site.stop_operator(kill=True)
    node = site.nodes["edge-a"]
    ns = node.subscribers[0]
    acks = len(clients.dhclient_acks(ns, node.workdir))
    wait_for("two more renewals", lambda: len(clients.dhclient_acks(ns, node.workdir)) >= acks + 2,
             3 * RENEW_EVERY + 5, 0.3)
    clients.dhclient_release(node.subscribers[2], "eth0", node.workdir)
    fresh = clients.dhclient(node.subscribers[2], "eth0", node.workdir)
    assert fresh.address == "198.51.100.10"
    wait_for("Subscriber acme-hq bound again",
             lambda: subscriber_rows(site).get("198.51.100.10", ("", ""))[1] == "Bound", 10)

"""Subscribers on VLANs, terminated in eBPF (issue 15): 1:1 VLANs, QinQ and a shared N:1
VLAN get leases from dhclient, then ping their gateway and reach the internet namespace;
no subscriber enters the bng node's neighbour table; the wrong VLAN, no session, a
neighbour's address or a forged MAC get nothing through, each dropped and counted.

This kernel has neither 802.1Q devices nor bridge VLAN filtering, so the access switch's
subscriber ports tag and untag with two tc programs each (bng_lab/vlan_ports.c), as a
switch with VLAN filtering and untagged access ports would: the subscribers' namespaces
are untagged, the bng node sees 802.1Q and 802.1ad tags in the frames."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.netlab import in_netns
from bng_lab.port import Port
from bng_lab.site import INTERNET_ADDRESS, Site, subscriber_mac
from bng_lab.vlan_ports import tag_ports
from bng_operator import netlink
from bng_operator.agent.dhcp.transport import build_frame
from tests.e2e.conftest import ping, wait

ONE_TO_ONE, QINQ, SHARED = (0x8100, 101, 0), (0x88A8, 200, 10), (0x8100, 300, 0)
PORTS = {0: ONE_TO_ONE, 1: QINQ, 2: SHARED, 3: SHARED}
STRANGER = 4  # on a VLAN of its own, with no session
LISTEN = 9999


@pytest.fixture
def vlan_site(make_site: Callable[..., Site]) -> Site:
    site = make_site(subscribers=5)
    tag_ports(site.switch, {f"p{i}": t for i, t in PORTS.items()} |
              {f"p{STRANGER}": (0x8100, 400, 0)})
    site.inet = site.add_internet()  # type: ignore[attr-defined]
    site.start_agent()
    return site


def _stat(site: Site, name: str) -> float:
    return site.metrics().get(name, 0.0)


def _bound(site: Site, tmp_path: Path) -> dict[int, clients.ClientLease]:
    leases = {i: clients.dhclient(site.subscribers[i], "eth0", tmp_path) for i in PORTS}
    for i, lease in leases.items():
        # the session's map entry follows the ACK on the data path's worker: ARP retries
        assert ping(site, i, lease.routers[0], tries=10), f"s{i} cannot ping its gateway"
    return leases


def test_tagged_subscribers_reach_their_gateway_and_the_internet_with_no_neighbour_entry(
        vlan_site: Site, tmp_path: Path) -> None:
    site = vlan_site
    leases = _bound(site, tmp_path)
    assert len({lease.address for lease in leases.values()}) == len(PORTS)
    for i in PORTS:
        assert ping(site, i, INTERNET_ADDRESS, tries=3), f"s{i} cannot reach the internet"
    with in_netns(site.bng):
        neighbours = netlink.neighbours("access0")
    assert not {lease.address for lease in leases.values()} & set(neighbours), neighbours
    assert set(neighbours) <= {netlink.ACCESS_NEXTHOP}
    assert _stat(site, 'bng_access_arp_total{result="answered"}') >= len(PORTS)
    # the internet side reaches them too (routed to their tags, not resolved)
    for lease in leases.values():
        r = site.lab.run(site.inet, "ping", "-c", "1", "-W", "2", lease.address,  # type: ignore[attr-defined]
                         check=False)
        assert r.returncode == 0, f"the internet cannot reach {lease.address}"

    # A restarted agent restores the sessions from its lease store, tags and all: what it
    # puts back in the maps must still let them through.
    site.stop_agent(signal.SIGKILL)
    site.start_agent()
    wait("the restarted agent to attach", lambda: sum(
        "access data path on access0" in str(e.get("msg")) for e in site.log_events()) >= 2)
    time.sleep(1)  # its worker put the restored sessions back before attaching
    for i in PORTS:
        assert ping(site, i, INTERNET_ADDRESS, tries=3), f"s{i} lost its way after a restart"


def test_a_subscriber_on_the_wrong_vlan_or_with_no_session_gets_nothing_through(
        vlan_site: Site, tmp_path: Path) -> None:
    site = vlan_site
    leases = _bound(site, tmp_path)
    # No session: an address of the pool set by hand, on a VLAN no session is on.
    stranger, gateway = site.subscribers[STRANGER], leases[0].routers[0]
    free = str(IPv4Address(leases[0].address) + 200)
    site.lab.run(stranger, "ip", "addr", "add", f"{free}/20", "dev", "eth0")
    site.lab.run(stranger, "ip", "route", "add", "default", "via", gateway)
    arp_before = _stat(site, 'bng_antispoof_drops_total{reason="arp"}')
    assert not ping(site, STRANGER, gateway, tries=2)
    assert _stat(site, 'bng_antispoof_drops_total{reason="arp"}') > arp_before
    # ... not even with the gateway's MAC known
    site.lab.run(stranger, "ip", "neigh", "replace", gateway, "lladdr", site.access_mac(),
                 "dev", "eth0")
    source_before = _stat(site, 'bng_antispoof_drops_total{reason="unknown_source"}')
    assert not ping(site, STRANGER, INTERNET_ADDRESS, tries=2)
    assert _stat(site, 'bng_antispoof_drops_total{reason="unknown_source"}') >= \
        source_before + 2
    # The wrong VLAN: s0's port moves to VLAN 102; its session was bound on 101.
    assert ping(site, 0, INTERNET_ADDRESS, tries=3)
    tag_ports(site.switch, {"p0": (0x8100, 102, 0)})
    vlan_before = _stat(site, 'bng_antispoof_drops_total{reason="vlan"}')
    assert not ping(site, 0, INTERNET_ADDRESS, tries=2)
    assert _stat(site, 'bng_antispoof_drops_total{reason="vlan"}') >= vlan_before + 2
    assert ping(site, 2, INTERNET_ADDRESS, tries=3)  # the others are untouched


_LISTENER = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {LISTEN}))
print("ready", flush=True)
while True:
    data, (src, _) = s.recvfrom(2048)
    print(src, data.decode(), flush=True)
"""


def test_spoofed_sources_and_macs_are_dropped_and_counted_while_real_traffic_flows(
        vlan_site: Site, tmp_path: Path) -> None:
    site = vlan_site
    leases = _bound(site, tmp_path)
    listener = site.lab.popen(site.inet, sys.executable, "-c", _LISTENER,  # type: ignore[attr-defined]
                              stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        me, neighbour = leases[0].address, leases[2].address
        unassigned = str(IPv4Address(me) + 201)
        mine = bytes.fromhex(subscriber_mac(0).replace(":", ""))
        forged = bytes.fromhex("02dead00beef")
        gw_mac = bytes.fromhex(site.access_mac().replace(":", ""))
        sends = [("real", me, mine), ("neighbour", neighbour, mine),
                 ("unassigned", unassigned, mine), ("forged-mac", me, forged)]
        before = site.metrics()
        port = Port(site.subscribers[0])
        try:
            for _ in range(5):
                for label, src, mac in sends:
                    port.send(build_frame(gw_mac, mac, b"", IPv4Address(src),
                                          IPv4Address(INTERNET_ADDRESS), LISTEN, label.encode(),
                                          src_port=LISTEN))
                time.sleep(0.1)
        finally:
            port.close()
        time.sleep(1)
    finally:
        listener.kill()
        out, _ = listener.communicate()
    got = {tuple(line.split()) for line in out.splitlines() if line.strip()}
    assert got == {(me, "real")}, got
    after = site.metrics()

    def delta(reason: str) -> float:
        name = f'bng_antispoof_drops_total{{reason="{reason}"}}'
        return after.get(name, 0) - before.get(name, 0)

    assert delta("unknown_source") >= 5  # the unassigned address
    assert delta("mac") >= 10  # the neighbour's address (its session has its MAC), forged

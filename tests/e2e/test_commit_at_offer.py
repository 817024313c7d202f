"""BNGNode spec.commitAtOffer with real dhclient subscribers: the slow path commits the offer,
XDP ACKs the REQUEST, and the agent binds the session from the kernel's report of that ACK.
A kill -9 under load with it: tests/e2e/test_dhcp_load.py."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

from bng_lab import clients
from bng_lab.site import Site, subscriber_mac
from tests.cases import NODE
from tests.e2e.conftest import committing_node, ping, stored_leases, wait

FAST_ACKS = 'bng_dhcp_requests_total{path="fast",result="ack",type="request"}'
SLOW_ACKS = 'bng_dhcp_requests_total{path="slow",result="ack",type="request"}'
BOUND_BY_XDP = "bng_fastpath_offers_bound_total"
USED = 'bng_pool_addresses{pool="residential",state="used"}'


def test_xdp_acks_a_new_clients_request_and_the_session_is_bound(
        make_site: Callable[..., Site], tmp_path: Path) -> None:
    site = make_site(subscribers=2, replace={NODE: committing_node()})
    site.start_agent()
    leases = [clients.dhclient(ns, "eth0", tmp_path) for ns in site.subscribers]
    m = site.metrics()
    assert m.get(FAST_ACKS, 0) == 2 and m.get(SLOW_ACKS, 0) == 0  # the kernel ACKed both
    wait("both sessions bound", lambda: site.metrics().get(BOUND_BY_XDP, 0) == 2
         and site.metrics()[USED] == 2, timeout=5)
    stored = {mac: (addr, state) for addr, mac, state in
              stored_leases(site, "address, mac, state")}
    for i, lease in enumerate(leases):
        addr, state = stored[subscriber_mac(i)]
        assert (str(IPv4Address(addr)), state) == (lease.address, "bound")
        assert lease.lease_time == 4 * 3600 and lease.server_id == "100.64.0.1"
        assert ping(site, i, lease.routers[0], tries=10), f"s{i} cannot reach its gateway"

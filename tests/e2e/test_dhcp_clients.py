"""Real DHCP clients against the agent, each in its own namespace."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from bng_lab import clients
from bng_lab.site import Site

RESIDENTIAL = ipaddress.ip_network("100.64.0.0/20")


def test_dhclient_udhcpc_and_dhcpcd_each_get_a_full_lease(make_site: Callable[..., Site],
                                                           tmp_path: Path) -> None:
    site = make_site(subscribers=3)
    site.start_agent()
    got = [
        clients.dhclient(site.subscribers[0], "eth0", tmp_path),
        clients.udhcpc(site.subscribers[1], "eth0", tmp_path),
        clients.dhcpcd(site.subscribers[2], "eth0", tmp_path),
    ]
    for lease in got:
        addr = ipaddress.ip_address(lease.address)
        assert addr in RESIDENTIAL and int(addr) > int(ipaddress.ip_address("100.64.0.15"))
        assert lease.mask == "255.255.240.0"
        assert lease.routers == ("100.64.0.1",)
        assert lease.dns == ("192.0.2.53", "192.0.2.54")
        assert lease.lease_time == 4 * 3600
        assert lease.server_id == "100.64.0.1"
    assert len({lease.address for lease in got}) == 3
    m = site.metrics()
    assert m['bng_dhcp_requests_total{path="slow",result="ack",type="request"}'] == 3
    assert m["bng_leases_active"] == 3
    audit = [e for e in site.log_events() if e.get("logger") == "bng.audit"]
    assert sorted(str(e["address"]) for e in audit if e["event"] == "allocate") == \
        sorted(lease.address for lease in got)

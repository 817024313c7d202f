"""One subscriber flooding renewals of its own lease must not cost any other subscriber its
lease (issue 14, point 1): the fast path logs a renewal only when the lease end moved by a
step, and the agent reads the map's expiry before it ends a lease, so a refresh log that
overflows loses nothing that matters.

200 relayed subscribers are bound by the in-kernel generator (bng_lab/dhcpgen.py); then
subscriber 0 floods REQUESTs at >= 100k/s for 10 s while the 199 others renew every ~2 s,
and nobody renews after that. Past the end of the first leases, none may have lost its
lease or its address: in the lease store and in the fast path's maps. (Before the fix, the
flood overflowed the refresh log, the others' renewals in it were lost, and the agent ended
their leases at the first lease's end while their ACKs still held.)"""

from __future__ import annotations

import time
from collections.abc import Callable

from bng_lab import dhcpgen
from bng_lab.site import Site
from bng_operator import netlink
from bng_operator.agent.dataplane.loader import pinned_map_items
from tests.e2e.conftest import stored_leases

SUBSCRIBERS = 200
LEASE = 60  # seconds: IPPool's shortest
GATEWAY, RELAY = dhcpgen.GATEWAY, dhcpgen.RELAY
POOL = dhcpgen.site_config("100.64.0.0/20", 24, f"{LEASE}s")


def _bound(site: Site) -> dict[str, tuple[str, float]]:
    """mac -> (address, lease end) of every bound lease in the store."""
    return {mac: (addr, exp) for mac, addr, exp in
            stored_leases(site, "mac, address, expires", "state = 'bound'")}


def test_a_renewal_flood_costs_no_other_subscriber_its_lease(
        make_site: Callable[..., Site]) -> None:
    site = make_site(subscribers=1, extra=POOL)
    for sample in site.config[0].glob("*.yaml"):  # this file's pool, class and node only
        if sample.name != "zz-test-extra.yaml":
            sample.unlink()
    netlink.add_address("eth0", f"{RELAY}/20", site.subscribers[0])  # the generator's relay
    site.start_agent()
    access_mac = bytes.fromhex(site.access_mac().replace(":", ""))
    relay_mac = bytes.fromhex(
        netlink.interface_info("eth0", site.subscribers[0])[1].replace(":", ""))
    gen = dhcpgen.Generator(site.switch, "up0", SUBSCRIBERS, GATEWAY, access_mac, RELAY,
                            relay_mac)
    try:
        gen.preload()
        bound_at = time.time()
        first = _bound(site)
        assert len(first) == SUBSCRIBERS

        flood_start = time.time()
        flood = gen.renew(None, 10, focus=1000)  # unpaced; 1 frame in 1000 for the others
        sent = flood.counts["sent_request"] / flood.seconds
        assert sent >= 100_000, f"the flood reached only {sent:.0f} REQUESTs/s"
        assert flood.counts["ack"] >= 0.9 * flood.counts["sent_request"], flood.counts
        # Every other subscriber renewed every ~2 s during the flood, in the kernel: its ACK
        # holds until its last renewal + LEASE. Nobody renews now. Past the first leases'
        # end (and the agent's expiry grace), every lease must still stand.
        time.sleep(max(0.0, bound_at + LEASE + 6 - time.time()))
        now = time.time()
        assert now < flood_start + 8 + LEASE, "too slow to check before the ACKs run out"

        stored = _bound(site)
        assert set(stored) == set(first), "subscribers lost their lease in the store"
        for mac, (address, expires) in stored.items():
            assert address == first[mac][0], f"{mac} moved from {first[mac][0]} to {address}"
            assert expires >= flood_start + LEASE, f"{mac}: renewals lost, ends {expires}"
        maps = [p for p in site.lab.bpf_dir.glob("*/subscribers")]
        assert len(maps) == 1 and len(pinned_map_items(maps[0])) == SUBSCRIBERS
        m = site.metrics()
        assert m["bng_leases_active"] == SUBSCRIBERS
        ended = [e for e in site.log_events() if e.get("event") in ("expire", "release")]
        assert not ended, ended[:3]
    finally:
        gen.close()

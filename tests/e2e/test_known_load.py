"""Known clients under load from the in-kernel generator of bench/dhcp.py: every DORA is
answered by XDP in native mode, with the address the client holds, and the slow path
sees none of it. This also keeps the benchmark's generator honest."""

from __future__ import annotations

from collections.abc import Callable

from bng_lab.dhcpgen import Generator
from bng_lab.site import Site, requests
from bng_operator import netlink
from tests.e2e.conftest import RELAYED_CLASS

CLIENTS = 128
# A count, not a duration: how many frames a slow machine gets out in a second is for the
# benchmark to say. The pace stays far below what either side can do.
EXCHANGES = 5000
RATE = 5000  # exchanges/s


def _mac(ifname: str, ns: str) -> bytes:
    return bytes.fromhex(netlink.interface_info(ifname, ns)[1].replace(":", ""))


def test_known_clients_under_load_are_all_answered_by_xdp(
        make_site: Callable[..., Site]) -> None:
    site = make_site(subscribers=0, relay=True, extra=RELAYED_CLASS)
    site.start_agent()  # native XDP: the generator's frames arrive on whole pages
    gen = Generator(site.switch, "up0", CLIENTS, "198.51.100.1", _mac(site.access, site.bng),
                    "198.51.100.2", _mac("eth0", site.relay))
    try:
        gen.preload(rate=1000)  # the slow path binds them; raises if one is left out
        before = site.metrics()
        result = gen.run(RATE, 60.0, exchanges=EXCHANGES)
        after = site.metrics()
    finally:
        gen.close()
    c = result.counts
    assert c["sent_discover"] == c["sent_request"] == EXCHANGES, c
    assert c["wrong_address"] == 0 and c["nak"] == 0 and c["other"] == 0, c
    assert c["offer"] == c["sent_discover"] and c["ack"] == c["sent_request"], c
    assert requests(after, "fast") - requests(before, "fast") == c["sent_request"]
    assert requests(after, "slow") == requests(before, "slow")

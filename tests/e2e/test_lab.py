"""The lab's site: dhclient behind an access node that inserts option 82, samples as config."""

from __future__ import annotations

import time
from pathlib import Path

from bng_lab import clients, lab
from bng_lab.netlab import NetLab
from bng_lab.site import Site


def test_lab_site_serves_dhclient_by_option_82_from_the_samples(netlab: NetLab, tmp_path: Path,
                                                                 bpffs: Path) -> None:
    site = Site(netlab, tmp_path, [lab.SAMPLES])
    try:
        site.build(8, option82={i: lab.lines_of(i) for i in range(8)})
        site.start_agent()
        got = {i: clients.dhclient(site.subscribers[i], "eth0", tmp_path) for i in (0, 2, 7)}
        assert got[0].address.startswith("100.64.") and got[0].lease_time == 4 * 3600
        assert got[2].address.startswith("198.51.100.") and got[2].lease_time == 12 * 3600
        assert got[7].address == "198.51.100.10"  # acme-hq, reserved by circuit-id
        time.sleep(1.2)  # the leases table and gauges refresh each second
        text = lab.table(site.state_dir / "leases-edge-1.sqlite", site)
        assert "remote:res-1000" in text and "circuit:biz-olt1-1/1/7" in text
        assert "3 leases, 3 active" in text
    finally:
        site.close()

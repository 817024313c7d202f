"""The agent with exactly the capabilities the Helm chart grants (issue 14, point 6): it
starts, is killed with -9, starts again and adopts its pinned program and maps, and upgrades
to a new program generation, all without one capability more. setpriv drops the rest the
way the container runtime does for the chart's securityContext."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from bng_lab import chart, clients
from bng_lab.site import Site
from bng_operator import netlink
from tests.e2e.conftest import wait

FAST_ACKS = 'bng_dhcp_requests_total{path="fast",result="ack",type="request"}'
SUBSCRIBERS = 2
BNGNODE = (Path(__file__).resolve().parents[2] / "config" / "samples" /
           "bngnode-standalone.yaml").read_text()


def _capabilities(pid: int, which: str) -> set[str]:
    """The process's capability set ``which`` (CapEff, CapBnd, ...), as capsh names them."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith(which + ":"))
    out = subprocess.run(["capsh", f"--decode={mask}"], capture_output=True, text=True,
                         check=True).stdout.strip()
    names = out.partition("=")[2]
    return {n.removeprefix("cap_").upper() for n in names.split(",") if n}


def _fast_acks(site: Site) -> float:
    return site.metrics().get(FAST_ACKS, 0)


def _slow_requests(site: Site) -> float:
    return sum(v for k, v in site.metrics().items()
               if k.startswith("bng_dhcp_requests_total{") and 'path="slow"' in k
               and 'type="request"' in k)


def test_the_agent_keeps_its_fast_path_with_only_the_charts_capabilities(
        make_site: Callable[..., Site], tmp_path: Path) -> None:
    caps = chart.agent_capabilities()
    assert "SYS_ADMIN" not in caps
    site = make_site(subscribers=SUBSCRIBERS)
    site.wrap = chart.with_capabilities(caps)
    site.start_agent(timeout=60)
    assert site.agent is not None
    # Not more than the chart's; fewer only where this machine's root lacks one itself.
    expected = set(caps) & _capabilities(os.getpid(), "CapBnd")
    for which in ("CapEff", "CapBnd"):
        assert _capabilities(site.agent.pid, which) == expected, which

    procs = [clients.dhclient_renewing(ns, "eth0", tmp_path, 2) for ns in site.subscribers]
    try:
        wait("every client bound",
              lambda: all(clients.lease_history(ns, tmp_path) for ns in site.subscribers))
        wait("a fast ACK", lambda: _fast_acks(site) >= 1)
        program = netlink.xdp_program_id(site.access, site.bng)

        # Killed and started again: it re-opens the pinned maps and adopts the program.
        site.stop_agent(signal.SIGKILL)
        site.start_agent(timeout=60)
        assert netlink.xdp_program_id(site.access, site.bng) == program
        assert any("program adopted" in str(e.get("msg")) for e in site.log_events())
        m = site.metrics()
        assert m['bng_ebpf_map_entries{map="subscribers"}'] == SUBSCRIBERS
        assert m[f'bng_ebpf_program_attached{{interface="{site.access}",program="xdp_dhcp"}}'] == 1
        slow, fast = _slow_requests(site), _fast_acks(site)
        wait("renewals in the kernel after the restart",
              lambda: _fast_acks(site) >= fast + 2 * SUBSCRIBERS)
        assert _slow_requests(site) == slow

        # An upgrade: a new program generation (the maps' size is part of it) replaces the
        # old one atomically, keeps the refresh log, and the old generation's pins go.
        (site.config[0] / "bngnode-standalone.yaml").write_text(
            BNGNODE.replace("  nodeName: edge-1\n", "  nodeName: edge-1\n  maxLeases: 5000\n"))
        site.stop_agent()
        site.start_agent(timeout=60)
        upgraded = netlink.xdp_program_id(site.access, site.bng)
        assert upgraded not in (None, program)
        # said (and the old generation's pins removed) just after the attach the id shows
        wait("the replacement said", lambda: any(
            "program replaced" in str(e.get("msg")) for e in site.log_events()))

        def generations() -> list[str]:
            # the fast path's generations (qos/ and nat/ hold those features' own)
            return [d.name for d in site.lab.bpf_dir.iterdir() if d.is_dir() and
                    re.fullmatch(r"[0-9a-f]{12}", d.name)]

        wait("one generation pinned", lambda: len(generations()) == 1)
        assert site.metrics()['bng_ebpf_map_entries{map="subscribers"}'] == SUBSCRIBERS
        slow, fast = _slow_requests(site), _fast_acks(site)
        wait("renewals in the kernel after the upgrade",
              lambda: _fast_acks(site) >= fast + 2 * SUBSCRIBERS)
        assert _slow_requests(site) == slow
    finally:
        for p in procs:
            p.kill()
            p.wait()
    log = site.log()
    assert "Traceback" not in log and "Operation not permitted" not in log, log[-3000:]

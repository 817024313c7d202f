"""The XDP fast path with real dhclient subscribers: renewals answered in the kernel, across
an agent killed with -9, a restart, and a change of DNS servers."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import dpkt
import pytest

from bng_lab import clients
from bng_lab.capture import capture, checksums_ok, dhcp_payloads
from bng_lab.site import Site, subscriber_mac
from bng_operator import netlink
from tests.e2e.conftest import wait

RENEW_EVERY = 2  # seconds; dhclient's config overrides T1
SUBSCRIBERS = 2
FAST_ACKS = 'bng_dhcp_requests_total{path="fast",result="ack",type="request"}'


def _slow_requests(site: Site) -> float:
    return sum(v for k, v in site.metrics().items()
               if k.startswith("bng_dhcp_requests_total{") and 'path="slow"' in k
               and 'type="request"' in k)


def _history(site: Site, tmp_path: Path) -> list[list[dict[str, str]]]:
    return [clients.lease_history(ns, tmp_path) for ns in site.subscribers]


def _acks(site: Site, tmp_path: Path) -> list[list[str]]:
    return [clients.dhclient_acks(ns, tmp_path) for ns in site.subscribers]


@pytest.fixture
def renewing(make_site: Callable[..., Site], tmp_path: Path) -> Iterator[Site]:
    """A site whose subscribers run dhclient renewing every RENEW_EVERY seconds."""
    site = make_site(subscribers=SUBSCRIBERS)
    site.start_agent()
    procs = [clients.dhclient_renewing(ns, "eth0", tmp_path, RENEW_EVERY)
             for ns in site.subscribers]
    try:
        wait("every client bound", lambda: all(_history(site, tmp_path)))
        yield site
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_dhclient_renewals_are_answered_by_xdp(renewing: Site, tmp_path: Path) -> None:
    site = renewing
    wait("a first fast ACK", lambda: site.metrics().get(FAST_ACKS, 0) >= 1)
    slow = _slow_requests(site)
    fast = site.metrics()[FAST_ACKS]
    before = [len(a) for a in _acks(site, tmp_path)]

    def renewed() -> bool:  # in the kernel's counters, the clients' logs and the store
        m = site.metrics()
        return m.get(FAST_ACKS, 0) >= fast + 2 * SUBSCRIBERS and \
            m["bng_fastpath_renewals_persisted_total"] >= 2 * SUBSCRIBERS and \
            all(len(a) >= n + 2 for n, a in zip(before, _acks(site, tmp_path), strict=True))

    wait("two more renewals per client", renewed)
    m = site.metrics()
    assert _slow_requests(site) == slow  # the slow path saw none of them
    for n, acks in zip(before, _acks(site, tmp_path), strict=True):
        assert len(acks) >= n + 2  # the clients got them
        assert len(set(acks)) == 1  # the same address from the same server every time
    for h in _history(site, tmp_path):
        assert h[-1]["dhcp-server-identifier"] == "100.64.0.1"
        assert h[-1]["domain-name-servers"] == "192.0.2.53,192.0.2.54"
    assert m['bng_ebpf_map_entries{map="subscribers"}'] == SUBSCRIBERS
    assert m[f'bng_ebpf_program_attached{{interface="{site.access}",program="xdp_dhcp"}}'] == 1
    assert m["bng_fastpath_renewals_persisted_total"] >= 2 * SUBSCRIBERS
    assert 0 < m["bng_fastpath_hit_ratio"] <= 1


def _stored_expiries(site: Site) -> dict[str, float]:
    db = sqlite3.connect(site.state_dir / f"leases-{site.node}.sqlite")
    try:
        return {mac: exp for mac, exp in db.execute(
            "SELECT mac, expires FROM leases WHERE state = 'bound'")}
    finally:
        db.close()


def test_kill_9_keeps_renewals_answered_and_a_restart_loses_nothing(renewing: Site,
                                                                    tmp_path: Path) -> None:
    site = renewing
    wait("a first fast ACK", lambda: site.metrics().get(FAST_ACKS, 0) >= 1)
    program = netlink.xdp_program_id(site.access, site.bng)
    assert program is not None
    site.stop_agent(signal.SIGKILL)
    killed_at = time.time()
    counts = [len(a) for a in _acks(site, tmp_path)]
    wait("renewals answered with no agent running",
          lambda: all(len(a) >= n + 2 for n, a in zip(counts, _acks(site, tmp_path),
                                                      strict=True)), timeout=20)
    assert netlink.xdp_program_id(site.access, site.bng) == program

    down = sum(len(a) - n for n, a in zip(counts, _acks(site, tmp_path), strict=True))
    site.start_agent()
    assert netlink.xdp_program_id(site.access, site.bng) == program  # adopted, not reloaded
    assert any("adopted" in str(e.get("msg")) for e in site.log_events())
    m = site.metrics()
    # The renewals answered while no agent ran are counted (issue 14, point 9), not taken
    # as the restarted agent's base.
    assert m.get(FAST_ACKS, 0) >= down >= 2 * SUBSCRIBERS, (m.get(FAST_ACKS), down)
    assert m["bng_leases_active"] == SUBSCRIBERS
    assert m['bng_ebpf_map_entries{map="subscribers"}'] == SUBSCRIBERS
    slow = _slow_requests(site)
    fast = m.get(FAST_ACKS, 0)
    wait("renewals after the restart", lambda: site.metrics().get(FAST_ACKS, 0) >= fast + SUBSCRIBERS)
    assert _slow_requests(site) == slow
    # The renewals answered while no agent ran moved the stored lease ends: they were taken
    # from the pinned maps at start, not lost.
    lease_time = 4 * 3600
    stored = _stored_expiries(site)
    assert len(stored) == SUBSCRIBERS
    assert all(exp >= killed_at + lease_time for exp in stored.values()), stored


def test_a_dns_change_reaches_the_next_fast_reply(renewing: Site, tmp_path: Path) -> None:
    site = renewing
    wait("a first fast ACK", lambda: site.metrics().get(FAST_ACKS, 0) >= 1)
    pool = site.config[0] / "ippool-residential.yaml"
    pool.write_text(pool.read_text().replace("192.0.2.54", "192.0.2.99"))
    slow = _slow_requests(site)
    assert site.agent is not None
    os.kill(site.agent.pid, signal.SIGHUP)
    wait("the new DNS servers in every client's lease",
          lambda: all(h[-1].get("domain-name-servers") == "192.0.2.53,192.0.2.99"
                      for h in _history(site, tmp_path)), timeout=20)
    assert _slow_requests(site) == slow  # the fast path carried the change


def test_the_agent_leaves_no_fast_path_behind_when_removed(renewing: Site) -> None:
    """Uninstall: `bng fastpath-remove` detaches the program and unpins its maps."""
    site = renewing
    site.stop_agent()
    assert netlink.xdp_program_id(site.access, site.bng) is not None  # stays after exit
    site.lab.run(site.bng, sys.executable, "-m", "bng_operator", "fastpath-remove", "--interface",
                 site.access, "--bpf-dir", str(site.lab.bpf_dir))
    assert netlink.xdp_program_id(site.access, site.bng) is None
    assert not site.lab.bpf_dir.exists()


def test_without_its_agent_the_fast_path_answers_only_within_its_window(
        make_site: Callable[..., Site], tmp_path: Path) -> None:
    """A program left behind by an agent that is gone answers for --fast-path-authority after
    the agent's last heartbeat, then stops extending leases (issue 14, point 2), and an agent
    back gives it authority again."""
    window = 8.0
    site = make_site(subscribers=SUBSCRIBERS)
    site.start_agent("--fast-path-authority", f"{window:.0f}s")
    procs = [clients.dhclient_renewing(ns, "eth0", tmp_path, RENEW_EVERY)
             for ns in site.subscribers]
    try:
        wait("every client bound", lambda: all(_history(site, tmp_path)))
        wait("a first fast ACK", lambda: site.metrics().get(FAST_ACKS, 0) >= 1)
        site.stop_agent(signal.SIGKILL)
        killed = time.monotonic()
        counts = [len(a) for a in _acks(site, tmp_path)]
        wait("renewals answered within the window",
              lambda: all(len(a) > n for n, a in zip(counts, _acks(site, tmp_path), strict=True)),
              timeout=window - 1)
        time.sleep(max(0.0, killed + window + 1 - time.monotonic()))
        after = [len(a) for a in _acks(site, tmp_path)]
        time.sleep(3 * RENEW_EVERY)
        assert [len(a) for a in _acks(site, tmp_path)] == after, "answered past the window"

        site.start_agent("--fast-path-authority", f"{window:.0f}s")
        fast = site.metrics().get(FAST_ACKS, 0)
        wait("fast renewals with an agent back",
              lambda: site.metrics().get(FAST_ACKS, 0) >= fast + SUBSCRIBERS)
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize("size", [262, 270])
def test_unpadded_requests_are_answered_in_the_kernel_agent_up_and_down(
        make_site: Callable[..., Site], tmp_path: Path, size: int) -> None:
    """Native XDP on veth leaves a request's buffer little tailroom; a reply longer than an
    unpadded request (BNG Blaster's IPoE clients send 262..270 bytes) still goes out of the
    kernel, with the agent running and with it gone (issue 14, point 9)."""
    site = make_site(subscribers=1)
    site.start_agent()  # native mode: the default
    ns = site.subscribers[0]
    clients.dhclient(ns, "eth0", tmp_path)
    lease = clients.lease_history(ns, tmp_path)[-1]
    n = 20
    frames = clients.renewal_frames(lease, subscriber_mac(0), site.access_mac(), n, size=size)

    def acks_received(name: str) -> int:
        """Sends the requests; the ACKs that came back, each checked whole."""
        with capture(ns, "eth0", tmp_path / f"{name}.pcap") as path:
            clients.send_frames(ns, "eth0", frames, interval=0.01)
        replies = [dpkt.dhcp.DHCP(p) for p in dhcp_payloads(path) if p[0] == 2]
        assert all(checksums_ok(path))
        for r in replies:
            opts = dict(r.opts)
            assert opts[dpkt.dhcp.DHCP_OPT_MSGTYPE] == bytes([dpkt.dhcp.DHCPACK])
            assert 0x5000 <= r.xid < 0x5000 + n
            assert str(IPv4Address(r.yiaddr)) == lease["fixed-address"]
            assert r.chaddr[:6] == bytes.fromhex(subscriber_mac(0).replace(":", ""))
            assert opts[dpkt.dhcp.DHCP_OPT_SERVER_ID] == \
                IPv4Address(lease["dhcp-server-identifier"]).packed
        return len(replies)

    def passed(reason: str) -> float:
        return site.metrics().get(f'bng_fastpath_passes_total{{reason="{reason}"}}', 0)

    fast, slow, no_room = site.metrics().get(FAST_ACKS, 0), _slow_requests(site), \
        passed("no_room")
    assert acks_received("up") == n
    wait("the kernel's counters read", lambda: site.metrics().get(FAST_ACKS, 0) >= fast + n)
    assert site.metrics()[FAST_ACKS] == fast + n
    assert passed("no_room") == no_room and _slow_requests(site) == slow

    site.stop_agent(signal.SIGKILL)
    assert acks_received("down") == n  # no agent: only the kernel can have answered

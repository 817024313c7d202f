"""Shaping at scale (issue 15): 10,000 bound sessions fed to the shaper the way the agent
feeds it (session events published to a QosFeature: real Session and Lease objects, real
BPF maps, real HTB classes), in a lab namespace. Every session gets its map entry and its
class each way at its policy's rates; a sample of them, given their address in a
namespace of their own, gets exactly its policy's rate down and up (iperf3) and its
packets counted in its own classes and no other; ending 1,000 sessions takes theirs away
and leaves the others shaped (an ended one's download: dropped, no session to send it to).

The time to install is printed, not tested (this machine is shared): only a sanity bound."""

from __future__ import annotations

import ipaddress
import random
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bng_lab.netlab import NetLab, in_netns
from bng_lab.site import INTERNET_LINK, subscriber_mac
from bng_operator import netlink
from bng_operator.agent.config import NodeConfig, PoolConfig, ShapingRates, SubnetConfig
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.qos.feature import QosFeature, ifb_name
from bng_operator.agent.sessions.events import Event, SessionEvents
from bng_operator.agent.sessions.session import EndReason, Identity, Session, State
from bng_operator.api.qospolicy import RateLimit
from bng_operator.metrics import AgentMetrics
from tests.e2e.test_qos import IDEAL, TOLERANCE, iperf_each

SESSIONS = 10_000
ENDED = 1_000
# Sanity bounds, in seconds, for installing all of them and for ending ENDED. Here a quiet
# run takes 45-70 and 7-15: the kernel's cost of a new class grows with the classes there
# and with every tc block of the host, so other runs that shape (bench/qos.py) slow it 2-3x.
INSTALL_BOUND, END_BOUND = 300.0, 120.0
SUBNET = ipaddress.ip_network("100.64.64.0/18")  # room for 16,382 subscribers
GATEWAY = f"{SUBNET[1]}/{SUBNET.prefixlen}"
ACCESS = "access0"
# (download, upload) of each class's policy: sessions take them in turn, so a sample
# that gets its own rates was classified as itself, not as a neighbour.
POLICIES = {"c20": ("20Mbit", "5Mbit"), "c10": ("10Mbit", "8Mbit"),
            "c5": ("5Mbit", "20Mbit"), "c15": ("15Mbit", "10Mbit")}
CLASSES = list(POLICIES)
SECONDS = 4  # of iperf3, after a first one omitted (slow start)
PING_COUNT, PING_PAYLOAD = 3, 1000
PING_FRAME = 14 + 20 + 8 + PING_PAYLOAD  # what HTB counts of an echo (no FCS)
# The sampled sessions: one of each class, and the last one bound (it ends later).
SAMPLE = [random.Random(15 + c).randrange(c, SESSIONS - 1, len(CLASSES))
          for c in range(len(CLASSES))] + [SESSIONS - 1]


def _rates(policy: str, down: str, up: str) -> ShapingRates:
    """As the agent's config makes them from a QoSPolicy (default bursts)."""
    d, u = RateLimit(rate=down), RateLimit(rate=up)
    return ShapingRates(policy, d.rate_bps, d.burst_bytes, u.rate_bps, u.burst_bytes, down, up)


def _session(i: int) -> Session:
    """Subscriber ``i``'s session, bound as the DHCP server binds one."""
    mac = subscriber_mac(i)
    cls = CLASSES[i % len(CLASSES)]
    now = time.time()
    lease = Lease(address=int(SUBNET[2 + i]), identity=f"mac:{mac}", mac=mac, client_id=None,
                  circuit_id=None, remote_id=None, pool="scale", subscriber_class=cls,
                  expires=now + 3600, hostname=None, bound_at=now, lease_seconds=3600,
                  interface=ACCESS)
    s = Session(lease.identity, Identity(mac), pool="scale", subscriber_class=cls)
    s.move(State.BOUND)
    s.lease, s.address = lease, lease.address
    return s


def _classes(lab: NetLab, ns: str, dev: str) -> dict[int, tuple[str, str, int]]:
    """minor -> (rate, ceil, bytes sent) of each HTB class on ``dev``, as tc shows them."""
    out = lab.run(ns, "tc", "-s", "class", "show", "dev", dev).stdout
    return {int(m[1], 16): (m[2], m[3], int(m[4])) for m in re.finditer(
        r"class htb 1:([0-9a-f]+) .*? rate (\S+) ceil (\S+) .*\n Sent (\d+) bytes", out)}


@dataclass
class Shaper:
    lab: NetLab
    bng: str
    inet: str
    subscribers: list[str]  # namespaces; subscriber k holds SAMPLE[k]'s address
    feature: QosFeature
    metrics: AgentMetrics
    events: SessionEvents
    errors: list[str]

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def wait_shaped(self, n: int, timeout: float) -> list[tuple[float, float]]:
        """Until ``n`` sessions are shaped; (seconds, shaped) as it went."""
        t0 = time.monotonic()
        progress = []
        while (shaped := self.value("bng_qos_subscribers_shaped")) != n:
            progress.append((time.monotonic() - t0, shaped))
            assert time.monotonic() - t0 < timeout, \
                f"{shaped:.0f} of {n} sessions shaped after {timeout:.0f} s: {progress[-5:]}"
            time.sleep(0.25)
        progress.append((time.monotonic() - t0, n))
        return progress

    def both(self) -> tuple[dict[int, tuple[str, str, int]], dict[int, tuple[str, str, int]]]:
        """The classes on the access interface (download) and on its IFB (upload)."""
        return (_classes(self.lab, self.bng, ACCESS),
                _classes(self.lab, self.bng, ifb_name(ACCESS)))


@pytest.fixture
def shaper(netlab: NetLab) -> Iterator[Shaper]:
    """The bng namespace (access0 behind an access switch, an internet behind uplink0),
    one namespace per sampled subscriber on the switch, and a QosFeature shaping access0,
    its tc worker in the bng namespace, its maps pinned under the lab's bpffs."""
    lab = netlab
    bng, sw, inet = lab.namespace("bng"), lab.namespace("sw"), lab.namespace("inet")
    lab.link(sw, "up0", bng, ACCESS)
    netlink.add_address(ACCESS, GATEWAY, bng)
    bng_side, inet_side = INTERNET_LINK
    lab.link(bng, "uplink0", inet, "eth0", bng_side, inet_side)
    lab.run(inet, "ip", "route", "add", str(SUBNET), "via", bng_side.split("/")[0])
    lab.run(bng, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    subscribers = []
    for k, i in enumerate(SAMPLE):
        ns = lab.namespace(f"s{k}")
        lab.link(sw, f"p{k}", ns, "eth0", addr_b=f"{SUBNET[2 + i]}/{SUBNET.prefixlen}",
                 mac_b=subscriber_mac(i))
        lab.run(ns, "ip", "route", "add", "default", "via", str(SUBNET[1]))
        subscribers.append(ns)
    lab.bridge(sw, "br0", ["up0", *(f"p{k}" for k in range(len(SAMPLE)))])

    # the pool's subnet: the access data path routes it without a neighbour per subscriber
    subnet = SubnetConfig(SUBNET, int(SUBNET[0]), int(SUBNET[-1]), SUBNET[1], {})
    pool = PoolConfig("scale", None, (), frozenset(), frozenset(), (subnet,))  # type: ignore[arg-type]
    config = NodeConfig("edge-1", (ACCESS,), 16_384, {"scale": pool}, (),
                        shaping={c: _rates(f"scale-{c}", *r) for c, r in POLICIES.items()})
    metrics = AgentMetrics()
    feature = QosFeature(metrics, lab.bpf_dir, config,
                         leases=lambda: [])  # for warm() and reloads: not used here
    errors: list[str] = []
    events = SessionEvents(on_error=errors.append)
    events.subscribe(feature)
    assert feature.start(), "shaping did not load"
    try:
        # tc runs on the feature's one worker thread, made on its first job: made here,
        # it lives in the bng namespace (a thread keeps the namespace it was made in).
        with in_netns(bng):
            feature.attach([ACCESS])
        netlink.interface_info(ifb_name(ACCESS), bng)  # the worker made the IFB there
        yield Shaper(lab, bng, inet, subscribers, feature, metrics, events, errors)
    finally:
        feature._work.shutdown(cancel_futures=True)  # a failed run: drop what is queued
        feature.stop()


def _iperf(s: Shaper, reverse: bool) -> list[float]:
    """iperf3 TCP from every sampled subscriber at once (``reverse``: download)."""
    return iperf_each(s.lab, s.subscribers, SECONDS, reverse)


def _minors(s: Shaper) -> dict[int, int]:
    """address -> the minor of its class under the HTB root 1:, of every session in the
    map (its class id may be written with the root's major or without)."""
    assert s.feature.path is not None
    out = {}
    for address, cid in s.feature.path.installed().items():
        assert cid >> 16 in (0, 1), f"{address}'s class {cid:x} is not under the root"
        out[address] = cid & 0xFFFF
    return out


def _pings(s: Shaper, samples: list[int], answered: bool = True,
           ) -> tuple[dict[int, int], dict[int, int]]:
    """Ping each of ``samples`` (indexes into SAMPLE) from the internet, ``answered`` or
    not; the bytes each class counted meanwhile, download and upload, for every class that
    counted any."""
    before = s.both()
    for k in samples:
        r = s.lab.run(s.inet, "ping", "-c", str(PING_COUNT), "-i", "0.2", "-W", "1", "-s",
                      str(PING_PAYLOAD), str(SUBNET[2 + SAMPLE[k]]), check=False)
        assert (r.returncode == 0) == answered, r.stdout
    after = s.both()
    moved: list[dict[int, int]] = []
    for b, a in zip(before, after, strict=True):
        moved.append({m: a[m][2] - b.get(m, ("", "", 0))[2] for m in a
                      if a[m][2] != b.get(m, ("", "", 0))[2]})
    return moved[0], moved[1]


@pytest.mark.timeout(INSTALL_BOUND + END_BOUND + 180)  # 75-110 s when the host is quiet
def test_ten_thousand_sessions_are_shaped_and_ended(shaper: Shaper) -> None:
    s = shaper
    sessions = [_session(i) for i in range(SESSIONS)]

    # --- bind them all, as the DHCP server's events do -----------------------------------
    t0 = time.monotonic()
    s.events.publish(Event("bound", x) for x in sessions)
    progress = s.wait_shaped(SESSIONS, INSTALL_BOUND)
    took = time.monotonic() - t0
    steps = [f"{t:.0f}s:{n:.0f}" for t, n in progress[::max(1, len(progress) // 8)]]
    count = s.value("bng_qos_install_seconds_count")
    print(f"\n{SESSIONS} sessions shaped in {took:.1f} s: {took / SESSIONS * 1e3:.2f} ms/session "
          f"({steps}); the feature's own measure (classes + map entry): "
          f"{s.value('bng_qos_install_seconds_sum') / count * 1e3:.2f} ms/session")
    assert count == SESSIONS
    assert not s.errors and s.value("bng_qos_errors_total", op="install") == 0

    # every session in the map, in a class of its own each way at its policy's rates
    assert s.feature.path is not None
    minor_of = _minors(s)
    assert set(minor_of) == {x.address for x in sessions}
    assert len(set(minor_of.values())) == SESSIONS and 0 not in minor_of.values()
    down, up = s.both()
    assert set(down) == set(up) == set(minor_of.values())
    for x in sessions:
        d, u = POLICIES[x.subscriber_class]
        m = minor_of[x.address]
        assert down[m][:2] == (d, d) and up[m][:2] == (u, u), (x.address, down[m], up[m])

    # --- a sample's packets are counted in its classes, and in no other -----------------
    everyone = list(range(len(SAMPLE)))
    want = {minor_of[sessions[SAMPLE[k]].address]: PING_COUNT * PING_FRAME for k in everyone}
    assert _pings(s, everyone) == (want, want)

    # --- and its traffic gets its policy's rates, down and up ----------------------------
    servers = [s.lab.popen(s.inet, "iperf3", "-s", "-p", str(5201 + k), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) for k in everyone]
    try:
        time.sleep(0.5)
        for reverse, which in ((True, 0), (False, 1)):
            got = _iperf(s, reverse)
            rates = [POLICIES[sessions[i].subscriber_class][which] for i in SAMPLE]
            ideal = [RateLimit(rate=r).rate_bps * IDEAL for r in rates]
            print("down" if reverse else "up", [f"{g / 1e6:.2f}/{i / 1e6:.2f}"
                                                for g, i in zip(got, ideal, strict=True)])
            for g, i, r in zip(got, ideal, rates, strict=True):
                assert abs(g / i - 1) <= TOLERANCE, \
                    f"{'down' if reverse else 'up'} at {r}: {g / 1e6:.2f} Mbit/s against " \
                    f"an ideal of {i / 1e6:.2f}"
    finally:
        for p in servers:
            p.kill()
            p.wait()

    # --- end 1,000 (the last sample among them): their classes and entries go ------------
    others = sorted(set(range(SESSIONS)) - set(SAMPLE))
    ending = [*random.Random(15).sample(others, ENDED - 1), SAMPLE[-1]]
    for i in ending:
        sessions[i].move(State.ENDED, EndReason.RELEASED)
    t1 = time.monotonic()
    s.events.publish(Event("ended", sessions[i]) for i in ending)
    s.wait_shaped(SESSIONS - ENDED, END_BOUND)
    print(f"{ENDED} sessions ended in {time.monotonic() - t1:.1f} s")
    assert not s.errors and s.value("bng_qos_errors_total", op="remove") == 0
    gone = {sessions[i].address for i in ending}
    kept = {a: m for a, m in minor_of.items() if a not in gone}
    assert _minors(s) == kept
    down, up = s.both()
    assert set(down) == set(up) == set(kept.values())

    # the kept samples are counted as before; the ended one's address has no session now:
    # its download is dropped (no MAC to send it to), counted, and in no class
    want = {minor_of[sessions[SAMPLE[k]].address]: PING_COUNT * PING_FRAME
            for k in everyone[:-1]}
    assert _pings(s, everyone[:-1]) == (want, want)
    dropped = s.feature.path.stats()["down_no_session"]
    assert _pings(s, everyone[-1:], answered=False) == ({}, {})
    assert s.feature.path.stats()["down_no_session"] - dropped == PING_COUNT

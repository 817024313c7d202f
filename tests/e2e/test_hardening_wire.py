"""Issue 14's pool-starvation and option 82 trust protections, over the wire: real frames from
subscriber namespaces, through the lab's access switch (and access node), to the agent."""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.messages import relay82, request
from bng_lab.netlab import in_netns
from bng_lab.port import Port, Reply, bootreply, client_frame, dora, port
from bng_lab.site import Site
from bng_operator.agent.dhcp.codec import MessageType, Opt, encode
from tests.e2e.conftest import DEFAULT_CLASS, wait

RESIDENTIAL = ipaddress.ip_network("100.64.0.0/20")
BUSINESS = ipaddress.ip_network("198.51.100.0/24")


# --- raw DHCP from a subscriber's namespace ------------------------------------------------------


def random_mac(rng: random.Random) -> bytes:
    """A random unicast, locally administered MAC."""
    b = bytearray(rng.randbytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return bytes(b)


# --- issue 14, point 3: one access port cannot starve the pool ----------------------------------

CAP = 12  # maxLeasesPerCircuit of the attacker's class
STARVE_POOL = """apiVersion: bng.dev/v1alpha1
kind: IPPool
metadata: {name: residential}
spec:
  subnets:
    - cidr: 100.64.0.0/26
      gateway: 100.64.0.1
      exclude: [{start: 100.64.0.1, end: 100.64.0.15}]
  blockSize: 26
  leaseTime: 1h
  dns: [192.0.2.53]
"""
# A port of many devices (a shared building's line): one circuit-id, a lease per MAC. Its rate
# limit is high so that only the cap holds the flood back (the rate limit has tests of its own).
SHARED_PORT_CLASS = f"""{DEFAULT_CLASS}
---
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {{name: shared-port}}
spec:
  priority: 200
  match: {{circuitId: "^mdu-"}}
  identity: mac
  pool: residential
  limits: {{allocationsPerMinute: 100000, maxLeasesPerCircuit: {CAP}}}
"""
ATTACKER_LINE = ("mdu-olt1-1/1/1", "")
FLOOD = 20_000  # DISCOVERs
FLOOD_RATE = 3000  # frames/s: what the lab's access node (one Python process) mostly passes
BOUND = 5  # leases the attacker takes first, to DECLINE
DECLINES_PER_MINUTE = 2  # per circuit-id (issue 14)


class Flood(threading.Thread):
    """The attacker: DISCOVERs from random MACs, and every DECLINE_EVERY-th frame a DECLINE
    (for one of ``declines``, in turn), at ``rate`` frames/s, until ``stop`` is set and at
    least ``at_least`` DISCOVERs went out."""

    DECLINE_EVERY = 10

    def __init__(self, out: Port, at_least: int, rate: int, declines: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.out, self.at_least, self.rate, self.declines = out, at_least, rate, declines
        self.stop = threading.Event()
        self.discovers = self.declines_sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(14)
        start, n = time.monotonic(), 0
        try:
            while not (self.stop.is_set() and self.discovers >= self.at_least):
                if n % self.DECLINE_EVERY == self.DECLINE_EVERY - 1 and self.declines:
                    self.out.send(self.declines[self.declines_sent % len(self.declines)])
                    self.declines_sent += 1
                else:
                    mac = random_mac(rng)
                    self.out.send(client_frame(MessageType.DISCOVER, mac, rng.getrandbits(32)))
                    self.discovers += 1
                n += 1
                if n % 50 == 0:  # paced in bursts of 50
                    time.sleep(max(0.0, start + n / self.rate - time.monotonic()))
        except BaseException as e:  # reported by the test, not lost in the thread
            self.error = e


class Sampler(threading.Thread):
    """The agent's metrics, read every 0.3 s until ``stop`` is set."""

    def __init__(self, site: Site) -> None:
        super().__init__(daemon=True)
        self.site, self.stop = site, threading.Event()
        self.samples: list[dict[str, float]] = []

    def run(self) -> None:
        while not self.stop.wait(0.3):
            self.samples.append(self.site.metrics())


def _discovers(m: dict[str, float]) -> float:
    """DISCOVERs the agent answered or dropped, by either path."""
    return sum(v for k, v in m.items() if k.startswith("bng_dhcp_requests_total{")
               and 'type="discover"' in k)


def _free(m: dict[str, float]) -> float:
    return m['bng_pool_addresses{pool="residential",state="free"}']


def test_one_port_flooding_discovers_and_declines_cannot_starve_the_pool(
        make_site: Callable[..., Site], tmp_path: Path) -> None:
    """Issue 14, point 3: from one access port (one circuit-id), 20,000 DISCOVERs with random
    MACs and a DECLINE flood. The attacker never holds more than its cap (offers, leases and
    declined addresses), the pool keeps size - cap free for everyone else, the DECLINEs take
    at most their rate's worth of addresses, and subscribers on the other ports are served
    while the flood goes on."""
    site = make_site(subscribers=3, replace={"ippool-residential.yaml": STARVE_POOL},
                     extra=SHARED_PORT_CLASS,
                     option82={0: ATTACKER_LINE, 1: ("olt1/1/2", "res-1002"),
                               2: ("olt1/1/3", "res-1003")})
    site.start_agent()
    m = site.metrics()
    size = _free(m)
    assert size == 47 and size > CAP + 2  # 100.64.0.16 - .62: the cap is what keeps it

    with port(site.subscribers[0]) as attacker:
        # Leases of the attacker's own, for its DECLINEs to give back as "in use elsewhere".
        mine = []
        for i in range(BOUND):
            mac = bytes.fromhex(f"0200000a{i:04x}")
            offer, ack = dora(attacker, mac, 0x1400 + 2 * i)
            assert ack is not None and ack.kind == MessageType.ACK, (i, offer, ack)
            mine.append((mac, str(ack.yiaddr)))
        declines = [client_frame(MessageType.DECLINE, mac, 0x1500 + i, requested=addr,
                                 server_id="100.64.0.1") for i, (mac, addr) in enumerate(mine)]
        # ... and forged ones, for every address of the pool, from MACs that hold none.
        declines += [client_frame(MessageType.DECLINE, bytes.fromhex(f"0200000b{a:04x}"), a,
                                  requested=str(IPv4Address(int(RESIDENTIAL[0]) + a)),
                                  server_id="100.64.0.1") for a in range(16, 63)]

        flood = Flood(attacker, FLOOD, FLOOD_RATE, declines)
        sampler = Sampler(site)
        flood_started = time.monotonic()
        flood.start()
        sampler.start()
        try:
            wait("the flood at the agent", lambda: _discovers(site.metrics()) >= 2 * size)
            # The other ports, while the flood goes on (it runs until they are done).
            served = [clients.udhcpc(ns, "eth0", tmp_path, timeout=10)
                      for ns in site.subscribers[1:]]
            assert flood.is_alive(), flood.error
            # A round of forged DECLINEs more, now that every address of theirs is bound.
            after = flood.declines_sent
            wait("a round of DECLINEs", lambda: flood.declines_sent >= after + len(declines))
        finally:
            flood.stop.set()
            flood.join(timeout=60)
            sampler.stop.set()
            sampler.join(timeout=30)
        assert flood.error is None, flood.error
        m = site.metrics()
        samples = [*sampler.samples, m]

    # The other ports were served, from the residential pool.
    assert len({lease.address for lease in served}) == 2
    assert all(ipaddress.ip_address(lease.address) in RESIDENTIAL for lease in served)
    # The flood reached the agent, far beyond what it would take to drain the pool.
    discovers = _discovers(m)
    assert discovers >= 10 * size, (discovers, flood.discovers)
    assert m['bng_dhcp_drops_total{reason="circuit_limit"}'] > 0  # the attacker met its cap
    # The pool kept size - cap free (less the two other subscribers' leases) all along.
    assert min(_free(s) for s in samples) >= size - CAP - 2, [_free(s) for s in samples]

    # At the end, what the attacker holds: the store's leases and declines, and its offers
    # (what is neither free nor the other subscribers').
    db = sqlite3.connect(site.state_dir / f"leases-{site.node}.sqlite")
    try:
        bound = dict(db.execute("SELECT circuit_id, count(*) FROM leases WHERE state = 'bound' "
                                "GROUP BY circuit_id"))
        declined = db.execute("SELECT count(*) FROM declined").fetchone()[0]
    finally:
        db.close()
    assert bound.get("olt1/1/2") == 1 and bound.get("olt1/1/3") == 1, bound
    holds = size - _free(m) - 2
    assert holds <= CAP, (holds, bound, declined)
    # DECLINEs: the forged ones took nothing (the other subscribers kept their leases, above),
    # and the attacker's own were taken at DECLINES_PER_MINUTE, not as fast as it sent them.
    elapsed_min = (time.monotonic() - flood_started) / 60
    allowed = DECLINES_PER_MINUTE + int(elapsed_min * DECLINES_PER_MINUTE)
    assert flood.declines_sent >= 10 * len(declines)
    assert declined == m['bng_pool_addresses{pool="residential",state="declined"}']
    assert 1 <= declined <= allowed < BOUND, (declined, allowed)
    assert bound.get(ATTACKER_LINE[0], 0) == BOUND - declined
    assert m['bng_dhcp_drops_total{reason="decline_rate_limited"}'] > 0
    assert m['bng_dhcp_drops_total{reason="decline_unknown_lease"}'] > 0


# --- issue 14, point 4: option 82 is believed only where it is trusted ---------------------------

# access0 trusts no option 82 (a subscriber is attached to it directly); the relay's does.
UNTRUSTING_NODE = """apiVersion: bng.dev/v1alpha1
kind: BNGNode
metadata: {{name: edge-1}}
spec:
  nodeName: edge-1
  interfaces:
    access: [access0]
    uplink: uplink0
    option82:
      trusted: []
      trustedRelays: [198.51.100.0/24]
      untrusted: {untrusted}
"""
RESERVED_LINE = relay82("biz-olt1-1/1/7")  # config/samples/subscriber-reserved.yaml: acme-hq
RESERVED = "198.51.100.10"
RELAY, SERVER = "198.51.100.2", "198.51.100.1"


class Relay:
    """The lab's relay namespace as a DHCP relay agent: relayed requests with giaddr and its
    option 82, from and to UDP port 67."""

    def __init__(self, ns: str) -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((RELAY, 67))

    def close(self) -> None:
        self.sock.close()

    def exchange(self, msg_kind: MessageType, chaddr: str, xid: int, option82: bytes,
                 requested: str | None = None) -> Reply | None:
        msg = request(msg_kind, chaddr, xid=xid, giaddr=RELAY, requested=requested,
                      server_id=SERVER if requested else None)
        msg.options[Opt.RELAY_AGENT] = option82
        payload = encode(msg, [Opt.MESSAGE_TYPE, Opt.REQUESTED_IP, Opt.SERVER_ID,
                               Opt.RELAY_AGENT])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.sock.sendto(payload, (SERVER, 67))
            while select.select([self.sock], [], [], 1.0)[0]:
                r = bootreply(self.sock.recv(4096))
                if r is not None and r.xid == xid:
                    return r
        return None


def _count(site: Site, key: str) -> Callable[[], float]:
    return lambda: site.metrics().get(key, 0.0)


@pytest.mark.parametrize("untrusted", ["drop", "strip"])
def test_a_forged_circuit_id_on_an_untrusted_port_gets_no_business_address(
        make_site: Callable[..., Site], untrusted: str) -> None:
    """Issue 14, point 4: a subscriber attached directly to an access interface that trusts no
    option 82 sends the business customer's circuit-id (its reservation, 198.51.100.10) in
    option 82 of its own. First with no lease of that line anywhere (the slow path decides),
    then after the real customer, behind a trusted relay, got its reservation, which puts the
    line in the fast path's map, where the forged request finds it: the XDP program must
    hand it to the slow path rather than answer. Either way: ``drop`` sends no reply and
    counts it, ``strip`` serves the request as if it had no option 82 (residential)."""
    site = make_site(subscribers=1, relay=True,
                     replace={"bngnode-standalone.yaml": UNTRUSTING_NODE.format(untrusted=untrusted)})
    site.start_agent()
    drops = _count(site, 'bng_dhcp_drops_total{reason="untrusted_option82"}')
    stripped = _count(site, "bng_dhcp_option82_stripped_total")
    xdp_passed = _count(site, 'bng_fastpath_passes_total{reason="untrusted_82"}')

    def fast() -> float:  # requests the XDP program answered
        return sum(v for k, v in site.metrics().items()
                   if k.startswith("bng_dhcp_requests_total{") and 'path="fast"' in k)

    cpe = bytes.fromhex("020000000e07")  # the forger's CPE
    with port(site.subscribers[0]) as forger:
        def forge(xid: int) -> tuple[Reply | None, Reply | None]:
            return dora(forger, cpe, xid, option82=RESERVED_LINE)

        # 1. No lease of the line yet: the XDP program misses, the slow path decides.
        offer, ack = forge(0x8201)
        if untrusted == "drop":
            assert (offer, ack) == (None, None)
            assert drops() >= 1 and stripped() == 0
        else:
            assert offer is not None and ack is not None and ack.kind == MessageType.ACK
            assert ack.yiaddr in RESIDENTIAL
            assert stripped() >= 2 and drops() == 0
        own = ack.yiaddr if ack is not None else None

        # 2. The real customer, behind the trusted relay, gets its reservation.
        relay = Relay(site.relay)
        try:
            o = relay.exchange(MessageType.DISCOVER, "02:00:00:00:ac:01", 0x8210, RESERVED_LINE)
            assert o is not None and str(o.yiaddr) == RESERVED, o
            a = relay.exchange(MessageType.REQUEST, "02:00:00:00:ac:01", 0x8211, RESERVED_LINE,
                               requested=RESERVED)
            assert a is not None and a.kind == MessageType.ACK and str(a.yiaddr) == RESERVED, a
        finally:
            relay.close()
        wait("the line in the fast path's map",
              lambda: site.metrics().get('bng_ebpf_map_entries{map="circuits"}', 0) == 1)

        # 3. The forged line again, and a REQUEST for the reserved address itself: now the
        #    XDP program finds the line's lease, and must leave the request to the slow path.
        passed, fast_before, drops_before = xdp_passed(), fast(), drops()
        offer, ack = forge(0x8221)
        nak = forger.exchange(client_frame(MessageType.REQUEST, cpe, 0x8231, requested=RESERVED,
                                           server_id=SERVER, option82=RESERVED_LINE), 0x8231,
                              timeout=3)
        forger.drain(0.5)
        # Nothing the forger was sent carried a business address.
        assert not [r for r in forger.seen if r.yiaddr in BUSINESS], forger.seen
        if untrusted == "drop":
            assert (offer, ack, nak) == (None, None, None)
            wait("the drops counted", lambda: drops() >= drops_before + 2)
        else:
            assert ack is not None and ack.kind == MessageType.ACK and ack.yiaddr == own
            assert nak is not None and nak.kind == MessageType.NAK
        wait("the XDP program's passes counted", lambda: xdp_passed() >= passed + 2)
        assert fast() == fast_before  # the fast path answered none of them

    db = sqlite3.connect(site.state_dir / f"leases-{site.node}.sqlite")
    try:
        leases = {IPv4Address(a): (mac, pool) for a, mac, pool in db.execute(
            "SELECT address, mac, pool FROM leases WHERE state = 'bound'")}
    finally:
        db.close()
    assert leases[IPv4Address(RESERVED)] == ("02:00:00:00:ac:01", "business")
    forged = {a: p for a, (mac, p) in leases.items() if mac == cpe.hex(":")}
    assert forged == ({} if untrusted == "drop" else {own: "residential"}), leases

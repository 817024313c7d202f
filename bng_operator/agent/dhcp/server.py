"""The DHCPv4 server state machine (RFC 2131): one request in, at most one reply out.

``DhcpServer.handle`` is synchronous and does no I/O. It updates the in-memory state, queues
lease writes on the store, and returns an ``Outcome``; the caller sends the reply only after
``store.commit()`` completes when ``outcome.commit`` is set. That keeps the lease durable
before its ACK and lets many requests share one fsync.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Protocol

from bng_operator.agent.config import NodeConfig, Reservation, SubnetConfig
from bng_operator.agent.dhcp.allocator import PoolAllocator
from bng_operator.agent.dhcp.classify import (
    Classified,
    classify,
    identity_of,
    option82_trusted,
    served_from,
)
from bng_operator.agent.dhcp.codec import BOOTREPLY, ZERO, Message, MessageType, Opt
from bng_operator.agent.dhcp.leases import Decline, Lease
from bng_operator.agent.dhcp.ratelimit import TokenBuckets
from bng_operator.agent.sessions.events import Event
from bng_operator.agent.sessions.policy import policy_changed
from bng_operator.agent.sessions.session import Change, EndReason, Identity, Session, State

log = logging.getLogger("bng.dhcp")

OFFER_HOLD = 10.0  # seconds an offered address stays reserved for the client
# Seconds a committed offer's address (commitAtOffer) stays taken after the offer ended
# unanswered and its fast-path entry went: a REQUEST the kernel ACKed just before the entry
# went is still reported (the refresh log) and binds it.
WITHDRAW_GRACE = 2.0
# How much later than a committed offer's end the kernel's end must be to say it ACKed: an
# ACK moves it by the lease time less the hold, while an entry's end read back from the map
# differs from the stored one by up to a tick (jiffies). The refresh log's own threshold.
ACK_MOVES_END = 1.0
# Seconds the address of a session being authorised stays held: longer than an authoriser
# that fails over between servers (RADIUS: timeout x tries x servers) takes to decide.
AUTHORISE_HOLD = 120.0
# Addresses one circuit-id (option 82) may hold at once, leases, offers and declines together,
# when its class sets no limits.maxLeasesPerCircuit: one port cannot drain a pool.
DEFAULT_CIRCUIT_CAP = 32
DECLINES_PER_MINUTE = 2  # per circuit-id (else MAC): each DECLINE holds an address 10 min
DECLINE_HOLD = 600.0  # seconds a declined address is kept out of use
EXHAUSTION_LOG_EVERY = 60.0
# The subnet's options go in every OFFER and ACK, whatever option 55 asks (RFC 2131 §4.3.1
# lets a server send options not asked for). The XDP fast path writes this same set, so a
# client gets the same answer from either path.
SUBNET_OPTIONS = [Opt.SUBNET_MASK, Opt.ROUTER, Opt.BROADCAST, Opt.DNS, Opt.DOMAIN_NAME]
_LEASE_ORDER = [Opt.LEASE_TIME, Opt.RENEWAL_TIME, Opt.REBINDING_TIME]
_TYPE_BYTES = {t: bytes([t]) for t in MessageType}
_LABELS = {MessageType.OFFER: "offer", MessageType.NAK: "nak"}
GRANTED = "the authoriser's grant"  # the name of a reservation made of a session's Grant


class Store(Protocol):
    def put(self, lease: Lease) -> None: ...
    def delete(self, address: int) -> None: ...
    def put_decline(self, d: Decline) -> None: ...
    def delete_decline(self, address: int) -> None: ...


@dataclass(frozen=True)
class Context:
    """Where a request came from, as the transport saw it."""

    interface: str
    server_addresses: tuple[IPv4Address, ...]  # the receiving interface's addresses
    vlans: tuple[int, ...] = ()
    unicast: bool = False  # sent to our address (RENEWING) rather than broadcast
    tags: bytes = b""  # the VLAN tags as they came (TPID, TCI), outermost first


@dataclass
class Outcome:
    """What handling a request produced. ``reply`` is None for a drop or a silent success."""

    kind: str  # metric label: offer, ack, nak, release, decline, inform, drop
    reply: Message | None = None
    reply_order: list[int] = field(default_factory=list)
    drop: str | None = None  # reason, for bng_dhcp_drops_total
    commit: bool = False  # send only after the lease store committed
    server_id: IPv4Address = ZERO  # the reply's source address (option 54)
    # kind "authorize": the session whose decision waits for the authoriser; the caller
    # awaits it, then calls ``authorised`` or ``rejected``.
    session: Session | None = None
    stripped: bool = False  # option 82 came from an untrusted place and was ignored


@dataclass
class Offer:
    address: int
    pool: str
    expires: float
    # commitAtOffer: the offer as committed, a lease in state "offered" ending at the hold
    # (the fast path ACKs its REQUEST); None: held in memory only
    lease: Lease | None = None


class DhcpServer:
    def __init__(self, config: NodeConfig, store: Store,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.config = config
        self.pools: dict[str, PoolAllocator] = {}
        self.by_identity: dict[str, Lease] = {}
        self.by_address: dict[int, Lease] = {}
        self.offers: dict[str, Offer] = {}
        self.offered: dict[int, str] = {}  # address -> identity holding the offer
        # identity -> the address its last lease had, while that address is still free
        self.previous: OrderedDict[str, int] = OrderedDict()
        self.previous_owner: dict[int, str] = {}
        self.used: dict[str, int] = dict.fromkeys(config.pools, 0)
        self._expiry: list[tuple[float, int]] = []
        self._offer_expiry: list[tuple[float, str]] = []
        # committed offers that ended unanswered, by address, until WITHDRAW_GRACE passed
        self._withdrawn: dict[int, Lease] = {}
        self._withdrawn_expiry: list[tuple[float, int]] = []
        self._buckets = TokenBuckets()
        # circuit-id -> the addresses it holds (bound, offered, declined), and back
        self._holds: dict[str, set[int]] = {}
        self._holder: dict[int, str] = {}
        self._exhausted_logged: dict[str, float] = {}
        # Live sessions (offered, authorizing, bound) by identity key.
        self.sessions: dict[str, Session] = {}
        # Session events not yet taken by the caller (``take_events``). Never a plain renewal:
        # what features hear of follows subscriber state, not DHCP traffic.
        self._events: list[Event] = []
        # Whether a session must be authorised before it is offered or bound (the
        # authoriser's ``applies``); None: no authoriser, every decision commits at once.
        self.needs_authorisation: Callable[[Session], bool] | None = None
        self._build_pools(config)

    def _build_pools(self, config: NodeConfig) -> None:
        self.pools = {name: PoolAllocator.build(name, p.blocks, set(p.never), p.reserved)
                      for name, p in config.pools.items()}

    # --- start-up and reconfiguration ----------------------------------------------------------

    def reconfigure(self, config: NodeConfig) -> list[Lease]:
        """Serve ``config`` from now on, keeping every lease whose address it still covers.

        New lease times and options apply from each client's next request; a lease whose pool
        is gone stays until it ends, and its client is moved on its next request."""
        leases = list(self.by_address.values())
        declines = [Decline(a, p.name, until) for p in self.pools.values()
                    for a, until in p.declined.items()]
        for identity in list(self.offers):
            self._end_offer(identity, ending=EndReason.MOVED)
        changed = [s for lease in leases if policy_changed(lease, self.config, config)
                   and (s := self.sessions.get(lease.identity)) is not None]
        self.config = config
        self._build_pools(config)
        self.by_identity.clear()
        self.by_address.clear()
        self._holds.clear()
        self._holder.clear()
        self.used = dict.fromkeys(config.pools, 0)
        orphans = self.load(leases, declines)
        for addr, w in self._withdrawn.items():  # still taken until their grace passed
            if w.pool in self.pools:
                self.pools[w.pool].take(addr)
        for lease in orphans:  # the client is moved on its next request; no event
            self.sessions.pop(lease.identity, None)
        for s in changed:
            s.reclassify = True
            self._events.append(Event("changed", s, Change.POLICY, s.lease))
        return orphans


    def load(self, leases: list[Lease], declines: list[Decline]) -> list[Lease]:
        """Re-take the addresses of stored leases. Returns the leases whose pool is gone."""
        orphans = []
        for d in declines:
            if d.pool in self.pools:
                self.pools[d.pool].decline(d.address, d.until)
        for lease in leases:
            pool = self.pools.get(lease.pool)
            if lease.state == "offered":
                if pool is not None and pool.take(lease.address):
                    self._restore_offer(lease)
                continue
            if lease.state != "bound":
                self._remember(lease.identity, lease.address)
                continue
            # never: a static address (RADIUS Framed-IP-Address) from an excluded range
            if pool is None or not (pool.take(lease.address) or lease.address in pool.never):
                orphans.append(lease)
                continue
            self._bind(lease)
            s = self.sessions.get(lease.identity)
            if s is None:  # restored: bound since before this agent (a reload keeps its own)
                s = self.sessions[lease.identity] = Session(lease.identity, _identity_of(lease),
                                                            authorised=True)
                s.move(State.BOUND)
            self._attach(s, lease)
        return orphans

    def _restore_offer(self, lease: Lease) -> None:
        """A committed offer from the store. The fast path may have ACKed its REQUEST before
        the agent stopped, and a node that restarted has no map to say so: its address is
        held until the longest lease such an ACK gave (its hold's end plus the lease time),
        and the client's next REQUEST binds it. An ACK the map kept binds it at once
        (``extend``, when the fast path adopts its maps)."""
        o = Offer(lease.address, lease.pool, lease.expires + lease.lease_seconds, lease)
        self.offers[lease.identity] = o
        self.offered[lease.address] = lease.identity
        self._hold(lease.circuit_id, lease.address)
        heapq.heappush(self._offer_expiry, (o.expires, lease.identity))

    # --- the state machine -----------------------------------------------------------------------

    def handle(self, msg: Message, ctx: Context) -> Outcome:
        stripped = False
        if msg.relay_agent is not None and \
                not option82_trusted(self.config, ctx.interface, msg.giaddr):
            if self.config.option82_untrusted != "strip":
                return Outcome("drop", drop="untrusted_option82")
            msg.strip_relay_agent()
            stripped = True
        out = self._handle(msg, ctx)
        out.stripped = stripped
        return out

    def _handle(self, msg: Message, ctx: Context) -> Outcome:
        t = msg.type
        if t == MessageType.DISCOVER:
            return self._discover(msg, ctx)
        if t == MessageType.REQUEST:
            return self._request(msg, ctx)
        if t == MessageType.RELEASE:
            return self._release(msg)
        if t == MessageType.DECLINE:
            return self._decline(msg)
        if t == MessageType.INFORM:
            return self._inform(msg, ctx)
        return Outcome("drop", drop="unexpected_message_type")

    def classify(self, msg: Message, ctx: Context) -> Classified | None:
        c = classify(self.config, msg, ctx.vlans)
        return self._granted(c, msg) if c is not None else None

    def _granted(self, c: Classified, msg: Message) -> Classified:
        """A session the authoriser granted an address or a pool of its own (RADIUS
        Framed-IP-Address, Framed-Pool) is decided with them, until it ends: its address as
        a reservation is, its pool instead of its class's."""
        s = self.sessions.get(c.identity)
        g = s.grant if s is not None else None
        if g is None:
            return c
        pool = self.config.pools.get(g.pool) if g.pool else c.pool
        if pool is None:  # gone in a reload: the class's, as for any other session
            return c
        reservation = Reservation(GRANTED, (), g.address, pool.name, None) if g.address \
            else c.reservation if c.reservation and c.reservation.pool == pool.name else None
        subnet = pool.subnet_config(msg.giaddr) if int(msg.giaddr) else None
        return replace(c, pool=pool, reservation=reservation, subnet=subnet)

    # --- sessions --------------------------------------------------------------------------------

    def _session(self, c: Classified, msg: Message, ctx: Context) -> Session:
        s = self.sessions.get(c.identity)
        if s is None:
            s = self.sessions[c.identity] = Session(c.identity, Identity(
                msg.mac, msg.client_id.hex() if msg.client_id else None, ctx.vlans,
                msg.circuit_id, msg.remote_id, int(msg.giaddr)))
        if s.state != State.BOUND:
            s.pool, s.subscriber_class = c.pool.name, c.cls.name if c.cls else ""
        return s

    def _to_authorise(self, s: Session) -> bool:
        """Whether this decision waits for the authoriser: only a session not yet bound,
        not yet authorised, and one the authoriser applies to."""
        if s.authorised or s.state == State.BOUND or self.needs_authorisation is None:
            return False
        return self.needs_authorisation(s)

    def _hold_for_authoriser(self, s: Session) -> Outcome:
        if s.state != State.AUTHORIZING:
            s.move(State.AUTHORIZING)
        o = self.offers.get(s.key)
        if o is not None:  # held while the authoriser decides; an OFFER holds it anew
            o.expires = self.clock() + AUTHORISE_HOLD
            heapq.heappush(self._offer_expiry, (o.expires, s.key))
        return Outcome("authorize", session=s)

    def authorised(self, s: Session, msg: Message, ctx: Context) -> Outcome:
        """The authoriser accepted ``s``: decide again (the held address is the session's)
        and commit."""
        if s.state != State.AUTHORIZING or self.sessions.get(s.key) is not s:
            return Outcome("drop", drop="session_ended_while_authorizing")
        s.authorised = True
        return self.handle(msg, ctx)

    def rejected(self, s: Session) -> None:
        """The authoriser said no: the session ends and the address it held is free."""
        if s.state != State.AUTHORIZING or self.sessions.get(s.key) is not s:
            return
        self._end_offer(s.key)
        self._end_session(s, EndReason.REJECTED)

    def _end_session(self, s: Session, why: EndReason) -> None:
        s.move(State.ENDED, why)
        if self.sessions.get(s.key) is s:
            del self.sessions[s.key]
        self._events.append(Event("ended", s))

    def _attach(self, s: Session, lease: Lease) -> None:
        s.lease, s.address = lease, lease.address
        s.pool, s.subscriber_class = lease.pool, lease.subscriber_class

    @property
    def offers_committed(self) -> bool:
        """Whether new clients' offers are committed (BNGNode spec.commitAtOffer), or some
        committed offer may still be ACKed by the fast path."""
        return self.config.commit_at_offer or bool(self._withdrawn)

    def take_events(self) -> list[Event]:
        """The session events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def _discover(self, msg: Message, ctx: Context) -> Outcome:
        c = self.classify(msg, ctx)
        if c is None:
            return Outcome("drop", drop="no_class")
        if int(msg.giaddr) and c.subnet is None:
            return Outcome("drop", drop="no_subnet_for_relay")
        s = self._session(c, msg, ctx)
        if s.state == State.AUTHORIZING and not s.authorised:
            return Outcome("drop", drop="authorizing")  # a retransmission: its answer waits
        now = self.clock()
        addr, why = self._address_for(c, msg, now)
        if addr is None:
            if s.state is None:
                del self.sessions[s.key]
            return Outcome("drop", drop=why)
        self._offer(c, addr, now, msg.circuit_id)
        s.address = addr if s.state != State.BOUND else s.address
        if self._to_authorise(s):
            return self._hold_for_authoriser(s)
        if s.state in (None, State.AUTHORIZING):
            s.move(State.OFFERED)
        if self.config.commit_at_offer and s.state == State.OFFERED:
            return self._commit_offer(s, c, msg, ctx, addr, now)
        return self._reply(MessageType.OFFER, msg, ctx, c, addr)

    def _commit_offer(self, s: Session, c: Classified, msg: Message, ctx: Context, addr: int,
                      now: float) -> Outcome:
        """The offer as a lease in state offered, ending with the hold: the OFFER leaves once
        it is on disk and the fast path has its entry (the ``offered`` event), so the kernel
        ACKs the REQUEST and ``extend`` binds the session when it hears of that ACK. A
        REQUEST the slow path gets binds it as any offer."""
        sid = self._server_id(ctx, c.pool.subnet_config(addr), int(msg.giaddr) != 0)
        o = self.offers[c.identity]
        o.lease = self._record(c, msg, ctx, addr, sid, "offered", o.expires, now)
        self.store.put(o.lease)
        self._events.append(Event("offered", s, offer=o.lease))
        out = self._reply(MessageType.OFFER, msg, ctx, c, addr, server_id=sid)
        out.commit = True
        return out

    def _address_for(self, c: Classified, msg: Message, now: float) -> tuple[int | None, str]:
        """The address to offer (reserved, current, offered, previous, requested, any), or
        None and the reason there is none."""
        alloc = self.pools[c.pool.name]
        if c.reservation:
            if not self._in_subnet(c, c.reservation.address):
                return None, "reservation_not_on_link"
            holder = self.by_address.get(c.reservation.address)
            if holder and holder.identity != c.identity:
                log.warning("reserved address %s of %s is leased to %s",
                            IPv4Address(c.reservation.address), c.reservation.name,
                            holder.identity)
                return None, "reserved_address_in_use"
            if c.reservation.name == GRANTED:  # from the pool's free list, if it is on it
                if self.offered.get(c.reservation.address, c.identity) != c.identity:
                    return None, "granted_address_in_use"
                alloc.take(c.reservation.address)
            return c.reservation.address, ""
        lease = self.by_identity.get(c.identity)
        if lease and lease.pool == c.pool.name and self._in_subnet(c, lease.address):
            return lease.address, ""
        offer = self.offers.get(c.identity)
        if offer and offer.pool == c.pool.name and self._in_subnet(c, offer.address):
            return offer.address, ""
        # A new address from here on: the limits come before any allocation.
        if not self._rate_ok(c, msg, now):
            return None, "rate_limited"
        if self._circuit_full(c, msg):
            return None, "circuit_limit"
        for want in (self.previous.get(c.identity), msg.requested_ip):
            if want is not None and self._in_subnet(c, int(want)) and alloc.take(int(want)):
                self._drop_previous_owner(int(want))
                return int(want), ""
        addr = alloc.take_any(c.subnet.network if c.subnet else None)
        if addr is None:
            self._log_exhausted(c.pool.name, now)
            return None, "pool_exhausted"
        self._drop_previous_owner(addr)
        return addr, ""

    def _in_subnet(self, c: Classified, addr: int) -> bool:
        return c.subnet is None or c.subnet.first <= addr <= c.subnet.last

    def _rate_ok(self, c: Classified, msg: Message, now: float) -> bool:
        per_minute = c.cls.spec.limits.allocations_per_minute if c.cls else 60
        keys = [f"mac:{msg.mac}"] + ([f"circuit:{msg.circuit_id}"] if msg.circuit_id else [])
        return all(self._buckets.allow(k, per_minute, now) for k in keys)

    def _circuit_full(self, c: Classified, msg: Message) -> bool:
        circuit = msg.circuit_id
        if not circuit:
            return False
        cap = (c.cls.spec.limits.max_leases_per_circuit if c.cls else None) or DEFAULT_CIRCUIT_CAP
        return len(self._holds.get(circuit, ())) >= cap

    def _hold(self, circuit: str | None, addr: int) -> None:
        if circuit:
            self._unhold(addr)
            self._holds.setdefault(circuit, set()).add(addr)
            self._holder[addr] = circuit

    def _unhold(self, addr: int) -> None:
        circuit = self._holder.pop(addr, None)
        if circuit is not None:
            held = self._holds[circuit]
            held.discard(addr)
            if not held:
                del self._holds[circuit]

    def _log_exhausted(self, pool: str, now: float) -> None:
        if now - self._exhausted_logged.get(pool, -1e18) >= EXHAUSTION_LOG_EVERY:
            self._exhausted_logged[pool] = now
            log.warning("pool %s is exhausted on node %s: no free address; new clients get no "
                        "offer (this is logged once a minute)", pool, self.config.node_name)

    def _offer(self, c: Classified, addr: int, now: float, circuit: str | None) -> None:
        old = self.offers.get(c.identity)
        if old and old.address != addr:
            self._end_offer(c.identity)
        if addr not in self.by_address:
            self.offered[addr] = c.identity
            self._hold(circuit, addr)
        # a committed offer of the same address stays committed (its row, its entry)
        o = Offer(addr, c.pool.name, now + OFFER_HOLD,
                  old.lease if old is not None and old.address == addr else None)
        self.offers[c.identity] = o
        heapq.heappush(self._offer_expiry, (o.expires, c.identity))

    def _end_offer(self, identity: str, keep_address: bool = False,
                   ending: EndReason | None = None) -> None:
        """Let an offer go. ``ending``: the session, if it has no lease, ends for this."""
        o = self.offers.pop(identity, None)
        if o is None:
            return
        if self.offered.get(o.address) == identity:
            del self.offered[o.address]
            if o.lease is not None and not keep_address and o.address not in self.by_address:
                self._withdraw(o.lease)
            elif o.address not in self.by_address:
                self._unhold(o.address)
                if not keep_address:
                    self.pools[o.pool].release(o.address)
        s = self.sessions.get(identity)
        if ending is not None and s is not None and s.state in (State.OFFERED,
                                                                 State.AUTHORIZING):
            self._end_session(s, ending)

    def _withdraw(self, offer: Lease) -> None:
        """A committed offer ends unanswered: its fast-path entry goes now; its address and
        its row once WITHDRAW_GRACE passed (``expire``), unless the kernel ACKed it first."""
        self._withdrawn[offer.address] = offer
        heapq.heappush(self._withdrawn_expiry, (self.clock() + WITHDRAW_GRACE, offer.address))
        s = self.sessions.get(offer.identity)
        if s is None or s.state == State.BOUND:
            s = Session(offer.identity, _identity_of(offer))  # only the fast path hears it
        self._events.append(Event("withdrawn", s, offer=offer))

    def _answered_offer(self, address: int, expires: float) -> Lease | None:
        """The kernel ACKed the REQUEST of a committed offer (its entry's end moved to
        ``expires``): the session is bound, as the slow path binds it."""
        identity = self.offered.get(address)
        o = self.offers.get(identity) if identity is not None else None
        offer = o.lease if o is not None and o.address == address else \
            self._withdrawn.get(address)
        if offer is None or expires <= offer.expires + ACK_MOVES_END:
            return None
        if o is not None and o.lease is offer:
            assert identity is not None
            self._end_offer(identity, keep_address=True)
        else:
            del self._withdrawn[address]
        lease = offer  # the offer's record becomes the lease (nothing else holds it now)
        lease.state, lease.expires, lease.bound_at = "bound", expires, self.clock()
        s = self.sessions.get(lease.identity)
        if s is None or s.state == State.BOUND:  # its offer was withdrawn meanwhile
            s = self.sessions[lease.identity] = Session(lease.identity, _identity_of(lease),
                                                        authorised=True)
        self._bind(lease)
        self._attach(s, lease)
        self.store.put(lease)
        s.move(State.BOUND)
        self._events.append(Event("bound", s))
        return lease

    def _request(self, msg: Message, ctx: Context) -> Outcome:
        c = self.classify(msg, ctx)
        sid = msg.server_id
        if sid is not None and sid not in ctx.server_addresses:
            if c is not None:
                self._end_offer(c.identity, ending=EndReason.MOVED)
            return Outcome("drop", drop="other_server")
        if c is None:
            return Outcome("drop", drop="no_class")
        if int(msg.giaddr) and c.subnet is None:  # as for a DISCOVER: not a link we serve
            return Outcome("drop", drop="no_subnet_for_relay")
        want = msg.requested_ip if int(msg.ciaddr) == 0 else msg.ciaddr
        if want is None:
            return Outcome("drop", drop="no_requested_address")
        addr = int(want)
        now = self.clock()
        lease = self.by_identity.get(c.identity)
        offer = self.offers.get(c.identity)
        mine = (lease is not None and lease.address == addr and lease.pool == c.pool.name
                and self._in_subnet(c, addr)) or \
               (offer is not None and offer.address == addr and offer.pool == c.pool.name)
        if c.reservation:
            mine = addr == c.reservation.address and self._address_for(c, msg, now)[0] == addr
        elif not mine:
            if lease is None and offer is None and not c.pool.spec.authoritative:
                return Outcome("drop", drop="not_authoritative")  # a stranger: not ours to say
            mine = self._claim(c, msg, addr, now)
        s = self.sessions.get(c.identity)
        if s is not None and s.state == State.AUTHORIZING and not s.authorised:
            return Outcome("drop", drop="authorizing")
        if not mine:
            return self._reply(MessageType.NAK, msg, ctx, c, 0)
        s = self._session(c, msg, ctx)
        if self._to_authorise(s):
            if offer is None or offer.address != addr:  # held for the session while it waits
                self._offer(c, addr, now, msg.circuit_id)
            s.address = addr
            return self._hold_for_authoriser(s)
        # The reply's server id is recorded with the lease (the fast path answers with it).
        sid = self._server_id(ctx, c.pool.subnet_config(addr), int(msg.giaddr) != 0)
        self._lease(s, c, msg, ctx, addr, now, sid)
        return self._reply(MessageType.ACK, msg, ctx, c, addr, server_id=sid)

    def _claim(self, c: Classified, msg: Message, addr: int, now: float) -> bool:
        """INIT-REBOOT / RENEWING / REBINDING for an address we hold no record of it having.

        After a lost lease store or a move between pools, a client asks for an address we
        did not give it. It may keep it when it is free, in the right pool and link."""
        if not self._in_subnet(c, addr) or addr in self.offered:
            return False
        alloc = self.pools[c.pool.name]
        if not self._rate_ok(c, msg, now) or self._circuit_full(c, msg) or not alloc.take(addr):
            return False
        self._drop_previous_owner(addr)
        return True

    def _lease(self, s: Session, c: Classified, msg: Message, ctx: Context, addr: int,
               now: float, server_id: IPv4Address) -> None:
        old = self.by_identity.get(c.identity)
        if old and old.address != addr:
            self._unbind(old)
            self.pools[old.pool].release(old.address)
        offer = self.offers.get(c.identity)
        self._end_offer(c.identity, keep_address=offer is not None and offer.address == addr)
        lease = self._record(c, msg, ctx, addr, server_id, "bound",
                             now + self._lease_seconds(c),
                             old.bound_at if old and old.address == addr else now)
        self._bind(lease)
        self._attach(s, lease)
        self.store.put(lease)
        if s.state != State.BOUND:
            s.move(State.BOUND)
            self._events.append(Event("bound", s))
        elif old is None or old.address != addr:
            self._events.append(Event("changed", s, Change.ADDRESS, old))
        elif old.subscriber_class != lease.subscriber_class:
            self._events.append(Event("changed", s, Change.CLASS, old))
        elif s.reclassify:
            self._events.append(Event("changed", s, Change.RECLASSIFIED, old))
        s.reclassify = False

    def _record(self, c: Classified, msg: Message, ctx: Context, addr: int,
                server_id: IPv4Address, state: str, expires: float, bound_at: float) -> Lease:
        """The lease ``msg`` is answered with: the request it came on and the answer's terms."""
        return Lease(
            address=addr, identity=c.identity, mac=msg.mac,
            client_id=msg.client_id.hex() if msg.client_id else None,
            circuit_id=msg.circuit_id, remote_id=msg.remote_id, pool=c.pool.name,
            subscriber_class=c.cls.name if c.cls else "", expires=expires,
            hostname=msg.hostname, bound_at=bound_at, state=state,
            vlan=ctx.vlans[0] if ctx.vlans else 0, giaddr=int(msg.giaddr),
            server_id=int(server_id), relay_agent=msg.relay_agent,
            lease_seconds=self._lease_seconds(c), tags=ctx.tags, interface=ctx.interface)

    def _lease_seconds(self, c: Classified) -> int:
        return (c.cls.lease_seconds if c.cls and c.cls.lease_seconds else None) \
            or c.pool.lease_seconds

    def _bind(self, lease: Lease) -> None:
        if lease.address not in self.by_address:
            self.used[lease.pool] = self.used.get(lease.pool, 0) + 1
        self.by_identity[lease.identity] = lease
        self.by_address[lease.address] = lease
        prev = self.previous.pop(lease.identity, None)
        if prev is not None:
            self.previous_owner.pop(prev, None)
        self._drop_previous_owner(lease.address)
        self._hold(lease.circuit_id, lease.address)
        heapq.heappush(self._expiry, (lease.expires, lease.address))

    def _unbind(self, lease: Lease) -> None:
        if self.by_identity.get(lease.identity) is lease:
            del self.by_identity[lease.identity]
        if self.by_address.get(lease.address) is lease:
            del self.by_address[lease.address]
            self.used[lease.pool] -= 1
            self._unhold(lease.address)

    def extend(self, address: int, expires: float) -> Lease | None:
        """A renewal answered elsewhere (the fast path) moved this lease's end to
        ``expires``. Returns the lease to persist, or None if nothing changed."""
        lease = self.by_address.get(address)
        if lease is None:
            return self._answered_offer(address, expires)
        if expires <= lease.expires:
            return None
        lease.expires = expires
        heapq.heappush(self._expiry, (expires, address))
        self.store.put(lease)
        return lease

    def _remember(self, identity: str, addr: int) -> None:
        self._drop_previous_owner(addr)
        self.previous.pop(identity, None)
        self.previous[identity] = addr
        self.previous_owner[addr] = identity
        while len(self.previous) > self.config.max_leases:
            _, old = self.previous.popitem(last=False)
            self.previous_owner.pop(old, None)

    def _drop_previous_owner(self, addr: int) -> None:
        """An address handed to someone new is no longer anyone's previous address."""
        ident = self.previous_owner.pop(addr, None)
        if ident is not None and self.previous.get(ident) == addr:
            del self.previous[ident]

    def _release(self, msg: Message) -> Outcome:
        lease = self._lease_of(msg, int(msg.ciaddr))
        if lease is None:
            return Outcome("drop", drop="release_unknown_lease")
        self._end(lease, EndReason.RELEASED)
        return Outcome("release", commit=True)

    def _decline(self, msg: Message) -> Outcome:
        want = msg.requested_ip
        if want is None:
            return Outcome("drop", drop="no_requested_address")
        addr = int(want)
        lease = self._lease_of(msg, addr)
        if lease is None:
            return Outcome("drop", drop="decline_unknown_lease")
        now = self.clock()
        if not self._buckets.allow(f"decline:{msg.circuit_id or msg.mac}", DECLINES_PER_MINUTE,
                                   now):
            return Outcome("drop", drop="decline_rate_limited")
        self._unbind(lease)
        self._hold(lease.circuit_id, addr)  # out of use for a while: still the circuit's
        until = now + DECLINE_HOLD
        self.pools[lease.pool].decline(addr, until)
        self.store.put_decline(Decline(addr, lease.pool, until))
        self._end_bound(lease, EndReason.DECLINED)
        return Outcome("decline", commit=True)

    def _lease_of(self, msg: Message, addr: int) -> Lease | None:
        lease = self.by_address.get(addr)
        if lease is None:
            return None
        return lease if lease.identity in {identity_of(m, msg) for m in
                                           ("client-id", "mac", "circuit-id", "remote-id")} else None

    def end_session(self, identity: str, why: EndReason) -> bool:
        """End a bound session on demand (RADIUS Session-Timeout; later a Disconnect): its
        address is free again and its features hear ``ended``; the client's next request
        starts a new session (and a new authorisation). False: no such bound session."""
        lease = self.by_identity.get(identity)
        if lease is None:
            return False
        self._end(lease, why)
        return True

    def _end(self, lease: Lease, why: EndReason) -> None:
        self._unbind(lease)
        self.pools[lease.pool].release(lease.address)
        self._remember(lease.identity, lease.address)
        lease.state = "released" if why == EndReason.RELEASED else "expired"
        self.store.put(lease)
        self._end_bound(lease, why)

    def _end_bound(self, lease: Lease, why: EndReason) -> None:
        s = self.sessions.get(lease.identity)
        if s is not None and s.lease is lease:
            self._end_session(s, why)

    def _inform(self, msg: Message, ctx: Context) -> Outcome:
        c = self.classify(msg, ctx)
        where = msg.ciaddr
        pool = served_from(self.config, where)
        if pool is None:
            return Outcome("drop", drop="inform_unknown_network")
        c = Classified(c.cls if c else None, pool, "", None, pool.subnet_config(where))
        return self._reply(MessageType.ACK, msg, ctx, c, 0, inform=True)

    # --- time ------------------------------------------------------------------------------------

    def expire(self, grace: float = 0.0,
               renewed_elsewhere: Callable[[Lease], float | None] | None = None) -> list[Lease]:
        """End leases, offers and declines whose time is up. Returns the expired leases.

        Leases end ``grace`` seconds late: time for a renewal answered by the fast path just
        before the end to reach ``extend``. ``renewed_elsewhere`` is asked, before a lease
        ends, for the end that whoever else answers renewals (the fast path's map) holds for
        it: a later one extends the lease instead, so a renewal whose report was lost never
        frees an address its client still holds."""
        now = self.clock()
        ended = []
        while self._expiry and self._expiry[0][0] + grace <= now:
            expires, addr = heapq.heappop(self._expiry)
            lease = self.by_address.get(addr)
            if lease is None or lease.expires != expires:
                continue
            later = renewed_elsewhere(lease) if renewed_elsewhere is not None else None
            if later is not None and later > expires and self.extend(addr, later) is not None:
                continue
            self._end(lease, EndReason.EXPIRED)
            ended.append(lease)
        while self._offer_expiry and self._offer_expiry[0][0] <= now:
            expires, identity = heapq.heappop(self._offer_expiry)
            o = self.offers.get(identity)
            if o is None or o.expires != expires:
                continue
            if o.lease is not None and renewed_elsewhere is not None:
                later = renewed_elsewhere(o.lease)  # an ACK whose report was lost
                if later is not None and self._answered_offer(o.address, later) is not None:
                    continue
            self._end_offer(identity, ending=EndReason.EXPIRED)
        while self._withdrawn_expiry and self._withdrawn_expiry[0][0] <= now:
            _, addr = heapq.heappop(self._withdrawn_expiry)
            w = self._withdrawn.pop(addr, None)
            if w is None or addr in self.offered or addr in self.by_address:
                continue  # bound (the kernel ACKed it) or offered again: its row is another
            self._unhold(addr)
            if w.pool in self.pools:
                self.pools[w.pool].release(addr)
            self.store.delete(addr)
        for pool in self.pools.values():
            for addr in pool.end_declines(now):
                self._unhold(addr)
                self.store.delete_decline(addr)
        self._buckets.prune(now)
        return ended

    # --- replies ---------------------------------------------------------------------------------

    def _reply(self, kind: MessageType, req: Message, ctx: Context, c: Classified, addr: int,
               inform: bool = False, server_id: IPv4Address | None = None) -> Outcome:
        sc = (c.pool.subnet_config(addr) if addr else c.subnet) or \
            c.pool.subnet_config(req.ciaddr)
        if server_id is None:
            server_id = self._server_id(ctx, sc, int(req.giaddr) != 0)
        o: dict[int, bytes] = {Opt.MESSAGE_TYPE: _TYPE_BYTES[kind], Opt.SERVER_ID: server_id.packed}
        order: list[int] = [Opt.MESSAGE_TYPE, Opt.SERVER_ID]
        if kind != MessageType.NAK and sc is not None:
            if not inform:
                secs = self._lease_seconds(c)
                o[Opt.LEASE_TIME] = secs.to_bytes(4, "big")
                o[Opt.RENEWAL_TIME] = (secs // 2).to_bytes(4, "big")
                o[Opt.REBINDING_TIME] = (secs * 7 // 8).to_bytes(4, "big")
                order += _LEASE_ORDER
            o.update(sc.options)
            order += [x for x in SUBNET_OPTIONS if x in o]
        elif kind == MessageType.NAK:
            o[Opt.MESSAGE] = b"requested address is not available"
            order.append(Opt.MESSAGE)
        relay = req.options.get(Opt.RELAY_AGENT)
        if relay is not None:
            o[Opt.RELAY_AGENT] = relay  # echoed verbatim, last (RFC 3046 §2.2)
            order.append(Opt.RELAY_AGENT)
        reply = Message(
            op=BOOTREPLY, xid=req.xid, chaddr=req.chaddr, htype=req.htype, hlen=req.hlen,
            # A NAK through a relay asks it to broadcast (RFC 2131 §4.3.2): the client may
            # have no address the relay could unicast to.
            flags=req.flags | (0x8000 if kind == MessageType.NAK and int(req.giaddr) else 0),
            giaddr=req.giaddr,
            ciaddr=req.ciaddr if kind == MessageType.ACK else ZERO,
            yiaddr=IPv4Address(addr) if addr else ZERO, options=o)
        label = _LABELS.get(kind, "inform" if inform else "ack")
        return Outcome(label, reply, order, commit=kind == MessageType.ACK and not inform,
                       server_id=server_id)

    @staticmethod
    def _server_id(ctx: Context, sc: SubnetConfig | None, relayed: bool) -> IPv4Address:
        """Our address on the client's link; else the interface's; else the subnet gateway
        (which the node answers for when it is the subscribers' router)."""
        if sc is not None:
            for a in ctx.server_addresses:
                if sc.first <= int(a) <= sc.last:
                    return a
        if ctx.server_addresses and (relayed or sc is None):
            return ctx.server_addresses[0]
        if sc is not None:
            return sc.gateway
        return ctx.server_addresses[0] if ctx.server_addresses else ZERO

    # --- reporting -------------------------------------------------------------------------------

    def pool_usage(self) -> dict[str, dict[str, int]]:
        return {name: {"free": alloc.free_count, "used": self.used.get(name, 0),
                       "declined": len(alloc.declined), "reserved": len(alloc.reserved)}
                for name, alloc in self.pools.items()}


def _identity_of(lease: Lease) -> Identity:
    return Identity(lease.mac, lease.client_id, (lease.vlan,) if lease.vlan else (),
                    lease.circuit_id, lease.remote_id, lease.giaddr)

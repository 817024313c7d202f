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
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol

from bng_operator.agent.config import (
    ClassConfig,
    NodeConfig,
    PoolConfig,
    Reservation,
    SubnetConfig,
    identity_keys,
)
from bng_operator.agent.dhcp.allocator import PoolAllocator
from bng_operator.agent.dhcp.codec import BOOTREPLY, ZERO, Message, MessageType, Opt
from bng_operator.agent.dhcp.leases import Decline, Lease

log = logging.getLogger("bng.dhcp")
audit = logging.getLogger("bng.audit")

OFFER_HOLD = 30.0  # seconds an offered address stays reserved for the client
DECLINE_HOLD = 600.0  # seconds a declined address is kept out of use
EXHAUSTION_LOG_EVERY = 60.0
# The subnet's options go in every OFFER and ACK, whatever option 55 asks (RFC 2131 §4.3.1
# lets a server send options not asked for). The XDP fast path writes this same set, so a
# client gets the same answer from either path.
SUBNET_OPTIONS = [Opt.SUBNET_MASK, Opt.ROUTER, Opt.BROADCAST, Opt.DNS, Opt.DOMAIN_NAME]
_LEASE_ORDER = [Opt.LEASE_TIME, Opt.RENEWAL_TIME, Opt.REBINDING_TIME]
_TYPE_BYTES = {t: bytes([t]) for t in MessageType}
_LABELS = {MessageType.OFFER: "offer", MessageType.NAK: "nak"}


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


@dataclass
class Outcome:
    """What handling a request produced. ``reply`` is None for a drop or a silent success."""

    kind: str  # metric label: offer, ack, nak, release, decline, inform, drop
    reply: Message | None = None
    reply_order: list[int] = field(default_factory=list)
    drop: str | None = None  # reason, for bng_dhcp_drops_total
    commit: bool = False  # send only after the lease store committed
    server_id: IPv4Address = ZERO  # the reply's source address (option 54)


@dataclass
class Offer:
    address: int
    pool: str
    expires: float


@dataclass(frozen=True)
class Classified:
    cls: ClassConfig | None
    pool: PoolConfig
    identity: str
    reservation: Reservation | None
    subnet: SubnetConfig | None  # allocations must come from here (giaddr's link)


class TokenBuckets:
    """Allocations per minute per circuit-id / MAC."""

    def __init__(self) -> None:
        self._b: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, per_minute: int, now: float) -> bool:
        tokens, at = self._b.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
        if tokens < 1.0:
            self._b[key] = (tokens, now)
            return False
        self._b[key] = (tokens - 1.0, now)
        return True

    def prune(self, now: float) -> None:
        """Forget buckets idle for over a minute: they are full again anyway."""
        self._b = {k: v for k, v in self._b.items() if now - v[1] < 60.0}


def identity_of(mode: str, msg: Message) -> str:
    """The key identifying the client under a class's identity mode (MAC as the fallback)."""
    cid = msg.client_id.hex() if msg.client_id else None
    if mode == "circuit-id" and msg.circuit_id:
        return identity_keys(None, None, msg.circuit_id, None)[0]
    if mode == "remote-id" and msg.remote_id:
        return identity_keys(None, None, None, msg.remote_id)[0]
    if mode == "client-id" and cid:
        return identity_keys(None, cid, None, None)[0]
    return identity_keys(msg.mac, None, None, None)[0]


def message_keys(msg: Message) -> list[str]:
    """Every identity key a reservation may be written against."""
    return identity_keys(msg.mac, msg.client_id.hex() if msg.client_id else None,
                         msg.circuit_id, msg.remote_id)


def matches(c: ClassConfig, msg: Message, vlans: tuple[int, ...]) -> bool:
    m = c.spec.match
    if c.circuit_id and (msg.circuit_id is None or not c.circuit_id.search(msg.circuit_id)):
        return False
    if c.remote_id and (msg.remote_id is None or not c.remote_id.search(msg.remote_id)):
        return False
    if c.vendor_class and (msg.vendor_class is None or not c.vendor_class.search(msg.vendor_class)):
        return False
    if m.mac_prefix and not msg.mac.startswith(m.mac_prefix.lower()):
        return False
    if c.relays and (int(msg.giaddr) == 0 or not any(msg.giaddr in r for r in c.relays)):
        return False
    return not (m.vlan is not None and (not vlans or vlans[0] != m.vlan))


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
        self._buckets = TokenBuckets()
        self._exhausted_logged: dict[str, float] = {}
        # Told of every lease that stops being bound (released, declined, expired, moved),
        # so a cache of bound leases (the fast path's maps) can forget it.
        self.on_unbind: Callable[[Lease], None] | None = None
        # Told of every change of a subscriber's state (allocate, release, expire, decline),
        # never of a plain renewal: what the apiserver hears of.
        self.on_event: Callable[[str, Lease], None] | None = None
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
            self._end_offer(identity)
        self.config = config
        self._build_pools(config)
        self.by_identity.clear()
        self.by_address.clear()
        self.used = dict.fromkeys(config.pools, 0)
        return self.load(leases, declines)


    def load(self, leases: list[Lease], declines: list[Decline]) -> list[Lease]:
        """Re-take the addresses of stored leases. Returns the leases whose pool is gone."""
        orphans = []
        for d in declines:
            if d.pool in self.pools:
                self.pools[d.pool].decline(d.address, d.until)
        for lease in leases:
            pool = self.pools.get(lease.pool)
            if lease.state != "bound":
                self._remember(lease.identity, lease.address)
                continue
            if pool is None or not (pool.take(lease.address) or lease.address in pool.reserved):
                orphans.append(lease)
                continue
            self._bind(lease)
        return orphans

    # --- the state machine -----------------------------------------------------------------------

    def handle(self, msg: Message, ctx: Context) -> Outcome:
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
        reservation = None
        if self.config.reservation_by_key:
            keys = message_keys(msg)
            reservation = next((r for k in keys if (r := self.config.reservation_by_key.get(k))
                                and all(key in keys for key in r.keys)), None)
        cls = None
        if reservation and reservation.subscriber_class:
            cls = next((c for c in self.config.classes
                        if c.name == reservation.subscriber_class), None)
        if cls is None:
            cls = next((c for c in self.config.classes if matches(c, msg, ctx.vlans)), None)
        relayed = int(msg.giaddr) != 0
        if cls is not None:
            pool = self.config.pools[reservation.pool if reservation else cls.spec.pool]
        elif relayed:  # no class: the relay's link picks the pool, as in any DHCP server
            found = next((p for p in self.config.pools.values() if p.subnet_config(msg.giaddr)),
                         None)
            if found is None:
                return None
            pool = found
        elif reservation:
            pool = self.config.pools[reservation.pool]
        else:
            return None
        subnet = pool.subnet_config(msg.giaddr) if relayed else None
        identity = identity_of(cls.spec.identity if cls else "client-id", msg)
        return Classified(cls, pool, identity, reservation, subnet)

    def _discover(self, msg: Message, ctx: Context) -> Outcome:
        c = self.classify(msg, ctx)
        if c is None:
            return Outcome("drop", drop="no_class")
        if int(msg.giaddr) and c.subnet is None:
            return Outcome("drop", drop="no_subnet_for_relay")
        now = self.clock()
        addr, why = self._address_for(c, msg, now)
        if addr is None:
            return Outcome("drop", drop=why)
        self._offer(c, addr, now)
        return self._reply(MessageType.OFFER, msg, ctx, c, addr)

    def _address_for(self, c: Classified, msg: Message, now: float) -> tuple[int | None, str]:
        """The address to offer (reserved, current, offered, previous, requested, any), or
        None and the reason there is none."""
        alloc = self.pools[c.pool.name]
        if c.reservation:
            holder = self.by_address.get(c.reservation.address)
            if holder and holder.identity != c.identity:
                log.warning("reserved address %s of %s is leased to %s",
                            IPv4Address(c.reservation.address), c.reservation.name,
                            holder.identity)
                return None, "reserved_address_in_use"
            return c.reservation.address, ""
        lease = self.by_identity.get(c.identity)
        if lease and lease.pool == c.pool.name and self._in_subnet(c, lease.address):
            return lease.address, ""
        offer = self.offers.get(c.identity)
        if offer and offer.pool == c.pool.name and self._in_subnet(c, offer.address):
            return offer.address, ""
        for want in (self.previous.get(c.identity), msg.requested_ip):
            if want is not None and self._in_subnet(c, int(want)) and alloc.take(int(want)):
                self._drop_previous_owner(int(want))
                return int(want), ""
        if not self._rate_ok(c, msg, now):
            return None, "rate_limited"
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

    def _log_exhausted(self, pool: str, now: float) -> None:
        if now - self._exhausted_logged.get(pool, -1e18) >= EXHAUSTION_LOG_EVERY:
            self._exhausted_logged[pool] = now
            log.warning("pool %s is exhausted on node %s: no free address; new clients get no "
                        "offer (this is logged once a minute)", pool, self.config.node_name)

    def _offer(self, c: Classified, addr: int, now: float) -> None:
        old = self.offers.get(c.identity)
        if old and old.address != addr:
            self._end_offer(c.identity)
        if addr not in self.by_address:
            self.offered[addr] = c.identity
        o = Offer(addr, c.pool.name, now + OFFER_HOLD)
        self.offers[c.identity] = o
        heapq.heappush(self._offer_expiry, (o.expires, c.identity))

    def _end_offer(self, identity: str, keep_address: bool = False) -> None:
        o = self.offers.pop(identity, None)
        if o is None:
            return
        if self.offered.get(o.address) == identity:
            del self.offered[o.address]
            if not keep_address and o.address not in self.by_address:
                self.pools[o.pool].release(o.address)

    def _request(self, msg: Message, ctx: Context) -> Outcome:
        c = self.classify(msg, ctx)
        sid = msg.server_id
        if sid is not None and sid not in ctx.server_addresses:
            if c is not None:
                self._end_offer(c.identity)
            return Outcome("drop", drop="other_server")
        if c is None:
            return Outcome("drop", drop="no_class")
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
            mine = self._claim(c, msg, addr, now)
        if not mine:
            return self._reply(MessageType.NAK, msg, ctx, c, 0)
        # The reply's server id is recorded with the lease (the fast path answers with it).
        sid = self._server_id(ctx, c.pool.subnet_config(addr), int(msg.giaddr) != 0)
        self._lease(c, msg, ctx, addr, now, sid)
        return self._reply(MessageType.ACK, msg, ctx, c, addr, server_id=sid)

    def _claim(self, c: Classified, msg: Message, addr: int, now: float) -> bool:
        """INIT-REBOOT / RENEWING / REBINDING for an address we hold no record of it having.

        After a lost lease store or a move between pools, a client asks for an address we
        did not give it. It may keep it when it is free, in the right pool and link."""
        if not self._in_subnet(c, addr) or addr in self.offered:
            return False
        alloc = self.pools[c.pool.name]
        if not self._rate_ok(c, msg, now) or not alloc.take(addr):
            return False
        self._drop_previous_owner(addr)
        return True

    def _lease(self, c: Classified, msg: Message, ctx: Context, addr: int, now: float,
               server_id: IPv4Address) -> None:
        old = self.by_identity.get(c.identity)
        if old and old.address != addr:
            self._unbind(old)
            self.pools[old.pool].release(old.address)
        offer = self.offers.get(c.identity)
        self._end_offer(c.identity, keep_address=offer is not None and offer.address == addr)
        seconds = self._lease_seconds(c)
        lease = Lease(
            address=addr, identity=c.identity, mac=msg.mac,
            client_id=msg.client_id.hex() if msg.client_id else None,
            circuit_id=msg.circuit_id, remote_id=msg.remote_id, pool=c.pool.name,
            subscriber_class=c.cls.name if c.cls else "", expires=now + seconds,
            hostname=msg.hostname, bound_at=old.bound_at if old and old.address == addr else now,
            state="bound", vlan=ctx.vlans[0] if ctx.vlans else 0, giaddr=int(msg.giaddr),
            server_id=int(server_id),
            relay_agent=msg.relay_agent, lease_seconds=seconds)
        changed = old is None or old.address != addr or \
            old.subscriber_class != lease.subscriber_class
        self._bind(lease)
        self.store.put(lease)
        if changed:
            self._audit("allocate", lease)

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
        heapq.heappush(self._expiry, (lease.expires, lease.address))

    def _unbind(self, lease: Lease) -> None:
        if self.by_identity.get(lease.identity) is lease:
            del self.by_identity[lease.identity]
        if self.by_address.get(lease.address) is lease:
            del self.by_address[lease.address]
            self.used[lease.pool] -= 1
            if self.on_unbind is not None:
                self.on_unbind(lease)

    def extend(self, address: int, expires: float) -> Lease | None:
        """A renewal answered elsewhere (the fast path) moved this lease's end to
        ``expires``. Returns the lease to persist, or None if nothing changed."""
        lease = self.by_address.get(address)
        if lease is None or expires <= lease.expires:
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
        self._end(lease, "release")
        return Outcome("release", commit=True)

    def _decline(self, msg: Message) -> Outcome:
        want = msg.requested_ip
        if want is None:
            return Outcome("drop", drop="no_requested_address")
        addr = int(want)
        lease = self._lease_of(msg, addr)
        if lease is None:
            return Outcome("drop", drop="decline_unknown_lease")
        self._unbind(lease)
        until = self.clock() + DECLINE_HOLD
        self.pools[lease.pool].decline(addr, until)
        self.store.put_decline(Decline(addr, lease.pool, until))
        self._audit("decline", lease)
        return Outcome("decline", commit=True)

    def _lease_of(self, msg: Message, addr: int) -> Lease | None:
        lease = self.by_address.get(addr)
        if lease is None:
            return None
        return lease if lease.identity in {identity_of(m, msg) for m in
                                           ("client-id", "mac", "circuit-id", "remote-id")} else None

    def _end(self, lease: Lease, why: str) -> None:
        self._unbind(lease)
        self.pools[lease.pool].release(lease.address)
        self._remember(lease.identity, lease.address)
        lease.state = "released" if why == "release" else "expired"
        self.store.put(lease)
        self._audit(why, lease)

    def _inform(self, msg: Message, ctx: Context) -> Outcome:
        c = self.classify(msg, ctx)
        where = msg.ciaddr
        pool = next((p for p in self.config.pools.values() if p.subnet_config(where)), None)
        if pool is None:
            return Outcome("drop", drop="inform_unknown_network")
        c = Classified(c.cls if c else None, pool, "", None, pool.subnet_config(where))
        return self._reply(MessageType.ACK, msg, ctx, c, 0, inform=True)

    # --- time ------------------------------------------------------------------------------------

    def expire(self, grace: float = 0.0) -> list[Lease]:
        """End leases, offers and declines whose time is up. Returns the expired leases.

        Leases end ``grace`` seconds late: time for a renewal answered by the fast path just
        before the end to reach ``extend``."""
        now = self.clock()
        ended = []
        while self._expiry and self._expiry[0][0] + grace <= now:
            expires, addr = heapq.heappop(self._expiry)
            lease = self.by_address.get(addr)
            if lease is not None and lease.expires == expires:
                self._end(lease, "expire")
                ended.append(lease)
        while self._offer_expiry and self._offer_expiry[0][0] <= now:
            expires, identity = heapq.heappop(self._offer_expiry)
            o = self.offers.get(identity)
            if o is not None and o.expires == expires:
                self._end_offer(identity)
        for pool in self.pools.values():
            for addr in pool.end_declines(now):
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
            flags=req.flags, giaddr=req.giaddr,
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

    def _audit(self, event: str, lease: Lease) -> None:
        if self.on_event is not None:
            self.on_event(event, lease)
        audit.info(event, extra={"audit": {
            "event": event, "identity": lease.identity, "mac": lease.mac,
            "address": str(IPv4Address(lease.address)), "pool": lease.pool,
            "class": lease.subscriber_class, "circuit_id": lease.circuit_id,
            "remote_id": lease.remote_id, "expires": lease.expires}})

    def pool_usage(self) -> dict[str, dict[str, int]]:
        return {name: {"free": alloc.free_count, "used": self.used.get(name, 0),
                       "declined": len(alloc.declined), "reserved": len(alloc.reserved)}
                for name, alloc in self.pools.items()}

"""Each NATPool's public addresses split between the nodes that translate to them: pure
functions, no cluster. The counterpart of ``blocks.py`` for NAT44.

**port-block** pools: a public address belongs to one node at a time, so no public
address+port is ever used by two nodes. Every node that needs the pool gets an even share
(nodes holding the most get the remainder, so the fewest addresses move), lowest free
addresses first, in runs. A node keeps what it has: an address only leaves a live node for
another one when the node is over its share and reports no port block on it, and then only
after a handover: it is taken out of the node's spec (``releasing``), and goes to another
node once the node has applied that spec, still reports no block on it, and the pool's hold
has passed. A node that leaves keeps its addresses, marked ``releaseAfter``, for as long as a
departed node's IPPool blocks are held (its fast path may still translate for its
subscribers), plus the hold; one that reported no block in use (an agent counts a block in
its hold as in use) gives them back at once, as an IPPool block without leases goes back.
A node that comes back before that keeps them.

**deterministic** pools (RFC 7422) are not split: every node computes a subscriber's public
address and ports by one formula over the whole pool from its inside address, and inside
addresses are unique across nodes (IPPool blocks), so every node gets every address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

from bng_operator.api.bngnode import NATUsage
from bng_operator.api.common import parse_duration
from bng_operator.api.natpool import MAX_NODE_ADDRESSES, NATNodeUsage, NATPoolSpec

# A port-block pool's status lists every address once; past this it would not fit an object.
MAX_SPLIT_ADDRESSES = 16_384


def _ranges(spec: NATPoolSpec) -> Iterable[tuple[int, int]]:
    for p in spec.addresses:
        net = IPv4Network(p)
        yield int(net.network_address), int(net.broadcast_address)


def address_count(spec: NATPoolSpec) -> int:
    """Distinct public addresses of the pool, counted without listing them."""
    total, end = 0, -1
    for lo, hi in sorted(_ranges(spec)):
        if hi > end:
            total += hi - max(lo, end + 1) + 1
            end = hi
    return total


def pool_addresses(spec: NATPoolSpec) -> list[str]:
    """Every public address of the pool once, in the pool's order: its prefixes as written,
    each from its lowest address (a /28 is 16 addresses). RFC 7422's formula numbers them in
    this order, and the split hands them out in it."""
    out: dict[str, None] = {}
    for lo, hi in _ranges(spec):
        for i in range(lo, hi + 1):
            out.setdefault(str(IPv4Address(i)))
    return list(out)


def blocks_per_address(spec: NATPoolSpec) -> int:
    return spec.port_range.size // spec.ports_per_block


def deterministic_shortfall(inside: int, public: int, blocks_per_address: int,
                            per_subscriber: int, block_size: int) -> str:
    """RFC 7422 mode: why ``public`` addresses of ``blocks_per_address`` blocks cannot give
    each of ``inside`` addresses its ``per_subscriber`` blocks ("" when they can). The
    operator refuses such a pool; an agent refuses it too, on its own copy of the spec."""
    slots = blocks_per_address // per_subscriber
    need = -(-inside // slots) if slots else 0
    if slots and need <= public:
        return ""
    return (f"{inside} inside addresses at {per_subscriber} blocks of {block_size} ports need "
            f"{need or 'more'} public addresses; the pool has {public}")


def capacity_error(spec: NATPoolSpec) -> str:
    """A deterministic pool too small for its insidePrefixes: why ("" otherwise)."""
    if spec.mode != "deterministic":
        return ""
    inside = sum(IPv4Network(p).num_addresses for p in spec.inside_prefixes)
    return deterministic_shortfall(inside, address_count(spec), blocks_per_address(spec),
                                   spec.blocks_per_subscriber, spec.ports_per_block)


def too_large(spec: NATPoolSpec) -> int | None:
    """The most addresses a pool of this mode may have, when it has more; else None."""
    limit = MAX_SPLIT_ADDRESSES if spec.mode == "port-block" else MAX_NODE_ADDRESSES
    return limit if address_count(spec) > limit else None


@dataclass(frozen=True)
class AddressPlan:
    nodes: tuple[NATNodeUsage, ...]  # the pool's status.nodes: the split and its usage
    assigned: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # node -> its spec's
    starved: tuple[str, ...] = ()  # nodes that need the pool and hold no address
    pending: int = 0  # addresses released or held that will come free for another node
    too_large: int | None = None  # the pool is not served: it has more than this many


def _used(reports: Sequence[NATUsage]) -> int:
    return sum(u.blocks_used for u in reports)


def plan_addresses(spec: NATPoolSpec, nodes: Sequence[str], current: Sequence[NATNodeUsage],
                   reports: Mapping[str, Sequence[NATUsage]],
                   in_use: Mapping[str, Set[str] | None], now: datetime,
                   drain_seconds: int) -> AddressPlan:
    """The pool's split after one round.

    ``nodes`` need the pool now (they serve a class that names it); ``current`` is the split
    as the pool's status holds it; ``reports`` are the BNGNode ``status.nat`` entries of
    this pool, per bng node; ``in_use`` is, per node that has a BNGNode, the addresses
    its agent may still translate to (its spec's, and any it reports a block on), or None
    while the agent has not applied its latest spec; ``drain_seconds`` is how long a
    departed node may still translate for a subscriber: the longest lease of the IPPools
    the pool's classes use, plus the fast path's authority.
    """
    limit = too_large(spec)
    if limit is not None:  # not served; the split stays as it was, for when it is again
        return AddressPlan(nodes=tuple(current), too_large=limit)
    if spec.mode == "deterministic":
        return _everyone(spec, nodes, reports)
    pool = pool_addresses(spec)
    order = {a: i for i, a in enumerate(pool)}
    per = blocks_per_address(spec)
    hold = timedelta(seconds=parse_duration(spec.timeouts.hold))
    live = set(nodes)

    @dataclass
    class Share:
        addresses: list[str]
        releasing: list[str]
        after: datetime | None
        used: int

    shares: dict[str, Share] = {}
    seen: set[str] = set()

    def own(addrs: Iterable[str]) -> list[str]:
        """Addresses still in the pool and named once (a hand-edited status may repeat)."""
        out = [a for a in addrs if a in order and a not in seen]
        seen.update(out)
        return out

    for e in sorted(current, key=lambda e: e.node):
        addrs, releasing = own(e.addresses), own(e.releasing)
        departed_before = e.release_after is not None and not e.releasing
        used = _used(reports[e.node]) if e.node in reports else e.blocks_used
        if e.node in live:
            after = e.release_after if releasing else None  # a node that came back keeps all
            if releasing and (after is None or after <= now):
                busy = in_use.get(e.node, frozenset())  # no BNGNode: its agent uses nothing
                if busy is not None:  # None: its agent has not applied the handover yet
                    releasing = [a for a in releasing if a in busy]  # the others are free
                after = after if releasing else None
            shares[e.node] = Share(addrs, releasing, after, used)
            continue
        # The node no longer uses the pool: everything it had is held, then free.
        addrs += releasing
        after = e.release_after if departed_before else \
            (now + hold + timedelta(seconds=drain_seconds) if used else now)
        if addrs and after is not None and after > now:
            shares[e.node] = Share(addrs, [], after, used)

    taken = {a for s in shares.values() for a in (*s.addresses, *s.releasing)}
    free = [a for a in pool if a not in taken]
    for n in live - shares.keys():
        shares[n] = Share([], [], None, _used(reports.get(n, ())))

    # Even shares of every address, the held ones included (they come back); the remainder
    # goes to the nodes holding the most, so the fewest addresses move.
    targets: dict[str, int] = {}
    if live:
        base, extra = divmod(len(pool), len(live))
        ranked = sorted(live, key=lambda n: (-len(shares[n].addresses), n))
        targets = {n: min(MAX_NODE_ADDRESSES, base + (i < extra)) for i, n in enumerate(ranked)}
    # Lowest free first, in runs (a node's addresses aggregate into few routes); the nodes
    # holding the fewest choose first, so a short supply goes to the empty ones.
    for n in sorted(live, key=lambda n: (len(shares[n].addresses), n)):
        want = targets[n] - len(shares[n].addresses)
        if want > 0:
            shares[n].addresses += free[:want]
            free = free[want:]
    pending = sum(len(s.releasing) + (len(s.addresses) if n not in live else 0)
                  for n, s in shares.items())

    # Still short: nodes over their share hand over addresses they have no block on,
    # highest first (an agent fills its lowest addresses first), no more than are missing.
    missing = sum(max(0, targets[n] - len(shares[n].addresses)) for n in live) - pending
    for n in sorted(live, key=lambda n: (targets[n] - len(shares[n].addresses), n)):
        s = shares[n]
        excess = min(len(s.addresses) - targets[n], missing)
        if excess <= 0:
            break
        busy = {u.address for u in reports.get(n, ()) if u.blocks_used > 0}
        idle = [a for a in reversed(s.addresses) if a not in busy][:excess]
        if not idle:
            continue
        s.addresses = [a for a in s.addresses if a not in idle]
        s.releasing += idle
        s.after = max(s.after or now, now + hold)
        missing -= len(idle)
        pending += len(idle)

    out = []
    for n, s in sorted(shares.items()):
        addrs = sorted(s.addresses, key=order.__getitem__)
        out.append(NATNodeUsage(node=n, addresses=addrs,
                                releasing=sorted(s.releasing, key=order.__getitem__),
                                release_after=s.after, blocks_total=len(addrs) * per,
                                blocks_used=s.used))
    assigned = {u.node: tuple(u.addresses) for u in out if u.node in live}
    return AddressPlan(nodes=tuple(out), assigned=assigned,
                       starved=tuple(n for n in sorted(live) if not assigned[n]),
                       pending=pending)


def _everyone(spec: NATPoolSpec, nodes: Sequence[str],
              reports: Mapping[str, Sequence[NATUsage]]) -> AddressPlan:
    """Deterministic mode: every node gets every address, in the formula's order. A node
    that leaves holds nothing back: its subscribers' inside addresses, and so their public
    ports, are held by the IPPool blocks it leaves behind."""
    pool = tuple(pool_addresses(spec))
    usage = [NATNodeUsage(node=n, blocks_total=sum(u.blocks_total for u in reports.get(n, ())),
                          blocks_used=_used(reports.get(n, ()))) for n in sorted(set(nodes))]
    return AddressPlan(nodes=tuple(usage), assigned={n: pool for n in nodes})

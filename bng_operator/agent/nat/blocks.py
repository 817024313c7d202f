"""Port blocks (RFC 6888 REQ-1 to 4) and the deterministic formula (RFC 7422): pure.

A NATPool's public addresses are cut into blocks of ``portsPerBlock`` ports inside its
``portRange``. In port-block mode a subscriber gets one block when its session binds, all on
one public address (paired pooling), and more on that address, up to
``blocksPerSubscriber``, when its blocks fill. A released block is held for the pool's
``hold`` before another subscriber may take it, so a late packet of the old flows never
reaches the new owner.

In deterministic mode the blocks follow from the inside address alone (``formula``), so
nothing needs logging per subscriber; ``owner`` inverts it for ``bng nat lookup``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from bng_operator.policy.natsplit import deterministic_shortfall


@dataclass(frozen=True)
class Grant:
    """A subscriber's public address and the first port of each of its blocks."""

    public: IPv4Address
    blocks: tuple[int, ...]
    block_size: int

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [(f, f + self.block_size - 1) for f in self.blocks]

    def ports(self) -> str:
        """The port ranges as the status and the log write them: ``1024-1535,2048-2559``."""
        return ",".join(f"{a}-{b}" for a, b in self.ranges)


@dataclass(frozen=True)
class Layout:
    """How a NATPool cuts its public addresses into blocks: what both modes share, and what
    the deterministic formula is a function of (written to the log whenever it changes)."""

    addresses: tuple[IPv4Address, ...]
    port_start: int
    port_end: int
    block_size: int
    per_subscriber: int
    inside: tuple[IPv4Network, ...] = ()  # deterministic mode: the formula's inside order

    @property
    def blocks_per_address(self) -> int:
        return (self.port_end - self.port_start + 1) // self.block_size

    def first_port(self, index: int) -> int:
        return self.port_start + index * self.block_size

    def index(self, first_port: int) -> int | None:
        """The block starting at ``first_port``, if it is one of this layout."""
        i, rest = divmod(first_port - self.port_start, self.block_size)
        return i if rest == 0 and 0 <= i < self.blocks_per_address else None

    # --- deterministic mode (RFC 7422) ----------------------------------------------------

    @property
    def slots_per_address(self) -> int:
        """Subscribers per public address in deterministic mode: each has
        ``per_subscriber`` consecutive blocks."""
        return self.blocks_per_address // self.per_subscriber

    @property
    def inside_size(self) -> int:
        return sum(n.num_addresses for n in self.inside)

    def formula(self, inside: IPv4Address) -> Grant | None:
        """Deterministic mode: the n-th address of ``inside`` (its prefixes concatenated in
        order) has public address n // S and blocks (n mod S) * B .. + B - 1 of it, where S
        is ``slots_per_address`` and B ``per_subscriber``. None: not an inside address, or
        beyond the public addresses (``capacity_error`` says so at configuration)."""
        n = 0
        for net in self.inside:
            if inside in net:
                n += int(inside) - int(net.network_address)
                break
            n += net.num_addresses
        else:
            return None
        slots = self.slots_per_address
        if slots == 0:
            return None
        a, slot = divmod(n, slots)
        if a >= len(self.addresses):
            return None
        first = slot * self.per_subscriber
        return Grant(self.addresses[a],
                     tuple(self.first_port(first + j) for j in range(self.per_subscriber)),
                     self.block_size)

    def owner(self, public: IPv4Address, port: int) -> IPv4Address | None:
        """The inverse of ``formula``: the inside address whose blocks hold ``port`` on
        ``public``; None if none does."""
        if public not in self.addresses or not self.port_start <= port <= self.port_end:
            return None
        block = (port - self.port_start) // self.block_size
        slot = block // self.per_subscriber
        if slot >= self.slots_per_address:
            return None  # the ports left over after the last whole slot
        n = self.addresses.index(public) * self.slots_per_address + slot
        for net in self.inside:
            if n < net.num_addresses:
                return IPv4Address(int(net.network_address) + n)
            n -= net.num_addresses
        return None

    def capacity_error(self) -> str:
        """Deterministic mode: why the public addresses cannot serve every inside address
        ("" when they can)."""
        return deterministic_shortfall(self.inside_size, len(self.addresses),
                                       self.blocks_per_address, self.per_subscriber,
                                       self.block_size)

    def describe(self) -> dict[str, Any]:
        """The formula's configuration, as the log records it (``from_description``)."""
        return {"addresses": [str(a) for a in self.addresses],
                "portRange": [self.port_start, self.port_end], "portsPerBlock": self.block_size,
                "blocksPerSubscriber": self.per_subscriber,
                "insidePrefixes": [str(n) for n in self.inside],
                "formula": "n = offset of the inside address in insidePrefixes (concatenated); "
                           "S = (portRange size // portsPerBlock) // blocksPerSubscriber; "
                           "public = addresses[n // S]; first port = portRange.start + "
                           "(n % S) * blocksPerSubscriber * portsPerBlock"}

    @staticmethod
    def from_description(d: dict[str, Any]) -> Layout:
        return Layout(tuple(IPv4Address(a) for a in d["addresses"]), int(d["portRange"][0]),
                      int(d["portRange"][1]), int(d["portsPerBlock"]),
                      int(d["blocksPerSubscriber"]),
                      tuple(IPv4Network(n) for n in d["insidePrefixes"]))


def expand(prefixes: Iterable[str]) -> tuple[IPv4Address, ...]:
    """Every address of ``prefixes`` (a CIDR or a single address each), in order, once.
    Public NAT addresses are routed to the node, never on-link, so a prefix's first and
    last addresses serve like any other."""
    seen: dict[IPv4Address, None] = {}
    for p in prefixes:
        for a in IPv4Network(p):
            seen.setdefault(a, None)
    return tuple(seen)


@dataclass
class _Address:
    free: list[int]  # block indices, a heap: the lowest is given first
    used: set[int] = field(default_factory=set)


class BlockAllocator:
    """Port-block mode: the blocks of one NATPool's public addresses on this node."""

    def __init__(self, layout: Layout, hold: float) -> None:
        self.layout = layout
        self.hold = hold
        n = layout.blocks_per_address
        self._addresses = {a: _Address(list(range(n))) for a in layout.addresses}
        self._held: list[tuple[float, IPv4Address, int]] = []  # (free again at, address, index)

    def grant(self, now: float) -> Grant | None:
        """A first block, on the address with the most free blocks (so that subscribers
        spread, and each has room to grow on its own address). None: every block is taken."""
        self._unhold(now)
        best = max(self._addresses.items(), key=lambda kv: (len(kv[1].free), -int(kv[0])),
                   default=None)
        if best is None or not best[1].free:
            return None
        return Grant(best[0], (self._take(best[0]),), self.layout.block_size)

    def grow(self, g: Grant, now: float) -> Grant | None:
        """``g`` with one more block on its own address (paired pooling); None when it has
        ``per_subscriber`` already or its address has no free block."""
        self._unhold(now)
        a = self._addresses.get(g.public)
        if a is None or len(g.blocks) >= self.layout.per_subscriber or not a.free:
            return None
        return Grant(g.public, (*g.blocks, self._take(g.public)), g.block_size)

    def _take(self, address: IPv4Address) -> int:
        a = self._addresses[address]
        i = heapq.heappop(a.free)
        a.used.add(i)
        return self.layout.first_port(i)

    def adopt(self, g: Grant) -> bool:
        """Mark ``g``'s blocks taken (a binding restored after a restart). False: ``g`` no
        longer fits this layout (another address, block size or range) or a block of it is
        already taken; the caller gives the subscriber a new grant."""
        a = self._addresses.get(g.public)
        if a is None or g.block_size != self.layout.block_size or \
                len(g.blocks) > self.layout.per_subscriber:
            return False
        indices = [self.layout.index(f) for f in g.blocks]
        if any(i is None or i in a.used for i in indices) or len(set(indices)) != len(indices):
            return False
        for i in indices:
            assert i is not None
            a.used.add(i)
            a.free.remove(i)
        heapq.heapify(a.free)
        # a held block is never adopted twice: taken, it leaves the held list
        self._held = [h for h in self._held if not (h[1] == g.public and h[2] in indices)]
        heapq.heapify(self._held)
        return True

    def release(self, g: Grant, now: float) -> None:
        """``g``'s blocks are free again after the hold."""
        a = self._addresses.get(g.public)
        if a is None:
            return
        for f in g.blocks:
            i = self.layout.index(f)
            if i is not None and i in a.used:
                a.used.discard(i)
                heapq.heappush(self._held, (now + self.hold, g.public, i))
        self._unhold(now)

    def _unhold(self, now: float) -> None:
        while self._held and self._held[0][0] <= now:
            _, address, i = heapq.heappop(self._held)
            a = self._addresses.get(address)
            if a is not None and i not in a.used:
                heapq.heappush(a.free, i)

    def usage(self) -> dict[IPv4Address, int]:
        """Blocks in use on each public address (held ones count: nobody may take them)."""
        held: dict[IPv4Address, int] = {}
        for _, address, _ in self._held:
            held[address] = held.get(address, 0) + 1
        return {addr: len(a.used) + held.get(addr, 0) for addr, a in self._addresses.items()}

    @property
    def total(self) -> int:
        return len(self._addresses) * self.layout.blocks_per_address

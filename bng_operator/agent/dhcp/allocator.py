"""Address allocation inside this node's blocks: O(1) take and free, no scans.

Each block keeps its free addresses in an OrderedDict used as a queue: a freed address goes
to the back, so the addresses freed longest ago are handed out first, and a returning client
usually finds its previous address still free. Taking one specific address is a dict delete.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network


@dataclass
class Block:
    """A CIDR of one subnet that this node hands addresses out of."""

    network: IPv4Network
    subnet: IPv4Network
    free: OrderedDict[int, None] = field(default_factory=OrderedDict)
    size: int = 0  # addresses that can ever be handed out

    def __contains__(self, addr: int) -> bool:
        return int(self.network.network_address) <= addr <= int(self.network.broadcast_address)


@dataclass
class PoolAllocator:
    """The free addresses of one pool on this node, plus the declined ones on hold."""

    name: str
    blocks: list[Block] = field(default_factory=list)
    reserved: frozenset[int] = frozenset()  # handed out only to their subscriber
    # never on a free list: gateways, excluded ranges (static addresses: RADIUS's
    # Framed-IP-Address may hand one out), reservations
    never: frozenset[int] = frozenset()
    declined: dict[int, float] = field(default_factory=dict)
    _decline_heap: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def build(cls, name: str, blocks: Iterable[tuple[IPv4Network, IPv4Network]],
              never: set[int], reserved: frozenset[int] = frozenset()) -> PoolAllocator:
        """``blocks`` are (block, subnet) pairs; ``never`` holds addresses never on a free
        list (gateways, excluded ranges, ``reserved``)."""
        never = never | reserved
        pool = cls(name, reserved=reserved, never=frozenset(never))
        for network, subnet in blocks:
            b = Block(network, subnet)
            edge = {int(subnet.network_address), int(subnet.broadcast_address)}
            for a in range(int(network.network_address), int(network.broadcast_address) + 1):
                if a not in edge and a not in never:
                    b.free[a] = None
            b.size = len(b.free)
            pool.blocks.append(b)
        return pool

    def block_of(self, addr: int) -> Block | None:
        for b in self.blocks:
            if addr in b:
                return b
        return None

    def take(self, addr: int) -> bool:
        """Take ``addr`` if it is free here."""
        b = self.block_of(addr)
        if b is None or addr not in b.free:
            return False
        del b.free[addr]
        return True

    def take_any(self, subnet: IPv4Network | None = None) -> int | None:
        """Any free address, optionally only inside ``subnet`` (a relay's link)."""
        for b in self.blocks:
            if b.free and (subnet is None or b.subnet == subnet):
                return b.free.popitem(last=False)[0]
        return None

    def release(self, addr: int) -> None:
        b = self.block_of(addr)
        if b is not None and addr not in self.declined and addr not in self.never:
            b.free[addr] = None

    def decline(self, addr: int, until: float) -> None:
        """Hold ``addr`` out of use until ``until`` (someone else answers ARP for it)."""
        b = self.block_of(addr)
        if b is None:
            return
        b.free.pop(addr, None)
        self.declined[addr] = until
        heapq.heappush(self._decline_heap, (until, addr))

    def end_declines(self, now: float) -> list[int]:
        """Return declined addresses whose hold is over to the free list."""
        back = []
        while self._decline_heap and self._decline_heap[0][0] <= now:
            until, addr = heapq.heappop(self._decline_heap)
            if self.declined.get(addr) == until:
                del self.declined[addr]
                self.release(addr)
                back.append(addr)
        return back

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def free_count(self) -> int:
        return sum(len(b.free) for b in self.blocks)

    def subnet_of(self, addr: IPv4Address) -> IPv4Network | None:
        b = self.block_of(int(addr))
        return b.subnet if b else None

"""Per-node address blocks, the way Calico IPAM hands them out: pure functions, no cluster.

A pool is carved into blocks of ``blockSize``. Every node serving the pool holds at least one;
a node whose blocks fill past a threshold gets another. A block never belongs to two nodes.
When a node leaves, its blocks stay assigned until every lease it may still hold has ended.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

from bng_operator.api.ippool import BlockAssignment, IPPoolSpec


def _never(spec: IPPoolSpec) -> list[tuple[int, int]]:
    """Address ranges no client gets (network, broadcast, gateway, exclusions), merged."""
    ranges = []
    for s in spec.subnets:
        net = s.network
        ranges += [(int(net.network_address),) * 2, (int(net.broadcast_address),) * 2,
                   (int(IPv4Address(s.gateway)),) * 2]
        ranges += [(int(a), int(b)) for a, b in (r.addresses() for r in s.exclude)]
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def usable(spec: IPPoolSpec, net: IPv4Network) -> int:
    """How many addresses of ``net`` can be leased."""
    a, b = int(net.network_address), int(net.broadcast_address)
    return b - a + 1 - sum(max(0, min(b, hi) - max(a, lo) + 1) for lo, hi in _never(spec))


def pool_size(spec: IPPoolSpec) -> int:
    return sum(usable(spec, s.network) for s in spec.subnets)


def _blocks(spec: IPPoolSpec) -> Iterator[IPv4Network]:
    for s in spec.subnets:
        yield from s.network.subnets(new_prefix=spec.block_size)


@dataclass(frozen=True)
class BlockPlan:
    assignments: tuple[BlockAssignment, ...]
    # nodes that need a block and found none free: without one, or full past the threshold
    starved: tuple[str, ...] = ()
    wanting_more: tuple[str, ...] = ()


def plan_blocks(spec: IPPoolSpec, nodes: Sequence[str], current: Sequence[BlockAssignment],
                usage: Mapping[str, int], threshold: float, now: datetime,
                drain_seconds: int) -> BlockPlan:
    """The pool's block assignments after one round.

    ``nodes`` serve the pool now; ``usage`` is leases per block cidr as live nodes report
    them; ``drain_seconds`` is how long a departed node may still answer for a lease: its
    longest lease plus the time its fast path answers without an agent. A block whose node
    reported no leases goes back at once: the fast path answers only leases in its maps,
    and the agent reports its leases within a second of a change.
    """
    serving = set(nodes)
    out: list[BlockAssignment] = []
    for a in current:
        net = IPv4Network(a.cidr)
        if not any(net.subnet_of(s.network) for s in spec.subnets):
            continue  # its subnet left the pool: nothing can be served from it
        if a.node in serving:
            out.append(a.model_copy(update={"leases": usage.get(a.cidr, a.leases),
                                            "release_after": None}))
            continue
        after = a.release_after or (now if a.leases == 0 else now + timedelta(seconds=drain_seconds))
        if after > now:
            out.append(a.model_copy(update={"release_after": after}))
    taken = [IPv4Network(a.cidr) for a in out]

    def free_block() -> IPv4Network | None:
        for b in _blocks(spec):
            if usable(spec, b) > 0 and not any(b.overlaps(t) for t in taken):
                return b
        return None

    starved: list[str] = []
    more: list[str] = []
    for node in sorted(serving):
        mine = [a for a in out if a.node == node]
        if mine:
            capacity = sum(usable(spec, IPv4Network(a.cidr)) for a in mine)
            if sum(a.leases for a in mine) < threshold * capacity:
                continue
        block = free_block()
        if block is None:
            (more if mine else starved).append(node)
            continue
        out.append(BlockAssignment(cidr=str(block), node=node))
        taken.append(block)
    return BlockPlan(tuple(out), tuple(starved), tuple(more))

"""The BNGNode status an agent reports: a pure function of what it serves and holds."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import datetime

from bng_operator.agent.config import NodeConfig
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.api.bngnode import (
    BlockUsage,
    BNGNodeStatus,
    MapFill,
    NATUsage,
    ProgramStatus,
    RadiusServerStatus,
)
from bng_operator.api.common import Condition, with_condition
from bng_operator.policy.blocks import usable


def block_usage(config: NodeConfig, leases: Iterable[Lease]) -> list[BlockUsage]:
    """Leases per block of every pool served. Leases of a pool no longer served are counted
    under the pool with no block, so the operator knows the pool is not drained yet."""
    starts: list[tuple[int, int, str, str]] = []  # (first, last, pool, cidr)
    for name, p in config.pools.items():
        for block, _subnet in p.blocks:
            starts.append((int(block.network_address), int(block.broadcast_address), name,
                           str(block)))
    starts.sort()
    firsts = [s[0] for s in starts]
    counts: dict[tuple[str, str], int] = {(s[2], s[3]): 0 for s in starts}
    for lease in leases:
        i = bisect.bisect_right(firsts, lease.address) - 1
        if i >= 0 and starts[i][1] >= lease.address and starts[i][2] == lease.pool:
            key = (lease.pool, starts[i][3])
        else:
            key = (lease.pool, "")
        counts[key] = counts.get(key, 0) + 1
    sizes = {(s[2], s[3]): usable(config.pools[s[2]].spec, block)
             for s in starts for block, _ in config.pools[s[2]].blocks if str(block) == s[3]}
    return [BlockUsage(pool=pool, cidr=cidr, leases=n, size=sizes.get((pool, cidr), 0))
            for (pool, cidr), n in sorted(counts.items())]


def node_status(config: NodeConfig, leases: Iterable[Lease], programs: list[ProgramStatus],
                maps: list[MapFill], problem: str, degraded: tuple[str, str],
                generation: int | None,
                last_sync: datetime | None, conditions: list[Condition],
                now: datetime, nat: list[NATUsage] | None = None,
                radius: list[RadiusServerStatus] | None = None,
                hubble: str = "") -> BNGNodeStatus:
    """``problem`` keeps the node from serving (Ready=False); ``degraded`` (a reason and a
    message) is served around (Degraded=True), such as a fast path that could not load.
    Empty strings: all is well."""
    leases = list(leases)
    conds = with_condition(conditions, "Ready", not problem,
                           "NotServing" if problem else "Serving",
                           problem or f"serving DHCP on {', '.join(config.access_interfaces)}",
                           generation, now)
    reason, message = degraded
    conds = with_condition(conds, "Degraded", bool(message), reason or "AllPathsUp",
                           message or "every program is attached", generation, now)
    return BNGNodeStatus(programs=programs, maps=maps, blocks=block_usage(config, leases),
                         nat=nat or [], radius=radius or [],
                         leases_active=len(leases), hubble=hubble, last_sync=last_sync,
                         observed_generation=generation, conditions=conds)

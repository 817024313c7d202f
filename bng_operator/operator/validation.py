"""Checks across objects that no single CRD schema can make: pure functions, no cluster."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Network

from bng_operator.api import IPPool, NATPool, QoSPolicy, SubscriberClass
from bng_operator.policy.natsplit import capacity_error

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Finding:
    """Why one object cannot be served as written. ``reason`` is a CamelCase word."""

    kind: str
    name: str
    reason: str
    message: str


def _age_order(p: IPPool | NATPool) -> tuple[datetime, str]:
    return (p.metadata.creation_timestamp or _EPOCH, p.name)


def overlapping_pools(pools: Sequence[IPPool]) -> list[Finding]:
    """A pool whose subnets overlap an older pool's is refused; the older one keeps serving,
    so creating a bad pool never takes addresses away from working subscribers."""
    out: list[Finding] = []
    accepted: list[IPPool] = []
    for p in sorted(pools, key=_age_order):
        clash = next(((q, a, b) for q in accepted for a in p.spec.subnets for b in q.spec.subnets
                      if a.network.overlaps(b.network)), None)
        if clash is None:
            accepted.append(p)
            continue
        q, a, b = clash
        out.append(Finding("IPPool", p.name, "Overlaps",
                           f"subnet {a.cidr} overlaps subnet {b.cidr} of IPPool {q.name}, which "
                           "is older; this pool is not served until the overlap is removed"))
    return out


def overlapping_nat_pools(pools: Sequence[NATPool]) -> list[Finding]:
    """A NATPool sharing a public address with an older one is refused: two pools with one
    address would put it (and its ports) on two nodes."""
    out: list[Finding] = []
    accepted: list[tuple[NATPool, list[IPv4Network]]] = []
    for p in sorted(pools, key=_age_order):
        nets = [IPv4Network(a) for a in p.spec.addresses]
        clash = next(((q, a, b) for q, theirs in accepted for a in nets for b in theirs
                      if a.overlaps(b)), None)
        if clash is None:
            accepted.append((p, nets))
            continue
        q, a, b = clash
        out.append(Finding("NATPool", p.name, "Overlaps",
                           f"address {a} overlaps address {b} of NATPool {q.name}, which is "
                           "older; this pool is not served until the overlap is removed"))
    return out


def undersized_nat_pools(pools: Sequence[NATPool]) -> list[Finding]:
    """A deterministic NATPool whose addresses cannot give every inside address its blocks
    is refused: the formula would leave the last subscribers without a public address."""
    return [Finding("NATPool", p.name, "TooSmall", f"deterministic mode: {why}; add "
                    "addresses, or shrink insidePrefixes, portsPerBlock or blocksPerSubscriber")
            for p in pools if (why := capacity_error(p.spec))]


def dangling_references(classes: Sequence[SubscriberClass], pools: Sequence[IPPool],
                        qos: Sequence[QoSPolicy], nat: Sequence[NATPool],
                        refused_pools: set[str],
                        refused_nat: frozenset[str] = frozenset()) -> list[Finding]:
    """Classes that name a pool, QoS policy or NAT pool that does not exist (or is refused)."""
    known = {"IPPool": {p.name for p in pools} - refused_pools,
             "QoSPolicy": {q.name for q in qos}, "NATPool": {n.name for n in nat} - refused_nat}
    out = []
    for c in classes:
        refs = (("IPPool", c.spec.pool), ("QoSPolicy", c.spec.qos_policy),
                ("NATPool", c.spec.nat_pool))
        missing = [f"{kind} {name}" for kind, name in refs
                   if name is not None and name not in known[kind]]
        if missing:
            out.append(Finding("SubscriberClass", c.name, "MissingReference",
                               f"refers to {', '.join(missing)}, which does not exist or is not "
                               "served; subscribers of this class are not served"))
    return out

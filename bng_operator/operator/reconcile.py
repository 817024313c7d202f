"""One round of the operator: every input object in, every output object's desired state out.

A pure function of the cluster's state, so the whole of the operator's judgement is tested
with tables of cases and no cluster. The kopf layer only gathers the state and writes the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime

from bng_operator.api import BNGNode, IPPool, NATPool, QoSPolicy, SubscriberClass
from bng_operator.api.bngnode import FAST_PATH_AUTHORITY, BNGNodeSpec, NATUsage
from bng_operator.api.common import Condition, parse_duration, with_condition
from bng_operator.api.ippool import IPPoolStatus, NodeBlocks
from bng_operator.api.natpool import NATPoolStatus
from bng_operator.api.subscriberclass import SubscriberClassStatus
from bng_operator.operator.validation import (
    Finding,
    dangling_references,
    overlapping_nat_pools,
    overlapping_pools,
    undersized_nat_pools,
)
from bng_operator.policy.blocks import plan_blocks, pool_size
from bng_operator.policy.natsplit import address_count, blocks_per_address, plan_addresses
from bng_operator.policy.render import NodeDefaults, NodeInfo, render_spec, selects

# Set on an IPPool to let it go although nodes still report leases in it.
FORCE_DELETE_ANNOTATION = "bng.dev/force-delete"
FINALIZER = "bng.dev/leases"


@dataclass(frozen=True)
class Settings:
    node_label: tuple[str, str | None] = ("bng.dev/node", "true")
    defaults: NodeDefaults = field(default_factory=NodeDefaults)
    block_threshold: float = 0.8  # a node's blocks this full: it gets another
    # The agents' --fast-path-authority: a departed node's fast path may answer this long
    # after its agent's last heartbeat, so its blocks are held this much longer.
    fast_path_authority: float = FAST_PATH_AUTHORITY


def parse_label(text: str) -> tuple[str, str | None]:
    """``key=value``, or ``key`` alone for "has the label"."""
    key, eq, value = text.partition("=")
    if not key:
        raise ValueError(f"not a label selector: {text!r} (write key=value or key)")
    return key, value if eq else None


@dataclass(frozen=True)
class ClusterState:
    nodes: Sequence[NodeInfo] = ()
    pools: Sequence[IPPool] = ()
    classes: Sequence[SubscriberClass] = ()
    qos: Sequence[QoSPolicy] = ()
    nat: Sequence[NATPool] = ()
    bngnodes: Sequence[BNGNode] = ()  # as they are now, status included


@dataclass(frozen=True)
class Event:
    kind: str
    name: str
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    specs: dict[str, BNGNodeSpec]  # the BNGNodes that should exist
    pool_status: dict[str, IPPoolStatus]
    class_status: dict[str, SubscriberClassStatus]
    releasable: frozenset[str]  # deleted IPPools whose finalizer can go
    events: tuple[Event, ...]
    nat_status: dict[str, NATPoolStatus] = field(default_factory=dict)
    releasable_nat: frozenset[str] = frozenset()  # deleted NATPools whose finalizer can go


def bng_nodes(nodes: Sequence[NodeInfo], label: tuple[str, str | None]) -> list[NodeInfo]:
    key, value = label
    return sorted((n for n in nodes if key in n.labels and (value is None or n.labels[key] == value)),
                  key=lambda n: n.name)


def _drain_seconds(pool: IPPool, classes: Sequence[SubscriberClass]) -> int:
    times = [parse_duration(pool.spec.lease_time)]
    times += [parse_duration(c.spec.lease_time) for c in classes
              if c.spec.pool == pool.name and c.spec.lease_time]
    return max(times)


def _events(kind: str, name: str, old: Sequence[Condition], new: Sequence[Condition],
            bad: dict[str, bool]) -> list[Event]:
    """An Event for each condition that changed status or reason: transitions, not repeats."""
    before = {c.type: (c.status, c.reason) for c in old}
    out = []
    for c in new:
        if before.get(c.type) != (c.status, c.reason) and (c.type in bad):
            warn = (c.status == "True") == bad[c.type]
            if warn or c.type in before:
                out.append(Event(kind, name, "Warning" if warn else "Normal", c.reason, c.message))
    return out


def plan(state: ClusterState, settings: Settings, now: datetime) -> Plan:
    nodes = bng_nodes(state.nodes, settings.node_label)
    findings: list[Finding] = overlapping_pools(state.pools)
    refused = {f.name for f in findings}
    deleting = {p.name for p in state.pools if p.metadata.deletion_timestamp is not None}
    live = [p for p in state.pools if p.name not in deleting]
    nat_findings = overlapping_nat_pools(state.nat)
    overlapping = {f.name for f in nat_findings}
    nat_findings += undersized_nat_pools([n for n in state.nat if n.name not in overlapping])
    deleting_nat = {n.name for n in state.nat if n.metadata.deletion_timestamp is not None}
    refused_nat = frozenset(f.name for f in nat_findings) | deleting_nat
    class_findings = dangling_references(state.classes, live, state.qos, state.nat,
                                         refused | deleting, refused_nat)
    bad_classes = {f.name: f for f in class_findings}
    valid_classes = [c for c in state.classes if c.name not in bad_classes]
    reported = {n.name: n.status for n in state.bngnodes if n.status is not None}
    node_names = {n.name for n in nodes}

    events: list[Event] = []
    pool_status: dict[str, IPPoolStatus] = {}
    blocks: dict[str, dict[str, list[str]]] = {}  # node -> pool -> cidrs
    releasable = set()
    for p in sorted(state.pools, key=lambda p: p.name):
        old = p.status or IPPoolStatus()
        serving = [] if p.name in refused | deleting else \
            [n.name for n in nodes if selects(p.spec.node_selector, n.labels)]
        usage = {b.cidr: b.leases for name, st in reported.items() if name in node_names
                 for b in st.blocks if b.pool == p.name}
        bp = plan_blocks(p.spec, serving, old.blocks, usage, settings.block_threshold, now,
                         _drain_seconds(p, state.classes) + int(settings.fast_path_authority))
        for a in bp.assignments:
            if a.release_after is None:
                blocks.setdefault(a.node, {}).setdefault(p.name, []).append(a.cidr)
        # leases the nodes hold in this pool, blocks or not (a deleted pool's leases run out)
        held = sum(b.leases for st in reported.values() for b in st.blocks if b.pool == p.name)
        allocated = max(held, sum(a.leases for a in bp.assignments))
        size = pool_size(p.spec)
        gen = p.metadata.generation
        conds = list(old.conditions)
        if p.name in refused:
            f = next(f for f in findings if f.name == p.name)
            conds = with_condition(conds, "Ready", False, f.reason, f.message, gen, now)
        elif p.name in deleting:
            force = p.metadata.annotations.get(FORCE_DELETE_ANNOTATION) == "true"
            if allocated == 0 or force:
                releasable.add(p.name)
            conds = with_condition(
                conds, "Ready", False, "Deleting",
                f"{allocated} leases still held on nodes; the pool is deleted when they end "
                f"(or at once with the annotation {FORCE_DELETE_ANNOTATION}=true)", gen, now)
        elif bp.starved:
            conds = with_condition(
                conds, "Ready", False, "TooSmall",
                f"no free block of /{p.spec.block_size} for node(s) {', '.join(bp.starved)}: "
                f"the pool has too few blocks for the {len(serving)} nodes it selects", gen, now)
        elif not serving:
            conds = with_condition(conds, "Ready", False, "NoNodes",
                                   "no bng node matches the pool's nodeSelector", gen, now)
        else:
            conds = with_condition(conds, "Ready", True, "Serving",
                                   f"served by {len(serving)} node(s)", gen, now)
        exhausted = bool(bp.starved or bp.wanting_more) or (size > 0 and allocated >= size)
        who = ", ".join(bp.starved + bp.wanting_more)
        conds = with_condition(
            conds, "Exhausted", exhausted, "NoFreeBlock" if exhausted else "BlocksAvailable",
            f"node(s) {who} need another block and none is free" if who else
            ("every address is leased" if exhausted else "free blocks remain"), gen, now)
        per_node: dict[str, list[int]] = {}
        for a in bp.assignments:
            n = per_node.setdefault(a.node, [0, 0])
            n[0] += 1
            n[1] += a.leases
        pool_status[p.name] = IPPoolStatus(
            blocks=list(bp.assignments),
            nodes=[NodeBlocks(node=k, blocks=v[0], leases=v[1]) for k, v in sorted(per_node.items())],
            size=size, allocated=allocated, free=max(0, size - allocated),
            utilization=min(100, allocated * 100 // size) if size else 100,
            observed_generation=gen, conditions=conds)
        events += _events("IPPool", p.name, old.conditions, conds,
                          {"Ready": False, "Exhausted": True})

    class_status = {}
    for c in sorted(state.classes, key=lambda c: c.name):
        old_c = c.status or SubscriberClassStatus()
        bad = bad_classes.get(c.name)
        conds = with_condition(list(old_c.conditions), "Ready", bad is None,
                               bad.reason if bad else "Resolved",
                               bad.message if bad else "every reference resolves",
                               c.metadata.generation, now)
        class_status[c.name] = old_c.model_copy(update={"conditions": conds})
        events += _events("SubscriberClass", c.name, old_c.conditions, conds, {"Ready": False})

    served = [p for p in live if p.name not in refused]
    nat_status, nat_addresses, releasable_nat = _plan_nat(
        state, settings, now, nat_findings, valid_classes, served, blocks,
        {n.name for n in nodes})
    for np in sorted(state.nat, key=lambda np: np.name):
        events += _events("NATPool", np.name, (np.status or NATPoolStatus()).conditions,
                          nat_status[np.name].conditions, {"Ready": False, "Exhausted": True})
    specs = {n.name: render_spec(n, served, valid_classes, state.qos, state.nat,
                                 blocks.get(n.name, {}), settings.defaults,
                                 nat_addresses=nat_addresses.get(n.name, {})) for n in nodes}
    return Plan(specs, pool_status, class_status, frozenset(releasable), tuple(events),
                nat_status, releasable_nat)


def _in_use(node: BNGNode, pool: str) -> Set[str] | None:
    """The public addresses of ``pool`` that ``node``'s agent may still translate to: those
    of its spec, and any it reports a block on; None while it has not applied its latest
    spec (or its spec gives it the whole pool). A BNGNode no agent reported on yet: its
    spec's only."""
    mine = next((p for p in node.spec.nat_pools if p.name == pool), None)
    if mine is not None and not mine.addresses:
        return None
    spec = set(mine.addresses) if mine is not None else set()
    st = node.status
    if st is None:
        return spec
    if st.observed_generation is None or st.observed_generation != node.metadata.generation:
        return None
    return spec | {u.address for u in st.nat if u.pool == pool and u.blocks_used > 0}


def _plan_nat(state: ClusterState, settings: Settings, now: datetime, findings: list[Finding],
              classes: Sequence[SubscriberClass], served: Sequence[IPPool],
              blocks: Mapping[str, Mapping[str, Sequence[str]]], bng: set[str],
              ) -> tuple[dict[str, NATPoolStatus], dict[str, dict[str, Sequence[str]]],
                         frozenset[str]]:
    """Every NATPool's split and status; per node, per pool, the node's addresses; and the
    deleted pools no node translates to any more (their finalizer can go)."""
    served_names = {p.name for p in served}
    need: dict[str, set[str]] = {}  # NAT pool -> the nodes that serve a class naming it
    for node, held in blocks.items():
        for c in classes:
            if c.spec.nat_pool and c.spec.pool in served_names and held.get(c.spec.pool):
                need.setdefault(c.spec.nat_pool, set()).add(node)
    pools = {p.name: p for p in state.pools}
    refused = {f.name: f for f in findings}
    status: dict[str, NATPoolStatus] = {}
    addresses: dict[str, dict[str, Sequence[str]]] = {}
    releasable: set[str] = set()
    for n in sorted(state.nat, key=lambda n: n.name):
        old = n.status or NATPoolStatus()
        deleting = n.metadata.deletion_timestamp is not None
        nodes = sorted(need.get(n.name, ())) if n.name not in refused and not deleting else []
        reports: dict[str, list[NATUsage]] = {
            b.name: [u for u in b.status.nat if u.pool == n.name]
            for b in state.bngnodes if b.name in bng and b.status is not None}
        in_use = {b.name: _in_use(b, n.name) for b in state.bngnodes}
        # A departed node's subscribers may hold on as long as their IPPool blocks are held.
        ippools = {c.spec.pool for c in state.classes if c.spec.nat_pool == n.name}
        drain = max((_drain_seconds(pools[p], state.classes) for p in ippools if p in pools),
                    default=0) + int(settings.fast_path_authority)
        ap = plan_addresses(n.spec, nodes, old.nodes, reports, in_use, now, drain)
        for node, mine in ap.assigned.items():
            if mine:
                addresses.setdefault(node, {})[n.name] = mine
        total = address_count(n.spec) * blocks_per_address(n.spec)
        reported = sum(u.blocks_used for us in reports.values() for u in us)
        used = max(reported, sum(u.blocks_used for u in ap.nodes))
        gen = n.metadata.generation
        conds = list(old.conditions)
        det = n.spec.mode == "deterministic"
        if deleting:
            # Deleted: no node is given it; it goes once every agent has applied a spec
            # without it and reports no block on it (each release is in its block log).
            busy = sorted(b for b, use in in_use.items() if b in bng and use != set())
            force = n.metadata.annotations.get(FORCE_DELETE_ANNOTATION) == "true"
            if not busy or force:
                releasable.add(n.name)
            ready = (False, "Deleting",
                     f"node(s) {', '.join(busy) or 'none'} may still translate to its "
                     "addresses; the pool is deleted once they have released its port blocks "
                     f"(or at once with the annotation {FORCE_DELETE_ANNOTATION}=true)")
        elif n.name in refused:
            ready = (False, refused[n.name].reason, refused[n.name].message)
        elif ap.too_large is not None:
            ready = (False, "TooLarge",
                     f"{address_count(n.spec)} addresses: a {n.spec.mode} pool may have at "
                     f"most {ap.too_large}" + (" (every node holds all of them)" if det else ""))
        elif ap.starved:
            who = ", ".join(ap.starved)
            ready = (False, "Rebalancing",
                     f"node(s) {who} hold no public address yet: {ap.pending} are being "
                     "released by other nodes or held for nodes that left, and come free "
                     "after the pool's hold") if ap.pending else                 (False, "TooSmall",
                 f"no free public address for node(s) {who}: " + (
                     f"the pool has {address_count(n.spec)} for {len(nodes)} nodes"
                     if address_count(n.spec) < len(nodes) else
                     "the other nodes have port blocks in use on every address they hold "
                     "(an address moves only when no block is in use on it)"))
        elif not nodes:
            ready = (False, "NoNodes", "no bng node serves a class that uses this pool")
        elif det:
            ready = (True, "Serving", f"{len(nodes)} node(s) translate by RFC 7422's formula "
                                      "over every address")
        else:
            ready = (True, "Serving", f"split between {len(nodes)} node(s)")
        conds = with_condition(conds, "Ready", *ready, gen, now)
        if ap.starved:
            ex = (True, "NoFreeAddress",
                  f"node(s) {', '.join(ap.starved)} hold no public address: their "
                  "subscribers of classes using this pool are not served")
        elif total and used >= total:
            ex = (True, "NoFreeBlock", "every port block is in use")
        else:
            ex = (False, "BlocksAvailable", "free port blocks remain")
        conds = with_condition(conds, "Exhausted", *ex, gen, now)
        status[n.name] = NATPoolStatus(blocks_total=total, blocks_used=used, nodes=list(ap.nodes),
                                       observed_generation=gen, conditions=conds)
    return status, addresses, frozenset(releasable)

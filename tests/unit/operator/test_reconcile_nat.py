"""The operator's NAT judgement as tables: NATPools split between the nodes that serve their
classes, rendered into each BNGNode, held when nodes leave, and reported in NATPool status."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from bng_operator.api import BNGNode, NATPool
from bng_operator.api.bngnode import BNGNodeSpec
from bng_operator.operator.reconcile import (
    FORCE_DELETE_ANNOTATION,
    ClusterState,
    Plan,
    _in_use,
    plan,
)
from bng_operator.policy.render import NodeInfo
from tests.unit.operator.test_reconcile import LABEL, NOW, SETTINGS, samples, state

CGNAT = [f"203.0.113.{i}" for i in range(16)]  # the sample's /28
PER = (65535 - 1024 + 1) // 512


def nat_cond(p: Plan, pool: str = "cgnat", type: str = "Ready") -> tuple[str, str]:
    c = next(c for c in p.nat_status[pool].conditions if c.type == type)
    return c.status, c.reason


def addresses(spec: BNGNodeSpec, pool: str = "cgnat") -> list[str]:
    return next((n.addresses for n in spec.nat_pools if n.name == pool), [])


def fed_back(first: Plan, s: ClusterState, **kw: Any) -> ClusterState:
    """The next round's state: the pools' status as the last round wrote it, and BNGNodes
    whose spec is the last round's (generation 2) and whose agents applied it."""
    pools = [p.model_copy(update={"status": first.pool_status[p.name]}) for p in s.pools]
    nat = [n.model_copy(update={"status": first.nat_status[n.name]}) for n in s.nat]
    nodes = [bngnode(name, spec) for name, spec in first.specs.items()]
    return ClusterState(**{**s.__dict__, "pools": pools, "nat": nat, "bngnodes": nodes, **kw})


def bngnode(name: str, spec: BNGNodeSpec, nat: list[tuple[str, int]] | None = None,
            observed: int | None = 2) -> BNGNode:
    status: dict[str, Any] = {"observedGeneration": observed} if observed else {}
    if nat is not None:
        status["nat"] = [{"pool": "cgnat", "address": a, "blocksUsed": n, "blocksTotal": PER}
                         for a, n in nat]
    return BNGNode.model_validate({
        "metadata": {"name": name, "generation": 2},
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        **({"status": status} if status else {})})


def natpool(name: str, *addrs: str, created: int = 0, **spec: Any) -> NATPool:
    return NATPool.model_validate({
        "metadata": {"name": name, "generation": 1,
                     "creationTimestamp": (NOW + timedelta(seconds=created)).isoformat()},
        "spec": {"addresses": list(addrs), **spec}})


def test_two_nodes_share_a_pool_disjoint_and_whole() -> None:
    p = plan(state(), SETTINGS, NOW)
    a1, a2 = addresses(p.specs["n1"]), addresses(p.specs["n2"])
    assert a1 == CGNAT[:8] and a2 == CGNAT[8:]  # even, in runs, the whole pool
    st = p.nat_status["cgnat"]
    assert [(n.node, n.addresses, n.blocks_total) for n in st.nodes] == [
        ("n1", a1, 8 * PER), ("n2", a2, 8 * PER)]
    assert (st.blocks_total, st.blocks_used, st.observed_generation) == (16 * PER, 0, None)
    assert nat_cond(p) == ("True", "Serving")
    assert nat_cond(p, type="Exhausted") == ("False", "BlocksAvailable")
    # the worker without the label needs nothing
    assert "worker" not in {n.node for n in st.nodes}


def test_a_second_round_with_its_own_status_fed_back_is_a_no_op() -> None:
    first = plan(state(), SETTINGS, NOW)
    classes = [c.model_copy(update={"status": first.class_status[c.name]})
               for c in state().classes]
    second = plan(fed_back(first, state(), classes=classes), SETTINGS, NOW + timedelta(hours=1))
    assert second.specs == first.specs
    assert second.nat_status == first.nat_status
    assert second.events == ()


def test_a_node_that_joins_gets_addresses_the_others_hand_over() -> None:
    first = plan(state(), SETTINGS, NOW)
    three = [*state().nodes, NodeInfo("n3", labels=LABEL)]
    # n1 holds port blocks on its two lowest addresses: those stay with it
    s = fed_back(first, state(nodes=three))
    s = ClusterState(**{**s.__dict__, "bngnodes": [
        bngnode("n1", first.specs["n1"], [(CGNAT[0], 3), (CGNAT[1], 1)]),
        bngnode("n2", first.specs["n2"], [])]})
    second = plan(s, SETTINGS, NOW)
    st = {n.node: n for n in second.nat_status["cgnat"].nodes}
    assert addresses(second.specs["n1"]) == CGNAT[:6]  # 16 = 6 + 5 + 5: n1 keeps one more
    assert addresses(second.specs["n2"]) == CGNAT[8:13]
    assert st["n1"].releasing == CGNAT[6:8] and st["n2"].releasing == CGNAT[13:]
    assert st["n1"].release_after == NOW + timedelta(minutes=2)  # the pool's hold
    # n3 has none yet: the classes that need the pool are not served there, and it says so
    assert "cgnat" not in [n.name for n in second.specs["n3"].nat_pools]
    assert "residential" not in [c.name for c in second.specs["n3"].classes]
    assert "business" in [c.name for c in second.specs["n3"].classes]
    assert nat_cond(second) == ("False", "Rebalancing")
    assert nat_cond(second, type="Exhausted") == ("True", "NoFreeAddress")
    assert [(e.type, e.reason) for e in second.events if e.kind == "NATPool"] == [
        ("Warning", "Rebalancing"), ("Warning", "NoFreeAddress")]

    # Past the hold, once n1 and n2 have applied specs without them, they go to n3.
    third_state = fed_back(second, state(nodes=three))
    third = plan(third_state, SETTINGS, NOW + timedelta(minutes=2))
    assert addresses(third.specs["n3"]) == CGNAT[6:8] + CGNAT[13:]
    assert addresses(third.specs["n1"]) == CGNAT[:6]
    assert "residential" in [c.name for c in third.specs["n3"].classes]
    assert nat_cond(third) == ("True", "Serving")
    every = [a for sp in third.specs.values() for a in addresses(sp)]
    assert sorted(every) == sorted(CGNAT) and len(every) == len(set(every))


def test_an_agent_that_has_not_applied_the_handover_keeps_it_from_the_new_node() -> None:
    first = plan(state(), SETTINGS, NOW)
    three = [*state().nodes, NodeInfo("n3", labels=LABEL)]
    second = plan(fed_back(first, state(nodes=three)), SETTINGS, NOW)
    late = fed_back(second, state(nodes=three))
    behind = [bngnode(n.name, n.spec, observed=1) for n in late.bngnodes]
    third = plan(ClusterState(**{**late.__dict__, "bngnodes": behind}), SETTINGS,
                 NOW + timedelta(minutes=5))
    assert addresses(third.specs["n3"]) == []


def test_in_use() -> None:
    spec = plan(state(), SETTINGS, NOW).specs["n1"]
    assert _in_use(bngnode("n1", spec, observed=None), "cgnat") == set(CGNAT[:8])
    assert _in_use(bngnode("n1", spec, [(CGNAT[9], 1), (CGNAT[10], 0)]), "cgnat") == \
        {*CGNAT[:8], CGNAT[9]}  # blocks on an address taken from it: still in use
    assert _in_use(bngnode("n1", spec, [], observed=1), "cgnat") is None  # not applied yet
    assert _in_use(bngnode("n1", spec, []), "other") == set()
    whole = spec.model_copy(update={"nat_pools": [
        n.model_copy(update={"addresses": []}) for n in spec.nat_pools]})
    assert _in_use(bngnode("n1", whole, []), "cgnat") is None  # a hand-made whole-pool spec


def test_a_node_that_leaves_keeps_its_addresses_as_long_as_its_blocks() -> None:
    first = plan(state(), SETTINGS, NOW)
    s = fed_back(first, state())
    s = ClusterState(**{**s.__dict__, "bngnodes": [
        bngnode("n1", first.specs["n1"]), bngnode("n2", first.specs["n2"], [(CGNAT[8], 2)])]})
    second = plan(s, SETTINGS, NOW)
    only_n1 = [NodeInfo("n1", labels=LABEL)]
    third = plan(fed_back(second, state(nodes=only_n1)), SETTINGS, NOW)
    held = {n.node: n for n in third.nat_status["cgnat"].nodes}["n2"]
    # its residential subscribers' leases (4h), its fast path's authority, the NAT hold
    drain = timedelta(hours=4, seconds=SETTINGS.fast_path_authority, minutes=2)
    assert (held.addresses, held.release_after, held.blocks_used) == (CGNAT[8:], NOW + drain, 2)
    assert addresses(third.specs["n1"]) == CGNAT[:8]  # nothing of n2's yet
    later = plan(fed_back(third, state(nodes=only_n1)), SETTINGS, NOW + drain)
    assert addresses(later.specs["n1"]) == CGNAT
    assert [n.node for n in later.nat_status["cgnat"].nodes] == ["n1"]


def test_status_counts_what_the_nodes_report() -> None:
    first = plan(state(), SETTINGS, NOW)
    s = fed_back(first, state())
    s = ClusterState(**{**s.__dict__, "bngnodes": [
        bngnode("n1", first.specs["n1"], [(CGNAT[0], 100), (CGNAT[1], 26)]),
        bngnode("n2", first.specs["n2"], [(CGNAT[8], 5)])]})
    p = plan(s, SETTINGS, NOW)
    st = p.nat_status["cgnat"]
    assert [(n.node, n.blocks_used, n.blocks_total) for n in st.nodes] == [
        ("n1", 126, 8 * PER), ("n2", 5, 8 * PER)]
    assert (st.blocks_used, st.blocks_total) == (131, 16 * PER)
    assert nat_cond(p, type="Exhausted") == ("False", "BlocksAvailable")
    full = ClusterState(**{**s.__dict__, "bngnodes": [
        bngnode("n1", first.specs["n1"], [(a, PER) for a in CGNAT[:8]]),
        bngnode("n2", first.specs["n2"], [(a, PER) for a in CGNAT[8:]])]})
    assert nat_cond(plan(full, SETTINGS, NOW), type="Exhausted") == ("True", "NoFreeBlock")


def test_an_overlapping_nat_pool_is_refused_and_its_classes_not_served() -> None:
    s = samples()
    newer = natpool("cgnat-2", "203.0.113.8/29", "198.51.100.200", created=60)
    cls = s["SubscriberClass/residential"]
    other = cls.model_copy(update={"metadata": cls.metadata.model_copy(update={"name": "res-2"}),
                                   "spec": cls.spec.model_copy(update={"nat_pool": "cgnat-2"})})
    p = plan(state(nat=[s["NATPool/cgnat"], newer], classes=[*state().classes, other]),
             SETTINGS, NOW)
    assert nat_cond(p) == ("True", "Serving")
    assert nat_cond(p, "cgnat-2") == ("False", "Overlaps")
    assert "203.0.113.8/29 overlaps address 203.0.113.0/28 of NATPool cgnat" in \
        p.nat_status["cgnat-2"].conditions[0].message
    assert p.nat_status["cgnat-2"].nodes == []
    assert p.class_status["res-2"].conditions[0].reason == "MissingReference"
    assert all("cgnat-2" not in [n.name for n in sp.nat_pools] for sp in p.specs.values())
    assert ("NATPool", "Warning", "Overlaps") in {(e.kind, e.type, e.reason) for e in p.events}


def test_a_deterministic_pool_gives_every_node_every_address() -> None:
    # 16 addresses x 504 blocks of 128 ports hold the residential pool's 4,096
    det = natpool("cgnat", "203.0.113.0/28", mode="deterministic",
                  insidePrefixes=["100.64.0.0/20"], portsPerBlock=128)
    p = plan(state(nat=[det]), SETTINGS, NOW)
    assert addresses(p.specs["n1"]) == addresses(p.specs["n2"]) == CGNAT
    assert nat_cond(p) == ("True", "Serving")
    assert [(n.node, n.addresses) for n in p.nat_status["cgnat"].nodes] == [("n1", []),
                                                                           ("n2", [])]


@pytest.mark.parametrize(("addrs", "nodes", "reason"), [
    (["203.0.113.7"], 2, "TooSmall"),  # one address for two nodes
    (["100.64.0.0/17"], 1, "TooLarge"),
])
def test_a_pool_that_cannot_serve_every_node(addrs: list[str], nodes: int, reason: str) -> None:
    ns = [NodeInfo(f"n{i + 1}", labels=LABEL) for i in range(nodes)]
    p = plan(state(nodes=ns, nat=[natpool("cgnat", *addrs)]), SETTINGS, NOW)
    assert nat_cond(p) == ("False", reason)
    served = [n for n, sp in sorted(p.specs.items()) if addresses(sp)]
    assert len(served) == (1 if reason == "TooSmall" else 0)


def test_a_pool_no_node_needs() -> None:
    p = plan(state(classes=[samples()["SubscriberClass/business"]]), SETTINGS, NOW)
    assert nat_cond(p) == ("False", "NoNodes")
    assert all(not sp.nat_pools for sp in p.specs.values())


@pytest.mark.parametrize(("inside", "per_block", "served"), [
    ("100.64.0.0/20", 128, True),  # 4,096 inside; 16 x 504 blocks: fits
    ("100.64.0.0/20", 512, False),  # 126 slots an address: 33 addresses needed, 16 given
    ("100.64.0.0/16", 128, False),
])
def test_a_deterministic_pool_too_small_for_its_inside_prefixes_is_refused(
        inside: str, per_block: int, served: bool) -> None:
    det = natpool("cgnat", "203.0.113.0/28", mode="deterministic", insidePrefixes=[inside],
                  portsPerBlock=per_block)
    p = plan(state(nat=[det]), SETTINGS, NOW)
    assert nat_cond(p) == (("True", "Serving") if served else ("False", "TooSmall"))
    assert bool(addresses(p.specs["n1"])) is served
    assert (p.class_status["residential"].conditions[0].reason == "MissingReference") is \
        (not served)
    if not served:
        msg = p.nat_status["cgnat"].conditions[0].message
        assert "the pool has 16" in msg and "insidePrefixes" in msg
        assert ("NATPool", "Warning", "TooSmall") in {(e.kind, e.type, e.reason)
                                                      for e in p.events}


def _deleting(pool: NATPool, **annotations: str) -> NATPool:
    meta = pool.metadata.model_copy(update={"deletion_timestamp": NOW,
                                            "annotations": annotations})
    return pool.model_copy(update={"metadata": meta})


def test_a_deleted_nat_pool_is_held_until_no_node_translates_to_it() -> None:
    first = plan(state(), SETTINGS, NOW)
    s = fed_back(first, state())
    gone = [_deleting(n) for n in s.nat]
    # the nodes still hold blocks, on specs that still give them the pool
    busy = ClusterState(**{**s.__dict__, "nat": gone, "bngnodes": [
        bngnode("n1", first.specs["n1"], [(CGNAT[0], 3)]), bngnode("n2", first.specs["n2"], [])]})
    p = plan(busy, SETTINGS, NOW)
    assert "cgnat" not in p.releasable_nat
    assert nat_cond(p) == ("False", "Deleting")
    assert "node(s) n1, n2 may still translate" in p.nat_status["cgnat"].conditions[0].message
    # no node is given it any more, and its classes say why
    assert all(not sp.nat_pools for sp in p.specs.values())
    assert p.class_status["residential"].conditions[0].reason == "MissingReference"
    # written, not yet applied by the agents: still held
    written = [bngnode(n, p.specs[n], [], observed=1) for n in ("n1", "n2")]
    assert "cgnat" not in plan(ClusterState(**{**busy.__dict__, "bngnodes": written}),
                               SETTINGS, NOW).releasable_nat
    # one agent applied it and released its blocks; the other still reports one
    half = [bngnode("n1", p.specs["n1"], []), bngnode("n2", p.specs["n2"], [(CGNAT[8], 1)])]
    later = plan(ClusterState(**{**busy.__dict__, "bngnodes": half}), SETTINGS, NOW)
    assert "cgnat" not in later.releasable_nat
    assert "node(s) n2 may" in later.nat_status["cgnat"].conditions[0].message
    done = [bngnode(n, p.specs[n], []) for n in ("n1", "n2")]
    assert "cgnat" in plan(ClusterState(**{**busy.__dict__, "bngnodes": done}),
                           SETTINGS, NOW).releasable_nat
    # the annotation lets it go at once
    forced = ClusterState(**{**busy.__dict__, "nat": [
        _deleting(n, **{FORCE_DELETE_ANNOTATION: "true"}) for n in s.nat]})
    assert "cgnat" in plan(forced, SETTINGS, NOW).releasable_nat


def test_a_new_pool_with_a_deleted_pools_addresses_waits_for_it() -> None:
    """The finalizer's point: while a deleted pool's nodes may still translate to its
    addresses, no other pool (so no other node) gets them."""
    s = samples()
    again = natpool("cgnat-new", "203.0.113.0/28", created=60)
    p = plan(state(nat=[_deleting(s["NATPool/cgnat"]), again]), SETTINGS, NOW)
    assert nat_cond(p, "cgnat-new") == ("False", "Overlaps")
    p = plan(state(nat=[again]), SETTINGS, NOW)  # once it is gone
    assert nat_cond(p, "cgnat-new") == ("False", "NoNodes")  # no class names it yet

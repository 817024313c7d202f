"""The operator's whole judgement as tables: cluster state in, desired objects and events out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from bng_operator.api import BNGNode, IPPool, NATPool, QoSPolicy, SubscriberClass
from bng_operator.api.documents import load, yaml_files
from bng_operator.operator.reconcile import (
    FORCE_DELETE_ANNOTATION,
    ClusterState,
    Plan,
    Settings,
    parse_label,
    plan,
)
from bng_operator.policy.render import NodeDefaults, NodeInfo

SAMPLES = Path(__file__).resolve().parents[3] / "config" / "samples"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LABEL = {"bng.dev/node": "true"}
SETTINGS = Settings(defaults=NodeDefaults(access=("eth1",), uplink="eth0", max_leases=5000))


def samples() -> dict[str, Any]:
    objects, errors = load(yaml_files([SAMPLES]))
    assert not errors
    return {f"{o.kind}/{o.name}": o for o in objects}


def state(**kw: Any) -> ClusterState:
    s = samples()
    base: dict[str, Any] = {
        "nodes": [NodeInfo("n1", labels=LABEL), NodeInfo("n2", labels=LABEL),
                  NodeInfo("worker", labels={})],
        "pools": [s["IPPool/business"], s["IPPool/residential"]],
        "classes": [s["SubscriberClass/business"], s["SubscriberClass/residential"]],
        "qos": [s["QoSPolicy/business-1g"], s["QoSPolicy/residential-100m"]],
        "nat": [s["NATPool/cgnat"]],
    }
    base.update(kw)
    return ClusterState(**base)


def pool(name: str, cidr: str, block: int = 24, created: int = 0, **meta: Any) -> IPPool:
    net = IPv4Network(cidr)
    return IPPool.model_validate({
        "metadata": {"name": name, "generation": 3,
                     "creationTimestamp": (NOW + timedelta(seconds=created)).isoformat(), **meta},
        "spec": {"subnets": [{"cidr": cidr, "gateway": str(net.network_address + 1)}],
                 "blockSize": block}})


def reported(node: str, blocks: list[tuple[str, str, int]]) -> BNGNode:
    return BNGNode.model_validate({
        "metadata": {"name": node},
        "spec": {"nodeName": node, "interfaces": {"access": ["eth1"]}},
        "status": {"blocks": [{"pool": p, "cidr": c, "leases": n, "size": 256}
                              for p, c, n in blocks]}})


def cond(p: Plan, pool: str, type: str = "Ready") -> tuple[str, str]:
    c = next(c for c in p.pool_status[pool].conditions if c.type == type)
    assert c.observed_generation == 3 or c.observed_generation is None
    return c.status, c.reason


def test_one_bngnode_per_labelled_node_with_disjoint_blocks() -> None:
    p = plan(state(), SETTINGS, NOW)
    assert sorted(p.specs) == ["n1", "n2"]
    n1, n2 = p.specs["n1"], p.specs["n2"]
    assert n1.interfaces.access == ["eth1"] and n1.interfaces.uplink == "eth0"
    assert n1.max_leases == 5000
    assert [x.name for x in n1.pools] == ["business", "residential"]
    assert [x.name for x in n1.classes] == ["business", "residential"]
    assert [x.name for x in n1.qos_policies] == ["business-1g", "residential-100m"]
    assert [x.name for x in n1.nat_pools] == ["cgnat"]
    b1 = {b for x in n1.pools for b in x.blocks}
    b2 = {b for x in n2.pools for b in x.blocks}
    assert b1 and b2 and not b1 & b2
    st = p.pool_status["residential"]
    assert [(b.cidr, b.node) for b in st.blocks] == [("100.64.0.0/24", "n1"), ("100.64.1.0/24", "n2")]
    assert [(n.node, n.blocks) for n in st.nodes] == [("n1", 1), ("n2", 1)]


def test_node_annotations_override_interfaces() -> None:
    n = NodeInfo("n1", labels=LABEL, annotations={"bng.dev/access-interfaces": "ens1f0, ens1f1",
                                                  "bng.dev/uplink-interface": "bond0"})
    spec = plan(state(nodes=[n]), SETTINGS, NOW).specs["n1"]
    assert spec.interfaces.access == ["ens1f0", "ens1f1"]
    assert spec.interfaces.uplink == "bond0"


@pytest.mark.parametrize(("label", "nodes"), [
    ("bng.dev/node=true", ["n1", "n2"]),
    ("bng.dev/node", ["n1", "n2", "n3"]),
    ("site=edge", ["n3"]),
])
def test_the_node_label_is_configurable(label: str, nodes: list[str]) -> None:
    extra = NodeInfo("n3", labels={"bng.dev/node": "false", "site": "edge"})
    s = state(nodes=[*state().nodes, extra])
    assert sorted(plan(s, Settings(node_label=parse_label(label)), NOW).specs) == nodes


def test_pool_status_counts_what_the_nodes_report() -> None:
    first = plan(state(), SETTINGS, NOW)
    pools = [p.model_copy(update={"status": first.pool_status[p.name]}) for p in state().pools]
    nodes = [reported("n1", [("residential", "100.64.0.0/24", 100)]),
             reported("n2", [("residential", "100.64.1.0/24", 20)])]
    p = plan(state(pools=pools, bngnodes=nodes), SETTINGS, NOW)
    st = p.pool_status["residential"]
    assert (st.size, st.allocated, st.free) == (4096 - 2 - 15, 120, 4096 - 2 - 15 - 120)
    assert st.utilization == 120 * 100 // st.size
    assert [(n.node, n.leases) for n in st.nodes] == [("n1", 100), ("n2", 20)]
    assert cond(p, "residential") == ("True", "Serving")
    assert cond(p, "residential", "Exhausted") == ("False", "BlocksAvailable")


def test_a_second_round_with_its_own_status_fed_back_is_a_no_op() -> None:
    first = plan(state(), SETTINGS, NOW)
    pools = [p.model_copy(update={"status": first.pool_status[p.name]}) for p in state().pools]
    classes = [c.model_copy(update={"status": first.class_status[c.name]})
               for c in state().classes]
    second = plan(state(pools=pools, classes=classes), SETTINGS, NOW + timedelta(minutes=5))
    assert second.specs == first.specs
    assert second.pool_status == first.pool_status  # transition times did not move
    assert second.class_status == first.class_status
    assert second.events == ()


def test_overlapping_pool_is_refused_the_older_one_keeps_serving() -> None:
    s = samples()
    old = pool("residential", "100.64.0.0/20", created=0)
    new = pool("residential-2", "100.64.8.0/21", created=60)
    p = plan(state(pools=[s["IPPool/business"], old, new]), SETTINGS, NOW)
    assert cond(p, "residential") == ("True", "Serving")
    assert cond(p, "residential-2") == ("False", "Overlaps")
    assert all("residential-2" not in [x.name for x in spec.pools] for spec in p.specs.values())
    ev = [e for e in p.events if e.name == "residential-2"]
    assert [(e.type, e.reason) for e in ev] == [("Warning", "Overlaps")]
    assert "100.64.0.0/20 of IPPool residential" in ev[0].message


@pytest.mark.parametrize(("field", "value", "missing"), [
    ("pool", "nope", "IPPool nope"),
    ("qosPolicy", "nope", "QoSPolicy nope"),
    ("natPool", "nope", "NATPool nope"),
])
def test_a_class_with_a_missing_reference_is_not_rendered(field: str, value: str,
                                                          missing: str) -> None:
    c = SubscriberClass.model_validate({"metadata": {"name": "broken", "generation": 1},
                                        "spec": {"pool": "residential", field: value}})
    p = plan(state(classes=[*state().classes, c]), SETTINGS, NOW)
    ready = p.class_status["broken"].conditions[0]
    assert (ready.status, ready.reason) == ("False", "MissingReference")
    assert missing in ready.message
    assert all("broken" not in [x.name for x in spec.classes] for spec in p.specs.values())
    assert [(e.kind, e.type, e.reason) for e in p.events if e.name == "broken"] == [
        ("SubscriberClass", "Warning", "MissingReference")]
    assert p.class_status["residential"].conditions[0].status == "True"


def test_a_pool_too_small_for_its_nodes() -> None:
    tiny = pool("tiny", "10.9.0.0/29", block=30)  # 2 blocks with usable addresses, 3 nodes
    nodes = [NodeInfo(f"n{i}", labels=LABEL) for i in range(3)]
    p = plan(state(nodes=nodes, pools=[tiny], classes=[], qos=[], nat=[]), SETTINGS, NOW)
    assert cond(p, "tiny") == ("False", "TooSmall")
    assert cond(p, "tiny", "Exhausted") == ("True", "NoFreeBlock")
    assert "n2" in p.pool_status["tiny"].conditions[0].message
    assert {(e.reason, e.type) for e in p.events} == {("TooSmall", "Warning"),
                                                      ("NoFreeBlock", "Warning")}
    # the nodes that got a block serve it; the one without does not get the pool at all
    assert [bool(s.pools) for _, s in sorted(p.specs.items())] == [True, True, False]


@pytest.mark.parametrize(("leases", "annotations", "releasable"), [
    (7, {}, False),
    (0, {}, True),
    (7, {FORCE_DELETE_ANNOTATION: "true"}, True),
])
def test_a_deleted_pool_is_held_until_its_leases_end(leases: int, annotations: dict[str, str],
                                                     releasable: bool) -> None:
    s = samples()
    gone = pool("residential", "100.64.0.0/20", deletionTimestamp=NOW.isoformat(),
                annotations=annotations)
    nodes = [reported("n1", [("residential", "100.64.0.0/24", leases)])]
    p = plan(state(pools=[s["IPPool/business"], gone], bngnodes=nodes), SETTINGS, NOW)
    assert ("residential" in p.releasable) is releasable
    assert cond(p, "residential") == ("False", "Deleting")
    assert f"{leases} leases still held" in p.pool_status["residential"].conditions[0].message
    assert all("residential" not in [x.name for x in spec.pools] for spec in p.specs.values())
    # classes of a deleted pool stop being served, and say why
    assert p.class_status["residential"].conditions[0].reason == "MissingReference"


def test_a_node_that_leaves_keeps_its_blocks_until_its_leases_can_have_ended() -> None:
    first = plan(state(), SETTINGS, NOW)
    pools = [p.model_copy(update={"status": first.pool_status[p.name]}) for p in state().pools]
    n2_used = reported("n2", [("residential", "100.64.1.0/24", 9)])
    second = plan(state(pools=pools, bngnodes=[n2_used]), SETTINGS, NOW)
    pools = [p.model_copy(update={"status": second.pool_status[p.name]}) for p in pools]
    only_n1 = [NodeInfo("n1", labels=LABEL)]
    third = plan(state(nodes=only_n1, pools=pools), SETTINGS, NOW)
    assert sorted(third.specs) == ["n1"]
    held = {b.cidr: b for b in third.pool_status["residential"].blocks}
    assert held["100.64.1.0/24"].node == "n2"
    # The lease time, plus the time its fast path may answer without an agent (issue 14, 2)
    hold = timedelta(hours=4, seconds=SETTINGS.fast_path_authority)
    assert SETTINGS.fast_path_authority == 600
    assert held["100.64.1.0/24"].release_after == NOW + hold
    pools = [p.model_copy(update={"status": third.pool_status[p.name]}) for p in pools]
    sooner = plan(state(nodes=only_n1, pools=pools), SETTINGS, NOW + timedelta(hours=4, seconds=1))
    assert "100.64.1.0/24" in {b.cidr for b in sooner.pool_status["residential"].blocks}
    later = plan(state(nodes=only_n1, pools=pools), SETTINGS, NOW + hold + timedelta(seconds=1))
    assert "100.64.1.0/24" not in {b.cidr for b in later.pool_status["residential"].blocks}


def test_bad_label_selector() -> None:
    with pytest.raises(ValueError, match="not a label selector"):
        parse_label("=x")


def test_objects_are_models() -> None:  # the state holds validated models, not dicts
    s = state()
    assert all(isinstance(x, IPPool) for x in s.pools)
    assert all(isinstance(x, QoSPolicy) for x in s.qos)
    assert all(isinstance(x, NATPool) for x in s.nat)

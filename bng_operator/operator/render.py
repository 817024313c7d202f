"""Rendering policy objects into the spec of one BNGNode: a pure function, no cluster.

This is the standalone form, where one node owns every pool whole. The operator adds
per-node address blocks on top of it.
"""

from __future__ import annotations

from collections.abc import Iterable

from bng_operator.api import BNGNode, IPPool, NATPool, QoSPolicy, Resource, SubscriberClass
from bng_operator.api.bngnode import (
    BNGNodeSpec,
    NodeClass,
    NodeNATPool,
    NodePool,
    NodeQoSPolicy,
)


class RenderError(ValueError):
    """The objects do not add up to a node configuration; the message names the object."""


def render_node(node: BNGNode, objects: Iterable[Resource]) -> BNGNodeSpec:
    """``node``'s spec with every referenced policy object embedded.

    A spec that already embeds its policy (written by the operator) is returned as it is.
    """
    if node.spec.pools or node.spec.classes:
        return node.spec
    objs = list(objects)
    pools = {o.name: o for o in objs if isinstance(o, IPPool)}
    classes = [o for o in objs if isinstance(o, SubscriberClass)]
    qos = {o.name: o for o in objs if isinstance(o, QoSPolicy)}
    nat = {o.name: o for o in objs if isinstance(o, NATPool)}
    for c in classes:
        missing = [f"{kind} {name}" for kind, name, known in (
            ("IPPool", c.spec.pool, pools), ("QoSPolicy", c.spec.qos_policy, qos),
            ("NATPool", c.spec.nat_pool, nat)) if name is not None and name not in known]
        if missing:
            raise RenderError(f"SubscriberClass {c.name} refers to {', '.join(missing)}, "
                              "which does not exist")
    selected = {name: p for name, p in pools.items()
                if all(node.metadata.labels.get(k) == v for k, v in p.spec.node_selector.items())}
    return node.spec.model_copy(update={
        "pools": [NodePool(name=n, spec=p.spec) for n, p in sorted(selected.items())],
        "classes": [NodeClass(name=c.name, spec=c.spec) for c in classes
                    if c.spec.pool in selected],
        "qos_policies": [NodeQoSPolicy(name=n, spec=q.spec) for n, q in sorted(qos.items())],
        "nat_pools": [NodeNATPool(name=n, spec=p.spec) for n, p in sorted(nat.items())],
    })

"""Rendering policy objects into the spec of one BNGNode: pure functions, no cluster.

``render_spec`` is the operator's: one node, the pools it serves with the blocks it holds,
the NAT pools with the public addresses it holds, and the classes and policies they need.
``render_node`` is the standalone form, where one node owns every pool whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bng_operator.api import BNGNode, IPPool, NATPool, QoSPolicy, Resource, SubscriberClass
from bng_operator.api.bngnode import (
    MAX_LEASES_PER_NODE,
    BNGNodeSpec,
    Interfaces,
    NodeClass,
    NodeNATPool,
    NodePool,
    NodeQoSPolicy,
    Option82Trust,
)

# Per-node overrides of the operator's interface defaults, comma-separated.
ACCESS_ANNOTATION = "bng.dev/access-interfaces"
UPLINK_ANNOTATION = "bng.dev/uplink-interface"
OPTION82_ANNOTATION = "bng.dev/option82-trusted-interfaces"


@dataclass(frozen=True)
class NodeInfo:
    """The part of a Kubernetes Node the operator reads."""

    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeDefaults:
    access: tuple[str, ...] = ("eth1",)
    uplink: str | None = None
    max_leases: int = MAX_LEASES_PER_NODE
    option82_trusted: tuple[str, ...] = ()  # access interfaces whose access node inserts it
    option82_relays: tuple[str, ...] = ()  # CIDRs of relays whose option 82 is believed
    option82_untrusted: Literal["drop", "strip"] = "drop"
    commit_at_offer: bool = False  # BNGNodeSpec.commit_at_offer
    event_loop_cpu: int | None = None  # BNGNodeSpec.event_loop_cpu


def _names(raw: str | None) -> list[str]:
    """A comma-separated annotation's names."""
    return [i.strip() for i in (raw or "").split(",") if i.strip()]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def render_spec(node: NodeInfo, pools: Sequence[IPPool], classes: Sequence[SubscriberClass],
                qos: Sequence[QoSPolicy], nat: Sequence[NATPool],
                blocks: Mapping[str, Sequence[str]], defaults: NodeDefaults, *,
                nat_addresses: Mapping[str, Sequence[str]] | None = None) -> BNGNodeSpec:
    """The BNGNode spec of ``node``. ``pools`` and ``classes`` are the valid ones; ``blocks``
    maps a pool to the cidrs this node holds in it, ``nat_addresses`` a NATPool to the public
    addresses this node translates to. A pool the node holds no block of, or a NATPool it
    holds no address of, is left out (with the classes that use it): an empty list would
    mean "the whole pool"."""
    access = _names(node.annotations.get(ACCESS_ANNOTATION)) or list(defaults.access)
    trusted = _names(node.annotations.get(OPTION82_ANNOTATION)) \
        if OPTION82_ANNOTATION in node.annotations else list(defaults.option82_trusted)
    public = {name: list(a) for name, a in (nat_addresses or {}).items() if a}
    known_nat = {n.name for n in nat}
    classes = [c for c in classes if c.spec.nat_pool not in known_nat or c.spec.nat_pool in public]
    served = {p.name: p for p in pools if blocks.get(p.name)}
    cls = sorted((c for c in classes if c.spec.pool in served), key=lambda c: c.name)
    # RADIUS's Filter-Id may name any QoSPolicy for a session of a class with auth: radius
    radius = any(c.spec.auth == "radius" for c in cls)
    used_qos = {c.spec.qos_policy for c in cls}
    used_nat = {c.spec.nat_pool for c in cls}
    return BNGNodeSpec(
        node_name=node.name,
        interfaces=Interfaces(
            access=access, uplink=node.annotations.get(UPLINK_ANNOTATION, defaults.uplink),
            # Only the node's own access interfaces can be trusted ones.
            option82=Option82Trust(trusted=[i for i in trusted if i in access],
                                   trusted_relays=list(defaults.option82_relays),
                                   untrusted=defaults.option82_untrusted)),
        max_leases=defaults.max_leases,
        commit_at_offer=defaults.commit_at_offer,
        event_loop_cpu=defaults.event_loop_cpu,
        pools=[NodePool(name=n, spec=p.spec, blocks=sorted(blocks[n], key=_cidr_key))
               for n, p in sorted(served.items())],
        classes=[NodeClass(name=c.name, spec=c.spec) for c in cls],
        qos_policies=[NodeQoSPolicy(name=q.name, spec=q.spec) for q in sorted(qos, key=_name)
                      if radius or q.name in used_qos],
        nat_pools=[NodeNATPool(name=n.name, spec=n.spec, addresses=public[n.name])
                   for n in sorted(nat, key=_name) if n.name in used_nat],
    )


def _name(r: Resource) -> str:
    return r.name


def _cidr_key(cidr: str) -> tuple[int, ...]:
    addr, _, prefix = cidr.partition("/")
    return (*(int(x) for x in addr.split(".")), int(prefix or 32))


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
                if selects(p.spec.node_selector, node.metadata.labels)}
    return node.spec.model_copy(update={
        "pools": [NodePool(name=n, spec=p.spec) for n, p in sorted(selected.items())],
        "classes": [NodeClass(name=c.name, spec=c.spec) for c in classes
                    if c.spec.pool in selected],
        "qos_policies": [NodeQoSPolicy(name=n, spec=q.spec) for n, q in sorted(qos.items())],
        "nat_pools": [NodeNATPool(name=n, spec=p.spec) for n, p in sorted(nat.items())],
    })

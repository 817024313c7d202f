"""A node's NATPools as the agent applies them (agent/config.py ``_nat``)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from bng_lab.dhcp_env import sample_config
from bng_operator.agent.config import ConfigError
from bng_operator.api import NATPool, SubscriberClass
from bng_operator.api.bngnode import BNGNode


def _nat(**spec: Any):  # type: ignore[no-untyped-def]
    def edit(objs):  # type: ignore[no-untyped-def]
        return [o.model_copy(update={"spec": o.spec.model_copy(update=spec)})
                if isinstance(o, NATPool) else o for o in objs]
    return edit


def test_the_samples_nat_the_residential_class_behind_cgnat() -> None:
    c = sample_config()
    assert c.uplink == "uplink0"
    assert c.nat_pool_of == {"residential": "cgnat"}
    n = c.nat["cgnat"]
    assert n.served == tuple(IPv4Address("203.0.113.0") + i for i in range(16))
    assert n.inside == (IPv4Network("100.64.0.0/20"),)
    assert (n.layout.blocks_per_address, n.hold) == (126, 120)


def test_a_node_serves_only_its_share() -> None:
    def share(objs):  # type: ignore[no-untyped-def]
        out = []
        for o in objs:
            if isinstance(o, BNGNode):
                from bng_operator.policy.render import render_node
                spec = render_node(o, objs)
                pools = [p.model_copy(update={"addresses": ["203.0.113.4", "203.0.113.5"]})
                         for p in spec.nat_pools]
                o = o.model_copy(update={"spec": spec.model_copy(update={"nat_pools": pools})})
            out.append(o)
        return out
    n = sample_config(share).nat["cgnat"]
    assert n.served == (IPv4Address("203.0.113.4"), IPv4Address("203.0.113.5"))


@pytest.mark.parametrize(("edit", "message"), [
    (_nat(mode="deterministic", inside_prefixes=["100.64.0.0/20"]),
     "NATPool cgnat: deterministic mode: 4096 inside addresses at 1 blocks of 512 ports need "
     "33 public addresses; the pool has 16"),
])
def test_bad_nat_configuration_names_the_pool(edit: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sample_config(edit)


def test_deterministic_serves_the_addresses_of_its_inside_blocks() -> None:
    c = sample_config(_nat(mode="deterministic", inside_prefixes=["100.64.0.0/20"],
                           ports_per_block=1008, addresses=["203.0.113.0/25"]))
    n = c.nat["cgnat"]
    # 64 slots an address: the 4,096 inside addresses map to the first 64 of the /25
    assert n.deterministic and n.layout.slots_per_address == 64
    assert n.served == n.layout.addresses[:64]


def test_a_class_naming_a_missing_natpool_is_refused() -> None:
    def missing(objs):  # type: ignore[no-untyped-def]
        return [o.model_copy(update={"spec": o.spec.model_copy(update={"nat_pool": "nope"})})
                if isinstance(o, SubscriberClass) and o.name == "residential" else o
                for o in objs if not isinstance(o, NATPool)]
    with pytest.raises((ConfigError, ValueError), match="NATPool"):
        sample_config(missing)


def test_a_pool_a_class_serves_without_nat_is_not_inside() -> None:
    """Its sessions go out with their own addresses; only a pool every class of which NATs
    is "inside" (a source there without a block is dropped, never leaked)."""
    from bng_operator.api.common import ObjectMeta
    from bng_operator.api.subscriberclass import SubscriberClassSpec

    def plain(objs):  # type: ignore[no-untyped-def]
        return [*objs, SubscriberClass(metadata=ObjectMeta(name="default"), spec=SubscriberClassSpec(
            priority=10000, pool="residential"))]
    c = sample_config(plain)
    assert c.nat_pool_of == {"residential": "cgnat"}
    assert c.nat["cgnat"].inside == ()

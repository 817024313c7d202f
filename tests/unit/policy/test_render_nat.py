"""A node's NATPools in its rendered spec: with the public addresses it holds, or left out
(with the classes that use them) when it holds none: an empty list would mean all of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from bng_operator.api import IPPool, NATPool, SubscriberClass
from bng_operator.policy.render import NodeDefaults, NodeInfo, render_spec
from tests.cases import sample

MINE = ["203.0.113.4", "203.0.113.5"]


@pytest.mark.parametrize(("addresses", "rendered"), [
    ({"cgnat": MINE}, MINE),
    ({"cgnat": []}, None),
    ({"other": MINE}, None),
    (None, None),
], ids=["its share", "an empty share", "another pool's", "none given"])
def test_a_nat_pool_is_rendered_with_the_nodes_addresses_or_not_at_all(
        addresses: Mapping[str, Sequence[str]] | None, rendered: list[str] | None) -> None:
    pool = IPPool.model_validate(sample("ippool-residential.yaml"))
    cls = SubscriberClass.model_validate(sample("subscriberclass-residential.yaml"))
    nat = NATPool.model_validate(sample("natpool-cgnat.yaml"))
    spec = render_spec(NodeInfo("n1"), [pool], [cls], [], [nat],
                       {"residential": ["100.64.0.0/24"]}, NodeDefaults(), nat_addresses=addresses)
    assert [(n.name, n.addresses) for n in spec.nat_pools] == \
        ([("cgnat", rendered)] if rendered else [])
    assert [c.name for c in spec.classes] == (["residential"] if rendered else [])
    assert [p.name for p in spec.pools] == ["residential"]  # its blocks are still its own

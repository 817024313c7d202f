"""Where the operator tells a node to believe option 82 (issue 14, point 4)."""

from __future__ import annotations

import pytest

from bng_operator.policy.render import NodeDefaults, NodeInfo, render_spec

DEFAULTS = NodeDefaults(access=("eth1", "eth2"), option82_trusted=("eth1",),
                        option82_relays=("192.0.2.0/24",), option82_untrusted="strip")


@pytest.mark.parametrize(("annotations", "trusted"), [
    ({}, ["eth1"]),  # the operator's default
    ({"bng.dev/option82-trusted-interfaces": "eth2"}, ["eth2"]),  # the node's own
    ({"bng.dev/option82-trusted-interfaces": ""}, []),  # this node trusts none
    ({"bng.dev/access-interfaces": "eth5"}, []),  # eth1 is not its access interface
    ({"bng.dev/access-interfaces": "eth5,eth6",
      "bng.dev/option82-trusted-interfaces": "eth6, eth9"}, ["eth6"]),
], ids=["default", "annotation", "none", "not-access", "only-access"])
def test_trusted_interfaces_are_the_nodes_access_interfaces_it_names(
        annotations: dict[str, str], trusted: list[str]) -> None:
    spec = render_spec(NodeInfo("n1", annotations=annotations), [], [], [], [], {}, DEFAULTS)
    o82 = spec.interfaces.option82
    assert o82.trusted == trusted
    assert (o82.trusted_relays, o82.untrusted) == (["192.0.2.0/24"], "strip")


def test_by_default_option_82_is_believed_nowhere() -> None:
    o82 = render_spec(NodeInfo("n1"), [], [], [], [], {}, NodeDefaults()).interfaces.option82
    assert (o82.trusted, o82.trusted_relays, o82.untrusted) == ([], [], "drop")

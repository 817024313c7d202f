"""Node-wide settings the operator renders into every BNGNode from its flags."""

from __future__ import annotations

import pytest

from bng_operator.policy.render import NodeDefaults, NodeInfo, render_spec


@pytest.mark.parametrize("cpu", [None, 0, 3])
def test_the_operators_event_loop_cpu_is_every_nodes(cpu: int | None) -> None:
    spec = render_spec(NodeInfo("n1"), [], [], [], [], {}, NodeDefaults(event_loop_cpu=cpu))
    assert spec.event_loop_cpu == cpu
    assert spec.model_dump(by_alias=True, exclude_none=True).get("eventLoopCPU") == cpu


@pytest.mark.parametrize("commit", [False, True])
def test_the_operators_commit_at_offer_is_every_nodes(commit: bool) -> None:
    spec = render_spec(NodeInfo("n1"), [], [], [], [], {}, NodeDefaults(commit_at_offer=commit))
    assert spec.model_dump(by_alias=True)["commitAtOffer"] is commit

"""RADIUS's Filter-Id may name any QoSPolicy: a node with a class of auth: radius gets them
all; other nodes only those their classes use."""

from __future__ import annotations

from typing import Any

import pytest

from bng_operator.api import IPPool, QoSPolicy, SubscriberClass
from bng_operator.policy.render import NodeDefaults, NodeInfo, render_spec
from tests.cases import sample

RADIUS = {"servers": [{"address": "192.0.2.10", "secret": {"name": "radius"}}]}


def _class(auth: dict[str, Any]) -> SubscriberClass:
    obj = sample("subscriberclass-residential.yaml")
    obj["spec"].update(auth)
    return SubscriberClass.model_validate(obj)


@pytest.mark.parametrize(("auth", "policies"), [
    ({}, ["residential-100m"]),
    ({"auth": "radius", "radius": RADIUS}, ["business-1g", "residential-100m"]),
], ids=["none: its own policy", "radius: every policy"])
def test_a_radius_class_brings_every_qos_policy(auth: dict[str, Any],
                                                policies: list[str]) -> None:
    pool = IPPool.model_validate(sample("ippool-residential.yaml"))
    qos = [QoSPolicy.model_validate(sample(f)) for f in ("qospolicy-business.yaml",
                                                         "qospolicy-residential.yaml")]
    spec = render_spec(NodeInfo("n1"), [pool], [_class(auth)], qos, [],
                       {"residential": ["100.64.0.0/24"]}, NodeDefaults())
    assert [q.name for q in spec.qos_policies] == policies

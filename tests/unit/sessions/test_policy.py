"""Which bound sessions a configuration change reaches (moved from
tests/unit/dataplane/test_entries.py, where it was the fast path's "stale")."""

from __future__ import annotations

import pytest

from bng_lab.dhcp_env import bound_lease, sample_config
from bng_operator.agent.config import NodeConfig
from bng_operator.agent.sessions.policy import policy_changed
from bng_operator.api import IPPool, SubscriberClass

CONFIG = sample_config()


def _edit(kind: type, name: str, **spec: object):  # type: ignore[no-untyped-def]
    def edit(objs):  # type: ignore[no-untyped-def]
        out = []
        for o in objs:
            if isinstance(o, kind) and o.name == name:
                o = o.model_copy(update={"spec": o.spec.model_copy(update=spec)})
            out.append(o)
        return out
    return edit


def _config(edit) -> NodeConfig:  # type: ignore[no-untyped-def]
    return sample_config(edit)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("edit", "is_stale"), [
    (None, False),
    (_edit(IPPool, "residential", dns=["192.0.2.99"]), False),  # the subnet map carries it
    (_edit(IPPool, "residential", domain_name="new.example.net"), False),
    (_edit(IPPool, "residential", lease_time="2h"), True),
    (_edit(SubscriberClass, "residential", lease_time="1h"), True),
    (_edit(SubscriberClass, "residential", priority=5), True),  # may classify anew
    (_edit(SubscriberClass, "business", lease_time="1h"), False),  # another class
    (_edit(IPPool, "business", lease_time="2h"), False),  # another pool
], ids=["same", "dns", "domain", "pool-lease-time", "class-lease-time", "class-order",
        "other-class", "other-pool"])
def test_a_config_change_reaches_only_sessions_whose_policy_changed(edit, is_stale) -> None:  # type: ignore[no-untyped-def]
    assert policy_changed(bound_lease(), CONFIG, _config(edit)) is is_stale

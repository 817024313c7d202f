"""The session state machine: every allowed transition, and every other one raising."""

from __future__ import annotations

import itertools

import pytest

from bng_operator.agent.sessions.session import (
    EndReason,
    Identity,
    IllegalTransition,
    Session,
    State,
)

OF, A, B, E = State.OFFERED, State.AUTHORIZING, State.BOUND, State.ENDED
# Written out here, not read from the module: the table is what docs/architecture.md draws.
ALLOWED = {
    (None, OF), (None, A), (None, B),  # a DISCOVER; one to authorise; restored or INIT-REBOOT
    (OF, A), (OF, B), (OF, E),  # authorise the REQUEST; bind; the offer runs out
    (A, OF), (A, B), (A, E),  # authorised DISCOVER, authorised REQUEST, rejected
    (B, E),  # released, expired, declined, moved, disconnected, node drained
}
PAIRS = list(itertools.product([None, OF, A, B, E], [OF, A, B, E]))


def _at(state: State | None) -> Session:
    s = Session("mac:02:00:00:00:00:01", Identity("02:00:00:00:00:01"))
    path = {None: [], OF: [OF], A: [A], B: [B], E: [OF, E]}[state]
    for step in path:
        s.move(step, EndReason.EXPIRED if step == E else None)
    assert s.state == state
    return s


@pytest.mark.parametrize(("frm", "to"), sorted(ALLOWED, key=str), ids=str)
def test_allowed_transitions(frm: State | None, to: State) -> None:
    s = _at(frm)
    s.move(to, EndReason.RELEASED if to == E else None)
    assert s.state == to
    assert s.end_reason == (EndReason.RELEASED if to == E else None)


@pytest.mark.parametrize(("frm", "to"), [p for p in PAIRS if p not in ALLOWED], ids=str)
def test_forbidden_transitions_raise_and_change_nothing(frm: State | None, to: State) -> None:
    s = _at(frm)
    reason = s.end_reason
    with pytest.raises(IllegalTransition, match="is not a transition"):
        s.move(to, EndReason.RELEASED if to == E else None)
    assert (s.state, s.end_reason) == (frm, reason)


def test_the_table_covers_every_pair() -> None:
    assert len(PAIRS) == 20 and len(ALLOWED) == 10


@pytest.mark.parametrize("reason", list(EndReason))
def test_every_end_reason_ends_a_bound_session(reason: EndReason) -> None:
    s = _at(B)
    s.move(E, reason)
    assert (s.state, s.end_reason) == (E, reason)


def test_an_end_needs_a_reason_and_nothing_else_has_one() -> None:
    with pytest.raises(IllegalTransition, match="needs a reason"):
        _at(B).move(E)
    with pytest.raises(IllegalTransition, match="needs a reason"):
        _at(None).move(OF, EndReason.RELEASED)


def test_the_reasons_are_the_documented_ones() -> None:
    assert {r.value for r in EndReason} == {"released", "expired", "declined", "moved",
                                            "disconnected", "node-drained", "rejected"}

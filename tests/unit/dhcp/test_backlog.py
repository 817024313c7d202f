"""The overload backlog: other requests before DISCOVERs, and only the newest DISCOVERs kept."""

from __future__ import annotations

import pytest

from bng_operator.agent.dhcp.backlog import Backlog

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("arrivals", "take", "handled"), [
    # (item, is it a DISCOVER) in arrival order -> what one take() returns
    ([("d1", True), ("r1", False), ("d2", True), ("r2", False)], 10, ["r1", "r2", "d1", "d2"]),
    ([("d1", True), ("r1", False), ("d2", True)], 2, ["r1", "d1"]),
    ([("d1", True), ("d2", True)], 0, []),
    ([], 5, []),
])
def test_other_requests_go_first_each_kind_in_order(arrivals: list[tuple[str, bool]], take: int,
                                                    handled: list[str]) -> None:
    b: Backlog[str] = Backlog()
    for item, discover in arrivals:
        assert b.add(item, discover) is None
    assert b.take(take) == handled
    assert len(b) == len(arrivals) - len(handled)


def test_past_its_bound_the_oldest_discover_is_pushed_out_not_a_request() -> None:
    b: Backlog[str] = Backlog(discover_limit=2, other_limit=3)
    assert [b.add(f"d{i}", True) for i in range(4)] == [None, None, "d0", "d1"]
    assert [b.add(f"r{i}", False) for i in range(3)] == [None, None, None]
    assert b.take(10) == ["r0", "r1", "r2", "d2", "d3"]


def test_requests_have_a_bound_too() -> None:
    b: Backlog[str] = Backlog(discover_limit=2, other_limit=2)
    assert [b.add(f"r{i}", False) for i in range(3)] == [None, None, "r0"]


def test_clear_hands_back_everything() -> None:
    b: Backlog[str] = Backlog()
    b.add("d", True)
    b.add("r", False)
    assert b.clear() == ["r", "d"] and len(b) == 0

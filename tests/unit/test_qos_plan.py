"""Shaping's pure parts: class minors, and what a reload changes."""

from __future__ import annotations

import pytest

from bng_operator.agent.config import ShapingRates
from bng_operator.agent.qos.plan import LAST_MINOR, Minors, Step, reload_steps

RES = ShapingRates("residential", 20_000_000, 25_000, 5_000_000, 6_250)
BIZ = ShapingRates("business", 100_000_000, 125_000, 100_000_000, 125_000)


def test_minors_are_handed_out_lowest_first_and_reused() -> None:
    m = Minors()
    assert [m.take(a) for a in (10, 11, 12)] == [1, 2, 3]
    assert m.take(11) == 2  # the one it has
    assert m.release(11) == 2 and m.release(11) is None
    assert m.take(13) == 2
    assert m.by_address == {10: 1, 12: 3, 13: 2}


def test_adopted_minors_are_kept_and_the_gaps_stay_free() -> None:
    m = Minors()
    assert m.take(10, minor=5) == 5
    assert m.take(11, minor=2) == 2
    assert sorted(m.take(a) or 0 for a in (20, 21, 22)) == [1, 3, 4]
    assert m.take(23) == 6


def test_minors_run_out_at_the_htb_limit() -> None:
    m = Minors()
    assert m.take(1, minor=LAST_MINOR) == LAST_MINOR
    m._free.clear()  # as if all the rest were taken
    assert m.take(2) is None


class _Config:
    def __init__(self, shaping: dict[str, ShapingRates]) -> None:
        self.shaping = shaping


@pytest.mark.parametrize(("installed", "classes", "shaping", "steps"), [
    ({1: RES}, {1: "residential"}, {"residential": RES}, []),  # nothing changed
    ({1: RES}, {1: "residential"}, {"residential": BIZ}, [Step(1, BIZ)]),  # policy edited
    ({1: RES}, {1: "business"}, {"residential": RES, "business": BIZ}, [Step(1, BIZ)]),
    ({1: RES}, {1: "residential"}, {}, [Step(1, None)]),  # the class lost its policy
    ({1: RES}, {}, {"residential": RES}, [Step(1, None)]),  # no session any more
])
def test_a_reload_changes_exactly_the_sessions_whose_rates_changed(
        installed: dict[int, ShapingRates], classes: dict[int, str],
        shaping: dict[str, ShapingRates], steps: list[Step]) -> None:
    assert reload_steps(installed, classes, _Config(shaping)) == steps  # type: ignore[arg-type]

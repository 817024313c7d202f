"""The benchmarks' rate search (bench/dhcp.py's ``step_search``), with a fake server; and how
the delays at 80% of the peak are taken from their trials."""

from __future__ import annotations

import pytest

from bench.dhcp import Beyond, Trial, step_search

pytestmark = pytest.mark.unit


def search(capacity: int, spoiled: set[int], tries: int = 2) -> tuple[int | None, list[int]]:
    """A server that serves up to ``capacity`` except for the first trial at each rate in
    ``spoiled`` (a stall of the machine); the rate found and the rates tried, in order."""
    tried: list[int] = []

    def run(rate: int) -> tuple[int, bool]:
        first = rate not in tried
        tried.append(rate)
        return rate, rate <= capacity and not (first and rate in spoiled)

    best = step_search(run, lambda t: t[1], 64000, tries=tries)
    return (best[0] if best else None), tried


@pytest.mark.parametrize(("capacity", "spoiled", "tries", "found"), [
    (5000, set(), 2, 5000),
    (5000, {4000}, 2, 5000),   # one spoiled trial is tried again
    (5000, {4000}, 1, 3750),   # with one try, the doubling ends at 2,000
    (5000, {1000, 2000, 4000, 5000}, 2, 5000),
    (600, set(), 2, 500),      # halving from the first failure
    (100, set(), 2, None),     # nothing down to 250
])
def test_search_finds_the_rate_served(capacity: int, spoiled: set[int], tries: int,
                                      found: int | None) -> None:
    assert search(capacity, spoiled, tries)[0] == found


def test_a_rate_fails_only_after_every_try() -> None:
    _, tried = search(5000, set())
    assert tried == [1000, 2000, 4000, 8000, 8000, 6000, 6000, 5000, 5500, 5500]


def test_a_good_rate_is_tried_once() -> None:
    _, tried = search(5000, {4000})
    assert tried == [1000, 2000, 4000, 4000, 8000, 8000, 6000, 6000, 5000, 5500, 5500]


def _timed(discover_offer: list[float], request_ack: list[float]) -> Trial:
    return Trial(4000, 5, None, timers={"DISCOVER-OFFER": discover_offer,  # type: ignore[arg-type]
                                        "REQUEST-ACK": request_ack})


@pytest.mark.parametrize(("trials", "p99", "p99_trials", "exchanges"), [
    # one spoiled trial of three does not make the result: the median trial's p99 does
    ([([1.0] * 97 + [80.0] * 3, [2.0] * 100), ([1.0] * 100, [2.0] * 100),
      ([1.0] * 98 + [9.0] * 2, [2.0] * 100)], 9.0, [80.0, 1.0, 9.0], 300),
    # a trial that timed nothing is left out (the lower middle of the two left)
    ([([5.0] * 10, [1.0] * 10), ([], []), ([7.0] * 10, [1.0] * 10)], 5.0,
     [5.0, float("nan"), 7.0], 20),
])
def test_delays_at_load_are_the_median_trials(trials: list[tuple[list[float], list[float]]],
                                              p99: float, p99_trials: list[float],
                                              exchanges: int) -> None:
    b = Beyond(_timed([1.0], [1.0]), [_timed(d, r) for d, r in trials], _timed([], []))
    d = b.delays_ms()["discover_offer"]
    assert d["p99"] == p99
    assert d["exchanges"] == exchanges
    assert [v if v == v else "nan" for v in d["p99_trials"]] == \
        [v if v == v else "nan" for v in p99_trials]  # NaN != NaN


def test_delays_at_load_of_trials_that_timed_nothing_are_none() -> None:
    b = Beyond(_timed([], []), [_timed([], []), _timed([], [])], _timed([], []))
    assert b.delays_ms()["request_ack"]["p99"] is None

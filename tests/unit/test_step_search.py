"""The benchmarks' rate search (bench/dhcp.py's ``step_search``), with a fake server."""

from __future__ import annotations

import pytest

from bench.dhcp import step_search

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

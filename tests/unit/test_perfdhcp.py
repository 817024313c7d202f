"""Reading perfdhcp's report and the per-exchange timers that ``-x t`` prints (perfdhcp 2.2)."""

from __future__ import annotations

import math

import pytest

from bng_lab import perfdhcp

pytestmark = pytest.mark.unit

# perfdhcp 2.2's tail with -x t, as it printed against Kea here (two exchanges each)
TIMERS = """\
***Statistics for: REQUEST-ACK***
sent packets: 2
min delay: 0.205 ms
collected packets: 0

***Timestamps for packets: DISCOVER-OFFER***
sent / received: 000000.000068 / 000000.001117
sent / received: 000000.400141 / 000000.400746

***Timestamps for packets: REQUEST-ACK***
sent / received: 000000.001156 / 000000.001361
sent / received: 000001.401993 / 000001.406012
"""


def test_timers_are_each_exchanges_delay_in_ms() -> None:
    t = perfdhcp.timers(TIMERS)
    assert sorted(t) == ["DISCOVER-OFFER", "REQUEST-ACK"]
    assert t["DISCOVER-OFFER"] == pytest.approx([1.049, 0.605])
    assert t["REQUEST-ACK"] == pytest.approx([0.205, 4.019])


def test_no_timers_without_x_t() -> None:
    assert perfdhcp.timers("***Statistics for: DISCOVER-OFFER***\nsent packets: 1\n") == {}


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([5.0, 1.0, 3.0, 2.0, 4.0], 50, 3.0),
    ([float(i) for i in range(1, 101)], 99, 99.0),
    ([float(i) for i in range(1, 101)], 100, 100.0),
    ([float(i) for i in range(1, 1001)], 99, 990.0),
    ([7.0], 99, 7.0),
    ([2.0, 1.0], 0, 1.0),
])
def test_percentile_is_the_nearest_rank(values: list[float], p: float, expected: float) -> None:
    assert perfdhcp.percentile(values, p) == expected


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(perfdhcp.percentile([], 99))

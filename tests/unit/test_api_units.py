"""Parsing of durations, rates and sizes, and the defaults derived from them."""

from __future__ import annotations

import pytest

from bng_operator.api.common import parse_duration
from bng_operator.api.qospolicy import RateLimit, parse_bytes, parse_rate


@pytest.mark.parametrize(("text", "seconds"), [
    ("60s", 60), ("30m", 1800), ("12h", 43200), ("1h30m", 5400), ("2h4m", 7440),
    ("1h0m5s", 3605), ("8760h", 31536000),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1d", "1 h", "h", "5m1h", "-1h", "1.5h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "bps"), [
    ("512kbit", 512_000), ("100Mbit", 100_000_000), ("1Gbit", 10**9), ("1.5Gbit", 1_500_000_000),
    ("64bit", 64), ("10mbit", 10_000_000),
])
def test_parse_rate(text: str, bps: int) -> None:
    assert parse_rate(text) == bps


@pytest.mark.parametrize(("text", "nbytes"), [
    ("1514B", 1514), ("64KiB", 65536), ("1.5MB", 1_500_000), ("1250KB", 1_250_000),
    ("1GiB", 2**30),
])
def test_parse_bytes(text: str, nbytes: int) -> None:
    assert parse_bytes(text) == nbytes


@pytest.mark.parametrize(("rate", "burst", "expected"), [
    ("100Mbit", None, 125_000),  # 10 ms of rate
    ("512kbit", None, 1514),  # never below one full frame
    ("100Mbit", "1250KB", 1_250_000),
])
def test_burst_default(rate: str, burst: str | None, expected: int) -> None:
    assert RateLimit(rate=rate, burst=burst).burst_bytes == expected

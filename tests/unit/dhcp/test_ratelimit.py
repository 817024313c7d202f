"""Token buckets per circuit-id / MAC: the rate, the refill, and pruning idle ones."""

from __future__ import annotations

import pytest

from bng_operator.agent.dhcp.ratelimit import TokenBuckets

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("per_minute", "times", "allowed"), [
    (3, [0, 0, 0, 0], [True, True, True, False]),  # a full bucket, then empty
    (3, [0, 0, 0, 20], [True, True, True, True]),  # 20 s refill one token at 3/min
    (60, [0] * 61, [True] * 60 + [False]),
    (1, [0, 30, 60], [True, False, True]),
])
def test_a_bucket_allows_its_rate(per_minute: int, times: list[float], allowed: list[bool]) -> None:
    b = TokenBuckets()
    assert [b.allow("mac:a", per_minute, t) for t in times] == allowed


def test_prune_forgets_only_buckets_idle_a_minute_and_keeps_the_others_state() -> None:
    b = TokenBuckets()
    b.allow("a", 1, 0)
    b.allow("b", 1, 10)
    b.allow("c", 1, 20)
    b.allow("a", 1, 30)  # touched again (refused: its bucket is still empty): in use
    b.prune(75)
    assert len(b) == 2  # b (idle 65 s) is gone; c (55 s) and a (45 s) stay
    assert not b.allow("c", 1, 75)  # kept, not started afresh: 55 s is 0.92 of a token
    assert b.allow("a", 1, 75)  # 0.5 at 30 s, and 45 s more
    b.prune(1000)
    assert len(b) == 0

"""Bursts: what the loop queues while the worker is busy reaches it in one call, in order."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bng_operator.agent.bursts import Bursts

pytestmark = pytest.mark.unit


def test_items_queued_while_the_worker_is_busy_come_in_one_burst_in_order() -> None:
    work = ThreadPoolExecutor(1)
    busy, taken = threading.Event(), []
    work.submit(busy.wait)  # the worker is busy with something else
    b: Bursts[int] = Bursts(work, taken.append)
    for i in range(5):
        b.add(i)
    busy.set()
    work.submit(lambda: None).result()
    assert taken == [[0, 1, 2, 3, 4]]
    b.add(5)  # an idle worker takes the next one alone
    work.submit(lambda: None).result()
    assert taken == [[0, 1, 2, 3, 4], [5]]
    work.shutdown()

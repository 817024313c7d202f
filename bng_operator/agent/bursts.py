"""Work handed to a feature's worker thread in bursts: the event loop only appends.

A session event each handed over separately costs a thread wake-up and a GIL switch; a burst
of binds (one group commit's) costs one. The worker takes everything queued at once, in the
order it came."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Bursts(Generic[T]):
    def __init__(self, work: ThreadPoolExecutor, take: Callable[[list[T]], None]) -> None:
        """``take`` runs on ``work`` (one thread) with the items queued since its last run."""
        self._work, self._take = work, take
        self._pending: list[T] = []
        self._lock = threading.Lock()

    def add(self, item: T) -> None:
        with self._lock:
            self._pending.append(item)
            first = len(self._pending) == 1
        if first:
            self._work.submit(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
        self._take(items)

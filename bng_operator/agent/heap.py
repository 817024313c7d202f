"""The garbage collector's pauses, kept short while the subscribers grow.

CPython's full collection walks every object it tracks, and an agent's leases, sessions
and offers are such objects: on this project's VM a full collection took 48 ms at 89,000
objects and 120 ms at 169,000 (~700 ns each; about eight an exchange), and the slow path
answered nobody meanwhile. During a mass reconnect the heap grows, and CPython walks it
whole each time it has grown by a quarter.

So every FREEZE_EVERY the agent collects what is not frozen yet (only what was made since
the last freeze, so the pause is short), then freezes all that is still alive
(``gc.freeze``): later collections skip it. That includes the state of requests in flight
at that instant. An object frozen while alive that later dies in a reference cycle cannot
be collected; so once every ``sweep_every`` the freeze is undone and one full collection
takes such garbage back (a pause like the ones before, once an hour instead of every few
seconds while the heap grows), and how much it found is a metric. Objects that die by their
reference count, as leases and sessions do, are freed frozen or not.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from bng_operator.metrics import AgentMetrics

FREEZE_EVERY = 0.5  # seconds: a pause walks what ~this long of requests left behind
SWEEP_EVERY = 3600.0  # seconds between full collections


class HeapKeeper:
    """Freezes the agent's long-lived objects on a timer, and times every collection."""

    def __init__(self, metrics: AgentMetrics, sweep_every: float = SWEEP_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics, self.sweep_every, self.clock = metrics, sweep_every, clock
        self._swept = clock()
        self._started = 0.0
        # Filled by the collector's callback, in whichever thread collects; emptied into the
        # metrics by freeze(). A callback must not take the metrics' locks: a collection can
        # start inside them (an allocation), and the lock is not reentrant.
        self._pauses: deque[tuple[int, float]] = deque(maxlen=10_000)

    def start(self) -> None:
        gc.callbacks.append(self._timed)

    def stop(self) -> None:
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        gc.unfreeze()

    def freeze(self) -> None:
        """Collect what is young, freeze what survived; undo the freeze once a sweep is due."""
        now = self.clock()
        m = self.metrics
        if now - self._swept >= self.sweep_every:
            self._swept = now
            gc.unfreeze()  # the collection below walks everything, once
            m.gc_swept.set(gc.collect())  # garbage frozen since the last sweep, and young
        else:
            gc.collect()
        gc.freeze()  # O(1); gc.get_freeze_count() would walk every frozen object
        while self._pauses:
            generation, seconds = self._pauses.popleft()
            m.gc_pause.labels(str(generation)).observe(seconds)

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.append((info["generation"], time.perf_counter() - self._started))

"""The agent's flows: the last N kept in memory, and handed to whoever follows them.

Flows come from the kernel's reader thread and from the event loop (the slow path, RADIUS).
The slow path's are kept as a builder and its arguments, and built only when someone reads
them: recording costs it one append. Observers are counted; the first one tells the
programs to emit events (``on_watch(True)``), and ``linger`` seconds after the last one
leaves they are told to stop, so that a query right after a follow still finds the
kernel's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from bng_operator.agent.observe.flow import Flow

DEFAULT_CAPACITY = 4096
DEFAULT_LINGER = 300.0

Builder = tuple[Callable[..., Flow | None], tuple[Any, ...]]


class FlowHub:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, linger: float = DEFAULT_LINGER,
                 on_watch: Callable[[bool], None] = lambda on: None,
                 on_observers: Callable[[int], None] = lambda n: None) -> None:
        self.capacity = capacity
        self.linger = linger
        self._ring: deque[Flow | Builder] = deque(maxlen=capacity)
        self.seen = 0  # flows ever added: a follower's position
        self._lock = threading.Lock()
        self._followers: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False
        self._on_watch = on_watch
        self._on_observers = on_observers
        self.observers = 0
        self._watching = False
        self._unwatch: asyncio.TimerHandle | None = None

    # --- in --------------------------------------------------------------------------------

    def add(self, flow: Flow) -> None:
        """A flow, from any thread."""
        self._append(flow)

    def add_lazy(self, build: Callable[..., Flow | None], *args: Any) -> None:
        """A flow built by ``build(*args)`` when read (None: it is no flow after all)."""
        self._append((build, args))

    def _append(self, item: Flow | Builder) -> None:
        with self._lock:
            self._ring.append(item)
            self.seen += 1
            if not self._followers or self._wake_pending or self._loop is None:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
            followers = list(self._followers)
        for e in followers:
            e.set()

    # --- out -------------------------------------------------------------------------------

    def recent(self) -> list[Flow]:
        """Every flow still kept, oldest first."""
        with self._lock:
            items = list(self._ring)
        return [f for f in map(_built, items) if f is not None]

    def since(self, position: int) -> tuple[list[Flow], int, int]:
        """The flows added after ``position`` (a value of ``seen``): (flows, new position,
        how many of them the ring no longer holds)."""
        with self._lock:
            new = self.seen - position
            kept = min(new, len(self._ring))
            # from the right end: a copy of the whole ring was most of a follower's time
            items = list(itertools.islice(reversed(self._ring), kept))
            seen = self.seen
        items.reverse()
        return [f for f in map(_built, items) if f is not None], seen, new - kept

    async def follow(self, position: int | None = None) -> AsyncIterator[Flow]:
        """The flows added from ``position`` (default: now) on, as they come, until the
        caller stops iterating."""
        async for flows in self.follow_batches(position):
            for f in flows:
                yield f

    async def follow_batches(self, position: int | None = None) -> AsyncIterator[list[Flow]]:
        """``follow``'s flows in the batches they came in (never an empty one)."""
        self._loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        with self._lock:
            self._followers.add(ready)
            at = self.seen if position is None else position
        try:
            while True:
                flows, at, _ = self.since(at)
                if flows:
                    yield flows
                ready.clear()
                if self.seen == at:
                    await ready.wait()
        finally:
            with self._lock:
                self._followers.discard(ready)

    # --- observers -------------------------------------------------------------------------

    @contextlib.contextmanager
    def observer(self) -> Any:
        """Held while an observer is connected: the programs emit events meanwhile."""
        self.observers += 1
        self._on_observers(self.observers)
        if self._unwatch is not None:
            self._unwatch.cancel()
            self._unwatch = None
        if not self._watching:
            self._watching = True
            self._on_watch(True)
        try:
            yield
        finally:
            self.observers -= 1
            self._on_observers(self.observers)
            if self.observers == 0:
                self._schedule_unwatch()

    def _schedule_unwatch(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._stop_watching()
            return
        self._unwatch = loop.call_later(self.linger, self._stop_watching)

    def _stop_watching(self) -> None:
        self._unwatch = None
        if self.observers == 0 and self._watching:
            self._watching = False
            self._on_watch(False)

    @property
    def watching(self) -> bool:
        return self._watching


def _built(item: Flow | Builder) -> Flow | None:
    if isinstance(item, Flow):
        return item
    build, args = item
    try:
        return build(*args)
    except Exception:  # a flow that cannot be described is not worth a failed query
        return None

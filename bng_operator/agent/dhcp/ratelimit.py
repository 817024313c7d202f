"""How often a line or a device may be given a new address: token buckets per key."""

from __future__ import annotations

IDLE = 60.0  # a bucket untouched this long is full again: it can be forgotten


class TokenBuckets:
    """Allocations per minute per circuit-id / MAC.

    The buckets are kept in the order they were last touched, so ``prune`` stops at the
    first one still in use: after a mass reconnect it would otherwise walk every MAC of the
    last minute on each tick of the event loop."""

    def __init__(self) -> None:
        self._b: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, per_minute: int, now: float) -> bool:
        tokens, at = self._b.pop(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
        if tokens < 1.0:
            self._b[key] = (tokens, now)
            return False
        self._b[key] = (tokens - 1.0, now)
        return True

    def prune(self, now: float) -> None:
        """Forget buckets idle for over a minute: they are full again anyway."""
        idle = []
        for key, (_, at) in self._b.items():
            if now - at < IDLE:
                break
            idle.append(key)
        for key in idle:
            del self._b[key]

    def __len__(self) -> int:
        return len(self._b)

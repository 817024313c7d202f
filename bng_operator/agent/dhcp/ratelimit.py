"""How often a line or a device may be given a new address: token buckets per key."""

from __future__ import annotations


class TokenBuckets:
    """Allocations per minute per circuit-id / MAC."""

    def __init__(self) -> None:
        self._b: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, per_minute: int, now: float) -> bool:
        tokens, at = self._b.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
        if tokens < 1.0:
            self._b[key] = (tokens, now)
            return False
        self._b[key] = (tokens - 1.0, now)
        return True

    def prune(self, now: float) -> None:
        """Forget buckets idle for over a minute: they are full again anyway."""
        self._b = {k: v for k, v in self._b.items() if now - v[1] < 60.0}

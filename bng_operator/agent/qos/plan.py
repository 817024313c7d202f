"""Pure parts of shaping: which class ids sessions hold, and what an installed session's
shaping must become after an event or a reload."""

from __future__ import annotations

from dataclasses import dataclass, field

from bng_operator.agent.config import NodeConfig, ShapingRates

# HTB class ids are 16 bits, under one root per interface and direction: minors 1..0xfffe
# (0 is the root's, 0xffff is reserved). More sessions than that stay unshaped, counted.
FIRST_MINOR, LAST_MINOR = 1, 0xFFFE


@dataclass
class Minors:
    """The HTB class minors: free ones handed out lowest first, taken ones by address."""

    by_address: dict[int, int] = field(default_factory=dict)
    _next: int = FIRST_MINOR
    _free: list[int] = field(default_factory=list)

    def take(self, address: int, minor: int | None = None) -> int | None:
        """The address's minor: the one it has, ``minor`` (an adopted one), or a free one;
        None when all are taken."""
        if address in self.by_address:
            return self.by_address[address]
        if minor is None:
            if self._free:
                minor = self._free.pop()
            elif self._next <= LAST_MINOR:
                minor, self._next = self._next, self._next + 1
            else:
                return None
        elif minor in self._free:
            self._free.remove(minor)
        elif minor >= self._next:
            self._free += range(self._next, minor)
            self._next = minor + 1
        self.by_address[address] = minor
        return minor

    def release(self, address: int) -> int | None:
        minor = self.by_address.pop(address, None)
        if minor is not None:
            self._free.append(minor)
        return minor


def rates_for(config: NodeConfig, subscriber_class: str) -> ShapingRates | None:
    """The shaping of a session of ``subscriber_class``: None when its class has no
    qosPolicy (unshaped)."""
    return config.shaping.get(subscriber_class)


@dataclass(frozen=True)
class Step:
    """One change to the shaper: install (or re-rate) ``address`` at ``rates``, or
    remove it (``rates`` None)."""

    address: int
    rates: ShapingRates | None


def reload_steps(installed: dict[int, ShapingRates], classes: dict[int, str],
                 config: NodeConfig) -> list[Step]:
    """After a reload: every installed session whose class's rates changed gets its new
    rates (or is removed, when its class lost its policy). ``classes``: address -> the
    session's class now."""
    steps = []
    for address, had in sorted(installed.items()):
        want = rates_for(config, classes.get(address, ""))
        if want != had:
            steps.append(Step(address, want))
    return steps

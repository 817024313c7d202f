"""Pure parts of the access data path: what a session's frames must carry, which class ids
sessions hold, and what an installed session's shaping must become after an event or a
reload."""

from __future__ import annotations

from dataclasses import dataclass, field

from bng_operator.agent.config import NodeConfig, ShapingRates
from bng_operator.agent.dhcp.leases import Lease


@dataclass(frozen=True)
class Access:
    """Where a session's frames come from: what anti-spoofing checks upstream and what the
    frames to it get downstream."""

    mac: bytes = bytes(6)
    tags: bytes = b""  # 802.1Q/802.1ad tags as they came (TPID, TCI), outermost first
    gateway: int = 0  # the address its ARP asks for
    routed: bool = False  # behind an L3 relay: only its address is checked

    @property
    def vlans(self) -> tuple[int, int, int]:
        """(outer TPID, outer VID, inner VID); 0 where there is no tag."""
        t = self.tags
        outer = (int.from_bytes(t[0:2], "big"), int.from_bytes(t[2:4], "big") & 0xFFF) \
            if len(t) >= 4 else (0, 0)
        inner = int.from_bytes(t[6:8], "big") & 0xFFF if len(t) >= 8 else 0
        return outer[0], outer[1], inner


def access_of(lease: Lease, config: NodeConfig) -> Access:
    """How ``lease``'s session reaches the node: on the access link with the MAC and tags
    of the request that bound it, asking ARP for its subnet's gateway; or, relayed
    (giaddr set), routed through its relay."""
    if lease.giaddr:
        return Access(routed=True)
    pool = config.pools.get(lease.pool)
    subnet = pool.subnet_config(lease.address) if pool is not None else None
    return Access(mac=bytes.fromhex(lease.mac.replace(":", "")), tags=lease.tags,
                  gateway=int(subnet.gateway) if subnet is not None else 0)


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


def class_interfaces(where: str, attached: set[str]) -> list[str]:
    """Where a session's HTB classes go: its own access interface (``where``), once
    attached; every attached one for a lease that does not say (bound before leases kept
    their interface)."""
    if where:
        return [where] if where in attached else []
    return sorted(attached)


@dataclass(frozen=True)
class Step:
    """One change to the access data path: carry ``address``'s traffic as ``access`` says,
    shaped at ``rates`` (None: unshaped); or, ``access`` None, forget the session."""

    address: int
    access: Access | None
    rates: ShapingRates | None = None
    subscriber_class: str = field(default="", compare=False)  # for metrics by class
    interface: str = field(default="", compare=False)  # where its classes go ("": every one)


def session_step(lease: Lease, config: NodeConfig, override: ShapingRates | None = None
                 ) -> Step:
    """What a bound ``lease``'s session must be in the data path under ``config``:
    ``override`` (a RADIUS authorisation or CoA's rates) over its class's policy."""
    rates = override if override is not None else rates_for(config, lease.subscriber_class)
    return Step(lease.address, access_of(lease, config), rates, lease.subscriber_class,
                lease.interface)


def reload_steps(installed: dict[int, tuple[Access, ShapingRates | None]],
                 leases: dict[int, Lease], config: NodeConfig,
                 overrides: dict[int, ShapingRates] | None = None) -> list[Step]:
    """After a reload: every installed session whose access or rates changed gets them new
    (unshaped, when its class lost its policy), and a session whose lease is gone is
    forgotten. ``installed``: address -> what the data path has; ``leases``: the bound
    leases now, by address; ``overrides``: rates that stand over a class's policy."""
    steps = []
    for address, had in sorted(installed.items()):
        lease = leases.get(address)
        if lease is None:
            steps.append(Step(address, None))
            continue
        want = session_step(lease, config, (overrides or {}).get(address))
        if (want.access, want.rates) != had:
            steps.append(want)
    return steps

"""Pure parts of the access data path: what a session's frames must carry, which class ids
sessions hold, and what an installed session's shaping must become after an event or a
reload."""

from __future__ import annotations

import heapq
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


# HTB class ids are 16 bits per qdisc (major:minor), so one root holds 65,534 classes.
# Sessions take the root's (1:) minors first; past those, the minors of nested HTB qdiscs,
# "groups" 2:, 3:, ..., each the qdisc of a root class 1:(GROUP_CLASS_BASE + major), which
# the root's one filter (bpf/access_qos.c qos_group) picks by skb->priority's major.
# Minor 0 is a qdisc's own, 0xffff is reserved.
ROOT_MAJOR = 1
GROUP_CLASS_BASE = 0xF000
FIRST_GROUP, LAST_GROUP = 2, 0xFFE
ROOT_MINORS = GROUP_CLASS_BASE - 1  # 1:1 .. 1:efff hold sessions
GROUP_MINORS = 0xFFFE  # M:1 .. M:fffe


def group_class(major: int) -> int:
    """The root class whose qdisc is group ``major``."""
    return ROOT_MAJOR << 16 | (GROUP_CLASS_BASE + major)


@dataclass
class ClassIds:
    """The HTB class ids (major << 16 | minor) of shaped sessions: free ones handed out
    lowest first (the root's, then group 2's, ...), taken ones by address. The sizes are
    parameters so that tests reach the groups with a few sessions."""

    root_minors: int = ROOT_MINORS
    group_minors: int = GROUP_MINORS
    groups: int = LAST_GROUP - FIRST_GROUP + 1
    by_address: dict[int, int] = field(default_factory=dict)
    _next: int = 0  # index of the lowest never-used id
    _free: list[int] = field(default_factory=list)  # indexes, a heap

    @property
    def capacity(self) -> int:
        return self.root_minors + self.groups * self.group_minors

    def class_id(self, index: int) -> int:
        if index < self.root_minors:
            return ROOT_MAJOR << 16 | (index + 1)
        group, minor = divmod(index - self.root_minors, self.group_minors)
        return (FIRST_GROUP + group) << 16 | (minor + 1)

    def index(self, class_id: int) -> int | None:
        """The index of ``class_id``, None when this layout has no such id."""
        major, minor = class_id >> 16, class_id & 0xFFFF
        if major == ROOT_MAJOR and 1 <= minor <= self.root_minors:
            return minor - 1
        group = major - FIRST_GROUP
        if 0 <= group < self.groups and 1 <= minor <= self.group_minors:
            return self.root_minors + group * self.group_minors + minor - 1
        return None

    def take(self, address: int, class_id: int | None = None) -> int | None:
        """The address's class id: the one it has, ``class_id`` (an adopted one, if this
        layout has it), or a free one; None when all are taken."""
        if address in self.by_address:
            return self.by_address[address]
        index = self.index(class_id) if class_id is not None else None
        if class_id is not None and index is None:
            return None
        if index is None:
            if self._free:
                index = heapq.heappop(self._free)
            elif self._next < self.capacity:
                index, self._next = self._next, self._next + 1
            else:
                return None
        elif index in self._free:
            self._free.remove(index)
            heapq.heapify(self._free)
        elif index >= self._next:
            self._free += range(self._next, index)
            self._next = index + 1
        else:
            return None  # taken by another address
        cid = self.class_id(index)
        self.by_address[address] = cid
        return cid

    def release(self, address: int) -> int | None:
        cid = self.by_address.pop(address, None)
        if cid is not None:
            index = self.index(cid)
            if index is not None:
                heapq.heappush(self._free, index)
        return cid


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

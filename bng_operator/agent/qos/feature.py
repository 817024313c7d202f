"""The access data path as a session feature. Every bound session is in its map: its MAC
and VLAN tags (anti-spoofing, VLAN termination, ARP for its gateway); one of a class with a
qosPolicy also gets an HTB class each way, at its policy's rates, on every access
interface. A changed class or policy re-rates it in place (no reconnect); an ended
session's classes and map entries go.

a class costs 1-20 ms of kernel time (more as classes grow), so tc runs on one worker
thread, in order, never on the event
loop. The classifiers, classes and maps outlive the agent: on start they are adopted, and
the sessions restored from the lease store are re-rated against the current policy.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bng_operator import netlink
from bng_operator.agent.bursts import Bursts
from bng_operator.agent.config import NodeConfig, ShapingRates
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.qos.plan import (
    ROOT_MAJOR,
    Access,
    ClassIds,
    Step,
    class_interfaces,
    group_class,
    rates_for,
    reload_steps,
    session_step,
)
from bng_operator.agent.sessions.session import Change, Session
from bng_operator.api.bngnode import MapFill, ProgramStatus
from bng_operator.metrics import AccessReading, AgentMetrics

if TYPE_CHECKING:  # the dataplane imports bcc: loaded only when shaping is on
    from bng_operator.agent.dataplane.qos import QosPath

log = logging.getLogger("bng.agent.qos")
BY_CLASS_EVERY = 10.0  # seconds between reads of every session's counters for the metrics
QUEUE_WAIT = 1.0  # seconds a scrape waits for the queues' drops (netlink) before the last read


def shaping_programs(interfaces: Sequence[str], attached: set[str]) -> list[ProgramStatus]:
    """The access data path's programs on each access interface, for the BNGNode status:
    the classifiers, and ARP at the XDP hook (a tail call from the DHCP fast path)."""
    return [ProgramStatus(hook=hook, interface=name, name=fn, attached=name in attached)
            for name in interfaces
            for hook, fn in (("tc-egress", "qos_down"), ("tc-ingress", "qos_up"),
                             ("xdp", "access_arp"))]


def ifb_name(ifname: str) -> str:
    """The IFB that shapes ``ifname``'s upload (at most 15 characters)."""
    return f"bngu-{ifname}"[:15]


@dataclass
class QosFeature:
    metrics: AgentMetrics
    pin_root: Path
    config: NodeConfig
    leases: Callable[[], Iterable[Lease]]  # the bound leases now (the DHCP server's)
    changed: Callable[[], None] = lambda: None  # what the BNGNode status shows changed
    name: str = "qos"
    path: QosPath | None = field(default=None, init=False)
    class_ids: ClassIds = field(default_factory=ClassIds)
    _groups: set[tuple[str, int]] = field(default_factory=set, init=False)  # made
    installed: dict[int, ShapingRates] = field(default_factory=dict, init=False)  # shaped
    sessions: dict[int, tuple[Access, ShapingRates | None]] = field(default_factory=dict,
                                                                     init=False)
    classes: dict[int, str] = field(default_factory=dict, init=False)  # shaped: its class
    where: dict[int, str] = field(default_factory=dict, init=False)  # its access interface
    # address -> rates set for the session itself (RADIUS authorisation, CoA), over its
    # class's policy until it ends; kept in memory: the AAA server re-sends them
    overrides: dict[int, ShapingRates] = field(default_factory=dict, init=False)
    attached: set[str] = field(default_factory=set, init=False)
    _work: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="bng-qos"), init=False)
    _tc: netlink.Tc | None = field(default=None, init=False)  # the worker's socket
    _steps: Bursts[Step] = field(init=False)  # to the worker, in bursts
    # metrics: read off the event loop; the bytes by class kept from the last read
    _read: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="bng-qos-read"),
        init=False)
    _by_class: dict[tuple[str, str, str], int] = field(default_factory=dict, init=False)
    _by_class_at: float = field(default=0.0, init=False)
    _by_class_run: Future[None] | None = field(default=None, init=False)
    _drops: dict[str, int] = field(default_factory=lambda: {"down": 0, "up": 0}, init=False)
    _drops_run: Future[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._steps = Bursts(self._work, self._apply_all)

    # --- start and stop ----------------------------------------------------------------------

    def start(self) -> bool:
        """Load or adopt the classifiers and their maps. False: shaping is unavailable
        (said, counted), and sessions go unshaped."""
        from bng_operator.agent.dataplane.loader import DataplaneError
        from bng_operator.agent.dataplane.qos import QosPath

        try:
            path = QosPath(self.config.max_leases, self.pin_root)
        except DataplaneError as e:
            log.error("shaping unavailable, subscribers go unshaped: %s", e)
            self.metrics.qos_errors.labels("load").inc()
            return False
        for address, cid in path.installed().items():
            if cid and self.class_ids.take(address, cid) is None:
                log.warning("shaping: %s's adopted class %x:%x is not in this layout; "
                            "it gets another", address, cid >> 16, cid & 0xFFFF)
        log.info("shaping: %s generation %s, %d sessions in its maps",
                 "adopted" if path.adopted else "loaded", path.generation,
                 len(path.installed()))
        # Last: until now events were ignored; warm() then covers every session bound.
        self.path = path
        return True

    def warm(self) -> None:
        """Bring the kernel in line with the restored sessions (worker thread)."""
        self._work.submit(self._warm)

    def _warm(self) -> None:
        assert self.path is not None
        want = {lease.address: session_step(lease, self.config, self.overrides.get(lease.address))
                for lease in self.leases()}
        for address in set(self.path.installed()) - set(want):
            self._apply(Step(address, None))
        for step in want.values():
            self._apply(step)

    def stop(self) -> None:
        self._work.shutdown(wait=True)
        self._read.shutdown(wait=True)
        if self._tc is not None:
            self._tc.close()
        if self.path is not None:
            self.path.close()

    def attach(self, interfaces: Iterable[str]) -> None:
        """Shape every open access interface; waits for the worker, which does it."""
        if self.path is not None:
            self._work.submit(self._attach, list(interfaces)).result()

    def _attach(self, interfaces: list[str]) -> None:
        assert self.path is not None
        try:
            self._attach_each(interfaces)
        finally:
            if interfaces and all(name in self.attached for name in interfaces):
                for gen in self.path.remove_other_generations():
                    log.info("access data path: removed the pins of generation %s", gen)

    def _attach_each(self, interfaces: list[str]) -> None:
        assert self.path is not None
        for name in interfaces:
            if name in self.attached and self.path.attached(name):
                continue
            try:
                routed = self.path.attach(name, ifb_name(name), self._subnets())
            except Exception as e:
                self.attached.discard(name)
                self.metrics.qos_errors.labels("attach").inc()
                log.error("shaping on %s failed: %s; its subscribers go unshaped", name, e)
                continue
            self.attached.add(name)
            self._groups = {g for g in self._groups if g[0] != name}  # made again if missing
            self.changed()
            # Classes are per interface: one attached now needs those of its shaped sessions.
            for address, rates in list(self.installed.items()):
                if self.where.get(address, "") in ("", name):
                    self._classes(name, self.class_ids.by_address[address], rates)
            self._count_shaped()
            log.info("access data path on %s (upload shaped on %s; routed without "
                     "neighbours: %s)", name, ifb_name(name), ", ".join(routed) or "none")

    def _subnets(self) -> list[tuple[str, str]]:
        """(network, gateway) of every subnet the node serves."""
        return [(str(sub.network), str(sub.gateway)) for pool in self.config.pools.values()
                for sub in pool.subnets]

    def _route(self) -> None:
        """Route the subnets of a new configuration (worker thread)."""
        for name in self.attached:
            try:
                netlink.route_access_subnets(name, self._subnets())
            except Exception as e:
                self.metrics.qos_errors.labels("attach").inc()
                log.error("routing the access subnets on %s failed: %s", name, e)

    # --- sessions -----------------------------------------------------------------------------

    def on_bound(self, s: Session) -> None:
        if s.lease is not None:
            self._submit(self._step(s.lease))

    def on_changed(self, s: Session, what: Change, before: Lease | None) -> None:
        if s.lease is None:
            return
        if before is not None and before.address != s.lease.address:
            self.overrides.pop(before.address, None)
            self._submit(Step(before.address, None))
        self._submit(self._step(s.lease))

    def on_ended(self, s: Session) -> None:
        if s.lease is not None:
            self.overrides.pop(s.lease.address, None)
            self._submit(Step(s.lease.address, None))

    def override(self, lease: Lease, rates: ShapingRates | None) -> None:
        """The hook for RADIUS (authorisation, CoA): ``rates`` for this session over its
        class's policy, applied live like a policy edit; None: back to its class's."""
        if rates is None:
            self.overrides.pop(lease.address, None)
        else:
            self.overrides[lease.address] = rates
        self._submit(self._step(lease))

    def _step(self, lease: Lease) -> Step:
        return session_step(lease, self.config, self.overrides.get(lease.address))

    def reconfigure(self, config: NodeConfig) -> None:
        """A reload: re-rate (or unshape) exactly the sessions whose rates changed."""
        self.config = config
        if self.path is not None:
            self._work.submit(self._route)
        leases = {lease.address: lease for lease in self.leases()}
        for step in reload_steps(dict(self.sessions), leases, config, dict(self.overrides)):
            self._submit(step)

    def maps(self, capacity: int) -> list[MapFill]:
        """Sessions in the access data path, for the BNGNode status."""
        return [MapFill(name="qos_sessions", entries=len(self.sessions), capacity=capacity)]

    def reading(self) -> AccessReading:
        """What the metrics show of the data path, when scraped (on the event loop). The
        programs' counters are read now (BPF syscalls, quick). The queues' drops need
        netlink, which waits for the kernel's RTNL lock, held for seconds while any tc user
        on the host makes thousands of classes: they are read off the loop (a netlink
        socket cannot be made on it), waited for at most QUEUE_WAIT, else the last read is
        shown. The bytes by class, a read of every session's counters, at most every
        BY_CLASS_EVERY seconds in the background."""
        if self.path is None:
            return AccessReading({}, {}, {})
        if time.monotonic() - self._by_class_at > BY_CLASS_EVERY and \
                (self._by_class_run is None or self._by_class_run.done()):
            self._by_class_run = self._read.submit(self._bytes_by_class)
        if self._drops_run is None or self._drops_run.done():
            self._drops_run = self._read.submit(self._queue_drops)
        with contextlib.suppress(TimeoutError):
            self._drops_run.result(timeout=QUEUE_WAIT)
        return AccessReading(self.path.stats(), dict(self._drops), self._by_class)

    def _queue_drops(self) -> None:
        drops = {"down": 0, "up": 0}
        for name in list(self.attached):
            drops["down"] += netlink.htb_root_drops(name)
            drops["up"] += netlink.htb_root_drops(ifb_name(name))
        self._drops = drops

    def _bytes_by_class(self) -> None:
        assert self.path is not None
        by_class: dict[tuple[str, str, str], int] = {}
        shaped = dict(self.installed)
        for address, c in self.path.all_counters().items():
            rates = shaped.get(address)
            if rates is None:
                continue
            cls = self.classes.get(address, "")
            for direction, n in (("down", c.bytes_down), ("up", c.bytes_up)):
                key = (cls, rates.policy, direction)
                by_class[key] = by_class.get(key, 0) + n
        self._by_class, self._by_class_at = by_class, time.monotonic()

    def status(self, lease: Lease) -> dict[str, Any]:
        """A shaped session's Subscriber status fields: its policy's rates, and its
        counters from the subscriber's side (rx: downloaded, tx: uploaded)."""
        # The class's policy, not what the worker installed yet: a new session's object is
        # written at once, and shows its shaping from the start.
        rates = self.overrides.get(lease.address) or rates_for(self.config, lease.subscriber_class)
        if rates is None or self.path is None:
            return {}
        c = self.path.counters(lease.address)
        return {"qos": {"policy": rates.policy, "download": rates.down, "upload": rates.up},
                "counters": {"rxBytes": c.bytes_down, "rxPackets": c.packets_down,
                             "txBytes": c.bytes_up, "txPackets": c.packets_up}}

    # --- the worker ---------------------------------------------------------------------------

    def _submit(self, step: Step) -> None:
        if self.path is not None:
            self._steps.add(step)

    def _apply_all(self, steps: list[Step]) -> None:
        for step in steps:
            self._apply(step)

    def _apply(self, step: Step) -> None:
        assert self.path is not None
        try:
            if step.access is None:
                self._remove(step.address)
            else:
                self.classes[step.address] = step.subscriber_class
                self.where[step.address] = step.interface
                self._install(step.address, step.access, step.rates)
        except Exception as e:  # one session's failure must not stop the worker
            self.metrics.qos_errors.labels("install" if step.access else "remove").inc()
            log.error("shaping %s: %s", step, e)

    def _install(self, address: int, access: Access, rates: ShapingRates | None) -> None:
        assert self.path is not None
        if self.sessions.get(address) == (access, rates) and \
                (rates is None) == (address not in self.class_ids.by_address):
            return
        t0 = time.perf_counter()
        cid = 0
        if rates is not None:
            cid = self.class_ids.take(address) or 0
            if not cid:
                self.metrics.qos_errors.labels("no_class").inc()
                log.warning("shaping: every HTB class id is taken; %s goes unshaped", address)
                rates = None
            else:
                for name in self._interfaces_of(address):
                    self._classes(name, cid, rates)
        had = self.class_ids.by_address.get(address) if rates is None else None
        # after the classes (never a class id HTB lacks), before a class goes
        self.path.put(address, cid, access)
        if had is not None:
            self._del_classes(had)
            self.class_ids.release(address)
        self.sessions[address] = (access, rates)
        if rates is None:
            self.installed.pop(address, None)
        else:
            self.installed[address] = rates
            self.metrics.qos_install_seconds.observe(time.perf_counter() - t0)
        self._count_shaped()

    @property
    def tc(self) -> netlink.Tc:
        if self._tc is None:
            self._tc = netlink.Tc()
        return self._tc

    def _interfaces_of(self, address: int) -> list[str]:
        return class_interfaces(self.where.get(address, ""), self.attached)

    def _classes(self, ifname: str, cid: int, rates: ShapingRates) -> None:
        major = cid >> 16
        if major != ROOT_MAJOR and (ifname, major) not in self._groups:
            for dev in (ifname, ifb_name(ifname)):
                self.tc.htb_group(dev, group_class(major), major)
            self._groups.add((ifname, major))
        self.tc.htb_class(ifname, cid, rates.down_bps, rates.down_burst)
        self.tc.htb_class(ifb_name(ifname), cid, rates.up_bps, rates.up_burst)

    def _count_shaped(self) -> None:
        # Shaped: with classes in the kernel, which needs an interface attached.
        self.metrics.qos_shaped.set(len(self.installed) if self.attached else 0)

    def _del_classes(self, cid: int) -> None:
        for name in self.attached:
            self.tc.del_htb_class(name, cid)
            self.tc.del_htb_class(ifb_name(name), cid)

    def _remove(self, address: int) -> None:
        assert self.path is not None
        self.sessions.pop(address, None)
        self.classes.pop(address, None)
        self.where.pop(address, None)
        self.path.delete(address)  # before the classes: never a class id HTB lacks
        cid = self.class_ids.release(address)
        if cid is not None:
            self._del_classes(cid)
        self.installed.pop(address, None)
        self._count_shaped()

"""NAT44 as a session feature. A session of a class with a ``natPool`` gets a binding when
it binds: a block of ports on one public address (port-block mode), or its blocks by the
formula (deterministic mode). The binding is written to the NAT file with its block log
records, fsync'd, and only then to the kernel's ``nat_bindings``. An ended session's
binding goes, its blocks held before reuse; a changed class, address or NATPool gets a new
binding, logged. Blocks fill: a subscriber gets another on its address, up to
``blocksPerSubscriber``.

The kernel work and the file's fsyncs run on one worker thread, in order, never on the
event loop; the events queued while it works go in one transaction (one fsync for a burst).
The programs and maps outlive the agent (pinned); on start they are adopted, and the
bindings in the NAT file are checked against the sessions restored from the lease store.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bng_operator.agent.bursts import Bursts
from bng_operator.agent.config import NatConfig, NodeConfig
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.nat.blocks import BlockAllocator, Grant
from bng_operator.agent.nat.log import BlockLog, Bound, Holder, Record, records
from bng_operator.agent.sessions.session import Change, Session
from bng_operator.api.bngnode import MapFill, NATUsage, ProgramStatus
from bng_operator.api.common import parse_duration
from bng_operator.metrics import AgentMetrics, NatReading

if TYPE_CHECKING:  # the dataplane imports bcc: loaded only when NAT is in use
    from bng_operator.agent.dataplane.nat import NatPath

log = logging.getLogger("bng.agent.nat")
COLLECT_EVERY = 5.0  # seconds between collector passes (idle mappings end, blocks grow)
RETENTION = 180 * 86400.0  # seconds block records are kept (the abuse desk's horizon)
NO_UPLINK = ("NAT classes are configured but the BNGNode has no uplink interface "
             "(spec.interfaces.uplink): NATed subscribers cannot reach the internet")


def nat_programs(uplink: str | None, attached: str | None) -> list[ProgramStatus]:
    """The NAT programs on the uplink, for the BNGNode status."""
    if not uplink:
        return []
    return [ProgramStatus(hook=hook, interface=uplink, name=fn, attached=attached == uplink)
            for hook, fn in (("tc-egress", "nat_out"), ("tc-ingress", "nat_in"))]


def holder(lease: Lease) -> Holder:
    return Holder(IPv4Address(lease.address), lease.identity, lease.mac, lease.circuit_id,
                  lease.remote_id)


@dataclass
class _Batch:
    """What one pass of the worker writes: durably first, then to the kernel."""

    put: dict[IPv4Address, Bound] = field(default_factory=dict)
    gone: dict[IPv4Address, Bound] = field(default_factory=dict)  # released: the old binding
    records: list[Record] = field(default_factory=list)
    formulas: dict[str, str] = field(default_factory=dict)


def table_size(ports: int) -> int:
    """Entries of each mapping table for ``ports`` public ports: ``mapping_capacity``,
    rounded up to a power of two so that small edits keep the tables (and their flows)."""
    need = 3 * max(ports, 1024)
    return 1 << (need - 1).bit_length()


@dataclass
class NatFeature:
    metrics: AgentMetrics
    pin_root: Path
    config: NodeConfig
    file: Path  # the NAT file: bindings and the block log
    leases: Callable[[], Iterable[Lease]]  # the bound leases now (the DHCP server's)
    lease_of: Callable[[int], Lease | None] = lambda address: None  # one, by its address
    changed: Callable[[], None] = lambda: None  # what the BNGNode status shows changed
    granted: Callable[[Lease], None] = lambda lease: None  # its Subscriber status changed
    on_block: Callable[[Record], None] = lambda r: None  # a block given or taken (flows)
    name: str = "nat"
    path: NatPath | None = field(default=None, init=False)
    blocklog: BlockLog | None = field(default=None, init=False)
    bound: dict[IPv4Address, Bound] = field(default_factory=dict, init=False)
    allocators: dict[str, BlockAllocator] = field(default_factory=dict, init=False)
    slots: dict[str, int] = field(default_factory=dict, init=False)  # pool -> kernel index
    attached: str | None = field(default=None, init=False)  # the uplink translated on
    problem: str = field(default="", init=False)  # why NAT is not running, for the status
    _items: Bursts[tuple[str, Any]] = field(init=False)  # to the worker, in bursts
    _work: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="bng-nat"), init=False)
    _tables: dict[str, int] = field(default_factory=dict, init=False)  # the collector's count
    _collected_at: float = field(default=0.0, init=False)
    _pruned_at: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._items = Bursts(self._work, self._drain)

    # --- start and stop ----------------------------------------------------------------------

    @property
    def wanted(self) -> bool:
        return bool(self.config.nat)

    def start(self) -> bool:
        """Open the NAT file and load or adopt the programs and maps (worker thread's
        first job). False: NAT is unavailable (said, counted); the sessions of NAT classes
        get no binding and their traffic is dropped at the uplink, never sent unNATed."""
        return self._work.submit(self._start).result()

    def _start(self) -> bool:
        from bng_operator.agent.dataplane.loader import DataplaneError
        from bng_operator.agent.dataplane.nat import NatPath

        try:
            self.blocklog = BlockLog(self.file)
        except Exception as e:
            self._fail("load", f"the NAT file {self.file} cannot be opened: {e}")
            return False
        self.bound = self.blocklog.bindings()
        self.slots = self.blocklog.pool_slots()
        try:
            self.path = NatPath(**self._sizes(self.config))
        except DataplaneError as e:
            self._fail("load", f"NAT unavailable, NATed subscribers get no translation: {e}")
            return False
        log.info("NAT: %s generation %s, %d bindings in its maps, %d in %s",
                 "adopted" if self.path.adopted else "loaded", self.path.generation,
                 len(self.path.bindings()), len(self.bound), self.file)
        if not self.path.adopted:  # other sizes or other code: the old tables' flows go on
            self._carry_over("restart")
        self._reconcile(self.config, "restart")
        return True

    def no_uplink(self) -> None:
        """NAT classes, and no uplink to translate on: said once, counted; nothing loads."""
        if self.problem != NO_UPLINK:
            self._fail("attach", NO_UPLINK)

    def _fail(self, op: str, why: str) -> None:
        self.problem = why
        self.metrics.nat_errors.labels(op).inc()
        log.error("%s", why)
        self.changed()

    def _sizes(self, config: NodeConfig) -> dict[str, Any]:
        ports = sum(len(n.served) * (n.layout.port_end - n.layout.port_start + 1)
                    for n in config.nat.values())
        per = max((n.layout.per_subscriber for n in config.nat.values()), default=1)
        return {"max_subscribers": config.max_leases, "max_mappings": table_size(ports),
                "max_blocks": max(4, 1 << (per - 1).bit_length()),
                "pin_root": self.pin_root}

    def stop(self) -> None:
        self._work.shutdown(wait=True)
        if self.path is not None:
            self.path.close()
        if self.blocklog is not None:
            self.blocklog.close()

    def attach(self) -> None:
        """Translate on the uplink (from the periodic tick; waits for the worker)."""
        if self.path is not None:
            self._work.submit(self._attach).result()

    def _attach(self) -> None:
        assert self.path is not None
        uplink = self.config.uplink
        if not uplink:
            self.no_uplink()
            return
        if self.attached == uplink and self.path.attached(uplink):
            return
        try:
            self.path.attach(uplink)
        except Exception as e:
            if self.attached is not None or not self.problem:
                self._fail("attach", f"NAT on {uplink} failed: {e}")
            self.attached = None
            return
        self.attached, self.problem = uplink, ""
        # What the old programs made while this generation was being readied, last.
        self._carry_over("attach", quiet=True)
        for gen in self.path.remove_other_generations():
            log.info("NAT: removed the pins of generation %s", gen)
        self.changed()
        log.info("NAT translating on %s", uplink)

    # --- sessions -----------------------------------------------------------------------------

    def on_bound(self, s: Session) -> None:
        if s.lease is not None:
            self._submit("lease", s.lease)

    def on_changed(self, s: Session, what: Change, before: Lease | None) -> None:
        if s.lease is None:
            return
        if before is not None and before.address != s.lease.address:
            self._submit("end", (before, "address changed"))
        self._submit("lease", s.lease)

    def on_ended(self, s: Session) -> None:
        if s.lease is not None:
            self._submit("end", (s.lease, f"session ended ({s.end_reason})"))

    def reconfigure(self, config: NodeConfig) -> None:
        """A reload: NATPool edits (addresses, blocks, timeouts, filtering) apply live;
        bindings no longer valid get new ones, logged."""
        self._submit("config", config)

    def _submit(self, kind: str, item: Any) -> None:
        if self.path is None and kind != "config":
            # NAT not running (no class uses it, or it failed to load): the worker would
            # drop the session event; handing it over cost every DORA a thread wake-up. A
            # start reconciles with the sessions of its moment. A reload still goes: one
            # that comes during a start applies after it.
            return
        self._items.add((kind, item))

    # --- the worker ---------------------------------------------------------------------------

    def _drain(self, steps: list[tuple[str, Any]]) -> None:
        if self.path is None or self.blocklog is None:
            return
        batch, now, leases = _Batch(), time.time(), []
        try:
            for kind, item in steps:
                if kind == "config":
                    self._write(batch)  # the old configuration's work first
                    batch = _Batch()
                    resized = self._sizes(item) != self._sizes(self.config)
                    if resized:
                        self._resize(item)
                    self._reconcile(item, "NATPool changed")
                    if resized:
                        self._attach()  # at once: new flows meanwhile would be lost
                elif kind == "lease":
                    self._bind(item, batch, now, "session bound")
                    leases.append(item)
                else:
                    ended, reason = item
                    self._release(IPv4Address(ended.address), batch, now, reason, ended)
            self._write(batch)
        except Exception as e:
            self.metrics.nat_errors.labels("bind").inc()
            log.exception("NAT: writing bindings failed: %s", e)
            return
        for lease in leases:
            if IPv4Address(lease.address) in batch.put:
                self.granted(lease)

    def _config_of(self, lease: Lease, config: NodeConfig | None = None) -> NatConfig | None:
        c = config or self.config
        name = c.nat_pool_of.get(lease.subscriber_class)
        return c.nat.get(name) if name is not None else None

    def _bind(self, lease: Lease, batch: _Batch, now: float, reason: str) -> None:
        inside = IPv4Address(lease.address)
        nc = self._config_of(lease)
        have = self.bound.get(inside)
        if have is not None and nc is not None and have.pool == nc.name and \
                have.identity == lease.identity:
            return  # valid: reconcile checked it against the pool
        if have is not None:
            self._release(inside, batch, now, "another subscriber"
                          if have.identity != lease.identity else "class changed", lease)
        if nc is None:
            return
        g = self._grant(nc, inside, now)
        if g is None:
            self.metrics.nat_unserved.labels(nc.name).inc()
            log.warning("NAT: no free block in pool %s for %s (%s): its traffic is dropped "
                        "until one frees", nc.name, inside, lease.identity)
            return
        b = Bound(nc.name, g, lease.identity)
        self.bound[inside] = batch.put[inside] = b
        batch.gone.pop(inside, None)
        if not nc.deterministic:
            batch.records += records("allocated", nc.name, g, holder(lease), reason, now)

    def _grant(self, nc: NatConfig, inside: IPv4Address, now: float) -> Grant | None:
        if nc.deterministic:
            g = nc.layout.formula(inside)
            return g if g is not None and g.public in nc.served else None
        return self.allocators[nc.name].grant(now)

    def _release(self, inside: IPv4Address, batch: _Batch, now: float, reason: str,
                 lease: Lease | None = None) -> None:
        """``lease``: the session's, if known, for the record's MAC and line ids."""
        have = self.bound.pop(inside, None)
        if have is None:
            return
        batch.put.pop(inside, None)
        batch.gone.setdefault(inside, have)
        nc = self.config.nat.get(have.pool)
        alloc = self.allocators.get(have.pool)
        if alloc is not None:
            alloc.release(have.grant, now)
        if nc is None or not nc.deterministic:
            who = holder(lease) if lease is not None and lease.identity == have.identity \
                else Holder(inside, have.identity)
            batch.records += records("released", have.pool, have.grant, who, reason, now)

    def _write(self, batch: _Batch) -> None:
        """The batch to the NAT file (fsync'd), then to the kernel."""
        assert self.blocklog is not None and self.path is not None
        if not (batch.put or batch.gone or batch.records or batch.formulas):
            return
        self.blocklog.write(batch.put, list(batch.gone), batch.records, dict(self.slots),
                            batch.formulas)
        for r in batch.records:
            self.metrics.nat_block_events.labels(r.pool, r.event).inc()
            self.on_block(r)
        for inside in batch.gone:
            if inside not in batch.put:
                self.path.delete_binding(inside)
        for inside, b in batch.put.items():
            self._put(inside, b)
            old = batch.gone.get(inside)
            if old is not None:  # the mappings on ports it no longer has go
                self.path.flush(inside, self._binding(old), keep=self._binding(b))
        self._count()

    def _binding(self, b: Bound) -> Any:
        from bng_operator.agent.dataplane.nat import Binding
        return Binding(b.grant.public, self.slots.get(b.pool, 0), b.grant.block_size,
                       b.grant.blocks)

    def _put(self, inside: IPv4Address, b: Bound) -> None:
        assert self.path is not None
        self.path.put_binding(inside, self._binding(b))

    # --- configuration (start and reload) -------------------------------------------------

    def _resize(self, config: NodeConfig) -> None:
        """The NATPools outgrew the tables (or need more blocks a binding): a generation
        of the new sizes, the old one's mappings copied in; once it has the bindings, its
        programs replace the old ones on the uplink and the old pins go."""
        from bng_operator.agent.dataplane.nat import NatPath

        old = self.path
        assert old is not None
        new = NatPath(**self._sizes(config))
        copied, lost = new.put_entries(old.mapping_entries())
        log.warning("NAT tables resized for the new NATPools: generation %s -> %s, %d "
                    "entries carried over%s", old.generation, new.generation, copied,
                    f", {lost} did not fit" if lost else "")
        if lost:
            self.metrics.nat_errors.labels("carry-over").inc()
        self.path, self.attached = new, None
        old.close()

    def _carry_over(self, when: str, quiet: bool = False) -> None:
        """Copy the mappings, held ports and filters of the other pinned generations (a
        restart with other table sizes, or an upgrade) into this one's tables."""
        assert self.path is not None
        for gen, entries in self.path.sibling_entries():
            if entries is None:
                if not quiet:
                    log.warning("NAT: generation %s has another mapping layout; its flows "
                                "start over (new mappings) once this one translates", gen)
                    self.metrics.nat_errors.labels("carry-over").inc()
                continue
            copied, lost = self.path.put_entries(entries)
            if lost:
                self.metrics.nat_errors.labels("carry-over").inc()
            if copied or lost or not quiet:
                log.info("NAT (%s): %d entries of generation %s carried over to %s%s", when,
                         copied, gen, self.path.generation,
                         f", {lost} did not fit" if lost else "")

    def _reconcile(self, config: NodeConfig, reason: str) -> None:
        """Bring the NAT file and the kernel in line with ``config`` and the bound leases."""
        from bng_operator.agent.dataplane.nat import Pool, Timeouts

        assert self.path is not None and self.blocklog is not None
        before = self.config
        self.config = config
        now = time.time()
        batch = _Batch()
        # Pool slots: kept for pools that stay (their bindings in the kernel name them).
        self.slots = {n: i for n, i in self.slots.items() if n in config.nat}
        for name in sorted(config.nat):
            if name not in self.slots:
                free = sorted(set(range(64)) - set(self.slots.values()))
                if not free:
                    raise RuntimeError("more than 64 NATPools on one node")
                self.slots[name] = free[0]
        for name, nc in config.nat.items():
            t, d = nc.spec.timeouts, parse_duration
            self.path.set_pool(self.slots[name], Pool(
                nc.spec.filtering_behavior, Timeouts(d(t.udp), d(t.tcp_established),
                                                     d(t.tcp_transitory), d(t.icmp), nc.hold)))
        # Public addresses and inside prefixes the programs know.
        want_addresses = {a: self.slots[n] for n, nc in config.nat.items() for a in nc.served}
        for a, slot in self.path.addresses().items():
            if want_addresses.get(a) != slot:
                self.path.delete_address(a)
        for a, slot in want_addresses.items():
            self.path.put_address(a, slot)
        want_inside = {net for nc in config.nat.values() for net in nc.inside}
        for net in self.path.inside_prefixes():
            if net not in want_inside:
                self.path.delete_inside(net)
        for net in want_inside:
            self.path.put_inside(net)
        # Deterministic formulas: logged whenever their configuration changes.
        logged = self.blocklog.formulas()
        for name, nc in config.nat.items():
            desc = json.dumps(nc.layout.describe(), sort_keys=True) if nc.deterministic else ""
            if logged.get(name, "") != desc:
                batch.formulas[name] = desc
        for name, desc in logged.items():
            if desc and name not in config.nat:
                batch.formulas[name] = ""
        # Allocators: new, for each port-block pool; every binding still valid is adopted.
        held = {n: a for n, a in self.allocators.items()}
        self.allocators = {}
        for name, nc in config.nat.items():
            if nc.deterministic:
                continue
            old = held.get(name)
            bc = before.nat.get(name)
            if old is not None and bc is not None and bc.layout == nc.layout and \
                    bc.served == nc.served:
                old.hold = nc.hold
                self.allocators[name] = old
            else:
                self.allocators[name] = BlockAllocator(nc.layout, nc.hold)
        fresh = {n for n, a in self.allocators.items() if held.get(n) is not a}
        leases = {IPv4Address(lease.address): lease for lease in self.leases()}
        for inside, b in sorted(self.bound.items()):
            lease = leases.get(inside)
            pc = config.nat.get(b.pool)
            ok = lease is not None and pc is not None and \
                self._config_of(lease, config) is pc and lease.identity == b.identity
            if ok and pc is not None and pc.deterministic:
                ok = pc.layout.formula(inside) == b.grant and b.grant.public in pc.served
            elif ok and b.pool in fresh:
                ok = self.allocators[b.pool].adopt(b.grant)
            if not ok:
                why = "session ended while the agent was down" if lease is None else \
                    f"NATPool {b.pool} removed" if pc is None else reason
                self._release(inside, batch, now, why, lease)
        for inside, lease in leases.items():
            self._bind(lease, batch, now, reason if inside in batch.gone else "session bound")
        # The kernel's bindings: exactly the file's.
        kernel = self.path.bindings()
        for inside in set(kernel) - set(self.bound) - set(batch.gone):
            self.path.delete_binding(inside)
        self._write(batch)
        for inside, b in self.bound.items():
            if kernel.get(inside) != self._binding(b):
                self._put(inside, b)
        self._count()

    # --- periodic work -----------------------------------------------------------------------

    def collect(self) -> None:
        """The collector (from the periodic tick, off the loop): idle mappings end, full
        blocks grow, old block records are pruned."""
        if self.path is not None and time.monotonic() - self._collected_at >= COLLECT_EVERY:
            self._collected_at = time.monotonic()
            self._work.submit(self._collect)

    def _collect(self) -> None:
        assert self.path is not None and self.blocklog is not None
        try:
            self.path.collect()
            self._tables = self.path.counts()
            self._grow(self.path.exhausted())
            if time.time() - self._pruned_at > 3600:
                self._pruned_at = time.time()
                self.blocklog.prune(time.time() - RETENTION)
        except Exception:
            self.metrics.nat_errors.labels("collect").inc()
            log.exception("NAT collector failed; retrying")

    def _grow(self, exhausted: dict[IPv4Address, Any]) -> None:
        batch, now = _Batch(), time.time()
        grown: list[Lease] = []
        for inside, e in exhausted.items():
            b = self.bound.get(inside)
            if b is None:
                continue
            self.metrics.nat_port_exhaustion.labels(b.pool).inc(e.refused)
            alloc = self.allocators.get(b.pool)
            g = alloc.grow(b.grant, now) if alloc is not None else None
            if g is None:
                continue
            lease = self.lease_of(int(inside))
            nb = Bound(b.pool, g, b.identity)
            self.bound[inside] = batch.put[inside] = nb
            who = holder(lease) if lease is not None else Holder(inside, b.identity)
            batch.records += records("allocated", b.pool, Grant(g.public, g.blocks[-1:],
                                                                g.block_size),
                                     who, "blocks full", now)
            if lease is not None:
                grown.append(lease)
        self._write(batch)
        for lease in grown:
            self.granted(lease)

    def _count(self) -> None:
        for name, nc in self.config.nat.items():
            if nc.deterministic:
                total = len(nc.served) * nc.layout.slots_per_address * nc.layout.per_subscriber
                used = sum(len(b.grant.blocks) for b in self.bound.values() if b.pool == name)
            else:
                a = self.allocators[name]
                total, used = a.total, sum(a.usage().values())
            self.metrics.nat_blocks_total.labels(name).set(total)
            self.metrics.nat_blocks_used.labels(name).set(used)

    # --- what others read ----------------------------------------------------------------------

    def status(self, lease: Lease) -> dict[str, Any]:
        """A NATed session's Subscriber status: its public address and ports."""
        b = self.bound.get(IPv4Address(lease.address))
        if b is None or b.identity != lease.identity:
            return {}
        first, last = b.grant.ranges[0][0], b.grant.ranges[-1][1]
        return {"nat": {"pool": b.pool, "address": str(b.grant.public), "portStart": first,
                        "portEnd": last, "ports": b.grant.ports()}}

    def usage(self) -> list[NATUsage]:
        """Blocks in use per public address, for the BNGNode status."""
        out = []
        for name, nc in sorted(self.config.nat.items()):
            per_address = nc.layout.blocks_per_address
            if nc.deterministic:
                used: dict[IPv4Address, int] = {}
                for b in self.bound.values():
                    if b.pool == name:
                        used[b.grant.public] = used.get(b.grant.public, 0) + len(b.grant.blocks)
            else:
                alloc = self.allocators.get(name)
                used = alloc.usage() if alloc is not None else {}
            out += [NATUsage(pool=name, address=str(a), blocks_used=used.get(a, 0),
                             blocks_total=per_address) for a in nc.served]
        return out

    def maps(self) -> list[MapFill]:
        return [MapFill(name="nat_bindings", entries=len(self.bound),
                        capacity=self.config.max_leases)] if self.path is not None else []

    def reading(self) -> NatReading:
        """The programs' counters (read now: BPF syscalls on a small array) and the tables'
        sizes as the collector's last pass counted them (a walk of every table is too slow
        for a scrape on the event loop)."""
        from bng_operator.agent.dataplane.nat import DROPS

        if self.path is None:
            return NatReading({}, DROPS, {})
        return NatReading(self.path.stats(), DROPS, dict(self._tables))

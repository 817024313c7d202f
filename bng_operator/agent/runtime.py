"""The node agent's event loop: sockets in, state machine, lease commit, replies out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING

from bng_operator import http, netlink
from bng_operator.agent.config import ConfigError, NodeConfig
from bng_operator.agent.dataplane import DEFAULT_PIN_ROOT
from bng_operator.agent.dhcp.codec import Malformed, decode, encode
from bng_operator.agent.dhcp.leases import Lease, LeaseStore
from bng_operator.agent.dhcp.server import Context, DhcpServer
from bng_operator.agent.dhcp.transport import (
    BROADCAST_IP,
    AccessInterface,
    build_frame,
    parse_frame,
    reply_destination,
)
from bng_operator.agent.kube import KubeReporter, ReportSettings
from bng_operator.agent.sources import KubeSource, Source, load_node_config
from bng_operator.agent.status import node_status
from bng_operator.agent.subscribers import object_name
from bng_operator.api.bngnode import BNGNodeStatus, MapFill, ProgramStatus
from bng_operator.api.common import DEFAULT_NAMESPACE, Condition

if TYPE_CHECKING:  # the dataplane imports bcc: loaded only when the fast path is on
    from bng_operator.agent.dataplane.cache import SubscriberCache
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent")


@dataclass
class AgentSettings:
    node: str
    state_dir: Path = Path("/var/lib/bng")
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9641
    tick: float = 1.0  # how often leases, offers and declines are expired
    fast_path: bool = True  # the XDP program on the access interfaces
    bpf_pin_root: Path = DEFAULT_PIN_ROOT
    xdp_mode: netlink.XDPMode = "native"
    sync_interval: float = 0.5  # how often fast-path renewals reach the lease store (<= 1 s)
    expiry_grace: float = 2.0  # leases end this late, for renewals still on their way up
    namespace: str = DEFAULT_NAMESPACE  # of Subscriber objects (Kubernetes mode)
    report: ReportSettings = field(default_factory=ReportSettings)
    status_interval: float = 1.0  # BNGNode status: at most one write this often, if changed


@dataclass(frozen=True, slots=True)
class _Pending:
    """A reply waiting for the lease store's commit."""

    iface: AccessInterface
    wire: bytes
    mtype: str
    kind: str
    t0: float
    lease: Lease | None  # bound by this reply: into the fast path once it is on disk


@dataclass
class Agent:
    settings: AgentSettings
    source: Source
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    server: DhcpServer | None = None
    store: LeaseStore | None = None
    interfaces: dict[str, AccessInterface] = field(default_factory=dict)
    config: NodeConfig | None = None
    cache: SubscriberCache | None = None
    _problem: str = "starting"
    _after_commit: dict[asyncio.Future[None], list[_Pending]] = field(default_factory=dict)
    _attached: set[str] = field(default_factory=set)
    reporter: KubeReporter | None = None
    _orphans: dict[int, Lease] = field(default_factory=dict)  # pool gone; counted until they end
    _status_dirty: bool = True
    _last_sync: datetime | None = None
    _conditions: list[Condition] = field(default_factory=list)
    _reload_error: str = ""
    _reload_wanted: asyncio.Event = field(default_factory=asyncio.Event)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.config = await loop.run_in_executor(None, load_node_config, self.source,
                                                 self.settings.node)
        self._last_sync = datetime.now(UTC)
        self.metrics.config_loaded.set(1)
        path = self.settings.state_dir / f"leases-{self.settings.node}.sqlite"
        self.store = LeaseStore(path)
        self.server = DhcpServer(self.config, self.store)
        server = self.server
        self.metrics.watch_leases(server.pool_usage, lambda: len(server.by_address))
        leases, declines = self.store.load()
        for orphan in self.server.load(leases, declines):
            self._orphans[orphan.address] = orphan
            log.warning("stored lease of %s on %s has no pool on this node any more; it is "
                        "served again only if the client asks anew", orphan.identity,
                        IPv4Address(orphan.address))
        if self.settings.fast_path:
            self._start_fast_path()
        self.server.expire()
        await self.store.commit()
        if self.cache is not None:
            n = self.cache.warm(self.server.by_address.values())
            log.info("fast path: %d subscribers in the maps (generation %s%s)", n,
                     self.cache.fp.generation, ", adopted" if self.cache.fp.adopted_maps else "")
        log.info("node %s: %d leases restored from %s, %d pools, %d classes, source %s",
                 self.config.node_name, len(self.server.by_address), path,
                 len(self.config.pools), len(self.config.classes), self.source.describe())
        site = await http.serve(self.settings.metrics_host, self.settings.metrics_port,
                                self.metrics.render, self.ready)
        loop.add_signal_handler(signal.SIGHUP, self._reload_wanted.set)
        tasks = [asyncio.create_task(self._tick(stop)), asyncio.create_task(self._reloader(stop))]
        if self.cache is not None:
            tasks.append(asyncio.create_task(self._sync_fast_path(stop)))
        watch_stop = threading.Event()
        if isinstance(self.source, KubeSource):
            self._start_reporting(self.source, watch_stop, tasks, stop)
        try:
            await stop.wait()
        finally:
            watch_stop.set()
            for t in tasks:
                t.cancel()
            if self.reporter is not None:
                await loop.run_in_executor(None, self.reporter.stop)
            site.close()
            for iface in self.interfaces.values():
                loop.remove_reader(iface.fileno())
                iface.close()
            self.interfaces.clear()
            if self.cache is not None:
                self._persist_renewals()
            with contextlib.suppress(Exception):
                await self.store.commit()
            self.store.close()
            if self.cache is not None:  # the program and its maps stay: DHCP goes on
                self.cache.fp.close()

    def ready(self) -> tuple[bool, str]:
        return (self._problem == "", self._problem or "ready")

    async def _reloader(self, stop: asyncio.Event) -> None:
        """Reloads, one at a time; a burst of changes (or SIGHUPs) costs one reload."""
        while not stop.is_set():
            await self._reload_wanted.wait()
            await asyncio.sleep(0.05)
            self._reload_wanted.clear()
            try:
                await self.reload()
            except Exception:  # a bad reload must not end the reloader
                log.exception("reload failed")

    async def reload(self) -> None:
        """Re-read the configuration and apply it without dropping a lease."""
        loop = asyncio.get_running_loop()
        try:
            config = await loop.run_in_executor(None, load_node_config, self.source,
                                                self.settings.node)
        except (ConfigError, OSError) as e:
            self.metrics.config_loaded.set(0)
            self._reload_error = f"configuration not applied: {e}"  # seen by _report
            log.error("reload failed, still serving the previous configuration: %s", e)
            return
        assert self.server is not None and self.config is not None
        if config == self.config:
            self._last_sync = datetime.now(UTC)
            self._reload_error = ""
            self.metrics.config_loaded.set(1)
            return
        if config.max_leases != self.config.max_leases and self.cache is not None:
            log.warning("maxLeases changed to %d: the fast path's maps keep their size until the "
                        "agent restarts", config.max_leases)
        for orphan in self.server.reconfigure(config):
            self._orphans[orphan.address] = orphan
        self.config = config
        self._reload_error = ""
        self._last_sync = datetime.now(UTC)
        self._status_dirty = True
        if self.cache is not None:
            dropped = self.cache.reconfigure(config, list(self.server.by_address.values()))
            log.info("fast path: options updated, %d entries dropped to be classified anew",
                     dropped)
        self.metrics.config_loaded.set(1)
        log.info("configuration reloaded: %d pools, %d classes", len(config.pools),
                 len(config.classes))

    async def _tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._open_interfaces()
                self._expire()
            except Exception:  # the timer must outlive any one bad tick
                log.exception("periodic work failed; retrying")
            await asyncio.sleep(self.settings.tick)

    async def _open_interfaces(self) -> None:
        """Open sockets on access interfaces that exist; an absent one is retried each tick."""
        assert self.config is not None
        loop = asyncio.get_running_loop()
        missing = []
        for name in self.config.access_interfaces:
            if name in self.interfaces:
                continue
            try:
                # pyroute2 turns asynchronous inside a running loop: netlink runs in a thread.
                iface = await loop.run_in_executor(None, AccessInterface, name)
            except (netlink.InterfaceMissing, OSError) as e:
                missing.append(f"{name} ({e})")
                continue
            self.interfaces[name] = iface
            loop.add_reader(iface.fileno(), self._on_readable, iface)
            log.info("serving DHCP on %s (%s)", name,
                     ", ".join(str(a) for a in iface.addresses) or "no IPv4 address")
        if self.cache is not None:
            await loop.run_in_executor(None, self._attach_fast_path)
        problem = f"access interfaces missing: {', '.join(missing)}" if missing else ""
        if problem and problem != self._problem:
            log.error("%s; retrying every %ss", problem, self.settings.tick)
        self._problem = problem

    def _expire(self) -> None:
        assert self.server is not None and self.store is not None
        if self.cache is not None:
            self._persist_renewals()  # first: a lease the kernel just renewed must not end
        if self.server.expire(self.settings.expiry_grace if self.cache else 0.0):
            self._commit_quietly()
        now = time.time()
        for addr, lease in list(self._orphans.items()):
            if lease.expires <= now or addr in self.server.by_address:
                del self._orphans[addr]
                self._status_dirty = True

    # --- Kubernetes mode: BNGNode status and Subscriber objects ------------------------------

    def _start_reporting(self, source: KubeSource, watch_stop: threading.Event,
                         tasks: list[asyncio.Task[None]], stop: asyncio.Event) -> None:
        assert self.server is not None
        loop = asyncio.get_running_loop()
        reporter = self.reporter = KubeReporter(source.api, self.settings.node,
                                                self.settings.namespace, self.settings.report,
                                                self.metrics)
        self.server.on_event = self._subscriber_event
        reporter.start()

        def changed() -> None:  # from a watch thread
            loop.call_soon_threadsafe(self._reload_wanted.set)

        source.watch(changed, watch_stop)
        if source.from_cache:  # started without the apiserver: read it again when it is back
            self._reload_wanted.set()
        tasks.append(asyncio.create_task(self._report(stop)))

    def _subscriber_name(self, lease: Lease) -> str:
        assert self.config is not None
        r = self.config.reservation_by_key.get(lease.identity)
        return r.name if r is not None else object_name(lease.identity)

    def _subscriber_event(self, event: str, lease: Lease) -> None:
        self._status_dirty = True
        if self.reporter is not None:
            self.reporter.subscriber(self._subscriber_name(lease), event, lease)  # type: ignore[arg-type]

    async def _report(self, stop: asyncio.Event) -> None:
        """BNGNode status when it changed; every bound subscriber at the accounting interval
        (their lease ends moved by renewals); everything again after updates were lost."""
        assert self.reporter is not None and self.server is not None
        next_accounting = time.monotonic() + self.settings.report.accounting_interval
        seen: tuple[object, ...] = ()
        while not stop.is_set():
            try:
                now_seen = (self._problem, frozenset(self._attached), self._reload_error,
                            self.cache is not None)
                if now_seen != seen:
                    seen, self._status_dirty = now_seen, True
                if self.reporter.need_resync and self.reporter.reachable:
                    self.reporter.need_resync = False
                    for lease in list(self.server.by_address.values()):
                        self._subscriber_event("allocate", lease)
                refresh = time.monotonic() >= next_accounting
                if refresh:
                    next_accounting = time.monotonic() + self.settings.report.accounting_interval
                    for lease in list(self.server.by_address.values()):
                        self.reporter.subscriber(self._subscriber_name(lease), "allocate", lease,
                                                 refresh=True)
                if self._status_dirty:
                    self._status_dirty = False
                    self.reporter.node_status(self._node_status())
            except Exception:  # the reporter must outlive any one bad round
                log.exception("status report failed; retrying")
            await asyncio.sleep(self.settings.status_interval)

    def _node_status(self) -> BNGNodeStatus:
        assert self.config is not None and self.server is not None
        programs = [ProgramStatus(hook="xdp", interface=name, name="xdp_dhcp",
                                  attached=name in self._attached)
                    for name in self.config.access_interfaces] if self.settings.fast_path else []
        maps = [MapFill(name=k, entries=v, capacity=self.config.max_leases)
                for k, v in sorted(self.cache.counts().items())] if self.cache else []
        problem = self._problem
        degraded = self._reload_error
        if self.settings.fast_path:
            missing = [n for n in self.config.access_interfaces if n not in self._attached]
            if self.cache is None:
                degraded = degraded or "fast path unavailable: the slow path serves every request"
            elif missing:
                degraded = degraded or f"fast path not attached on {', '.join(missing)}"
        generation = getattr(self.source, "generation", None)
        leases = [*self.server.by_address.values(), *self._orphans.values()]
        st = node_status(self.config, leases, programs, maps, problem, degraded, generation,
                         self._last_sync, self._conditions, datetime.now(UTC))
        self._conditions = list(st.conditions)
        return st

    # --- the fast path -----------------------------------------------------------------------

    def _start_fast_path(self) -> None:
        """Load or adopt the XDP program and its maps; take in the renewals it answered while
        no agent ran. Without it the agent still serves, from the slow path alone."""
        from bng_operator.agent.dataplane.cache import SubscriberCache
        from bng_operator.agent.dataplane.fastpath import FastPath
        from bng_operator.agent.dataplane.loader import DataplaneError

        assert self.config is not None and self.server is not None
        try:
            fp = FastPath(self.config.max_leases, self.settings.bpf_pin_root)
        except DataplaneError as e:
            log.error("fast path unavailable, serving from the slow path only: %s", e)
            self.metrics.fast_errors.labels("load").inc()
            return
        self.cache = SubscriberCache(fp, self.config,
                                     lambda op: self.metrics.fast_errors.labels(op).inc())
        if fp.adopted_maps:
            moved = sum(1 for a, t in fp.expiries().items() if self.server.extend(a, t))
            log.info("fast path: adopted generation %s; %d lease ends moved by renewals it "
                     "answered", fp.generation, moved)
        self._persist_renewals()
        self.server.on_unbind = self.cache.unbound
        self.metrics.kernel_counters(fp.counters())  # the base for later readings
        self.metrics.before_scrape.append(lambda: self.metrics.kernel_counters(fp.counters()))
        self.metrics.watch_maps(self.cache.counts)

    def _attach_fast_path(self) -> None:
        """Attach to every open access interface (worker thread: it talks netlink)."""
        assert self.cache is not None and self.config is not None
        fp = self.cache.fp
        for name, iface in self.interfaces.items():
            try:
                if name in self._attached and fp.is_attached(name):
                    continue
                fp.put_interface(iface.index, iface.mac)
                how = fp.attach(name, None, self.settings.xdp_mode)
            except Exception as e:
                self._attached.discard(name)
                self.metrics.program_attached.labels("xdp_dhcp", name).set(0)
                log.error("fast path: attaching to %s failed: %s; the slow path serves it",
                          name, e)
                continue
            if name in self._attached:
                log.warning("fast path: the program on %s had been replaced or removed; "
                            "attached it again", name)
            self._attached.add(name)
            self.metrics.program_attached.labels("xdp_dhcp", name).set(1)
            log.info("fast path on %s: program %s (%s mode, generation %s)", name, how,
                     self.settings.xdp_mode, fp.generation)
        if self._attached == set(self.config.access_interfaces):
            for gen in fp.remove_other_generations():
                log.info("fast path: removed generation %s, no longer attached", gen)

    async def _sync_fast_path(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self._persist_renewals()
            except Exception:  # the syncer must outlive any one bad round
                log.exception("fast path sync failed; retrying")
            await asyncio.sleep(self.settings.sync_interval)

    def _persist_renewals(self) -> None:
        """Renewals the kernel answered: their new lease ends go to the store (one commit)."""
        assert self.cache is not None and self.server is not None
        n = sum(1 for a, t in self.cache.fp.refreshes() if self.server.extend(a, t))
        if n:
            self.metrics.fast_refreshes.inc(n)
            self._commit_quietly()

    def _commit_quietly(self) -> None:
        assert self.store is not None
        fut = self.store.commit()
        fut.add_done_callback(self._log_commit_error)

    def _log_commit_error(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            return
        if fut.exception() is None:
            self.metrics.lease_commits.inc()
            return
        log.error("lease store commit failed: %s", fut.exception())
        self._problem = f"lease store: {fut.exception()}"

    # --- the packet path ---------------------------------------------------------------------

    def _on_readable(self, iface: AccessInterface) -> None:
        for data, tag in iface.receive():
            self._handle(iface, data, tag, time.perf_counter())

    def _handle(self, iface: AccessInterface, data: bytes, tag: bytes, t0: float) -> None:
        assert self.server is not None and self.store is not None
        m = self.metrics
        try:
            frame = parse_frame(data, tag)
            msg = decode(frame.payload)
        except Malformed as e:
            m.drop(e.reason)
            m.request("invalid", "slow", "drop")
            log.debug("dropped frame on %s: %s", iface.ifname, e)
            return
        mtype = msg.type.name.lower() if msg.type else "unknown"
        ctx = Context(iface.ifname, iface.addresses, frame.vlans,
                      unicast=frame.dst_ip != BROADCAST_IP)
        try:
            out = self.server.handle(msg, ctx)
        except Exception:  # a bug must cost one request, never the agent
            log.exception("internal error handling %s from %s", mtype, msg.mac)
            m.drop("internal_error")
            m.request(mtype, "slow", "drop")
            return
        if out.drop:
            m.drop(out.drop)
            m.request(mtype, "slow", "drop")
            log.debug("dropped %s from %s on %s: %s", mtype, msg.mac, iface.ifname, out.drop)
            return
        if out.reply is None:
            m.request(mtype, "slow", out.kind)
            if out.commit:
                self._commit_quietly()
            return
        dst_mac, dst_ip, dst_port = reply_destination(msg, out.reply, frame)
        wire = build_frame(dst_mac, iface.mac, frame.tags, out.server_id, dst_ip, dst_port,
                           encode(out.reply, out.reply_order))
        if not out.commit:
            self._send(iface, wire, mtype, out.kind, t0)
            return
        fut = self.store.commit()
        sends = self._after_commit.get(fut)
        if sends is None:
            sends = self._after_commit[fut] = []
            fut.add_done_callback(self._send_committed)
        lease = self.server.by_address.get(int(out.reply.yiaddr)) \
            if out.kind == "ack" and self.cache is not None else None
        sends.append(_Pending(iface, wire, mtype, out.kind, t0, lease))

    def _send_committed(self, fut: asyncio.Future[None]) -> None:
        """The replies waiting for this commit: sent if it reached the disk, else dropped."""
        self._log_commit_error(fut)
        ok = not fut.cancelled() and fut.exception() is None
        for p in self._after_commit.pop(fut, []):
            if not ok:  # no ACK for a lease that is not on disk
                self.metrics.request(p.mtype, "slow", "store_error")
                continue
            if p.lease is not None and self.cache is not None and \
                    self.server is not None and self.server.by_address.get(p.lease.address) is p.lease:
                self.cache.bound(p.lease)  # still bound: not released while on its way
            self._send(p.iface, p.wire, p.mtype, p.kind, p.t0)

    def _send(self, iface: AccessInterface, wire: bytes, mtype: str, kind: str,
              t0: float) -> None:
        if not iface.send(wire):
            self.metrics.send_failures.labels(iface.ifname).inc()
        self.metrics.request(mtype, "slow", kind)
        self.metrics.duration_of(mtype, time.perf_counter() - t0)


async def run_agent(settings: AgentSettings, source: Source) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(settings, source)
    try:
        await agent.run(stop)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    return 0

"""The node agent: wiring only. It builds the rooms, starts them, reloads and stops them.

    packets (dhcp/packets.py) ──► server (dhcp/server.py) ──► session events ──► features
                                    lease store (dhcp/leases.py)               fastpath/
    expiry.py: time                                                            report/
    fastpath/feature.py: the XDP program, its maps, renewals it answered       audit.py

A new feature is a folder with an object that has ``on_bound``, ``on_changed`` and
``on_ended`` (agent/sessions/events.py), and one ``subscribe`` line in ``Agent.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bng_operator import http, netlink
from bng_operator.agent import syscalls
from bng_operator.agent.audit import AuditLog
from bng_operator.agent.child import Child
from bng_operator.agent.config import ConfigError, NodeConfig
from bng_operator.agent.dataplane import DEFAULT_PIN_ROOT
from bng_operator.agent.dhcp.leases import Lease, LeaseStore
from bng_operator.agent.dhcp.packets import PacketPath
from bng_operator.agent.dhcp.server import DhcpServer
from bng_operator.agent.expiry import Expiry
from bng_operator.agent.fastpath.feature import FastPathFeature, RxVlanOffload, programs
from bng_operator.agent.health import Commits, Health
from bng_operator.agent.heap import FREEZE_EVERY, HeapKeeper
from bng_operator.agent.lock import Locks
from bng_operator.agent.nat.feature import NatFeature, nat_programs
from bng_operator.agent.observe.feature import ObserveFeature
from bng_operator.agent.observe.slowpath import block_flow
from bng_operator.agent.placement import CpuPlacement, Placement
from bng_operator.agent.qos.feature import QosFeature, shaping_programs
from bng_operator.agent.radius.accounting import Usage
from bng_operator.agent.radius.feature import RadiusFeature
from bng_operator.agent.radius.secrets import FileSecrets, KubeSecrets, Secrets
from bng_operator.agent.report.feature import KubeReporting, NodeView
from bng_operator.agent.report.kube import KubeReporter, ReportSettings
from bng_operator.agent.sessions.authorise import Authoriser
from bng_operator.agent.sessions.events import SessionEvents
from bng_operator.agent.sessions.session import EndReason
from bng_operator.agent.sources import KubeSource, NodeMissing, Source, load_node_config
from bng_operator.api.bngnode import FAST_PATH_AUTHORITY, ProgramStatus
from bng_operator.api.common import DEFAULT_NAMESPACE
from bng_operator.api.radius import SecretRef
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
    rx_vlan_offload: RxVlanOffload = "disable"  # where the fast path attaches (see there)
    qos: bool = True  # shaping: an HTB class each way for sessions of classes with a policy
    nat: bool = True  # NAT44 on the uplink for sessions of classes with a natPool
    fast_path_authority: float = FAST_PATH_AUTHORITY  # the program answers this long unbeaten
    sync_interval: float = 0.5  # how often fast-path renewals reach the lease store (<= 1 s)
    expiry_grace: float = 2.0  # leases end this late, for renewals still on their way up
    namespace: str = DEFAULT_NAMESPACE  # of Subscriber objects (Kubernetes mode)
    report: ReportSettings = field(default_factory=ReportSettings)
    status_interval: float = 1.0  # BNGNode status: at most one write this often, if changed
    secrets_dir: Path = Path("/etc/bng/secrets")  # standalone: RADIUS secrets, <name>/<key>
    radius_acct_queue: int = 100_000  # accounting records kept until acknowledged
    # the CoA/Disconnect listener (RFC 5176): address and port (0: none), and clients other
    # than the classes' RADIUS servers: (address, Secret reference)
    radius_coa_address: str = "0.0.0.0"
    radius_coa_port: int = 3799
    radius_coa_clients: tuple[tuple[str, SecretRef], ...] = ()
    # Hubble's API (observe/): where it listens ("": off), the address hubble-relay dials
    # for this node ("": the node's name and the port), the flows kept, and how long the
    # programs keep reporting after the last observer left
    hubble_listen: str = "0.0.0.0:4245"
    hubble_peer_address: str = ""
    flows_kept: int = 4096
    flows_linger: float = 300.0


@dataclass
class Agent:
    settings: AgentSettings
    source: Source
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    authoriser: Authoriser | None = None  # the decisions' second phase (RADIUS)
    health: Health = field(default_factory=Health)
    config: NodeConfig | None = None
    server: DhcpServer | None = None
    store: LeaseStore | None = None
    sessions: SessionEvents | None = None
    packets: PacketPath | None = None
    expiry: Expiry | None = None
    fast_path: FastPathFeature | None = None
    qos: QosFeature | None = None
    nat: NatFeature | None = None
    radius: RadiusFeature | None = None
    reporting: KubeReporting | None = None
    observe: ObserveFeature | None = None
    placement: CpuPlacement = field(default_factory=lambda: CpuPlacement(
        lambda: list(Child.running), lambda cpus: setattr(Child, "cpus", cpus)))
    _reload_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    _nat_started: bool = False
    _loop: asyncio.AbstractEventLoop | None = None

    # --- start and stop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        locks = Locks()
        try:
            await self._run(stop, locks)
        finally:
            locks.release()

    async def _first_config(self, stop: asyncio.Event) -> NodeConfig | None:
        """The node's configuration; None if stopped first. In Kubernetes mode the operator
        writes the node's BNGNode seconds after the node is labelled, often after the
        DaemonSet started this agent: wait for it (said once), rather than exit into a
        crash loop. From files, a missing BNGNode is the user's error: raised."""
        loop = asyncio.get_running_loop()
        said = False
        while True:
            try:
                return await loop.run_in_executor(None, load_node_config, self.source,
                                                  self.settings.node)
            except NodeMissing as e:
                if not isinstance(self.source, KubeSource):
                    raise
                if not said:
                    log.warning("%s; waiting for the operator to write it", e)
                    said = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
                return None

    async def _run(self, stop: asyncio.Event, locks: Locks) -> None:
        st, m, h = self.settings, self.metrics, self.health
        loop = self._loop = asyncio.get_running_loop()
        st.state_dir.mkdir(parents=True, exist_ok=True)
        locks.hold(st.state_dir, "the state directory")
        if st.fast_path:
            with contextlib.suppress(OSError):  # no bpffs: the fast path says so when it loads
                st.bpf_pin_root.mkdir(parents=True, exist_ok=True)
            if st.bpf_pin_root.is_dir():
                locks.hold(st.bpf_pin_root, "the BPF directory")
        config = await self._first_config(stop)
        if config is None:
            return
        self.config = config
        self._place(config)
        self._read_source()
        h.last_sync = datetime.now(UTC)
        m.config_loaded.set(1)
        path = st.state_dir / f"leases-{st.node}.sqlite"
        store = self.store = LeaseStore(path)
        store.timed = m.lease_commit_duration.observe
        server = self.server = DhcpServer(self.config, store)
        m.watch_leases(server.pool_usage, lambda: len(server.by_address))
        m.watch_ready(h.ready)
        commits = Commits(store, m, h)
        sessions = self.sessions = SessionEvents(
            on_error=lambda f: m.feature_errors.labels(f).inc(),
            on_end=lambda reason: m.sessions_ended.labels(reason).inc())
        self.expiry = Expiry(server, sessions, commits, h,
                             st.expiry_grace if st.fast_path else 0.0)
        if self.authoriser is None:  # RADIUS, for the classes with auth: radius
            radius = self.radius = RadiusFeature(
                m, self.config, self._secrets(), st.state_dir / f"radius-{st.node}.sqlite",
                override=lambda lease, rates: self.qos.override(lease, rates)
                if self.qos is not None else None,
                changed=lambda: setattr(self.health, "dirty", True), end=self._end_session,
                usage=self._usage, acct_limit=st.radius_acct_queue,
                coa_address=st.radius_coa_address, coa_port=st.radius_coa_port,
                coa_clients=st.radius_coa_clients, shaping=lambda: self.qos is not None)
            await loop.run_in_executor(None, radius.start)
            self.authoriser = radius
        observe = self.observe = ObserveFeature(
            m, st.node, st.namespace, st.hubble_listen, self._peer_address(),
            server.by_address.get, server.by_identity.get, st.flows_kept, st.flows_linger,
            peers=self.source.hubble_peers if isinstance(self.source, KubeSource) else None)
        self.packets = PacketPath(server, store, sessions, m, h, commits, self.authoriser,
                                  flows=observe.hub)

        leases, declines = store.load()
        self.expiry.adopt_orphans(server.load(leases, declines))
        if st.fast_path:
            fp = FastPathFeature(server, m, h, commits, st.bpf_pin_root, st.xdp_mode,
                                 st.fast_path_authority,
                                 st.state_dir / f"fastpath-counters-{st.node}.json",
                                 rx_vlan_offload=st.rx_vlan_offload, publish=sessions.publish)
            if fp.start(self.config):
                self.fast_path = fp
                self.expiry.before.append(fp.persist_renewals)
                self.expiry.renewed_elsewhere = fp.kernel_expiry
        if st.qos:  # loaded once DHCP is served (below): shaping outlives a restart anyway
            self.qos = QosFeature(m, st.bpf_pin_root, self.config,
                                  lambda: list(server.by_address.values()),
                                  changed=lambda: setattr(self.health, "dirty", True))
            m.watch_access(self.qos.reading)
        if st.nat:  # loaded once a class uses a NATPool (now or at a reload)
            self.nat = NatFeature(m, st.bpf_pin_root, self.config,
                                  st.state_dir / f"nat-{st.node}.sqlite",
                                  lambda: list(server.by_address.values()),
                                  server.by_address.get,
                                  changed=lambda: setattr(self.health, "dirty", True),
                                  granted=self._granted,
                                  on_block=lambda r: observe.hub.add_lazy(block_flow, r))
            m.watch_nat(self.nat.reading)
        server.expire()
        audit = AuditLog()
        # Ended before anyone followed them: the store has them. Bound: sessions whose
        # committed offer the kernel ACKed while no agent ran (commitAtOffer), bound when the
        # fast path adopted its maps; the features pick them up from the store like any
        # restored session, but who held an address since when is audited as at any bind.
        for e in server.take_events():
            if e.kind == "bound":
                audit.on_bound(e.session)
        if self.radius is not None:  # before shaping warms: the rates RADIUS gave; after
            # the expiry: sessions that ended while the agent was away get their Stop
            self.radius.restore(server.sessions,
                                lambda key: server.by_identity.get(key))
            await self.radius.listen()
        await store.commit()
        if self.fast_path is not None:
            self.fast_path.warm()

        log.info("node %s: %d leases restored from %s, %d pools, %d classes, source %s",
                 self.config.node_name, len(server.by_address), path, len(self.config.pools),
                 len(self.config.classes), self.source.describe())

        # The features that follow sessions, in the order they hear of them.
        if self.fast_path is not None:
            sessions.subscribe(self.fast_path)
        if self.radius is not None:  # before shaping: its rates are in place when it hears
            sessions.subscribe(self.radius)
        if self.qos is not None:
            sessions.subscribe(self.qos)
        if self.nat is not None:
            sessions.subscribe(self.nat)
        sessions.subscribe(audit)
        if isinstance(self.source, KubeSource):
            self.reporting = self._reporting(self.source)
            sessions.subscribe(self.reporting)

        try:
            site = await http.serve(st.metrics_host, st.metrics_port, m.render, h.ready)
        except OSError as e:
            store.close()
            raise ConfigError(f"cannot serve metrics on {st.metrics_host}:{st.metrics_port}: "
                              f"{e.strerror or e}; is another agent or program using the "
                              "port? (--metrics-port)") from e
        try:
            await observe.serve()
        except OSError as e:
            site.close()
            store.close()
            raise ConfigError(f"{e}: is another agent using the port? (--hubble-listen)") from e
        loop.add_signal_handler(signal.SIGHUP, self._reload_wanted.set)
        tasks = [asyncio.create_task(self._tick(stop)), asyncio.create_task(self._reloader(stop))]
        tasks.append(asyncio.create_task(self._start_features()))
        heap = HeapKeeper(m)
        heap.start()
        tasks.append(asyncio.create_task(self._keep_heap(stop, heap)))
        if self.fast_path is not None:
            tasks.append(asyncio.create_task(self.fast_path.sync(stop, st.sync_interval)))
        watch_stop = threading.Event()
        if self.reporting is not None:
            assert isinstance(self.source, KubeSource)
            self.reporting.start()
            def changed() -> None:  # from a watch thread
                loop.call_soon_threadsafe(self._reload_wanted.set)

            self.source.watch(changed, watch_stop)
            if self.source.from_cache:  # started without the apiserver: read it again
                self._reload_wanted.set()
            tasks.append(asyncio.create_task(self.reporting.run(stop)))
        try:
            await stop.wait()
        finally:
            watch_stop.set()
            for t in tasks:
                t.cancel()
            heap.stop()
            if self.reporting is not None:
                await loop.run_in_executor(None, self.reporting.stop)
            site.close()
            await observe.stop()
            self.packets.close()
            if self.fast_path is not None:
                self.fast_path.persist_renewals()
            with contextlib.suppress(Exception):
                await store.commit()
            store.close()
            if self.fast_path is not None:
                self.fast_path.stop()
            if self.qos is not None:
                self.qos.stop()
            if self.nat is not None:
                self.nat.stop()
            if self.radius is not None:
                self.radius.close()

    async def _start_qos(self, qos: QosFeature) -> None:
        """Shaping's programs compile in seconds: loaded after DHCP is served, then
        brought in line with the sessions of the moment (those bound meanwhile too)."""
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, qos.start):
            qos.warm()
            if self.reporting is not None:  # the Subscribers bound meanwhile show their QoS
                self.reporting.reporter.need_resync = True
        self.health.dirty = True

    async def _start_features(self) -> None:
        """The flow reader first (the programs' events have their flow log before they
        load), then shaping (it answers the subscribers' ARP on tagged access), then NAT:
        one compile at a time."""
        if self.observe is not None and self.settings.fast_path:
            await asyncio.get_running_loop().run_in_executor(
                None, self.observe.start_kernel, self.settings.bpf_pin_root)
        if self.qos is not None:
            await self._start_qos(self.qos)
        await self._nat_wanted()

    async def _nat_wanted(self) -> None:
        """NAT is loaded once a class uses a NATPool and the node has an uplink."""
        nat = self.nat
        if nat is None or not nat.wanted or self._nat_started:
            return
        if not self._config.uplink:
            nat.no_uplink()
            return
        await self._start_nat(nat)

    async def _start_nat(self, nat: NatFeature) -> None:
        """NAT's programs compile in seconds too: loaded after DHCP is served. Its start
        brings the bindings in line with the sessions of the moment."""
        loop = asyncio.get_running_loop()
        self._nat_started = True
        if await loop.run_in_executor(None, nat.start):
            await loop.run_in_executor(None, nat.attach)
            if self.reporting is not None:
                self.reporting.reporter.need_resync = True
        self.health.dirty = True

    async def _radius_reload(self, radius: RadiusFeature) -> None:
        await radius.refresh_secrets()
        await radius.listen()  # a class that uses RADIUS now: its CoA clients are heard

    def _end_session(self, key: str) -> bool:
        """End a bound session on demand (RADIUS Session-Timeout): its features hear it now,
        the store commits it in the background."""
        assert self.server is not None and self.sessions is not None
        if not self.server.end_session(key, EndReason.DISCONNECTED):
            return False
        self._expiry.commits.quietly()
        self.sessions.publish(self.server.take_events())
        return True

    def _usage(self, address: int) -> Usage | None:
        """A session's traffic from shaping's per-session counters (None: not loaded)."""
        qos = self.qos
        if qos is None or qos.path is None:
            return None
        c = qos.path.counters(address)
        return Usage(c.bytes_up, c.packets_up, c.bytes_down, c.packets_down)

    def _peer_address(self) -> str:
        st = self.settings
        if st.hubble_peer_address or not st.hubble_listen or \
                st.hubble_listen.startswith("unix:"):
            return st.hubble_peer_address or st.hubble_listen
        return f"{st.node}:{st.hubble_listen.rpartition(':')[2]}"

    def _secrets(self) -> Secrets:
        if isinstance(self.source, KubeSource):
            return KubeSecrets(self.source.api, self.settings.namespace)
        return FileSecrets(self.settings.secrets_dir)

    def _granted(self, lease: Lease) -> None:
        """A NAT block was given (worker thread): the Subscriber shows it."""
        reporting, loop = self.reporting, self._loop
        if reporting is not None and loop is not None:
            loop.call_soon_threadsafe(reporting.refresh, lease)

    def ready(self) -> tuple[bool, str]:
        return self.health.ready()

    def _reporting(self, source: KubeSource) -> KubeReporting:
        st = self.settings
        reporter = KubeReporter(source.api, st.node, st.namespace, st.report, self.metrics,
                                extra=self._status_of)
        view = NodeView(
            config=lambda: self._config,
            generation=lambda: getattr(self.source, "generation", None),
            programs=self._programs,
            maps=lambda: [*(self.fast_path.maps(self._config.max_leases)
                            if self.fast_path is not None else []),
                          *(self.qos.maps(self._config.max_leases)
                            if self.qos is not None else [])],
            degraded=self._degraded,
            orphans=lambda: list(self._expiry.orphans.values()),
            fast_path_on=lambda: self.fast_path is not None,
            nat=lambda: self.nat.usage() if self.nat is not None else [],
            radius=lambda: self.radius.status() if self.radius is not None else [],
            hubble=lambda: self._peer_address() if self.settings.hubble_listen else "")
        assert self.server is not None
        return KubeReporting(reporter, self.server, self.health, view,
                             st.report.accounting_interval, st.status_interval)

    def _status_of(self, lease: Lease) -> dict[str, Any]:
        """A bound session's status fields of the features (QoS, counters, NAT, RADIUS)."""
        out: dict[str, Any] = {}
        if self.qos is not None:
            out |= self.qos.status(lease)
        if self.nat is not None:
            out |= self.nat.status(lease)
        if self.radius is not None:
            out |= self.radius.status_of(lease.identity)
        return out

    @property
    def _config(self) -> NodeConfig:
        assert self.config is not None
        return self.config

    @property
    def _expiry(self) -> Expiry:
        assert self.expiry is not None
        return self.expiry

    def _programs(self) -> list[ProgramStatus]:
        if not self.settings.fast_path:
            return []
        out = programs(self._config.access_interfaces, self.health.attached)
        if self.settings.qos:
            out += shaping_programs(self._config.access_interfaces,
                                    self.qos.attached if self.qos is not None else set())
        if self.nat is not None and self._config.nat:
            out += nat_programs(self._config.uplink, self.nat.attached)
        return out

    def _place(self, config: NodeConfig) -> None:
        """The agent's process on spec.eventLoopCPU and its helpers elsewhere (or wherever
        the kernel likes, unset)."""
        self._placed(self.placement.apply(config.event_loop_cpu))

    def _placed(self, p: Placement) -> None:
        cpu = self.placement.cpu
        self.metrics.event_loop_cpu.set(-1 if p.problem or cpu is None else cpu)
        if p.problem != self.health.placement:
            self.health.placement, self.health.dirty = p.problem, True

    def _read_source(self) -> None:
        refused = getattr(self.source, "refused", "")
        self.metrics.kube_auth_refused.set(1 if refused else 0)
        if refused != self.health.refused:
            self.health.refused, self.health.dirty = refused, True

    def _degraded(self) -> tuple[str, str]:
        """What the node is served around (the BNGNode's Degraded condition): its reason and
        message, ("", "") when nothing is; the first of them when several are."""
        h = self.health
        for reason, problem in (("CredentialsRefused", h.refused),
                                ("ConfigurationNotApplied", h.reload_error),
                                ("CPUPlacementNotFollowed", h.placement),
                                ("RADIUSDegraded", self.radius.problem if self.radius is not None else ""),
                                ("NATDegraded", self.nat.problem
                                 if self.nat is not None and self._config.nat else "")):
            if problem:
                return reason, problem
        if self.settings.fast_path:
            missing = [n for n in self._config.access_interfaces if n not in self.health.attached]
            if self.fast_path is None:
                return "FastPathDown", "fast path unavailable: the slow path serves every request"
            if missing:
                return "FastPathDown", f"fast path not attached on {', '.join(missing)}"
            if self.fast_path.cache is not None and self.fast_path.cache.undeleted:
                return "FastPathDown", (f"{len(self.fast_path.cache.undeleted)} fast-path "
                                        "entries of ended leases could not be removed; retrying")
        return "", ""

    # --- periodic work -------------------------------------------------------------------------

    async def _tick(self, stop: asyncio.Event) -> None:
        assert self.packets is not None and self.expiry is not None
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                names = self._config.access_interfaces
                await self.packets.open_interfaces(names, self.settings.tick)
                if self.fast_path is not None:
                    await loop.run_in_executor(None, self.fast_path.attach,
                                               self.packets.interfaces, names)
                if self.qos is not None:
                    await loop.run_in_executor(None, self.qos.attach,
                                               list(self.packets.interfaces))
                if self.nat is not None and self.nat.path is not None:
                    await loop.run_in_executor(None, self.nat.attach)
                    self.nat.collect()
                self.expiry.run_once()
                if (placed := self.placement.check()) is not None:
                    self._placed(placed)
            except Exception:  # the timer must outlive any one bad tick
                log.exception("periodic work failed; retrying")
            await asyncio.sleep(self.settings.tick)

    @staticmethod
    async def _keep_heap(stop: asyncio.Event, heap: HeapKeeper) -> None:
        """Short collector pauses (agent/heap.py), from the leases loaded at start on."""
        while not stop.is_set():
            try:
                heap.freeze()
            except Exception:  # the timer must outlive any one bad turn, as the tick's does
                log.exception("heap keeping failed; retrying")
            await asyncio.sleep(FREEZE_EVERY)

    # --- reload --------------------------------------------------------------------------------

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
        h = self.health
        try:
            config = await loop.run_in_executor(None, load_node_config, self.source,
                                                self.settings.node)
        except (ConfigError, OSError) as e:
            self._read_source()
            self.metrics.config_loaded.set(0)
            h.reload_error = f"configuration not applied: {e}"
            log.error("reload failed, still serving the previous configuration: %s", e)
            return
        assert self.server is not None and self.sessions is not None
        self._read_source()
        h.reload_error, h.last_sync = "", datetime.now(UTC)
        self.metrics.config_loaded.set(1)
        if config == self.config:
            return
        self._expiry.adopt_orphans(self.server.reconfigure(config), say=False)
        self.config = config
        self._place(config)
        h.dirty = True
        if self.fast_path is not None:
            self.fast_path.reconfigure(config)
        if self.qos is not None:
            self.qos.reconfigure(config)
        if self.radius is not None:
            self.radius.reconfigure(config)
            asyncio.get_running_loop().create_task(self._radius_reload(self.radius))
        if self.nat is not None:
            if self.nat.path is not None:
                self.nat.reconfigure(config)
            else:
                self.nat.config = config
                asyncio.get_running_loop().create_task(self._nat_wanted())
        self.sessions.publish(self.server.take_events())
        log.info("configuration reloaded: %d pools, %d classes", len(config.pools),
                 len(config.classes))


async def run_agent(settings: AgentSettings, source: Source) -> int:
    sys.setswitchinterval(syscalls.GIL_SWITCH_INTERVAL)
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

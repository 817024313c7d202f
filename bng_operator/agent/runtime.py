"""The node agent's event loop: sockets in, state machine, lease commit, replies out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from bng_operator import netlink
from bng_operator.agent import http
from bng_operator.agent.config import ConfigError, NodeConfig
from bng_operator.agent.dhcp.codec import Malformed, decode, encode
from bng_operator.agent.dhcp.leases import LeaseStore
from bng_operator.agent.dhcp.server import Context, DhcpServer
from bng_operator.agent.dhcp.transport import (
    BROADCAST_IP,
    AccessInterface,
    build_frame,
    parse_frame,
    reply_destination,
)
from bng_operator.agent.sources import Source, load_node_config
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent")


@dataclass
class AgentSettings:
    node: str
    state_dir: Path = Path("/var/lib/bng")
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9641
    tick: float = 1.0  # how often leases, offers and declines are expired


@dataclass
class Agent:
    settings: AgentSettings
    source: Source
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    server: DhcpServer | None = None
    store: LeaseStore | None = None
    interfaces: dict[str, AccessInterface] = field(default_factory=dict)
    config: NodeConfig | None = None
    _problem: str = "starting"
    _after_commit: dict[asyncio.Future[None], list[tuple[AccessInterface, bytes, str, str, float]]] \
        = field(default_factory=dict)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.config = load_node_config(self.source, self.settings.node)
        self.metrics.config_loaded.set(1)
        path = self.settings.state_dir / f"leases-{self.settings.node}.sqlite"
        self.store = LeaseStore(path)
        self.server = DhcpServer(self.config, self.store)
        server = self.server
        self.metrics.watch_leases(server.pool_usage, lambda: len(server.by_address))
        leases, declines = self.store.load()
        for orphan in self.server.load(leases, declines):
            log.warning("stored lease of %s on %s has no pool on this node any more; it is "
                        "served again only if the client asks anew", orphan.identity,
                        IPv4Address(orphan.address))
        self.server.expire()
        await self.store.commit()
        log.info("node %s: %d leases restored from %s, %d pools, %d classes, source %s",
                 self.config.node_name, len(self.server.by_address), path,
                 len(self.config.pools), len(self.config.classes), self.source.describe())
        site = await http.serve(self.settings.metrics_host, self.settings.metrics_port,
                                self.metrics.registry, self.ready)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        ticker = asyncio.create_task(self._tick(stop))
        try:
            await stop.wait()
        finally:
            ticker.cancel()
            site.close()
            for iface in self.interfaces.values():
                loop.remove_reader(iface.fileno())
                iface.close()
            self.interfaces.clear()
            with contextlib.suppress(Exception):
                await self.store.commit()
            self.store.close()

    def ready(self) -> tuple[bool, str]:
        return (self._problem == "", self._problem or "ready")

    async def reload(self) -> None:
        """Re-read the configuration and apply it without dropping a lease."""
        try:
            config = load_node_config(self.source, self.settings.node)
        except (ConfigError, OSError) as e:
            self.metrics.config_loaded.set(0)
            log.error("reload failed, still serving the previous configuration: %s", e)
            return
        assert self.server is not None
        self.server.reconfigure(config)
        self.config = config
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
        problem = f"access interfaces missing: {', '.join(missing)}" if missing else ""
        if problem and problem != self._problem:
            log.error("%s; retrying every %ss", problem, self.settings.tick)
        self._problem = problem

    def _expire(self) -> None:
        assert self.server is not None and self.store is not None
        if self.server.expire():
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
        sends.append((iface, wire, mtype, out.kind, t0))

    def _send_committed(self, fut: asyncio.Future[None]) -> None:
        """The replies waiting for this commit: sent if it reached the disk, else dropped."""
        self._log_commit_error(fut)
        ok = not fut.cancelled() and fut.exception() is None
        for iface, wire, mtype, kind, t0 in self._after_commit.pop(fut, []):
            if ok:
                self._send(iface, wire, mtype, kind, t0)
            else:  # no ACK for a lease that is not on disk
                self.metrics.request(mtype, "slow", "store_error")

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

"""The slow path's packet I/O: frames in, decide -> (authorise) -> commit -> reply out.

Requests are handled one at a time on the event loop by the state machine (``server.py``),
in batches from a backlog that puts exchanges in progress before new ones (``backlog.py``).
A reply that binds a lease waits for the lease store's commit (many share one fsync); the
session events of a request are published when its commit is done, just before its reply
goes out, so a feature never acts on a lease that is not on disk. The audit log alone hears
them before the commit (``SessionEvents.write_ahead``): a lease on disk has its line. A
decision that waits for the authoriser runs as a task of its own: other clients are answered
meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bng_operator import netlink
from bng_operator.agent.dhcp.backlog import Backlog
from bng_operator.agent.dhcp.codec import Malformed, Message, decode, encode
from bng_operator.agent.dhcp.leases import LeaseStore
from bng_operator.agent.dhcp.server import Context, DhcpServer, Outcome
from bng_operator.agent.dhcp.transport import (
    BATCH,
    BROADCAST_IP,
    AccessInterface,
    Frame,
    build_frame,
    is_discover,
    parse_frame,
    reply_destination,
)
from bng_operator.agent.health import Commits, Health
from bng_operator.agent.observe.hub import FlowHub
from bng_operator.agent.observe.slowpath import drop_flow, radius_flow, reply_flow
from bng_operator.agent.sessions.authorise import Authoriser
from bng_operator.agent.sessions.events import Event, SessionEvents
from bng_operator.agent.sessions.session import Session
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent")


_Read = tuple[AccessInterface, bytes, bytes, float]  # a frame read: where, it, its tag, when
DRAIN_BATCHES = 16  # recvmmsg calls a wake-up at most: the socket's queue, ~1,000 frames


@dataclass(frozen=True, slots=True)
class _Pending:
    """A reply waiting for the lease store's commit."""

    iface: AccessInterface
    wire: bytes | None  # None: nothing to send (a RELEASE, a DECLINE)
    mtype: str
    kind: str
    t0: float
    events: list[Event]


@dataclass
class PacketPath:
    server: DhcpServer
    store: LeaseStore
    sessions: SessionEvents
    metrics: AgentMetrics
    health: Health
    commits: Commits
    authoriser: Authoriser | None = None
    flows: FlowHub | None = None  # the flows observers see (observe/)
    interfaces: dict[str, AccessInterface] = field(default_factory=dict)
    _after_commit: dict[asyncio.Future[None], list[_Pending]] = field(default_factory=dict)
    _authorising: set[asyncio.Task[None]] = field(default_factory=set)
    _backlog: Backlog[_Read] = field(default_factory=Backlog)
    _step_due: bool = False

    def __post_init__(self) -> None:
        if self.authoriser is not None:
            self.server.needs_authorisation = self.authoriser.applies

    # --- sockets -------------------------------------------------------------------------------

    async def open_interfaces(self, names: Sequence[str], tick: float) -> None:
        """Open sockets on access interfaces that exist; an absent one is retried each tick."""
        loop = asyncio.get_running_loop()
        missing = []
        for name in names:
            if name in self.interfaces:
                if _still_there(self.interfaces[name]):
                    continue
                # Gone (a NIC removed, a veth deleted) or replaced by a new one of that name:
                # its sockets serve nothing; open the new one, or say it is missing.
                self._close_interface(name)
                log.error("access interface %s disappeared", name)
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
        if problem and problem != self.health.problem:
            log.error("%s; retrying every %ss", problem, tick)
        self.health.problem = problem

    def close(self) -> None:
        for t in self._authorising:
            t.cancel()
        self._backlog.clear()
        for name in list(self.interfaces):
            self._close_interface(name)

    def _close_interface(self, name: str) -> None:
        iface = self.interfaces.pop(name)
        asyncio.get_running_loop().remove_reader(iface.fileno())
        iface.close()
        self.health.attached.discard(name)

    def _on_readable(self, iface: AccessInterface) -> None:
        """Drain the socket into the backlog (DISCOVERs past its bound are dropped there,
        not in the kernel's FIFO), then make sure a step of handling is due."""
        t0 = time.perf_counter()
        for _ in range(DRAIN_BATCHES):
            frames = iface.receive()
            for data, tag in frames:
                discover = is_discover(data)
                out = self._backlog.add((iface, data, tag, t0), discover)
                if out is not None:  # the oldest of its kind
                    self._dropped("discover" if discover else "unknown", "overload",
                                  out[0].ifname)
            if len(frames) < BATCH:
                break
        if not self._step_due:
            self._step_due = True
            asyncio.get_running_loop().call_soon(self._step)

    def _step(self) -> None:
        """Handle one batch of the backlog; the rest waits for the next turn of the loop,
        so that commits, replies and the sockets' reading go on meanwhile."""
        self._step_due = False
        for iface, data, tag, t0 in self._backlog.take(BATCH):
            self.handle(iface, data, tag, t0)
        if self._backlog:
            self._step_due = True
            asyncio.get_running_loop().call_soon(self._step)

    # --- decide --------------------------------------------------------------------------------

    def handle(self, iface: AccessInterface, data: bytes, tag: bytes, t0: float) -> None:
        m = self.metrics
        try:
            frame = parse_frame(data, tag)
            msg = decode(frame.payload)
        except Malformed as e:
            self._dropped("invalid", e.reason, iface.ifname)
            log.debug("dropped frame on %s: %s", iface.ifname, e)
            return
        mtype = msg.type.name.lower() if msg.type else "unknown"
        ctx = Context(iface.ifname, iface.addresses, frame.vlans,
                      unicast=frame.dst_ip != BROADCAST_IP, tags=frame.tags)
        try:
            out = self.server.handle(msg, ctx)
        except Exception:  # a bug must cost one request, never the agent
            log.exception("internal error handling %s from %s", mtype, msg.mac)
            self._publish(self.server.take_events())
            self._dropped(mtype, "internal_error", iface.ifname, frame, msg)
            return
        if out.stripped:
            m.option82_stripped.inc()
        if out.kind == "authorize" and out.session is not None:
            task = asyncio.create_task(self._authorise(out.session, iface, frame, msg, ctx,
                                                       mtype, t0))
            self._authorising.add(task)
            task.add_done_callback(self._authorising.discard)
            self._publish(self.server.take_events())
            return
        self._respond(out, iface, frame, msg, mtype, t0)

    # --- authorise -----------------------------------------------------------------------------

    async def _authorise(self, s: Session, iface: AccessInterface, frame: Frame, msg: Message,
                         ctx: Context, mtype: str, t0: float) -> None:
        assert self.authoriser is not None
        try:
            verdict = await self.authoriser.authorise(s)
        except Exception as e:  # an authoriser's failure is a rejection, never a crash
            log.exception("authorising session %s failed", s.key)
            accept, why = False, f"authoriser failed: {e}"
        else:
            accept, why = verdict.accept, verdict.reason
            if accept and verdict.grant is not None:
                s.grant = verdict.grant  # the decision below and every later one use it
        if not accept:
            self.server.rejected(s)
            self._publish(self.server.take_events())
            log.info("session %s (%s) not authorised: %s", s.key, s.identity.mac,
                     why or "rejected")
            if self.flows is not None:
                self.flows.add_lazy(radius_flow, time.time_ns(), s.identity.mac, "reject",
                                    why or "rejected")
            self._dropped(mtype, "not_authorised", iface.ifname, frame, msg)
            return
        if self.flows is not None:
            self.flows.add_lazy(radius_flow, time.time_ns(), s.identity.mac, "accept", why)
        try:
            out = self.server.authorised(s, msg, ctx)
        except Exception:
            log.exception("internal error committing %s of session %s", mtype, s.key)
            self._publish(self.server.take_events())
            self._dropped(mtype, "internal_error", iface.ifname, frame, msg)
            return
        self._respond(out, iface, frame, msg, mtype, t0)

    # --- commit and reply ------------------------------------------------------------------------

    def _respond(self, out: Outcome, iface: AccessInterface, frame: Frame, msg: Message,
                 mtype: str, t0: float) -> None:
        events = self.server.take_events()
        if out.drop:
            self._publish(events)
            self._dropped(mtype, out.drop, iface.ifname, frame, msg)
            log.debug("dropped %s from %s on %s: %s", mtype, msg.mac, iface.ifname, out.drop)
            return
        wire = None
        if out.reply is not None:
            dst_mac, dst_ip, dst_port = reply_destination(msg, out.reply, frame)
            wire = build_frame(dst_mac, iface.mac, frame.tags, out.server_id, dst_ip, dst_port,
                               encode(out.reply, out.reply_order))
        if not out.commit:
            self._publish(events)
            self._send(iface, wire, mtype, out.kind, t0)
            return
        self.sessions.write_ahead(events)  # the audit line, before the lease can reach the disk
        fut = self.store.commit()
        sends = self._after_commit.get(fut)
        if sends is None:
            sends = self._after_commit[fut] = []
            self.store.when_settled(fut, self._send_committed)
        sends.append(_Pending(iface, wire, mtype, out.kind, t0, events))

    def _send_committed(self, fut: asyncio.Future[None]) -> None:
        """The replies waiting for this commit: sent if it reached the disk, else dropped
        (no ACK for a lease that is not on disk; features hear only of the ends, and the fast
        path of withdrawn offers)."""
        self.commits.done(fut)
        ok = not fut.cancelled() and fut.exception() is None
        pending = self._after_commit.pop(fut, [])
        for p in pending:
            if not ok:
                self._publish([e for e in p.events if e.kind in ("ended", "withdrawn")],
                              written_ahead=True)
                self.metrics.request(p.mtype, "slow", "store_error")
                continue
            self._publish(p.events, written_ahead=True)
        if not ok:
            return
        for p in pending:
            self._send(p.iface, p.wire, p.mtype, p.kind, p.t0)

    def _send(self, iface: AccessInterface, wire: bytes | None, mtype: str, kind: str,
              t0: float) -> None:
        self.metrics.request(mtype, "slow", kind)
        if wire is None:  # a RELEASE or DECLINE: nothing to send
            return
        if not iface.send(wire):
            self.metrics.send_failures.labels(iface.ifname).inc()
        elif self.flows is not None:
            self.flows.add_lazy(reply_flow, time.time_ns(), iface.ifname, wire)
        self.metrics.duration_of(mtype, time.perf_counter() - t0)

    def _dropped(self, mtype: str, reason: str, ifname: str = "", frame: Frame | None = None,
                 msg: Message | None = None) -> None:
        self.metrics.drop(reason)
        self.metrics.request(mtype, "slow", "drop")
        if self.flows is not None:
            self.flows.add_lazy(drop_flow, time.time_ns(), ifname, frame, msg, reason)

    def _publish(self, events: list[Event], written_ahead: bool = False) -> None:
        if events:
            self.sessions.publish(events, written_ahead)


def _still_there(iface: AccessInterface) -> bool:
    """Whether the interface the sockets were opened on still has its name (one ioctl; no
    netlink on the event loop)."""
    try:
        return socket.if_nametoindex(iface.ifname) == iface.index
    except OSError:
        return False

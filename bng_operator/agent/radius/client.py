"""The RADIUS client: failover to the next server, and dead-server detection (RFC 5080
§2.2): a server whose requests timed out ``deadAfter`` times in a row is skipped for
``deadTime``, then tried again (or, with Status-Server probes, once it answers one).

The sockets, encoding, retransmissions and the verification of replies are the RADIUS
transport's, a process of its own (``transport``): the event loop hands it each request and
awaits its outcome, so a request waiting for a server holds up nothing else, and the work of
a request costs the loop a few us. Every Access-Request carries a Message-Authenticator,
and a reply without a valid one is dropped (counted as invalid), like one with a wrong
Response Authenticator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import marshal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from pyrad.dictionary import Dictionary
from pyrad.packet import AccessAccept

from bng_operator import logs
from bng_operator.agent.child import Child
from bng_operator.agent.radius.transport import (
    DICTIONARY,
    FRAME,
    SOCKET_BUFFER,
    UNENCODABLE,
    UNSENDABLE,
    Outcome,
    Request,
)
from bng_operator.agent.radius.wire import ACCESS_REQUEST, ACCOUNTING_REQUEST, STATUS_SERVER
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent.radius")
PROBE_EVERY = 10.0  # seconds between Status-Server probes of a dead server, at most
RESTART_PAUSE = 1.0  # seconds between starts of the transport process, at least
STOP_WAIT = 1.0  # seconds a closing client gives the transport to end
# A batch goes to the transport FLUSH_AFTER seconds after its first request, or at once at
# FLUSH_AT requests. A frame a turn of the loop (a turn may hold one request) woke the
# transport that often, and a wake-up across CPUs is tens of us in a VM: at 4,500 sessions/s
# offered with auth, the wait took the agent's CPU a session from 309-318 to 280-290 us and
# FreeRADIUS's from 48-51 to 33-38 (it gets its requests in bursts too), three trials each.
FLUSH_AFTER = 0.002
FLUSH_AT = 128
WATCH_EVERY = 5.0  # seconds between checks that the transport still answers
WATCH_GRACE = 10.0  # seconds it may be silent past the longest a request may take


@dataclass
class Server:
    """One server as this node sees it: where, how long to wait, and its health."""

    address: str
    port: int
    timeout: float = 3.0
    retries: int = 2
    dead_after: int = 3
    dead_time: float = 60.0
    timeouts_in_row: int = 0
    dead_until: float = 0.0  # monotonic; skipped until then
    last_error: str = ""
    probe: bool = False  # while dead, Status-Server until it answers (RFC 5997)
    probe_secret: bytes = b""

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}"

    def alive(self, now: float) -> bool:
        return now >= self.dead_until


@dataclass(slots=True)
class Reply:
    """A verified reply: its code, and (an Access-Request's) attributes by name, and the
    names of those the dictionary does not know."""

    code: int
    attributes: dict[str, list[object]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


@dataclass
class Answer:
    """How a request ended: a verified reply from ``server``, or none from any."""

    reply: Reply | None
    server: str = ""
    tried: tuple[str, ...] = ()  # the servers asked, in order

    @property
    def accepted(self) -> bool:
        return self.reply is not None and self.reply.code == AccessAccept


def _plain(v: object) -> object:
    return v if v is None or isinstance(v, str | int | bytes | float) else str(v)


class _Transport:
    """The agent's handle on the transport process: the requests asked for within
    ``FLUSH_AFTER`` go to it in one frame, and each comes back as an outcome resolving its
    future. The process is started at the first request, and again after it died."""

    def __init__(self, invalid: Callable[[str], None]) -> None:
        self._invalid = invalid
        self._child: Child | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, asyncio.Future[Outcome]] = {}
        self._batch: list[tuple[object, ...]] = []
        self._rids = itertools.count(1)
        self._died = -RESTART_PAUSE  # monotonic
        self._timer: asyncio.TimerHandle | None = None  # the batch's flush
        self._heard = 0.0  # monotonic: the transport's last frame, or the first request since
        self._span = 0.0  # the longest a request asked for may take: timeout x tries
        self._watchdog: asyncio.TimerHandle | None = None

    def ask(self, s: Server, code: int, secret: bytes, attributes: list[tuple[str, object]],
            retries: int) -> asyncio.Future[Outcome]:
        """Send a request to ``s`` (``retries`` more times on its timeout): its outcome."""
        loop = asyncio.get_running_loop()
        rid = next(self._rids)
        fut: asyncio.Future[Outcome] = loop.create_future()
        if not self._running(loop):
            fut.set_result((rid, UNSENDABLE, "the RADIUS transport process failed; it is "
                            f"started again within {RESTART_PAUSE:g} s", [], 0.0, 0))
            return fut
        if not self._waiting:
            self._heard = time.monotonic()
        self._span = max(self._span, s.timeout * (retries + 1))
        self._waiting[rid] = fut
        self._put(loop, (rid, s.key, s.address, s.port, code, secret, attributes, s.timeout,
                         retries))
        return fut

    def forget(self, key: str) -> None:
        """Close the transport's socket to ``key``: its requests end unsent."""
        if self._child is not None and self._loop is not None and not self._loop.is_closed():
            self._put(self._loop, ("forget", key))

    def close(self) -> None:
        if self._child is not None:
            self._stop(self._child, STOP_WAIT)
        self._fail("the RADIUS client is closed")

    def _put(self, loop: asyncio.AbstractEventLoop, m: tuple[object, ...]) -> None:
        if not self._batch:
            self._timer = loop.call_later(FLUSH_AFTER, self._flush)
        self._batch.append(m)
        if len(self._batch) == FLUSH_AT:
            loop.call_soon(self._flush)

    def _running(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self._child is not None and self._loop is not loop:
            # watched by a loop that ended (tests run one loop after another; the agent,
            # one): nothing would read its answers
            self._stop(self._child, 0.0)
            self._fail("the event loop the RADIUS client ran on ended")
        if self._child is None:
            if time.monotonic() - self._died < RESTART_PAUSE:
                return False
            level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
            fmt = "json" if any(isinstance(h.formatter, logs.JSONFormatter)
                                for h in logging.getLogger().handlers) else "text"
            c = Child.start("RADIUS transport", "bng_operator.agent.radius.transport",
                            [str(level).lower(), fmt], SOCKET_BUFFER)
            c.attach(loop, lambda: self._outcomes(c), lambda why: self._lost(c, why))
            self._child, self._loop = c, loop
            self._watchdog = loop.call_later(WATCH_EVERY, self._watch, c)
        return True

    def _watch(self, c: Child) -> None:
        """With requests out, the transport ends one within the longest a request may take
        (the oldest in flight times out by then): silent for longer, it is stuck, and is
        replaced like one that died."""
        if c is not self._child:
            return
        silent = time.monotonic() - self._heard
        if self._waiting and silent > self._span + WATCH_GRACE:
            self._lost(c, f"it answered nothing for {silent:.0f} s with {len(self._waiting)} "
                          "requests out")
            return
        assert self._loop is not None
        self._watchdog = self._loop.call_later(WATCH_EVERY, self._watch, c)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        c = self._child
        if c is None or not batch:
            return
        try:
            body = marshal.dumps(batch)
        except ValueError:  # a value marshal cannot carry: sent as its text, as wire would
            for i, m in enumerate(batch):
                if isinstance(m[0], int):
                    pairs = cast(Request, m)[6]
                    batch[i] = (*m[:6], [(k, _plain(v)) for k, v in pairs], *m[7:])
            body = marshal.dumps(batch)
        c.send(FRAME.pack(len(body)) + body)

    def _outcomes(self, c: Child) -> None:
        self._heard = time.monotonic()
        for _, body in c.frames(FRAME, 0):
            for o in marshal.loads(body):
                if o[0] == "invalid":
                    self._invalid(o[1])
                    continue
                fut = self._waiting.pop(o[0], None)
                if fut is not None and not fut.done():
                    fut.set_result(o)

    def _lost(self, c: Child, why: str) -> None:
        code = self._stop(c, 0.0)
        log.error("RADIUS transport (pid %d): %s (exit code %s); %d requests fail",
                  c.proc.pid, why, code, len(self._waiting))
        self._died = time.monotonic()
        self._fail(f"the RADIUS transport process failed: {why}")

    def _stop(self, c: Child, wait: float) -> int | None:
        self._child = None
        for t in (self._timer, self._watchdog):
            if t is not None:
                t.cancel()
        self._timer = self._watchdog = None
        self._batch.clear()
        return c.stop(wait)

    def _fail(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for rid, fut in waiting.items():
            if not fut.done():
                with contextlib.suppress(RuntimeError):  # of a loop that is closed
                    fut.set_result((rid, UNSENDABLE, why, [], 0.0, 0))


@dataclass
class RadiusClient:
    metrics: AgentMetrics
    clock: Callable[[], float] = time.monotonic
    dictionary: Dictionary = field(default_factory=lambda: Dictionary(str(DICTIONARY)))
    servers: dict[str, Server] = field(default_factory=dict)
    _local: dict[str, str] = field(default_factory=dict)  # the node's address towards each
    _probes: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _transport: _Transport = field(init=False)

    def __post_init__(self) -> None:
        self._transport = _Transport(self._invalid)

    def server(self, address: str, port: int, timeout: float, retries: int, dead_after: int,
               dead_time: float, probe: bool = False) -> Server:
        """The server at ``address:port``, its settings as the configuration says now (its
        health kept: classes that list one server share it)."""
        key = f"{address}:{port}"
        s = self.servers.get(key)
        if s is None:
            s = self.servers[key] = Server(address, port)
            self.metrics.radius_server_up.labels(key).set(1)
        s.timeout, s.retries, s.dead_after, s.dead_time = timeout, retries, dead_after, dead_time
        s.probe = probe
        return s

    def forget(self, keep: set[str]) -> None:
        """Close the sockets of servers no class lists any more."""
        for key in set(self.servers) - keep:
            del self.servers[key]
            probe = self._probes.pop(key, None)
            if probe is not None:
                probe.cancel()
            if self._local.pop(key, None) is not None:
                self._transport.forget(key)
            with contextlib.suppress(KeyError):
                self.metrics.radius_server_up.remove(key)

    def close(self) -> None:
        self.forget(set())
        self._transport.close()

    def local_addresses(self) -> set[str]:
        """The node's addresses towards its servers (the NAS-IP-Addresses it sends)."""
        return set(self._local.values())

    def _local_address(self, s: Server) -> str:
        """The node's address towards ``s``: the route's source (connecting a UDP socket
        sends nothing). Raises OSError (no route)."""
        address = self._local.get(s.key)
        if address is None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect((s.address, s.port))
                address = self._local[s.key] = str(sock.getsockname()[0])
        return address

    def _invalid(self, key: str) -> None:
        self.metrics.radius_replies.labels(key, "invalid").inc()

    async def access_request(self, servers: Sequence[tuple[Server, bytes]],
                             attributes: Callable[[str], list[tuple[str, str | int]]],
                             ) -> Answer:
        """Ask each live server in turn (with its secret) until one answers.
        ``attributes(nas_ip)``: the request's attributes, given the node's address towards
        that server (NAS-IP-Address). No live server: no reply, at once. Raises ValueError
        or TypeError for attributes that cannot be encoded."""
        tried: list[str] = []
        for s, secret in servers:
            if not s.alive(self.clock()):
                continue
            tried.append(s.key)
            reply = await self._ask(s, secret, attributes)
            if reply is not None:
                return Answer(reply, s.key, tuple(tried))
        return Answer(None, "", tuple(tried))

    async def accounting_request(self, servers: Sequence[tuple[Server, bytes]],
                                 attributes: Callable[[str], list[tuple[str, object]]],
                                 ) -> Answer:
        """An Accounting-Request, to each live accounting server in turn until one
        acknowledges it (an Accounting-Response). ``attributes(nas_ip)`` is called for each
        server (NAS-IP-Address, and an Acct-Delay-Time up to date)."""
        tried: list[str] = []
        for s, secret in servers:
            if not s.alive(self.clock()):
                continue
            tried.append(s.key)
            reply = await self._ask(s, secret, attributes, accounting=True)
            if reply is not None:
                return Answer(reply, s.key, tuple(tried))
        return Answer(None, "", tuple(tried))

    async def _ask(self, s: Server, secret: bytes,
                   attributes: Callable[[str], list[tuple[str, str | int]]]
                   | Callable[[str], list[tuple[str, object]]],
                   accounting: bool = False) -> Reply | None:
        m = self.metrics
        try:
            nas_ip = self._local_address(s)
        except OSError as e:
            s.last_error = f"cannot open a socket to it: {e}"
            log.error("RADIUS server %s: %s", s.key, s.last_error)
            self._timed_out(s)
            return None
        code = ACCOUNTING_REQUEST if accounting else ACCESS_REQUEST
        pairs: list[tuple[str, object]] = list(attributes(nas_ip))
        m.child(m.radius_acct_requests if accounting else m.radius_requests, s.key).inc()
        _, got, detail, unknown, rtt, retransmits = await self._transport.ask(
            s, code, secret, pairs, s.retries)
        if retransmits:
            (m.radius_acct_retransmits if accounting
             else m.radius_retransmits).labels(s.key).inc(retransmits)
        if got > 0:
            m.child(m.radius_rtt, s.key).observe(rtt)
            if accounting:
                m.child(m.radius_acct_responses, s.key).inc()
            else:
                m.child(m.radius_replies, s.key,
                        "accept" if got == AccessAccept else "reject").inc()
            self._answered(s)
            return Reply(got, detail, unknown)  # type: ignore[arg-type]
        if got == UNENCODABLE:
            raise ValueError(detail)
        if got == UNSENDABLE:
            s.last_error = str(detail)
            log.error("RADIUS server %s: %s", s.key, s.last_error)
            self._timed_out(s)
            return None
        s.last_error = f"no answer in {s.retries + 1} x {s.timeout:g} s"
        if accounting:
            m.radius_acct_timeouts.labels(s.key).inc()
        self._timed_out(s, counted=not accounting)
        return None

    async def _status(self, s: Server) -> bool:
        """One Status-Server to ``s`` (RFC 5997, signed with a Message-Authenticator; its
        reply verified as an Accounting-Response is): whether it answered in its timeout."""
        try:
            nas_ip = self._local_address(s)
        except OSError:
            return False
        outcome = await self._transport.ask(s, STATUS_SERVER, s.probe_secret,
                                            [("NAS-IP-Address", nas_ip)], 0)
        return outcome[1] > 0

    def probe_if_dead(self, s: Server) -> None:
        """Start probing ``s`` if it is dead, probes are on and none runs (statusServer
        turned on for a server that is dead already)."""
        if self._probing(s) and s.key not in self._probes:
            with contextlib.suppress(RuntimeError):  # no loop running: its next death
                self._probes[s.key] = asyncio.get_running_loop().create_task(self._probe(s))

    def _probing(self, s: Server) -> bool:
        return (self.servers.get(s.key) is s and bool(s.dead_until) and s.probe
                and bool(s.probe_secret))

    async def _probe(self, s: Server) -> None:
        """Status-Server to a dead server until it answers (RFC 5080 §2.2.1): it stays dead
        meanwhile, and is used again at once when it does (or when a request's answer
        revives it first)."""
        m = self.metrics
        try:
            while self._probing(s):
                every = min(s.dead_time, PROBE_EVERY)
                await asyncio.sleep(max(0.0, min(every, s.dead_until - self.clock())))
                if not self._probing(s):  # revived meanwhile, forgotten, or probes off
                    return
                s.dead_until = max(s.dead_until, self.clock() + every + s.timeout)
                answered = await self._status(s)
                m.radius_probes.labels(s.key, "answered" if answered else "timeout").inc()
                if answered:
                    self._answered(s)
                    return
        except Exception:  # a bug ends the probing, never the agent: deadTime revives it
            log.exception("RADIUS server %s: Status-Server probing failed", s.key)
            s.dead_until = min(s.dead_until, self.clock() + s.dead_time)
        finally:
            self._probes.pop(s.key, None)

    def _answered(self, s: Server) -> None:
        if not (s.timeouts_in_row or s.dead_until or s.last_error):
            return  # healthy already: nothing to change
        if s.dead_until or s.timeouts_in_row >= s.dead_after:
            log.info("RADIUS server %s answers again", s.key)
        s.timeouts_in_row, s.dead_until, s.last_error = 0, 0.0, ""
        self.metrics.radius_server_up.labels(s.key).set(1)

    def _timed_out(self, s: Server, counted: bool = True) -> None:
        if counted:
            self.metrics.radius_timeouts.labels(s.key).inc()
        s.timeouts_in_row += 1
        if s.timeouts_in_row >= s.dead_after:
            s.dead_until = self.clock() + s.dead_time
            self.probe_if_dead(s)
            self.metrics.radius_server_up.labels(s.key).set(0)
            log.warning("RADIUS server %s is dead: %d requests in a row without an answer "
                        "(%s); skipped for %g s", s.key, s.timeouts_in_row, s.last_error,
                        s.dead_time)

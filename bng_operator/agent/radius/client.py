"""The RADIUS client: one connected UDP socket per server, retransmissions, failover to the
next server, and dead-server detection (RFC 5080 §2.2): a server whose requests timed out
``deadAfter`` times in a row is skipped for ``deadTime``, then tried again.

Requests are encoded and replies verified by ``wire`` (User-Password hiding,
Message-Authenticator); replies are decoded by pyrad. The I/O is on the agent's loop: a
request waiting for a server holds up nothing else. Every Access-Request carries a
Message-Authenticator, and a reply without a valid one is dropped (counted as invalid), like
one with a wrong Response Authenticator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyrad.dictionary import Dictionary
from pyrad.packet import AccessAccept, Packet, PacketError

from bng_operator.agent import syscalls
from bng_operator.agent.radius.wire import (
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    STATUS_SERVER,
    Encoder,
    RandomBytes,
    verify_reply,
)
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent.radius")
DICTIONARY = Path(__file__).with_name("dictionary")
MAX_OUTSTANDING = 255  # requests in flight per server: the Identifier is one octet
PROBE_EVERY = 10.0  # seconds between Status-Server probes of a dead server, at most
READ_BATCH = 256  # replies read from a server's socket in one wake-up of the event loop
RADIUS_MAX = 4096  # RFC 2865 §3: the largest packet


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


@dataclass
class Answer:
    """How a request ended: a verified reply from ``server``, or none from any."""

    reply: Packet | None
    server: str = ""
    tried: tuple[str, ...] = ()  # the servers asked, in order

    @property
    def accepted(self) -> bool:
        return self.reply is not None and self.reply.code == AccessAccept


@dataclass(frozen=True, slots=True)
class _Sent:
    """What a reply is checked against: the request's code and authenticator, the secret."""

    code: int
    authenticator: bytes
    secret: bytes


class _Slots:
    """At most ``n`` holders; the others wait, first come first served. asyncio.Semaphore
    (3.11) looks through all its waiters at every acquire: with hundreds of requests
    waiting for an Identifier, under overload, that was 6% of the event loop."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot as it was cancelled
                self._release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():  # a cancelled waiter is passed over
                fut.set_result(None)  # the slot goes to it
                return
        self._free += 1


def _expire(waiter: asyncio.Future[Packet | None]) -> None:
    """An attempt's timeout: its waiter wakes with no reply."""
    if not waiter.done():
        waiter.set_result(None)


def _attempt(loop: asyncio.AbstractEventLoop, ep: _Endpoint, ident: int, sent: _Sent,
             raw: bytes, timeout: float,
             ) -> tuple[asyncio.Future[Packet | None], asyncio.TimerHandle]:
    """Send ``raw`` once: its future, resolved by the reply or by its timer with None."""
    waiter: asyncio.Future[Packet | None] = loop.create_future()
    ep.pending[ident] = (sent, waiter)
    timer = loop.call_later(timeout, _expire, waiter)
    ep.send(raw)
    return waiter, timer


class _Endpoint:
    """One server's socket: requests in flight by Identifier.

    The socket is read in batches (``READ_BATCH`` replies a wake-up), not through an asyncio
    datagram transport: that reads one datagram a turn of the event loop, and a turn that
    handles 64 DHCP requests takes milliseconds, so under load replies waited in the socket
    (the agent's round trip reached 240 ms against a server answering in well under 1)."""

    def __init__(self, invalid: Callable[[str], None], key: str, address: str,
                 port: int, dictionary: Dictionary) -> None:
        self.pending: dict[int, tuple[_Sent, asyncio.Future[Packet | None]]] = {}
        self._dictionary = dictionary
        self._receiver = syscalls.Receiver(RADIUS_MAX)
        self.slots = _Slots(MAX_OUTSTANDING)
        self._next = 0
        self._invalid = invalid
        self._key = key
        self._loop = asyncio.get_running_loop()
        self.sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            with contextlib.suppress(OSError):  # room for the replies of 255 requests at once
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.connect((address, port))
            self.local_address = str(self.sock.getsockname()[0])
            self._loop.add_reader(self.sock.fileno(), self._readable)
        except OSError:
            self.sock.close()
            raise

    def send(self, raw: bytes) -> None:
        """Send ``raw``; one the kernel cannot take now is lost like one lost on the way (the
        request's retransmission covers both)."""
        if self.sock is None:
            return
        try:
            syscalls.send(self.sock.fileno(), raw)
        except OSError as e:  # ENOBUFS, EAGAIN, or an ICMP error reported on this send
            log.debug("RADIUS server %s: send: %s", self._key, e)

    def close(self) -> None:
        if self.sock is not None:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        fd = sock.fileno()
        for _ in range(READ_BATCH):
            try:
                data = self._receiver.receive(fd)
            except OSError as e:
                # An ICMP error (port unreachable): unauthenticated, so only the timeout counts.
                log.debug("RADIUS server %s: %s", self._key, e)
                continue
            if data is None:
                return
            self.datagram_received(data)

    def take_id(self) -> int:
        for _ in range(256):
            ident, self._next = self._next, (self._next + 1) % 256
            if ident not in self.pending:
                return ident
        raise RuntimeError("no free RADIUS identifier")  # the semaphore prevents it

    def datagram_received(self, data: bytes) -> None:
        if len(data) < 20:
            self._invalid(self._key)
            return
        entry = self.pending.get(data[1])
        if entry is None:  # late: its request timed out, or a duplicate
            return
        sent, fut = entry
        # Access-Requests' replies must carry a Message-Authenticator (BlastRADIUS);
        # Accounting-Responses, and Status-Server's (FreeRADIUS 3.2 does not sign them; a
        # forged one could only say a server is there), are verified by their Response
        # Authenticator, and their Message-Authenticator when they carry one.
        raw = verify_reply(data, sent.code, sent.authenticator, sent.secret,
                           require_message_authenticator=sent.code == ACCESS_REQUEST)
        if raw is None:
            log.warning("RADIUS server %s: a reply failed verification (wrong secret, no "
                        "valid Message-Authenticator, or malformed); dropped", self._key)
            self._invalid(self._key)
            return
        try:
            reply = Packet(secret=sent.secret, authenticator=sent.authenticator,
                           dict=self._dictionary, packet=raw)
        except PacketError as e:
            log.warning("RADIUS server %s: undecodable reply: %s", self._key, e)
            self._invalid(self._key)
            return
        if not fut.done():
            fut.set_result(reply)


@dataclass
class RadiusClient:
    metrics: AgentMetrics
    clock: Callable[[], float] = time.monotonic
    dictionary: Dictionary = field(default_factory=lambda: Dictionary(str(DICTIONARY)))
    servers: dict[str, Server] = field(default_factory=dict)
    _endpoints: dict[str, _Endpoint] = field(default_factory=dict)
    _probes: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _authenticators: RandomBytes = field(default_factory=RandomBytes)
    _encoder: Encoder = field(init=False)

    def __post_init__(self) -> None:
        self._encoder = Encoder(self.dictionary)

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
            ep = self._endpoints.pop(key, None)
            if ep is not None:
                ep.close()
            with contextlib.suppress(KeyError):
                self.metrics.radius_server_up.remove(key)

    def close(self) -> None:
        self.forget(set())

    def local_addresses(self) -> set[str]:
        """The node's addresses towards its servers (the NAS-IP-Addresses it sends)."""
        return {ep.local_address for ep in self._endpoints.values()}

    def _endpoint(self, s: Server) -> _Endpoint:
        ep = self._endpoints.get(s.key)
        if ep is None:
            ep = self._endpoints[s.key] = _Endpoint(self._invalid, s.key, s.address, s.port,
                                                    self.dictionary)
        return ep

    def _invalid(self, key: str) -> None:
        self.metrics.radius_replies.labels(key, "invalid").inc()

    async def access_request(self, servers: Sequence[tuple[Server, bytes]],
                             attributes: Callable[[str], list[tuple[str, str | int]]],
                             ) -> Answer:
        """Ask each live server in turn (with its secret) until one answers.
        ``attributes(nas_ip)``: the request's attributes, given the node's address towards
        that server (NAS-IP-Address). No live server: no reply, at once."""
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
                   accounting: bool = False) -> Packet | None:
        m = self.metrics
        try:
            ep = self._endpoint(s)
        except OSError as e:
            s.last_error = f"cannot open a socket to it: {e}"
            log.error("RADIUS server %s: %s", s.key, s.last_error)
            self._timed_out(s)
            return None
        async with ep.slots:
            ident = ep.take_id()
            if accounting:
                raw, authenticator = self._encoder.accounting_request(
                    ident, secret, attributes(ep.local_address))
                sent = _Sent(ACCOUNTING_REQUEST, authenticator, secret)
            else:
                authenticator = self._authenticators.take(16)
                raw = self._encoder.access_request(ident, authenticator, secret,
                                                   attributes(ep.local_address))
                sent = _Sent(ACCESS_REQUEST, authenticator, secret)
            loop = asyncio.get_running_loop()
            m.child(m.radius_acct_requests if accounting else m.radius_requests, s.key).inc()
            waiter: asyncio.Future[Packet | None] | None = None
            timer: asyncio.TimerHandle | None = None
            try:
                for attempt in range(s.retries + 1):
                    if attempt:
                        (m.radius_acct_retransmits if accounting
                         else m.radius_retransmits).labels(s.key).inc()
                    # One future per attempt, resolved by the reply or by its timer with None:
                    # wait_for(shield(...)) took three turns of the loop to wake this task,
                    # and under load a turn takes milliseconds.
                    t0 = time.perf_counter()
                    waiter, timer = _attempt(loop, ep, ident, sent, raw, s.timeout)
                    reply = await waiter
                    timer.cancel()
                    if reply is None:
                        continue
                    m.child(m.radius_rtt, s.key).observe(time.perf_counter() - t0)
                    if accounting:
                        m.child(m.radius_acct_responses, s.key).inc()
                    else:
                        m.child(m.radius_replies, s.key,
                                "accept" if reply.code == AccessAccept else "reject").inc()
                    self._answered(s)
                    return reply
            finally:
                ep.pending.pop(ident, None)
                if timer is not None:
                    timer.cancel()
                if waiter is not None:
                    waiter.cancel()
        s.last_error = f"no answer in {s.retries + 1} x {s.timeout:g} s"
        if accounting:
            m.radius_acct_timeouts.labels(s.key).inc()
        self._timed_out(s, counted=not accounting)
        return None

    async def _status(self, s: Server) -> bool:
        """One Status-Server to ``s`` (RFC 5997, signed with a Message-Authenticator; its
        reply verified as an Accounting-Response is): whether it answered in its timeout."""
        try:
            ep = self._endpoint(s)
        except OSError:
            return False
        async with ep.slots:
            ident = ep.take_id()
            authenticator = self._authenticators.take(16)
            raw = self._encoder.access_request(
                ident, authenticator, s.probe_secret,
                [("NAS-IP-Address", ep.local_address)], code=STATUS_SERVER)
            waiter, timer = _attempt(asyncio.get_running_loop(), ep, ident,
                                     _Sent(STATUS_SERVER, authenticator, s.probe_secret), raw,
                                     s.timeout)
            try:
                return await waiter is not None
            finally:
                ep.pending.pop(ident, None)
                timer.cancel()
                waiter.cancel()

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

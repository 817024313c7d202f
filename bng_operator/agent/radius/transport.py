"""The RADIUS transport: a process of its own that owns the UDP sockets to the RADIUS servers.

The agent hands it requests in batches over a socket pair (``FRAME`` + a marshalled list);
it encodes each (User-Password hiding, a Message-Authenticator in every Access-Request),
sends it, retransmits it on its timeout, verifies and decodes the reply, and hands back the
request's outcome, in batches too. The agent keeps everything else: which server to ask,
failover and dead-server detection, metrics, sessions and accounting.

Why a process: on the agent's event loop this work cost ~100 us per authorised session
(building and sending the Access-Request, the Accounting-Request of its Start, reading,
verifying and decoding the replies; a send on loopback runs the server's receive path in
the sender), against ~130 us for a whole DORA. Here it runs on the other core, and the loop
pays a few us per request to hand it over.

Messages, agent to transport:
  ``(rid, key, address, port, code, secret, attributes, timeout, retries)``: a request;
  ``("forget", key)``: close the socket to a server no class lists any more.
Transport to agent:
  ``(rid, code, attributes, unknown, rtt, retransmits)``: an outcome. ``code``: the reply's
  (``attributes`` decoded for an Access-Request's reply: name -> values; ``unknown``: the
  attributes the dictionary does not know), ``NO_REPLY`` (none in retries + 1 timeouts),
  ``UNSENDABLE`` or ``UNENCODABLE`` (``attributes`` is then why);
  ``("invalid", key)``: a reply from ``key`` failed verification (and was dropped).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import marshal
import selectors
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from pyrad.dictionary import Dictionary
from pyrad.packet import Packet, PacketError

from bng_operator import logs
from bng_operator.agent import child, syscalls
from bng_operator.agent.radius.wire import (
    ACCESS_REQUEST,
    ACCOUNTING_REQUEST,
    Encoder,
    RandomBytes,
    verify_reply,
)

log = logging.getLogger("bng.agent.radius")
DICTIONARY = Path(__file__).with_name("dictionary")
FRAME = struct.Struct("<I")  # a batch: its length in bytes
MAX_OUTSTANDING = 255  # requests in flight per server: the Identifier is one octet
READ_BATCH = 256  # replies read from a server's socket in one wake-up
RADIUS_MAX = 4096  # RFC 2865 §3: the largest packet
SOCKET_BUFFER = 4 << 20  # bytes the socket pair holds each way
READ_SIZE = 1 << 18  # bytes read from the agent at a time (recv allocates this much)
NO_REPLY, UNSENDABLE, UNENCODABLE = 0, -1, -2  # outcome codes that are not a reply's

Outcome = tuple[int, int, object, list[str], float, int]
Request = tuple[int, str, str, int, int, bytes, list[tuple[str, object]], float, int]


@dataclass(slots=True, eq=False)
class _Request:
    rid: int
    server: _Server
    code: int
    secret: bytes
    attributes: list[tuple[str, object]]
    timeout: float
    retries: int
    ident: int = -1
    authenticator: bytes = b""
    raw: bytes = b""
    attempt: int = 0
    sent_at: float = 0.0
    done: bool = False


@dataclass(eq=False)
class _Server:
    """One server's connected socket, and its requests in flight by Identifier."""

    key: str
    sock: socket.socket
    pending: dict[int, _Request] = field(default_factory=dict)
    waiting: deque[_Request] = field(default_factory=deque)  # for a free Identifier
    next_ident: int = 0

    @classmethod
    def open(cls, key: str, address: str, port: int) -> _Server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # room for the replies of 255 requests at once
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect((address, port))
        except OSError:
            sock.close()
            raise
        return cls(key, sock)

    def take_ident(self) -> int:
        for _ in range(256):
            ident, self.next_ident = self.next_ident, (self.next_ident + 1) % 256
            if ident not in self.pending:
                return ident
        raise RuntimeError("no free RADIUS identifier")  # MAX_OUTSTANDING prevents it


class Transport:
    """The transport's loop: requests from the agent in, outcomes out."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.dictionary = Dictionary(str(DICTIONARY))
        self.encoder = Encoder(self.dictionary)
        self.random = RandomBytes()
        self.servers: dict[str, _Server] = {}
        self.timers: list[tuple[float, int, _Request, int]] = []  # deadline, n, request, attempt
        self.order = itertools.count()
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ, None)
        self.receiver = syscalls.Receiver(RADIUS_MAX)
        self.inbox = bytearray()
        self.outcomes: list[object] = []
        self.out = bytearray()
        self.writing = False

    def run(self) -> None:
        """Serve until the agent closes its end."""
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, mask in self.selector.select(timeout):
                if key.data is None:
                    if mask & selectors.EVENT_READ and not self._requests():
                        return
                    if mask & selectors.EVENT_WRITE:
                        self._send_out()
                else:
                    self._replies(key.data)
            self._expire(time.monotonic())
            if self.outcomes:
                body = marshal.dumps(self.outcomes)
                self.outcomes = []
                self.out += FRAME.pack(len(body))
                self.out += body
                self._send_out()

    # --- from the agent ------------------------------------------------------------------------

    def _requests(self) -> bool:
        """Read what the agent sent; False once it has closed its end."""
        while True:
            try:
                data = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                return False
            self.inbox += data
        while len(self.inbox) >= FRAME.size:
            (n,) = FRAME.unpack_from(self.inbox)
            if len(self.inbox) < FRAME.size + n:
                break
            batch = marshal.loads(bytes(self.inbox[FRAME.size:FRAME.size + n]))
            del self.inbox[:FRAME.size + n]
            for m in batch:
                self._request(m)
        return True

    def _request(self, m: tuple[object, ...]) -> None:
        if m[0] == "forget":
            s = self.servers.pop(str(m[1]), None)
            if s is not None:
                self._close(s)
            return
        rid, key, address, port, code, secret, attributes, timeout, retries = cast(Request, m)
        s = self.servers.get(key)
        if s is None:
            try:
                s = _Server.open(key, address, port)
            except OSError as e:
                self._outcome(rid, UNSENDABLE, f"cannot open a socket to it: {e}")
                return
            self.servers[s.key] = s
            self.selector.register(s.sock, selectors.EVENT_READ, s)
        r = _Request(rid, s, code, secret, attributes, timeout, retries)
        if len(s.pending) >= MAX_OUTSTANDING:
            s.waiting.append(r)
        else:
            self._start(r)

    def _start(self, r: _Request) -> None:
        s = r.server
        r.ident = s.take_ident()
        try:
            if r.code == ACCOUNTING_REQUEST:
                r.raw, r.authenticator = self.encoder.accounting_request(
                    r.ident, r.secret, r.attributes)
            else:
                r.authenticator = self.random.take(16)
                r.raw = self.encoder.access_request(r.ident, r.authenticator, r.secret,
                                                    r.attributes, code=r.code)
        except (ValueError, TypeError, KeyError) as e:  # too long, of the wrong type, unknown
            self._outcome(r.rid, UNENCODABLE, f"{type(e).__name__}: {e}")
            self._next(s)
            return
        s.pending[r.ident] = r
        self._send(r)

    def _send(self, r: _Request) -> None:
        """One attempt: a request the kernel cannot take now is lost like one lost on the
        way (its retransmission covers both)."""
        r.sent_at = time.monotonic()
        heapq.heappush(self.timers, (r.sent_at + r.timeout, next(self.order), r, r.attempt))
        try:
            syscalls.send(r.server.sock.fileno(), r.raw)
        except OSError as e:  # ENOBUFS, EAGAIN, or an ICMP error reported on this send
            log.debug("RADIUS server %s: send: %s", r.server.key, e)

    def _expire(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, r, attempt = heapq.heappop(timers)
            if r.done or attempt != r.attempt:
                continue
            if r.attempt < r.retries:
                r.attempt += 1
                self._send(r)
            else:
                self._finish(r, NO_REPLY, None, [], 0.0)

    def _finish(self, r: _Request, code: int, attributes: object, unknown: list[str],
                rtt: float) -> None:
        r.done = True
        s = r.server
        del s.pending[r.ident]
        self.outcomes.append((r.rid, code, attributes, unknown, rtt, r.attempt))
        self._next(s)

    def _next(self, s: _Server) -> None:
        while s.waiting and len(s.pending) < MAX_OUTSTANDING:
            self._start(s.waiting.popleft())

    def _outcome(self, rid: int, code: int, why: str) -> None:
        self.outcomes.append((rid, code, why, [], 0.0, 0))

    def _close(self, s: _Server) -> None:
        self.selector.unregister(s.sock)
        s.sock.close()
        for r in [*s.pending.values(), *s.waiting]:
            r.done = True
            self._outcome(r.rid, UNSENDABLE, "the server was removed from the configuration")
        s.pending.clear()
        s.waiting.clear()

    # --- from the servers ----------------------------------------------------------------------

    def _replies(self, s: _Server) -> None:
        fd = s.sock.fileno()
        for _ in range(READ_BATCH):
            try:
                data = self.receiver.receive(fd)
            except OSError as e:
                # An ICMP error (port unreachable): unauthenticated, so only the timeout counts.
                log.debug("RADIUS server %s: %s", s.key, e)
                continue
            if data is None:
                return
            self._reply(s, data)

    def _reply(self, s: _Server, data: bytes) -> None:
        if len(data) < 20:
            self.outcomes.append(("invalid", s.key))
            return
        r = s.pending.get(data[1])
        if r is None:  # late: its request timed out, or a duplicate
            return
        # Access-Requests' replies must carry a Message-Authenticator (BlastRADIUS);
        # Accounting-Responses, and Status-Server's (FreeRADIUS 3.2 does not sign them; a
        # forged one could only say a server is there), are verified by their Response
        # Authenticator, and their Message-Authenticator when they carry one.
        raw = verify_reply(data, r.code, r.authenticator, r.secret,
                           require_message_authenticator=r.code == ACCESS_REQUEST)
        if raw is None:
            log.warning("RADIUS server %s: a reply failed verification (wrong secret, no "
                        "valid Message-Authenticator, or malformed); dropped", s.key)
            self.outcomes.append(("invalid", s.key))
            return
        attributes: dict[str, list[object]] = {}
        unknown: list[str] = []
        if r.code == ACCESS_REQUEST:  # only an Accept's attributes are read
            try:
                reply = Packet(secret=r.secret, authenticator=r.authenticator,
                               dict=self.dictionary, packet=raw)
            except PacketError as e:
                log.warning("RADIUS server %s: undecodable reply: %s", s.key, e)
                self.outcomes.append(("invalid", s.key))
                return
            # pyrad's keys() names the attributes its dictionary knows (iterating: codes)
            for k in list(reply.keys()):
                if isinstance(k, str):
                    attributes[k] = [v if isinstance(v, (str, int, bytes, float)) else str(v)
                                     for v in reply[k]]
                else:
                    unknown.append(str(k))
        self._finish(r, raw[0], attributes, unknown, time.monotonic() - r.sent_at)

    # --- to the agent --------------------------------------------------------------------------

    def _send_out(self) -> None:
        while self.out:
            try:
                n = self.sock.send(self.out[:SOCKET_BUFFER])
            except BlockingIOError:
                break
            del self.out[:n]
        want = bool(self.out)
        if want != self.writing:
            self.writing = want
            self.selector.modify(self.sock, selectors.EVENT_READ
                                 | (selectors.EVENT_WRITE if want else 0), None)


def main(argv: list[str]) -> int:
    """``transport FD AGENT_PID LEVEL FORMAT``: serve the agent on the socket ``FD``; die
    with the agent."""
    fd, agent = int(argv[0]), int(argv[1])
    if not child.die_with(agent):
        return 0
    logs.setup(argv[2], argv[3])
    try:
        Transport(socket.socket(fileno=fd)).run()
    except (ConnectionError, OSError) as e:  # the agent is gone
        print(f"RADIUS transport: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The RADIUS transport process, and the client's handle on it."""

from __future__ import annotations

import asyncio
import marshal
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
from pyrad.packet import AccessAccept

from bng_operator.agent.child import Child
from bng_operator.agent.radius import client
from bng_operator.agent.radius.client import Answer, RadiusClient, Server
from bng_operator.agent.radius.transport import (
    FRAME,
    NO_REPLY,
    UNENCODABLE,
    Transport,
)
from bng_operator.agent.radius.wire import ACCESS_REQUEST, RANDOM_POOL, RandomBytes
from bng_operator.metrics import AgentMetrics
from tests.unit.radius.test_authoriser import SECRET, FakeServer, serve

WAIT = 3.0  # seconds a test waits for what should take well under one


def test_request_authenticators_are_16_bytes_and_never_repeat_across_refills() -> None:
    a = RandomBytes()
    drawn = [a.take(16) for _ in range(3 * RANDOM_POOL // 16 + 5)]
    assert {len(x) for x in drawn} == {16}
    assert len(set(drawn)) == len(drawn)


class _Silent:
    """A server that records what it is sent and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]

    def take(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096))
            except TimeoutError:
                return got


def _transport() -> tuple[socket.socket, threading.Thread]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    t = threading.Thread(target=Transport(theirs).run, daemon=True)
    t.start()
    return ours, t


def _ask(sock: socket.socket, batch: list[tuple[object, ...]]) -> None:
    body = marshal.dumps(batch)
    sock.sendall(FRAME.pack(len(body)) + body)


def _outcomes(sock: socket.socket, n: int) -> list[tuple[object, ...]]:
    got: list[tuple[object, ...]] = []
    buf = b""
    sock.settimeout(WAIT)
    while len(got) < n:
        buf += sock.recv(1 << 16)
        while len(buf) >= FRAME.size and len(buf) >= FRAME.size + FRAME.unpack_from(buf)[0]:
            size = FRAME.unpack_from(buf)[0]
            got += [o for o in marshal.loads(buf[FRAME.size:FRAME.size + size])
                    if o[0] != "invalid"]
            buf = buf[FRAME.size + size:]
    return got


def _request(rid: int, port: int, timeout: float = 0.5, retries: int = 0,
             attributes: list[tuple[str, object]] | None = None) -> tuple[object, ...]:
    return (rid, f"127.0.0.1:{port}", "127.0.0.1", port, ACCESS_REQUEST, SECRET,
            attributes or [("User-Name", f"user{rid}")], timeout, retries)


def test_beyond_255_in_flight_a_request_waits_for_an_identifier_and_goes_in_order() -> None:
    srv = _Silent()
    sock, t = _transport()
    _ask(sock, [_request(i, srv.port) for i in range(300)])
    first = srv.take()
    assert len(first) == 255 and len({p[1] for p in first}) == 255  # every Identifier once
    assert [o[:2] for o in _outcomes(sock, 255)] == [(i, NO_REPLY) for i in range(255)]
    rest = srv.take() + srv.take()
    assert len(rest) == 45
    assert [o[:2] for o in _outcomes(sock, 45)] == [(i, NO_REPLY) for i in range(255, 300)]
    sock.close()  # the agent's end: the transport ends
    t.join(WAIT)
    assert not t.is_alive()


def test_a_request_is_sent_again_on_each_timeout_then_ends_without_a_reply() -> None:
    srv = _Silent()
    sock, t = _transport()
    t0 = time.monotonic()
    _ask(sock, [_request(7, srv.port, timeout=0.2, retries=2)])
    [outcome] = _outcomes(sock, 1)
    assert outcome == (7, NO_REPLY, None, [], 0.0, 2)  # two retransmissions
    assert time.monotonic() - t0 >= 0.6
    sent = srv.take()
    assert len(sent) == 3 and len(set(sent)) == 1  # the same packet each time
    sock.close()
    t.join(WAIT)


def test_a_request_that_cannot_be_encoded_is_said_and_not_sent() -> None:
    srv = _Silent()
    sock, t = _transport()
    _ask(sock, [_request(1, srv.port, attributes=[("No-Such-Attribute", "x")]),
                _request(2, srv.port, timeout=0.1)])
    got = {o[0]: o for o in _outcomes(sock, 2)}
    assert got[1][1] == UNENCODABLE and "No-Such-Attribute" in str(got[1][2])
    assert got[2][1] == NO_REPLY
    assert len(srv.take()) == 1  # the other one only
    sock.close()
    t.join(WAIT)


def _attributes(nas_ip: str) -> list[tuple[str, str | int]]:
    return [("User-Name", "u"), ("NAS-IP-Address", nas_ip)]


@dataclass
class _Asking:
    """A client of one server, asking it; the first request out, seen by the server."""

    client: RadiusClient
    server: Server
    first: asyncio.Task[Answer] = field(init=False)
    transport: Child = field(init=False)

    @classmethod
    async def start(cls, srv: FakeServer, timeout: float) -> _Asking:
        c = RadiusClient(AgentMetrics())
        s = c.server("127.0.0.1", srv.port, timeout=timeout, retries=0, dead_after=10,
                     dead_time=60)
        a = cls(c, s)
        a.first = a.ask()
        t0 = time.monotonic()
        while not srv.asked:
            assert time.monotonic() - t0 < WAIT
            await asyncio.sleep(0.02)
        assert c._transport._child is not None
        a.transport = c._transport._child
        return a

    def ask(self) -> asyncio.Task[Answer]:
        return asyncio.get_running_loop().create_task(self.client.access_request(
            [(self.server, SECRET)], _attributes))


def test_a_dead_transport_fails_its_requests_at_once_and_is_started_again() -> None:
    async def run() -> None:
        awake = [False]
        srv = await serve(lambda req: (AccessAccept, {}) if awake[0] else None)
        a = await _Asking.start(srv, timeout=10)
        os.kill(a.transport.proc.pid, signal.SIGKILL)
        answer = await asyncio.wait_for(a.first, WAIT)  # not its 10 s timeout
        assert answer.reply is None
        assert "transport" in a.server.last_error
        await asyncio.sleep(1.1)  # the pause before it is started again
        awake[0] = True
        again = await asyncio.wait_for(a.ask(), WAIT)
        assert again.accepted
        now = a.client._transport._child
        assert now is not None and now.proc.pid != a.transport.proc.pid
        a.client.close()
        assert a.client._transport._child is None and now.proc.poll() is not None

    asyncio.run(run())


def test_a_stuck_transport_is_replaced_and_its_requests_fail(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "WATCH_EVERY", 0.1)
    monkeypatch.setattr(client, "WATCH_GRACE", 0.5)

    async def run() -> None:
        srv = await serve(lambda req: None)
        a = await _Asking.start(srv, timeout=0.3)
        os.kill(a.transport.proc.pid, signal.SIGSTOP)  # alive, answering nothing
        t0 = time.monotonic()
        answers = await asyncio.wait_for(asyncio.gather(a.first, a.ask()), WAIT)
        assert time.monotonic() - t0 >= 0.3  # not before the request's own time was up
        assert [x.reply for x in answers] == [None, None]
        assert "answered nothing" in a.server.last_error
        assert a.transport.proc.wait(WAIT) is not None  # killed, stopped as it was
        a.client.close()

    asyncio.run(run())


def test_a_client_used_from_another_loop_starts_a_transport_of_its_own() -> None:
    # Found by review: the transport started under the first loop stayed attached to it,
    # and a request from the second loop was never answered.
    c = RadiusClient(AgentMetrics())
    seen: list[int] = []

    async def ask() -> None:
        srv = await serve(lambda req: (AccessAccept, {}))
        s = c.server("127.0.0.1", srv.port, timeout=1, retries=0, dead_after=10,
                     dead_time=60)
        answer = await asyncio.wait_for(c.access_request([(s, SECRET)], _attributes), WAIT)
        assert answer.accepted
        assert c._transport._child is not None
        seen.append(c._transport._child.proc.pid)

    asyncio.run(ask())
    asyncio.run(ask())
    c.close()
    assert len(set(seen)) == 2

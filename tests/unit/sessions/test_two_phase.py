"""Decisions in two phases: decide -> authorise -> commit -> reply, through the packet path.

The packet path (agent/dhcp/packets.py) runs here on real frames, the real state machine
and a store that commits on the next turn of the loop; only the socket is a list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

from bng_lab.dhcp_env import CTX, MemoryStore, server
from bng_lab.messages import request
from bng_operator.agent.audit import AuditLog
from bng_operator.agent.dhcp.codec import MessageType, decode, encode
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.dhcp.packets import PacketPath
from bng_operator.agent.dhcp.transport import BROADCAST_IP, BROADCAST_MAC, build_frame, parse_frame
from bng_operator.agent.health import Commits, Health
from bng_operator.agent.sessions.authorise import Verdict
from bng_operator.agent.sessions.events import SessionEvents
from bng_operator.agent.sessions.session import Change, EndReason, Session, State
from bng_operator.metrics import AgentMetrics

D, R = MessageType.DISCOVER, MessageType.REQUEST
A_MAC = "02:00:00:00:aa:01"
OTHERS = 1000


@dataclass
class CommittingStore(MemoryStore):
    """Commits on the loop's next turn, as the real store's writer answers later, and runs
    what waits on a commit as it settles it (LeaseStore.when_settled)."""

    commits: int = 0
    waiting: dict[asyncio.Future[None], list[Callable[[asyncio.Future[None]], None]]] = field(
        default_factory=dict)

    def commit(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(self._settle, fut)
        self.commits += 1
        return fut

    def when_settled(self, fut: asyncio.Future[None],
                     fn: Callable[[asyncio.Future[None]], None]) -> None:
        self.waiting.setdefault(fut, []).append(fn)

    def _settle(self, fut: asyncio.Future[None]) -> None:
        fut.set_result(None)
        for fn in self.waiting.pop(fut, ()):
            fn(fut)


@dataclass
class Wire:
    """The access interface: what was sent, and when."""

    ifname: str = "access0"
    addresses: tuple[IPv4Address, ...] = CTX.server_addresses
    mac: bytes = bytes.fromhex("020000000001")
    sent: list[tuple[float, bytes]] = field(default_factory=list)

    def send(self, wire: bytes) -> bool:
        self.sent.append((time.monotonic(), wire))
        return True

    def replies(self) -> list[tuple[float, str, str, str]]:
        """(when, client MAC, type, address) of every reply sent."""
        out = []
        for t, w in self.sent:
            m = decode_reply(w)
            out.append((t, m[0], m[1], m[2]))
        return out


def decode_reply(wire: bytes) -> tuple[str, str, str]:
    payload = parse_frame(wire).payload
    # The codec decodes requests; a reply has the same layout but op 2.
    msg = decode(bytes([1]) + payload[1:])
    assert msg.type is not None
    return msg.mac, msg.type.name.lower(), str(msg.yiaddr)


def frame(kind: MessageType, mac: str, n: int, **kw: object) -> bytes:
    msg = request(kind, mac, xid=n, remote=f"res-{n}", **kw)  # type: ignore[arg-type]
    return build_frame(BROADCAST_MAC, bytes.fromhex(mac.replace(":", "")), b"",
                       IPv4Address("0.0.0.0"), BROADCAST_IP, 67,
                       encode(msg, list(msg.options)), src_port=68)


def mac_of(i: int) -> str:
    return f"02:00:00:01:{i >> 8:02x}:{i & 0xFF:02x}"


class HoldingAuthoriser:
    """Authorises every session; client A's answer takes ``hold`` seconds, and those in
    ``refuse`` are rejected (after the same wait)."""

    def __init__(self, hold: float = 1.0, refuse: frozenset[str] = frozenset()) -> None:
        self.hold, self.refuse = hold, refuse
        self.asked: list[str] = []
        self.answered_a_at: float | None = None

    def applies(self, s: Session) -> bool:
        return s.subscriber_class == "residential"

    async def authorise(self, s: Session) -> Verdict:
        self.asked.append(s.identity.mac)
        if s.identity.mac == A_MAC or s.identity.mac in self.refuse:
            await asyncio.sleep(self.hold)
            self.answered_a_at = time.monotonic()
        if s.identity.mac in self.refuse:
            return Verdict(False, "no such subscriber")
        return Verdict(True)


@dataclass
class Heard:
    """A feature that records what it hears."""

    name: str = "recorder"
    events: list[tuple[str, str, State | None, EndReason | None]] = field(default_factory=list)

    def on_bound(self, s: Session) -> None:
        self.events.append(("bound", s.identity.mac, s.state, None))

    def on_changed(self, s: Session, what: Change, before: Lease | None) -> None:
        self.events.append(("changed", s.identity.mac, s.state, None))

    def on_ended(self, s: Session) -> None:
        self.events.append(("ended", s.identity.mac, s.state, s.end_reason))


def _path(authoriser: HoldingAuthoriser) -> tuple[PacketPath, Wire, Heard, CommittingStore]:
    store = CommittingStore()
    s, _, _ = server(store=store)
    metrics, health = AgentMetrics(), Health(problem="")
    bus = SessionEvents()
    heard = Heard()
    bus.subscribe(heard)
    path = PacketPath(s, store, bus, metrics, health, Commits(store, metrics, health),  # type: ignore[arg-type]
                      authoriser)
    return path, Wire(), heard, store


async def _until(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_a_held_authorisation_blocks_no_other_client() -> None:
    async def run() -> None:
        auth = HoldingAuthoriser(hold=1.0)
        path, wire, heard, _ = _path(auth)
        t0 = time.monotonic()
        path.handle(wire, frame(D, A_MAC, 0), b"", time.perf_counter())  # type: ignore[arg-type]
        for i in range(1, OTHERS + 1):
            path.handle(wire, frame(D, mac_of(i), i), b"", time.perf_counter())  # type: ignore[arg-type]
        # A retransmission while A waits is dropped, not decided twice.
        path.handle(wire, frame(D, A_MAC, 0), b"", time.perf_counter())  # type: ignore[arg-type]
        await _until(lambda: len(wire.sent) >= OTHERS)
        others_done = time.monotonic()
        assert all(mac != A_MAC for _, mac, _, _ in wire.replies()), "A answered early"
        assert others_done - t0 < 1.0, "the others waited for A's authoriser"
        await _until(lambda: len(wire.sent) == OTHERS + 1)
        t_a, mac, kind, addr = wire.replies()[-1]
        assert (mac, kind) == (A_MAC, "offer") and t_a - t0 >= 1.0
        assert auth.answered_a_at is not None and t_a >= auth.answered_a_at
        assert sorted(auth.asked) == sorted([A_MAC] + [mac_of(i) for i in range(1, OTHERS + 1)])
        assert len({a for _, _, _, a in wire.replies()}) == OTHERS + 1  # no address twice
        assert path.server.sessions["remote:res-0"].state == State.OFFERED

        # A's REQUEST: already authorised, so it commits at once and is bound.
        path.handle(wire, frame(R, A_MAC, 0, requested=addr, server_id="100.64.0.1"), b"",  # type: ignore[arg-type]
                    time.perf_counter())
        await _until(lambda: len(wire.sent) == OTHERS + 2)
        assert wire.replies()[-1][1:] == (A_MAC, "ack", addr)
        assert auth.asked.count(A_MAC) == 1
        assert ("bound", A_MAC, State.BOUND, None) in heard.events
        assert path.server.by_address[int(IPv4Address(addr))].mac == A_MAC

    asyncio.run(run())


def test_a_rejected_session_gets_nothing_and_holds_nothing() -> None:
    async def run() -> None:
        refused = "02:00:00:00:bb:01"
        auth = HoldingAuthoriser(hold=0.05, refuse=frozenset({refused}))
        path, wire, heard, store = _path(auth)
        before = path.server.pool_usage()
        path.handle(wire, frame(D, refused, 7), b"", time.perf_counter())  # type: ignore[arg-type]
        assert path.server.pool_usage()["residential"]["free"] == \
            before["residential"]["free"] - 1  # held while it waits
        await _until(lambda: heard.events)
        await asyncio.sleep(0.05)
        assert wire.sent == []
        assert heard.events == [("ended", refused, State.ENDED, EndReason.REJECTED)]
        assert path.server.pool_usage() == before
        assert path.server.offers == {} and path.server.offered == {}
        assert path.server.sessions == {} and store.leases == {}

        # INIT-REBOOT: a REQUEST for an address with no DISCOVER; claimed, then let go.
        path.handle(wire, frame(R, refused, 8, requested="100.64.0.77"), b"",  # type: ignore[arg-type]
                    time.perf_counter())
        await _until(lambda: len(heard.events) == 2)
        await asyncio.sleep(0.05)
        assert wire.sent == [] and path.server.pool_usage() == before
        assert path.server.offered == {} and store.leases == {}
        m = path.metrics.registry.get_sample_value
        assert m("bng_dhcp_drops_total", {"reason": "not_authorised"}) == 2.0

    asyncio.run(run())


def test_without_an_authoriser_decisions_commit_at_once() -> None:
    async def run() -> None:
        path, wire, heard, store = _path(None)  # type: ignore[arg-type]
        path.handle(wire, frame(D, A_MAC, 0), b"", time.perf_counter())  # type: ignore[arg-type]
        assert len(wire.sent) == 1  # sent in the same call: no task, no wait
        addr = wire.replies()[0][3]
        path.handle(wire, frame(R, A_MAC, 0, requested=addr, server_id="100.64.0.1"), b"",  # type: ignore[arg-type]
                    time.perf_counter())
        assert len(wire.sent) == 1  # the ACK waits for the commit
        await _until(lambda: len(wire.sent) == 2)
        assert heard.events == [("bound", A_MAC, State.BOUND, None)]
        assert store.leases[int(IPv4Address(addr))].mac == A_MAC

    asyncio.run(run())


def test_the_audit_log_hears_a_bind_before_its_commit_and_the_others_after_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """The agent can die between a commit and its events, and the writer (a process of its
    own) still finishes the commit: the audit line must be on record before the lease can
    reach the disk, or a stored lease has none."""
    async def run() -> None:
        path, wire, heard, store = _path(None)  # type: ignore[arg-type]
        path.sessions.subscribe(AuditLog())
        path.handle(wire, frame(D, A_MAC, 0), b"", time.perf_counter())  # type: ignore[arg-type]
        addr = wire.replies()[0][3]
        path.handle(wire, frame(R, A_MAC, 0, requested=addr, server_id="100.64.0.1"), b"",  # type: ignore[arg-type]
                    time.perf_counter())
        assert store.commits == 1 and len(wire.sent) == 1  # the commit is not done yet
        assert _allocated(caplog) == [addr] and heard.events == []
        await _until(lambda: len(wire.sent) == 2)
        assert heard.events == [("bound", A_MAC, State.BOUND, None)]
        assert _allocated(caplog) == [addr]  # once

    with caplog.at_level(logging.INFO, logger="bng.audit"):
        asyncio.run(run())


def _allocated(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.audit["address"] for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "bng.audit" and r.getMessage() == "allocate"]

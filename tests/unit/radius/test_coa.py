"""CoA and Disconnect (RFC 5176): request checks (secret, Message-Authenticator, replay
window, duplicates), session lookup by each identifier, the NAK causes, and the listener
acting through the RADIUS feature; and Idle-Timeout on the upload counters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from pyrad.packet import (
    CoAACK,
    CoANAK,
    CoAPacket,
    CoARequest,
    DisconnectACK,
    DisconnectNAK,
    DisconnectRequest,
)

from bng_lab.dhcp_env import bound_lease
from bng_operator.agent.config import NodeConfig, ShapingRates
from bng_operator.agent.radius.accounting import Usage
from bng_operator.agent.radius.coa import (
    COA,
    DISCONNECT,
    INVALID_REQUEST,
    MISSING_ATTRIBUTE,
    NAS_IDENTIFICATION_MISMATCH,
    SESSION_NOT_FOUND,
    UNSUPPORTED_ATTRIBUTE,
    Candidate,
    Drop,
    Duplicates,
    Ident,
    check,
    identify,
    matches,
    nas_mismatch,
    timer_attributes,
    unsupported,
)
from bng_operator.agent.radius.feature import RadiusFeature
from bng_operator.agent.radius.listener import CoaListener
from bng_operator.agent.radius.store import RadiusSession, RadiusStore
from bng_operator.agent.sessions.session import EndReason, Session
from bng_operator.api.radius import SecretRef
from tests.unit.radius.test_authoriser import DICT, SECRET, accept, config, feature, sample, serve, session

NOW = 1_800_000_000.0


def request(code: int = CoARequest, secret: bytes = SECRET, ma: bool = False,
            ident: int = 7, **attrs: Any) -> bytes:
    p = CoAPacket(code=code, id=ident, secret=secret, dict=DICT)
    for k, v in attrs.items():
        p.AddAttribute(k.replace("_", "-"), v)
    if ma:
        p.add_message_authenticator()
    return p.RequestPacket()  # type: ignore[no-any-return]


def stamp(t: float) -> int:
    return int(t)


# --- checks: secret, Message-Authenticator, replay window --------------------------------

@pytest.mark.parametrize("data, result", [
    (request(User_Name="u"), COA),
    (request(DisconnectRequest, User_Name="u"), DISCONNECT),
    (request(User_Name="u", ma=True), COA),  # verified when present
    (request(User_Name="u", secret=b"wrong"), "bad_authenticator"),
    (request(User_Name="u", secret=b"wrong", ma=True), "bad_authenticator"),
    (request(User_Name="u", Event_Timestamp=stamp(NOW - 10)), COA),
    (request(User_Name="u", Event_Timestamp=stamp(NOW + 299)), COA),
    (request(User_Name="u", Event_Timestamp=stamp(NOW - 301)), "replay"),
    (request(User_Name="u", Event_Timestamp=stamp(NOW + 400)), "replay"),
    (b"\x2b\x01\x00", "malformed"),
    (bytes([1]) + request(User_Name="u")[1:], "malformed"),  # an Access-Request
])
def test_check(data: bytes, result: str) -> None:
    r = check(data, SECRET, DICT, NOW)
    got = r.reason if isinstance(r, Drop) else r.kind
    assert got == result, r


def test_a_tampered_message_authenticator_is_dropped() -> None:
    good = bytearray(request(User_Name="u", ma=True))
    # a valid Request Authenticator over a wrong Message-Authenticator: recompute the former
    import hashlib
    at = good.index(bytes([80, 18])) + 2
    good[at] ^= 1
    good[4:20] = hashlib.md5(bytes(good[:4]) + bytes(16) + bytes(good[20:]) + SECRET).digest()
    r = check(bytes(good), SECRET, DICT, NOW)
    assert isinstance(r, Drop) and r.reason == "bad_authenticator"


def test_duplicates_are_remembered_for_the_window() -> None:
    d = Duplicates(window=300, limit=2)
    k1, k2, k3 = ("a", 1, b"x"), ("a", 2, b"x"), ("a", 3, b"x")
    d.put(k1, 0, None)
    d.put(k1, 1, b"reply")
    assert d.get(k1, 299) == (0, b"reply")
    assert d.get(k1, 301) is None  # out of the window
    d.put(k1, 400, None)
    d.put(k2, 400, None)
    d.put(k3, 400, None)  # over the limit: the oldest goes
    assert d.get(k1, 400) is None and d.get(k3, 400) is not None


# --- identification and lookup ------------------------------------------------------------

CANDIDATES = [
    Candidate("mac:a", "AAAA", "alice", int(IPv4Address("100.64.0.1")), "02:00:00:00:00:0a"),
    Candidate("mac:b", "BBBB", "bob", int(IPv4Address("100.64.0.2")), "02-00-00-00-00-0B"),
    Candidate("mac:c", "CCCC", "bob", int(IPv4Address("100.64.0.3")), "020000000000c"),
]


@pytest.mark.parametrize("attrs, keys", [
    ({"Acct-Session-Id": ["BBBB"]}, ["mac:b"]),
    ({"User-Name": ["alice"]}, ["mac:a"]),
    ({"User-Name": ["bob"]}, ["mac:b", "mac:c"]),  # every session it names
    ({"Framed-IP-Address": ["100.64.0.3"]}, ["mac:c"]),
    ({"Calling-Station-Id": ["02:00:00:00:00:0B"]}, ["mac:b"]),  # any MAC format
    ({"Calling-Station-Id": ["0200.0000.000a"]}, ["mac:a"]),
    ({"User-Name": ["bob"], "Framed-IP-Address": ["100.64.0.2"]}, ["mac:b"]),  # all must match
    ({"User-Name": ["alice"], "Acct-Session-Id": ["BBBB"]}, []),
    ({"Acct-Session-Id": ["ZZZZ"]}, []),
])
def test_lookup_by_each_identifier(attrs: dict[str, list[object]], keys: list[str]) -> None:
    ident = identify(attrs)
    assert isinstance(ident, Ident)
    assert matches(ident, CANDIDATES) == keys


@pytest.mark.parametrize("attrs, cause", [
    ({}, MISSING_ATTRIBUTE),
    ({"NAS-Identifier": ["bng-1"]}, MISSING_ATTRIBUTE),
    ({"Framed-IP-Address": ["not an address"]}, INVALID_REQUEST),
])
def test_identification_errors(attrs: dict[str, list[object]], cause: int) -> None:
    assert identify(attrs) == cause


@pytest.mark.parametrize("attrs, timers", [
    ({"Filter-Id": ["x"]}, {}),
    ({"Session-Timeout": [0], "Idle-Timeout": [60], "Acct-Interim-Interval": [300]},
     {"Session-Timeout": 0, "Idle-Timeout": 60, "Acct-Interim-Interval": 300}),
    ({"Session-Timeout": ["600"]}, None),  # not a number of seconds: NAK 404
    ({"Idle-Timeout": [-1]}, None),
])
def test_timer_attributes(attrs: dict[str, list[object]], timers: dict[str, int] | None,
                          ) -> None:
    assert timer_attributes(attrs) == timers


@pytest.mark.parametrize("attrs, mismatch", [
    ({}, ""),
    ({"NAS-Identifier": ["edge-1"], "NAS-IP-Address": ["192.0.2.1"]}, ""),
    ({"NAS-Identifier": ["edge-2"]}, "NAS-Identifier edge-2 is not this node's (edge-1)"),
    ({"NAS-IP-Address": ["192.0.2.2"]},
     "NAS-IP-Address 192.0.2.2 is not this node's (192.0.2.1, 198.51.100.1)"),
])
def test_a_request_for_another_nas_is_said(attrs: dict[str, list[object]],
                                           mismatch: str) -> None:
    assert nas_mismatch(attrs, {"edge-1"}, {"192.0.2.1", "198.51.100.1"}) == mismatch
    assert nas_mismatch(attrs, set(), set()) == ""  # nothing known to compare with


@pytest.mark.parametrize("kind, names, bad", [
    (COA, ["User-Name", "Filter-Id", "WISPr-Bandwidth-Max-Up", "Event-Timestamp"], []),
    (COA, ["User-Name", "Session-Timeout", "Idle-Timeout", "Acct-Interim-Interval"], []),
    (COA, ["User-Name", "Framed-Pool"], ["Framed-Pool"]),
    (DISCONNECT, ["User-Name", "Session-Timeout"], ["Session-Timeout"]),
    (COA, ["User-Name", "Acct-Terminate-Cause"], ["Acct-Terminate-Cause"]),
    (DISCONNECT, ["Acct-Session-Id", "Acct-Terminate-Cause", "NAS-IP-Address"], []),
    (DISCONNECT, ["Acct-Session-Id", "Filter-Id"], ["Filter-Id"]),
])
def test_unsupported_attributes(kind: str, names: list[str], bad: list[str]) -> None:
    assert unsupported(kind, {n: ["x"] for n in names}, ()) == bad
    assert unsupported(kind, {n: ["x"] for n in names}, ("250",)) == sorted([*bad, "250"])


# --- the listener with the feature ----------------------------------------------------------

class Node:
    """A RADIUS feature with bound sessions, and what it did to them."""

    def __init__(self, f: RadiusFeature) -> None:
        self.f = f
        self.ended: list[str] = []
        self.rates: dict[int, ShapingRates | None] = {}
        f.end = self._end
        f.override = lambda lease, rates: self.rates.__setitem__(lease.address, rates)
        self.sessions: dict[str, Session] = {}

    def _end(self, key: str) -> bool:
        if key not in self.sessions:
            return False
        s = self.sessions.pop(key)
        self.ended.append(key)
        s.end_reason = EndReason.DISCONNECTED
        self.f.on_ended(s)
        return True

    async def bind(self, i: int) -> Session:
        s = session(i)
        assert (await self.f.authorise(s)).accept
        s.lease = bound_lease(address=0x64400000 + i, identity=s.key)
        self.f.on_bound(s)
        self.sessions[s.key] = s
        return s


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)

    async def ask(self, data: bytes, secret: bytes = SECRET, wait: float = 1.0,
                  ) -> CoAPacket | None:
        self.transport.sendto(data)
        try:
            raw = await asyncio.wait_for(self.replies.get(), wait)
        except TimeoutError:
            return None
        req = CoAPacket(packet=data, secret=secret, dict=DICT)
        reply = req.CreateReply(packet=raw)
        assert req.VerifyReply(reply, raw), "the reply is signed with the client's secret"
        return reply  # type: ignore[no-any-return]


async def listening(f: RadiusFeature, clients: dict[str, bytes] | None = None,
                    ) -> tuple[CoaListener, Client]:
    loop = asyncio.get_running_loop()
    _, listener = await loop.create_datagram_endpoint(
        lambda: CoaListener(f.metrics, DICT, lambda: clients if clients is not None
                            else f._coa_secrets, f.dynauth),
        local_addr=("127.0.0.1", 0))
    port = listener.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    _, client = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    return listener, client


def _nak_cause(reply: CoAPacket | None) -> int | None:
    assert reply is not None
    return int(reply["Error-Cause"][0]) if "Error-Cause" in reply else None


@pytest.mark.parametrize("code, attrs, answer, cause", [
    (CoARequest, {"User-Name": "02:00:00:00:01:01", "Filter-Id": "business-1g"}, CoAACK, None),
    (CoARequest, {"Acct-Session-Id": "NOPE", "Filter-Id": "business-1g"}, CoANAK,
     SESSION_NOT_FOUND),
    (CoARequest, {"Framed-IP-Address": "100.64.0.1", "Session-Timeout": 10}, CoAACK, None),
    (CoARequest, {"Framed-IP-Address": "100.64.0.1", "Framed-Pool": "business"}, CoANAK,
     UNSUPPORTED_ATTRIBUTE),
    (CoARequest, {"Framed-IP-Address": "100.64.0.1", "Filter-Id": "no-such-policy"}, CoANAK,
     INVALID_REQUEST),
    (CoARequest, {"NAS-Identifier": "x"}, CoANAK, MISSING_ATTRIBUTE),
    (CoARequest, {"User-Name": "02:00:00:00:01:01", "NAS-Identifier": "edge-1",
                  "NAS-IP-Address": "127.0.0.1", "Filter-Id": "business-1g"}, CoAACK, None),
    (CoARequest, {"User-Name": "02:00:00:00:01:01", "NAS-Identifier": "edge-2",
                  "Filter-Id": "business-1g"}, CoANAK, NAS_IDENTIFICATION_MISMATCH),
    (DisconnectRequest, {"User-Name": "02:00:00:00:01:01", "NAS-IP-Address": "192.0.2.9"},
     DisconnectNAK, NAS_IDENTIFICATION_MISMATCH),
    (DisconnectRequest, {"Calling-Station-Id": "02-00-00-00-01-01"}, DisconnectACK, None),
    (DisconnectRequest, {"Framed-IP-Address": "100.64.0.9"}, DisconnectNAK, SESSION_NOT_FOUND),
    (DisconnectRequest, {"Framed-IP-Address": "100.64.0.1", "Filter-Id": "x"}, DisconnectNAK,
     UNSUPPORTED_ATTRIBUTE),
])
def test_answers_and_nak_causes(tmp_path: Path, code: int, attrs: dict[str, Any], answer: int,
                                cause: int | None) -> None:
    async def run() -> None:
        srv = await serve(accept())
        node = Node(feature(config([srv.port]), tmp_path))
        await node.bind(1)
        listener, client = await listening(node.f)
        reply = await client.ask(request(code, **{k.replace("-", "_"): v
                                                  for k, v in attrs.items()}))
        assert reply is not None and reply.code == answer
        assert _nak_cause(reply) == cause
        kind = "disconnect" if code == DisconnectRequest else "coa"
        label = "ack" if cause is None else {401: "unsupported_attribute",
                                             402: "missing_attribute", 404: "invalid_request",
                                             403: "nas_identification_mismatch",
                                             503: "session_not_found"}[cause]
        assert sample(node.f, "bng_radius_dynauth_requests_total", type=kind,
                      result=label) == 1
        if answer != CoAACK:
            assert node.rates == {}  # a NAK changes nothing
        if answer != DisconnectACK:
            assert node.ended == []
        listener.close()
        node.f.close()

    asyncio.run(run())


def test_coa_changes_rates_live_and_survives_a_restart(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept())
        cfg = config([srv.port])
        node = Node(feature(cfg, tmp_path))
        s = await node.bind(1)
        assert s.lease is not None
        listener, client = await listening(node.f)
        aid = node.f.sessions[s.key].acct_session_id
        reply = await client.ask(request(Acct_Session_Id=aid,
                                         WISPr_Bandwidth_Max_Down=50_000_000))
        assert reply is not None and reply.code == CoAACK
        r = node.rates[s.lease.address]
        assert r is not None and (r.down_bps, r.up_bps) == (50_000_000, 20_000_000)
        reply = await client.ask(request(ident=8, Acct_Session_Id=aid, Filter_Id="business-1g"))
        assert reply is not None and reply.code == CoAACK
        r = node.rates[s.lease.address]
        assert r is not None and r.down_bps == 1_000_000_000
        listener.close()
        node.f.close()
        g = Node(feature(cfg, tmp_path))  # after a restart: the CoA's rates, not the Accept's
        g.f.restore({s.key: s}, lambda key: s.lease)
        assert g.rates[s.lease.address] == r
        g.f.close()

    asyncio.run(run())


def test_disconnect_ends_with_admin_reset_and_duplicates_are_answered_once(
        tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept())
        node = Node(feature(config([srv.port]), tmp_path))
        s = await node.bind(1)
        await node.bind(2)
        listener, client = await listening(node.f)
        data = request(DisconnectRequest, User_Name="02:00:00:00:01:01",
                       Event_Timestamp=stamp(time.time()))
        first = await client.ask(data)
        assert first is not None and first.code == DisconnectACK
        assert node.ended == [s.key]
        stop = [r for r in node.f.queue if r.status == "Stop"]
        assert dict(stop[0].attributes)["Acct-Terminate-Cause"] == "Admin-Reset"
        again = await client.ask(data)  # a retransmission: the same answer, not a NAK 503
        assert again is not None and again.code == DisconnectACK
        assert sample(node.f, "bng_radius_dynauth_requests_total", type="disconnect",
                      result="duplicate") == 1
        assert node.ended == [s.key]
        listener.close()
        node.f.close()

    asyncio.run(run())


@pytest.mark.parametrize("clients, secret, reason", [
    ({"127.0.0.1": SECRET}, b"wrong", "bad_authenticator"),
    ({"127.0.0.9": SECRET}, SECRET, "unknown_client"),
])
def test_dropped_without_a_reply(tmp_path: Path, clients: dict[str, bytes], secret: bytes,
                                 reason: str) -> None:
    async def run() -> None:
        srv = await serve(accept())
        node = Node(feature(config([srv.port]), tmp_path))
        await node.bind(1)
        listener, client = await listening(node.f, clients)
        reply = await client.ask(request(DisconnectRequest, secret=secret,
                                         Framed_IP_Address="100.64.0.1"), wait=0.3)
        assert reply is None and node.ended == []
        assert sample(node.f, "bng_radius_dynauth_requests_total", type="disconnect",
                      result=reason) == 1
        listener.close()
        node.f.close()

    asyncio.run(run())


def test_the_class_servers_are_clients_with_their_secrets(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept())
        f = feature(config([srv.port]), tmp_path)
        assert f._coa_secrets == {"127.0.0.1": SECRET}
        # another client, its secret read the same way (a file as a mounted Secret's key)
        (tmp_path / "secrets" / "policy").mkdir()
        (tmp_path / "secrets" / "policy" / "coa").write_bytes(b"other\n")
        f.coa_clients = (("192.0.2.7", SecretRef(name="policy", key="coa")),
                         ("192.0.2.8", SecretRef(name="missing")))
        f.read_secrets()
        f._servers()
        assert f._coa_secrets == {"127.0.0.1": SECRET, "192.0.2.7": b"other"}  # not .8
        f.close()

    asyncio.run(run())


# --- Idle-Timeout -------------------------------------------------------------------------

async def idle_node(tmp_path: Path, idle_timeout: int, usage: Callable[[int], Usage | None],
                    ) -> tuple[Node, NodeConfig]:
    """A node whose RADIUS server accepts with this Idle-Timeout, its counters from
    ``usage``; and its configuration (for a restart)."""
    srv = await serve(accept({"Idle-Timeout": idle_timeout}))
    cfg = config([srv.port])
    node = Node(feature(cfg, tmp_path))
    node.f.usage = usage
    return node, cfg


def test_an_idle_session_ends_on_time_an_active_one_does_not(tmp_path: Path) -> None:
    async def run() -> None:
        up: dict[int, int] = {}
        node, _ = await idle_node(tmp_path, 2, lambda a: Usage(0, up.get(a, 0), 0, 0))
        idle, busy = await node.bind(1), await node.bind(2)
        assert busy.lease is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.6:
            up[busy.lease.address] = up.get(busy.lease.address, 0) + 1  # it sends
            await asyncio.sleep(0.2)
        assert node.ended == [idle.key]  # 2 s idle, noticed within a tick or two (1 s)
        stop = [r for r in node.f.queue if r.status == "Stop"]
        assert dict(stop[0].attributes)["Acct-Terminate-Cause"] == "Idle-Timeout"
        assert sample(node.f, "bng_radius_idle_timeouts_total") == 1
        node.f.close()

    asyncio.run(run())


def test_counters_that_appear_late_and_count_nothing_leave_the_idle_clock_running(
        tmp_path: Path) -> None:
    async def run() -> None:
        loaded = {"now": False}
        # shaping loads late: no counters at first
        node, _ = await idle_node(tmp_path, 2, lambda a: Usage() if loaded["now"] else None)
        s = await node.bind(1)
        await asyncio.sleep(1.2)
        loaded["now"] = True
        await asyncio.sleep(2.0)
        assert node.ended == [s.key]  # 2 s after it was bound, not after the counters came
        node.f.close()

    asyncio.run(run())


def restarted(f: RadiusFeature, s: Session, usage: Callable[[int], Usage | None]) -> Node:
    """``f`` as an agent restarted with its store: ``s`` restored, counters from ``usage``."""
    node = Node(f)
    node.f.usage = usage
    node.sessions[s.key] = s
    node.f.restore({s.key: s}, lambda key: s.lease)
    return node


@pytest.mark.parametrize("after", ["quiet", "sent", "counters late"])
def test_an_idle_spell_is_kept_across_a_restart(tmp_path: Path, after: str) -> None:
    # Quiet for 1.3 s of its 2 s Idle-Timeout when the agent restarts: it ends about a
    # tick after the restart, not 2 s later, also when shaping's counters come back only
    # after the restart; unless its counter moved while the agent was away (it sent
    # something): then its clock starts at the restart.
    async def run() -> None:
        up = {"packets": 5}
        node, cfg = await idle_node(tmp_path, 2, lambda a: Usage(0, up["packets"], 0, 0))
        s = await node.bind(1)
        await asyncio.sleep(1.3)
        assert node.ended == []
        node.f.close()
        up["packets"] += after == "sent"
        loaded = {"now": after != "counters late"}
        again = restarted(feature(cfg, tmp_path), s, lambda a: Usage(0, up["packets"], 0, 0)
                          if loaded["now"] else None)
        if not loaded["now"]:
            await asyncio.sleep(0.5)
            loaded["now"] = True
        await asyncio.sleep(1.6)
        assert again.ended == ([] if after == "sent" else [s.key])
        if after == "sent":
            await asyncio.sleep(1.6)  # 2 s after the restart, within a tick
            assert again.ended == [s.key]
        again.f.close()

    asyncio.run(run())


def test_a_quiet_spell_ended_by_traffic_is_forgotten(tmp_path: Path) -> None:
    # Quiet for its first second (written: half its Idle-Timeout), then busy until the
    # restart; the restarted agent's counters read what they read when it was quiet (a
    # new shaping generation starts them at zero): it is not idle since then.
    async def run() -> None:
        up = {"n": 0}
        node, cfg = await idle_node(tmp_path, 2, lambda a: Usage(0, up["n"], 0, 0))
        s = await node.bind(1)
        await asyncio.sleep(1.2)
        assert node.f.sessions[s.key].quiet_packets == 0
        for _ in range(10):  # busy for 2 s
            up["n"] += 1
            await asyncio.sleep(0.2)
        assert node.ended == [] and node.f.sessions[s.key].quiet_packets == -1
        node.f.close()
        again = restarted(feature(cfg, tmp_path), s, lambda a: Usage(0, 0, 0, 0))
        await asyncio.sleep(1.5)
        assert again.ended == []
        again.f.close()

    asyncio.run(run())


def test_a_coa_that_sets_idle_timeout_starts_the_clock_anew(tmp_path: Path) -> None:
    async def run() -> None:
        node, _ = await idle_node(tmp_path, 3, lambda a: Usage(0, 5, 0, 0))  # it sends nothing
        s = await node.bind(1)
        st = node.f.sessions[s.key]
        await asyncio.sleep(2.5)  # quiet 2.5 s of 3, and written so
        assert st.quiet_packets == 5
        listener, client = await listening(node.f)
        reply = await client.ask(request(Acct_Session_Id=st.acct_session_id, Idle_Timeout=3))
        assert reply is not None and reply.code == CoAACK
        t0 = time.monotonic()
        while s.key not in node.ended and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.05)
        assert time.monotonic() - t0 >= 3.0  # 3 s from the CoA, not 0.5
        listener.close()
        node.f.close()

    asyncio.run(run())


def test_idle_timeout_needs_counters(tmp_path: Path) -> None:
    async def run() -> None:
        # shaping off: nothing says it is idle
        node, _ = await idle_node(tmp_path, 1, lambda a: None)
        await node.bind(1)
        await asyncio.sleep(2.5)
        assert node.ended == []
        node.f.close()

    asyncio.run(run())



# --- the CLI's extra clients ----------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("192.0.2.7=policy", ("192.0.2.7", "policy", "secret")),
    ("192.0.2.7=policy/coa-key", ("192.0.2.7", "policy", "coa-key")),
    ("not-an-address=policy", None),
    ("192.0.2.7", None),  # no Secret named
])
def test_coa_client_flag(text: str, want: tuple[str, str, str] | None) -> None:
    import argparse

    from bng_operator.cli import _coa_client

    if want is None:
        with pytest.raises(argparse.ArgumentTypeError):
            _coa_client(text)
        return
    address, ref = _coa_client(text)
    assert (address, ref.name, ref.key) == want


# --- rates RADIUS set follow the QoSPolicies they are made from ------------------------------

def _faster(r: ShapingRates) -> ShapingRates:
    return replace(r, down_bps=r.down_bps * 2, up_bps=r.up_bps * 2, down=r.down + "x2")


@pytest.mark.parametrize("attrs, edited, follows", [
    ({"Filter-Id": "business-1g"}, "business-1g", "the named policy"),
    ({"WISPr-Bandwidth-Max-Down": 3_000_000}, "class", "the class's, under WISPr down"),
    ({"Filter-Id": "business-1g", "WISPr-Bandwidth-Max-Up": 2_000_000}, "business-1g",
     "the named policy, under WISPr up"),
    ({}, "class", None),  # RADIUS set no rates: the class's policy is QoS's to apply
    ({"Filter-Id": "business-1g"}, "class", None),  # not made from the class's
    ({"Filter-Id": "gold-later"}, "gold-later", "a policy made after the Accept named it"),
])
def test_a_policy_edit_reaches_the_sessions_radius_rated_with_it_live(
        tmp_path: Path, attrs: dict[str, Any], edited: str, follows: str | None) -> None:
    async def run() -> None:
        srv = await serve(accept(attrs))
        cfg = config([srv.port])
        node = Node(feature(cfg, tmp_path))
        s = await node.bind(1)
        st = node.f.sessions[s.key]
        before = st.rates
        node.rates.clear()
        policies, shaping = dict(cfg.qos_policies), dict(cfg.shaping)
        if edited == "class":
            shaping["residential"] = _faster(shaping["residential"])
            policies[shaping["residential"].policy] = shaping["residential"]
        elif edited in policies:
            policies[edited] = _faster(policies[edited])
        else:
            policies[edited] = replace(cfg.qos_policies["business-1g"], policy=edited,
                                       down_bps=7_000_000, down="7Mbit")
        node.f.reconfigure(replace(cfg, qos_policies=policies, shaping=shaping))
        assert s.lease is not None
        if follows is None:
            assert node.rates == {} and st.rates == before
            node.f.close()
            return
        now = node.rates[s.lease.address]
        assert now is not None and now == st.rates and now != before, follows
        if "WISPr-Bandwidth-Max-Down" in attrs:
            assert now.down_bps == 3_000_000 and now.up_bps == shaping["residential"].up_bps
        elif "WISPr-Bandwidth-Max-Up" in attrs:
            assert now.up_bps == 2_000_000 and now.down_bps == policies[edited].down_bps
        else:
            assert now == policies[edited]
        assert RadiusSession.from_row(st.to_row()).rates == now  # kept for a restart
        node.rates.clear()
        node.f.reconfigure(replace(cfg, qos_policies=policies, shaping=shaping))
        assert node.rates == {}  # nothing changed: nothing re-applied
        node.f.close()

    asyncio.run(run())


# --- timers by CoA ---------------------------------------------------------------------------

def test_a_coa_sets_session_timeout_from_now_and_a_nak_changes_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept({"Session-Timeout": 3600}))
        node = Node(feature(config([srv.port]), tmp_path))
        a, b = await node.bind(1), await node.bind(2)
        listener, client = await listening(node.f)
        st_a = node.f.sessions[a.key]
        st_a.authorised_at -= 100.4  # authorised 100.4 s ago
        # a bad Filter-Id NAKs the whole request: its Session-Timeout is not applied either
        reply = await client.ask(request(Acct_Session_Id=st_a.acct_session_id,
                                         Session_Timeout=1, Filter_Id="no-such-policy"))
        assert _nak_cause(reply) == INVALID_REQUEST and st_a.session_timeout == 3600
        # Session-Timeout 1, from now: ends in about a second (not 3600 s after the Accept)
        t0 = time.monotonic()
        reply = await client.ask(request(Acct_Session_Id=st_a.acct_session_id,
                                         Session_Timeout=1))
        assert reply is not None and reply.code == CoAACK
        shown = node.f.status_of(a.key)["radius"]
        # counted from the CoA, kept as a time from the authorisation, rounded up
        assert isinstance(shown, dict) and shown["sessionTimeout"] == 102
        # and 0 on the other: it ends by no Session-Timeout any more
        reply = await client.ask(request(Acct_Session_Id=node.f.sessions[b.key].acct_session_id,
                                         Session_Timeout=0))
        assert reply is not None and reply.code == CoAACK
        assert node.f.sessions[b.key].session_timeout is None
        while a.key not in node.ended:
            assert time.monotonic() - t0 < 3
            await asyncio.sleep(0.05)
        assert time.monotonic() - t0 >= 1.0 and node.ended == [a.key]
        assert sample(node.f, "bng_radius_session_timeouts_total") == 1
        listener.close()
        node.f.close()
        kept = RadiusStore(tmp_path / "radius.sqlite").load()  # what a restart reads
        assert kept[b.key].session_timeout is None

    asyncio.run(run())


def test_a_coa_sets_idle_timeout_and_the_interim_interval(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept())
        node = Node(feature(config([srv.port]), tmp_path))
        s = await node.bind(1)
        st = node.f.sessions[s.key]
        node.f.usage = lambda address: Usage(0, 0, 0, 0)  # it sends nothing
        listener, client = await listening(node.f)
        reply = await client.ask(request(Acct_Session_Id=st.acct_session_id, Idle_Timeout=1,
                                         Acct_Interim_Interval=120))
        assert reply is not None and reply.code == CoAACK
        assert st.idle_timeout == 1 and st.interim_interval == 120
        assert s.key in node.f._interims and s.key in node.f._idle_timers
        shown = node.f.status_of(s.key)["radius"]
        assert isinstance(shown, dict)
        assert shown["idleTimeout"] == 1 and shown["interimInterval"] == 120
        t0 = time.monotonic()
        while s.key not in node.ended:
            assert time.monotonic() - t0 < 4, "the idle session did not end"
            await asyncio.sleep(0.05)
        assert st.end_cause == "Idle-Timeout"
        listener.close()
        node.f.close()

    asyncio.run(run())


def test_a_coa_restarts_only_the_timers_it_sets(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept({"Idle-Timeout": 600, "Acct-Interim-Interval": 600}))
        node = Node(feature(config([srv.port]), tmp_path))
        s = await node.bind(1)
        st = node.f.sessions[s.key]
        idle, interim, since = (node.f._idle_timers[s.key], node.f._interims[s.key],
                                node.f._idle[s.key])
        listener, client = await listening(node.f)
        reply = await client.ask(request(Acct_Session_Id=st.acct_session_id,
                                         Session_Timeout=3600))
        assert reply is not None and reply.code == CoAACK
        assert node.f._idle_timers[s.key] is idle and node.f._idle[s.key] == since
        assert node.f._interims[s.key] is interim and s.key in node.f._timers
        listener.close()
        node.f.close()

    asyncio.run(run())


def test_a_restart_rerates_sessions_whose_policy_was_edited_meanwhile(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept({"Filter-Id": "business-1g"}))
        cfg = config([srv.port])
        node = Node(feature(cfg, tmp_path))
        s = await node.bind(1)
        node.f.close()  # the agent stops; the policy is edited while it is away
        policies = dict(cfg.qos_policies)
        policies["business-1g"] = _faster(policies["business-1g"])
        again = Node(feature(replace(cfg, qos_policies=policies), tmp_path))
        assert s.lease is not None
        again.f.restore({s.key: session(1)}, lambda key: s.lease)
        assert again.rates[s.lease.address] == policies["business-1g"]
        assert again.f.sessions[s.key].rates == policies["business-1g"]
        again.f.close()

    asyncio.run(run())

"""The RADIUS authoriser against RADIUS servers on loopback, played here with pyrad:
failover, dead servers, verification of replies, hold-down, fallback, and that a server that
never answers holds up no other client."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from pyrad.dictionary import Dictionary
from pyrad.packet import AccessAccept, AccessReject, AuthPacket, Packet

from bng_lab.dhcp_env import sample_config
from bng_operator.agent.config import NodeConfig
from bng_operator.agent.radius.client import DICTIONARY
from bng_operator.agent.radius.feature import RadiusFeature
from bng_operator.agent.radius.secrets import FileSecrets
from bng_operator.agent.sessions.session import Identity, Session
from bng_operator.api import SubscriberClass
from bng_operator.api.subscriber import SubscriberStatus
from bng_operator.metrics import AgentMetrics

SECRET = b"s3cret"
DICT = Dictionary(str(DICTIONARY))
SO_RCVBUFFORCE = 33  # Linux; not in Python's socket module


@dataclass
class FakeServer(asyncio.DatagramProtocol):
    """A RADIUS server: ``answer(request)`` gives the reply's code and attributes, or None
    (silence). ``sign``: add a Message-Authenticator (FreeRADIUS 3.2.1 does not by itself)."""

    answer: Callable[[Packet], tuple[int, dict[str, Any]] | None]
    secret: bytes = SECRET
    sign: bool = True
    asked: list[Packet] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)  # the clients' sockets
    transport: Any = None
    port: int = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        # room for a burst of requests (the default buffer drops some of 255 at once)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE,
                                                      4 << 20)
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        req = AuthPacket(packet=data, secret=self.secret, dict=DICT)
        self.asked.append(req)
        self.peers.add(addr)
        what = self.answer(req)
        if what is None:
            return
        code, attrs = what
        reply = req.CreateReply()
        reply.code = code
        for k, v in attrs.items():
            reply[k] = v
        reply.message_authenticator = self.sign or None  # CreateReply would sign it
        self.transport.sendto(reply.ReplyPacket(), addr)


async def serve(answer: Callable[[Packet], tuple[int, dict[str, Any]] | None],
                **kw: Any) -> FakeServer:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: FakeServer(answer, **kw),
                                                   local_addr=("127.0.0.1", 0))
    return proto


def accept(attrs: dict[str, Any] | None = None) -> Callable[[Packet], tuple[int, dict[str, Any]]]:
    return lambda req: (AccessAccept, attrs or {})


def config(ports: list[int], acct_port: int | None = None, **radius: Any) -> NodeConfig:
    """The samples, with the residential class authenticated by servers on ``ports`` (and
    accounted on ``acct_port``)."""
    def edit(objects: list[Any]) -> list[Any]:
        out = []
        for o in objects:
            if isinstance(o, SubscriberClass) and o.name == "residential":
                spec = o.spec.model_dump(by_alias=True, exclude_none=True)
                spec["auth"] = "radius"
                spec["radius"] = {"servers": [
                    {"address": "127.0.0.1", "authPort": p, "timeout": "1s", "retries": 0,
                     "secret": {"name": "radius"},
                     **({"acctPort": acct_port} if acct_port is not None else {})}
                    for p in ports], **radius}
                o = SubscriberClass.model_validate({**o.model_dump(by_alias=True),
                                                    "spec": spec})
            out.append(o)
        return out

    return sample_config(edit)  # type: ignore[no-any-return]


def feature(cfg: NodeConfig, tmp_path: Path, clock: Callable[[], float] = time.monotonic,
            ) -> RadiusFeature:
    (tmp_path / "secrets" / "radius").mkdir(parents=True, exist_ok=True)
    (tmp_path / "secrets" / "radius" / "secret").write_bytes(SECRET + b"\n")
    f = RadiusFeature(AgentMetrics(), cfg, FileSecrets(tmp_path / "secrets"),
                      tmp_path / "radius.sqlite", clock=clock)
    f.start()
    return f


def session(i: int = 1, cls: str = "residential") -> Session:
    mac = f"02:00:00:00:01:{i:02x}"
    return Session(f"remote:res-{i}", Identity(mac, circuit_id=f"olt/{i}", remote_id=f"res-{i}"),
                   subscriber_class=cls, pool="residential")


def sample(f: RadiusFeature, name: str, **labels: str) -> float:
    return f.metrics.registry.get_sample_value(name, labels) or 0.0


def test_an_accept_gives_a_verdict_with_its_grant_and_the_request_is_signed(
        tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept({"Framed-IP-Address": "100.64.9.9", "Class": b"gold",
                                  "Session-Timeout": 600}))
        f = feature(config([srv.port]), tmp_path)
        s = session()
        v = await f.authorise(s)
        assert v.accept and v.grant is not None and v.grant.pool == "residential"
        req = srv.asked[0]
        assert req.verify_message_authenticator(SECRET)
        assert req["User-Name"] == ["02:00:00:00:01:01"]
        assert req["Agent-Circuit-Id"] == ["olt/1"] and req["Agent-Remote-Id"] == ["res-1"]
        assert req["NAS-IP-Address"] == ["127.0.0.1"] and req["NAS-Port-Id"] == ["olt/1"]
        st = f.sessions[s.key]
        assert st.classes == (b"gold",) and st.session_timeout == 600
        assert len(st.acct_session_id) == 16 and s.attached["radius"] is st
        assert sample(f, "bng_radius_decisions_total", subscriber_class="residential",
                      result="accept") == 1
        f.close()

    asyncio.run(run())


def test_a_reply_without_message_authenticator_is_dropped(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept(), sign=False)
        f = feature(config([srv.port]), tmp_path)
        v = await f.authorise(session())
        assert not v.accept and "no RADIUS server answered" in v.reason
        key = f"127.0.0.1:{srv.port}"
        assert sample(f, "bng_radius_replies_total", server=key, result="invalid") == 1
        assert sample(f, "bng_radius_timeouts_total", server=key) == 1
        f.close()

    asyncio.run(run())


def test_a_reply_signed_with_another_secret_is_dropped(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept(), secret=b"other")
        f = feature(config([srv.port]), tmp_path)
        assert not (await f.authorise(session())).accept
        assert sample(f, "bng_radius_replies_total", server=f"127.0.0.1:{srv.port}",
                      result="invalid") == 1
        f.close()

    asyncio.run(run())


def test_failover_and_a_dead_server_is_skipped_for_its_dead_time(tmp_path: Path) -> None:
    async def run() -> None:
        silent = await serve(lambda req: None)
        real = await serve(accept())
        now = [1000.0]
        f = feature(config([silent.port, real.port], deadAfter=2, deadTime="30s"), tmp_path,
                    clock=lambda: now[0])
        for i in range(2):  # two timeouts in a row: dead
            assert (await f.authorise(session(i))).accept
        assert len(silent.asked) == 2 and len(real.asked) == 2
        key = f"127.0.0.1:{silent.port}"
        assert sample(f, "bng_radius_server_up", server=key) == 0
        # the accounting port (both servers' default 1813) is a server of its own, unasked
        assert {s.server: s.up for s in f.status()} == {key: False,
                                                        f"127.0.0.1:{real.port}": True,
                                                        "127.0.0.1:1813": True}
        assert "dead" in f.problem
        t0 = time.monotonic()
        assert (await f.authorise(session(3))).accept  # skipped: no wait for it
        assert time.monotonic() - t0 < 0.5 and len(silent.asked) == 2
        now[0] += 31  # its dead time is over: asked again
        assert (await f.authorise(session(4))).accept
        assert len(silent.asked) == 3
        assert sample(f, "bng_radius_replies_total", server=f"127.0.0.1:{real.port}",
                      result="accept") == 4
        f.close()

    asyncio.run(run())


def test_a_reject_holds_the_identity_down(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(lambda req: (AccessReject, {}))
        now = [1000.0]
        f = feature(config([srv.port], rejectHoldDown="60s"), tmp_path, clock=lambda: now[0])
        for _ in range(5):
            v = await f.authorise(session())
            assert not v.accept
        assert len(srv.asked) == 1 and "held down" in v.reason
        assert sample(f, "bng_radius_decisions_total", subscriber_class="residential",
                      result="held_down") == 4
        assert (await f.authorise(session(2))).accept is False and len(srv.asked) == 2
        now[0] += 61
        await f.authorise(session())
        assert len(srv.asked) == 3
        f.close()

    asyncio.run(run())


@pytest.mark.parametrize(("fallback", "accepted"), [("admit", True), ("refuse", False)])
def test_no_server_answers_the_fallback_decides(tmp_path: Path, fallback: str,
                                                accepted: bool) -> None:
    async def run() -> None:
        silent = await serve(lambda req: None)
        f = feature(config([silent.port], fallback=fallback), tmp_path)
        s = session()
        v = await f.authorise(s)
        assert v.accept is accepted and v.grant is None
        assert sample(f, "bng_radius_decisions_total", subscriber_class="residential",
                      result=f"fallback_{fallback}") == 1
        assert f.fallbacks == 1 and fallback[:5] in f.last_fallback
        assert "RADIUS fallback (1 sessions so far)" in f.problem
        assert (s.key in f.sessions) is accepted
        f.close()

    asyncio.run(run())


def test_an_unreadable_secret_is_said_and_its_servers_not_asked(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept())
        cfg = config([srv.port])
        f = RadiusFeature(AgentMetrics(), cfg, FileSecrets(tmp_path / "nowhere"),
                          tmp_path / "radius.sqlite")
        f.start()
        v = await f.authorise(session())
        assert not v.accept and "no RADIUS server is usable" in v.reason
        assert srv.asked == [] and "secret unreadable" in f.problem
        assert "nowhere/radius/secret" in f.status()[0].last_error
        f.close()

    asyncio.run(run())


def test_an_accept_naming_an_unknown_pool_is_refused(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept({"Framed-Pool": "gold"}))
        f = feature(config([srv.port]), tmp_path)
        v = await f.authorise(session())
        assert not v.accept and "Framed-Pool gold" in v.reason
        assert sample(f, "bng_radius_decisions_total", subscriber_class="residential",
                      result="refused") == 1
        f.close()

    asyncio.run(run())


def test_an_attribute_too_long_to_send_is_an_error_not_a_crash(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(accept())
        f = feature(config([srv.port]), tmp_path)
        s = session()
        s.identity = Identity(s.identity.mac, circuit_id="c" * 255)
        v = await f.authorise(s)
        assert not v.accept and "cannot build the Access-Request" in v.reason
        assert sample(f, "bng_radius_decisions_total", subscriber_class="residential",
                      result="error") == 1
        f.close()

    asyncio.run(run())


def test_unknown_attributes_are_ignored_and_counted(tmp_path: Path) -> None:
    async def run() -> None:
        def answer(req: Packet) -> tuple[int, dict[str, Any]]:
            return AccessAccept, {"Service-Type": "Framed-User", "Framed-IP-Netmask": "255.0.0.0"}

        srv = await serve(answer)
        f = feature(config([srv.port]), tmp_path)
        assert (await f.authorise(session())).accept
        assert sample(f, "bng_radius_unknown_attributes_total") == 2
        f.close()

    asyncio.run(run())


def test_the_state_survives_a_restart(tmp_path: Path) -> None:
    from bng_lab.dhcp_env import bound_lease

    async def run() -> None:
        srv = await serve(accept({"Framed-IP-Address": "100.64.9.9",
                                  "WISPr-Bandwidth-Max-Down": 2_000_000}))
        cfg = config([srv.port])
        f = feature(cfg, tmp_path)
        s = session()
        assert (await f.authorise(s)).accept
        s.lease = bound_lease(address=int(f.sessions[s.key].address), identity=s.key)
        f.on_bound(s)
        acct = f.sessions[s.key].acct_session_id
        f.close()

        overrides: list[Any] = []
        g = feature(cfg, tmp_path)
        g.override = lambda lease, rates: overrides.append((lease.address, rates))
        restored = session()
        g.restore({s.key: restored, "gone": session(9)}, lambda key: s.lease if key == s.key
                  else None)
        assert g.sessions[s.key].acct_session_id == acct
        assert restored.grant is not None and restored.grant.address == s.lease.address
        assert overrides and overrides[0][1].down_bps == 2_000_000
        g.on_ended(restored)
        g.close()
        h = feature(cfg, tmp_path)
        assert h.store is not None and h.store.load() == {}
        h.close()

    asyncio.run(run())


def test_one_client_per_server_socket_many_requests_in_flight(tmp_path: Path) -> None:
    """Requests share a server's socket by Identifier: 300 at once (more than 255 ids)."""
    async def run() -> None:
        srv = await serve(accept())
        f = feature(config([srv.port]), tmp_path)
        verdicts = await asyncio.gather(*(f.authorise(session(i % 250 + 1)) for i in range(300)))
        assert [v.reason for v in verdicts if not v.accept] == []
        assert len(srv.asked) == 300
        assert len(srv.peers) == 1
        f.close()

    asyncio.run(run())


def test_a_silent_server_holds_up_no_other_class(tmp_path: Path) -> None:
    """200 residential DISCOVERs wait for a server that never answers (then the fallback
    admits them); 200 business DISCOVERs meanwhile are answered at once."""
    from bng_lab.messages import request
    from bng_operator.agent.dhcp.codec import MessageType, encode
    from bng_operator.agent.dhcp.packets import PacketPath
    from bng_operator.agent.dhcp.server import DhcpServer
    from bng_operator.agent.dhcp.transport import BROADCAST_IP, BROADCAST_MAC, build_frame
    from bng_operator.agent.health import Commits, Health
    from bng_operator.agent.sessions.events import SessionEvents
    from tests.unit.sessions.test_two_phase import CommittingStore, Wire, decode_reply

    def frame(mac: str, xid: int, **kw: Any) -> bytes:
        msg = request(MessageType.DISCOVER, mac, xid=xid, **kw)
        return build_frame(BROADCAST_MAC, bytes.fromhex(mac.replace(":", "")), b"",
                           IPv4Address("0.0.0.0"), BROADCAST_IP, 67,
                           encode(msg, list(msg.options)), src_port=68)

    async def run() -> None:
        silent = await serve(lambda req: None)
        cfg = config([silent.port], fallback="admit")
        f = feature(cfg, tmp_path)
        store = CommittingStore()
        metrics, health = AgentMetrics(), Health(problem="")
        path = PacketPath(DhcpServer(cfg, store), store, SessionEvents(), metrics,  # type: ignore[arg-type]
                          health, Commits(store, metrics, health), f)  # type: ignore[arg-type]
        wire = Wire()
        n = 200
        t0 = time.monotonic()
        for i in range(n):
            path.handle(wire, frame(f"02:00:00:02:00:{i:02x}", i,  # type: ignore[arg-type]
                                    remote=f"res-{i}"), b"", time.perf_counter())
            path.handle(wire, frame(f"02:00:00:03:00:{i:02x}", 1000 + i,  # type: ignore[arg-type]
                                    circuit=f"biz-{i}"), b"", time.perf_counter())
        while len(wire.sent) < n:
            assert time.monotonic() - t0 < 5, "the business class waited"
            await asyncio.sleep(0.005)
        business = time.monotonic() - t0
        assert all(decode_reply(w)[0].startswith("02:00:00:03") for _, w in wire.sent)
        assert business < 0.9, business  # the server's timeout is 1 s
        while len(wire.sent) < 2 * n:
            assert time.monotonic() - t0 < 10, "the residential class never got its fallback"
            await asyncio.sleep(0.01)
        assert time.monotonic() - t0 >= 1.0
        assert len(silent.asked) == n
        path.close()
        f.close()

    asyncio.run(run())


def test_a_session_ends_at_its_session_timeout_also_after_a_restart(tmp_path: Path) -> None:
    from bng_lab.dhcp_env import bound_lease

    async def run() -> None:
        srv = await serve(accept({"Session-Timeout": 1}))
        cfg = config([srv.port])
        ended: list[str] = []
        f = feature(cfg, tmp_path)
        f.end = lambda key: ended.append(key) or True
        s = session()
        assert (await f.authorise(s)).accept
        s.lease = bound_lease(identity=s.key)
        f.on_bound(s)
        await asyncio.sleep(0.5)
        assert ended == []
        await asyncio.sleep(0.8)
        assert ended == [s.key]
        assert sample(f, "bng_radius_session_timeouts_total") == 1
        f.close()

        # kill -9 before the session ended: the restored session ends on time too
        other = session(2)
        g = feature(cfg, tmp_path)
        assert (await g.authorise(other)).accept
        other.lease = bound_lease(identity=other.key)
        g.on_bound(other)
        g.close()
        h = feature(cfg, tmp_path)
        h.end = lambda key: ended.append(key) or True
        h.restore({other.key: session(2)}, lambda key: other.lease)
        await asyncio.sleep(1.3)
        assert ended == [s.key, other.key]
        h.on_ended(other)  # the end's event: the timer and the state go
        h.close()

    asyncio.run(run())


@pytest.mark.parametrize(("answer", "shown"), [
    (accept({"Framed-IP-Address": "100.64.9.9", "Filter-Id": "gold",
             "WISPr-Bandwidth-Max-Down": 20_000_000, "Session-Timeout": 600,
             "Idle-Timeout": 120, "Acct-Interim-Interval": 300}),
     {"authState": "authorised", "framedIpAddress": "100.64.9.9", "framedPool": "residential",
      "filterId": "gold", "download": "20Mbit", "sessionTimeout": 600, "idleTimeout": 120,
      "interimInterval": 300}),
    (accept(), {"authState": "authorised", "interimInterval": 0}),
    (lambda req: None, {"authState": "fallback", "interimInterval": 0}),
])
def test_the_subscriber_status_shows_how_it_was_authorised_and_the_accept_in_effect(
        tmp_path: Path, answer: Callable[[Packet], Any], shown: dict[str, Any]) -> None:
    async def run() -> None:
        srv = await serve(answer)
        f = feature(config([srv.port], fallback="admit"), tmp_path)
        s = session()
        before = time.time()
        assert (await f.authorise(s)).accept
        got = f.status_of(s.key)["radius"]
        assert isinstance(got, dict)
        fallback = shown["authState"] == "fallback"
        assert ("server" in got) is not fallback
        assert got.get("server", f"127.0.0.1:{srv.port}") == f"127.0.0.1:{srv.port}"
        assert got["userName"] == "02:00:00:00:01:01"
        assert got["acctSessionId"] == f.sessions[s.key].acct_session_id
        assert {k: v for k, v in got.items() if k in shown} == shown
        unasked = {"framedIpAddress", "framedPool", "filterId", "download", "upload",
                   "sessionTimeout", "sessionEndsAt", "idleTimeout", "lastAccounting"}
        assert not unasked & set(got) - set(shown) - {"upload", "sessionEndsAt"}
        # the fields are the CRD's (the model is its source), and the times are times
        status = SubscriberStatus.model_validate({"radius": got, "conditions": []})
        assert status.radius is not None and status.radius.authorised_at is not None
        assert status.radius.authorised_at.timestamp() >= int(before)
        if "sessionTimeout" in shown:
            assert status.radius.session_ends_at is not None
            ends = status.radius.session_ends_at.timestamp()
            assert abs(ends - status.radius.authorised_at.timestamp() - 600) <= 1
        f.close()

    asyncio.run(run())


def test_status_server_probes_keep_a_dead_server_dead_until_it_answers(tmp_path: Path) -> None:
    async def run() -> None:
        awake = [False]
        srv = await serve(lambda req: (AccessAccept, {}) if awake[0] else None)
        f = feature(config([srv.port], deadAfter=1, deadTime="1s", statusServer=True),
                    tmp_path)
        key = f"127.0.0.1:{srv.port}"
        assert not (await f.authorise(session(1))).accept  # no answer: dead, refused
        s = f.client.servers[key]
        assert not s.alive(f.client.clock())
        await asyncio.sleep(3.5)  # past its dead time: still dead, for no probe was answered
        assert not s.alive(f.client.clock())
        assert sample(f, "bng_radius_server_up", server=key) == 0
        assert sample(f, "bng_radius_status_server_total", server=key, result="timeout") >= 1
        probes = srv.asked[1:]
        assert probes and all(p.code == 12 for p in probes)  # Status-Server, nothing else
        assert all(p.verify_message_authenticator(SECRET) for p in probes)
        awake[0] = True
        t0 = time.monotonic()
        while not s.alive(f.client.clock()):
            assert time.monotonic() - t0 < 3, "a probe was answered; the server is not up"
            await asyncio.sleep(0.05)
        assert sample(f, "bng_radius_status_server_total", server=key, result="answered") == 1
        assert sample(f, "bng_radius_server_up", server=key) == 1
        assert (await f.authorise(session(2))).accept  # used at once
        assert f.client._probes == {}
        f.close()

    asyncio.run(run())


def test_a_server_a_request_revives_is_not_killed_again_by_its_probe(tmp_path: Path) -> None:
    async def run() -> None:
        srv = await serve(lambda req: None)
        f = feature(config([srv.port], deadAfter=1, deadTime="1s", statusServer=True),
                    tmp_path)
        key = f"127.0.0.1:{srv.port}"
        assert not (await f.authorise(session(1))).accept  # dead; a probe is due in 1 s
        s = f.client.servers[key]
        assert key in f.client._probes
        await asyncio.sleep(0.1)  # the probe waits for its turn
        f.client._answered(s)  # a reply to a request in flight came in meanwhile
        await asyncio.sleep(1.5)
        assert s.alive(f.client.clock()), "the probe marked a live server dead again"
        assert f.client._probes == {} and len(srv.asked) == 1  # and sent no probe
        f.close()

    asyncio.run(run())

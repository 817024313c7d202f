"""RADIUS accounting: the records (tables), and the feature against accounting servers on
loopback played by pyrad: Start / Interim-Update / Stop in order, an outage that loses
nothing, a restart that keeps the queue and sends no Start twice, a bounded queue."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyrad.packet import AccountingResponse, AcctPacket, Packet

from bng_lab.dhcp_env import bound_lease
from bng_operator.agent.config import NodeConfig
from bng_operator.agent.radius.accounting import (
    INTERIM,
    START,
    STOP,
    Usage,
    acct_attributes,
    delay_time,
    overflow,
    split64,
    terminate_cause,
)
from bng_operator.agent.radius.feature import ACCT_WINDOW, RadiusFeature
from bng_operator.agent.radius.secrets import FileSecrets
from bng_operator.agent.sessions.session import EndReason, Identity, Session
from bng_operator.api.radius import RadiusAuth
from bng_operator.metrics import AgentMetrics
from tests.unit.radius.test_authoriser import DICT, SECRET, accept, config, sample, serve, session

G = 1 << 32


@pytest.mark.parametrize("n, octets, gigawords", [
    (0, 0, 0),
    (1, 1, 0),
    (G - 1, G - 1, 0),
    (G, 0, 1),
    (5 * G + 7, 7, 5),
    ((1 << 64) - 1, G - 1, G - 1),
    (1 << 64, 0, 0),  # a 64-bit counter that wrapped
])
def test_octets_and_gigawords(n: int, octets: int, gigawords: int) -> None:
    assert split64(n) == (octets, gigawords)


@pytest.mark.parametrize("reason, timed_out, cause", [
    (EndReason.RELEASED, False, "User-Request"),
    (EndReason.EXPIRED, False, "Lost-Carrier"),
    (EndReason.DISCONNECTED, False, "Admin-Reset"),
    (EndReason.DISCONNECTED, True, "Session-Timeout"),
    (EndReason.DECLINED, False, "User-Error"),
    (EndReason.MOVED, False, "NAS-Request"),
    (EndReason.NODE_DRAINED, False, "NAS-Request"),
    (None, False, "NAS-Request"),
])
def test_terminate_causes(reason: EndReason | None, timed_out: bool, cause: str) -> None:
    assert terminate_cause(reason, timed_out) == cause


AUTH = RadiusAuth.model_validate({"servers": [{"address": "192.0.2.1",
                                               "secret": {"name": "radius"}}],
                                  "macFormat": "hyphen-upper"})
IDENT = Identity("02:00:5e:10:00:01", circuit_id="olt/1", remote_id="line-1")


@pytest.mark.parametrize("status, present, absent", [
    (START, {"Acct-Status-Type": START, "Framed-IP-Address": "100.64.0.9",
             "Calling-Station-Id": "02-00-5E-10-00-01", "NAS-Port-Id": "olt/1",
             "Class": b"gold", "Event-Timestamp": 1700000000, "NAS-Identifier": "node-a"},
     {"Acct-Input-Octets", "Acct-Session-Time", "Acct-Terminate-Cause"}),
    (INTERIM, {"Acct-Status-Type": INTERIM, "Acct-Session-Time": 90,
               "Acct-Input-Octets": 7, "Acct-Input-Gigawords": 5,  # upload: from the subscriber
               "Acct-Output-Octets": 3, "Acct-Output-Gigawords": 0,
               "Acct-Input-Packets": 11, "Acct-Output-Packets": 13},
     {"Acct-Terminate-Cause"}),
    (STOP, {"Acct-Status-Type": STOP, "Acct-Terminate-Cause": "Lost-Carrier",
            "Acct-Input-Octets": 7, "Acct-Output-Octets": 3},
     set()),
])
def test_record_attributes(status: str, present: dict[str, object], absent: set[str]) -> None:
    attrs = acct_attributes(status, acct_session_id="00AB", user_name="u", identity=IDENT,
                            auth=AUTH, node="node-a", address=0x64400009, classes=(b"gold",),
                            event_time=1700000000.5, session_time=90.4,
                            usage=Usage(5 * G + 7, 11, 3, 13), cause="Lost-Carrier")
    got = dict(attrs)
    assert got["Acct-Session-Id"] == "00AB" and got["User-Name"] == "u"
    for k, v in present.items():
        assert got[k] == v, k
    assert not absent & set(got)
    # NAS-IP-Address and Acct-Delay-Time are the sender's
    assert "NAS-IP-Address" not in got and "Acct-Delay-Time" not in got


@pytest.mark.parametrize("depth, limit, status, interims, what", [
    (0, 3, START, 0, "keep"),
    (2, 3, INTERIM, 1, "keep"),
    (3, 3, INTERIM, 2, "drop_new"),  # an Interim never pushes anything out
    (3, 3, STOP, 1, "drop_oldest_interim"),
    (3, 3, START, 2, "drop_oldest_interim"),
    (3, 3, STOP, 0, "drop_new"),  # only Starts and Stops queued: the new one is dropped
])
def test_a_full_queue_drops_interims_first(depth: int, limit: int, status: str,
                                           interims: int, what: str) -> None:
    assert overflow(depth, limit, status, interims) == what


def test_delay_time() -> None:
    assert delay_time(100.0, 100.9) == 0 and delay_time(100.0, 131.2) == 31
    assert delay_time(100.0, 99.0) == 0  # a clock step back


# --- the feature against accounting servers --------------------------------------------------


@dataclass
class AcctServer(asyncio.DatagramProtocol):
    """An accounting server: acknowledges every valid Accounting-Request while ``up``."""

    up: bool = True
    got: list[Packet] = field(default_factory=list)  # acknowledged, in order
    seen: int = 0
    transport: Any = None
    port: int = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        req = AcctPacket(packet=data, secret=SECRET, dict=DICT)
        self.seen += 1
        if not self.up:
            return
        assert req.VerifyAcctRequest()
        self.got.append(req)
        reply = req.CreateReply()
        reply.code = AccountingResponse
        self.transport.sendto(reply.ReplyPacket(), addr)


async def acct_server() -> AcctServer:
    _, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        AcctServer, local_addr=("127.0.0.1", 0))
    return proto


def acct_config(auth_port: int, acct_port: int, **radius: Any) -> NodeConfig:
    return config([auth_port], acct_port, **{"deadAfter": 100, **radius})


def acct_feature(cfg: NodeConfig, tmp_path: Path, usage: Callable[[int], Usage | None],
                 limit: int = 100) -> RadiusFeature:
    (tmp_path / "secrets" / "radius").mkdir(parents=True, exist_ok=True)
    (tmp_path / "secrets" / "radius" / "secret").write_bytes(SECRET + b"\n")
    f = RadiusFeature(AgentMetrics(), cfg, FileSecrets(tmp_path / "secrets"),
                      tmp_path / "radius.sqlite", usage=usage, acct_limit=limit)
    f.start()
    return f


def _one(p: Packet, name: str) -> Any:
    return p[name][0]


def _octets(p: Packet, way: str) -> int:
    return int(_one(p, f"Acct-{way}-Gigawords")) * G + int(_one(p, f"Acct-{way}-Octets"))


async def _until(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _bound(f: RadiusFeature, i: int = 1) -> Session:
    s = session(i)
    assert (await f.authorise(s)).accept
    s.lease = bound_lease(address=0x64400000 + i, identity=s.key)
    f.on_bound(s)
    return s


def test_start_interims_and_stop_with_the_counters(tmp_path: Path) -> None:
    async def run() -> None:
        acct = await acct_server()
        auth = await serve(accept({"Acct-Interim-Interval": 1, "Class": b"gold"}))
        traffic = {"up": 5 * G + 7}
        f = acct_feature(acct_config(auth.port, acct.port), tmp_path,
                         lambda a: Usage(traffic["up"], 10, 1000, 20))
        f.restore({}, lambda key: None)
        s = await _bound(f)
        aid = f.sessions[s.key].acct_session_id
        await _until(lambda: len(acct.got) >= 3)  # Start and two Interims
        traffic["up"] += 100
        shown = f.status_of(s.key)["radius"]
        assert shown["acctSessionId"] == aid and "lastAccounting" in shown  # type: ignore[index]
        s.end_reason = EndReason.RELEASED
        f.on_ended(s)
        await _until(lambda: _one(acct.got[-1], "Acct-Status-Type") == "Stop")
        kinds = [_one(p, "Acct-Status-Type") for p in acct.got]
        assert kinds[0] == "Start" and kinds[-1] == "Stop" and set(kinds[1:-1]) == {INTERIM}
        ids = {_one(p, "Acct-Session-Id") for p in acct.got}
        assert ids == {aid}
        stop = acct.got[-1]
        assert _octets(stop, "Input") == 5 * G + 107 and _octets(stop, "Output") == 1000
        assert f.sessions == {}
        assert _one(stop, "Acct-Terminate-Cause") == "User-Request"
        assert _one(stop, "Class") == b"gold" and _one(stop, "Framed-IP-Address") == "100.64.0.1"
        assert _one(stop, "NAS-IP-Address") == "127.0.0.1"
        assert _one(stop, "Acct-Delay-Time") == 0
        assert sample(f, "bng_radius_acct_responses_total",
                      server=f"127.0.0.1:{acct.port}") == len(acct.got)
        assert sample(f, "bng_radius_acct_queue_depth") == 0
        f.close()

    asyncio.run(run())


def test_an_outage_loses_nothing_and_the_queue_drains_in_order(tmp_path: Path) -> None:
    async def run() -> None:
        acct = await acct_server()
        acct.up = False
        auth = await serve(accept({"Acct-Interim-Interval": 1}))
        f = acct_feature(acct_config(auth.port, acct.port, deadAfter=1, deadTime="1s"),
                         tmp_path, lambda a: Usage(1, 1, 1, 1))
        f.restore({}, lambda key: None)
        s1, s2 = await _bound(f, 1), await _bound(f, 2)
        await asyncio.sleep(3.2)
        s1.end_reason = EndReason.EXPIRED
        f.on_ended(s1)
        assert acct.got == [] and acct.seen >= 1
        queued = len(f.queue)
        assert queued >= 2 + 2 * 2 + 1
        assert sample(f, "bng_radius_acct_queue_depth") == queued
        assert sample(f, "bng_radius_acct_timeouts_total", server=f"127.0.0.1:{acct.port}") >= 1
        acct.up = True
        await _until(lambda: len(acct.got) >= queued, timeout=20)
        s2.end_reason = EndReason.RELEASED
        f.on_ended(s2)
        await _until(lambda: not f.queue)
        times = [_one(p, "Event-Timestamp") for p in acct.got]
        assert times == sorted(times)  # in order
        by_id: dict[str, list[str]] = {}
        for p in acct.got:
            by_id.setdefault(_one(p, "Acct-Session-Id"), []).append(
                _one(p, "Acct-Status-Type"))
        for kinds in by_id.values():
            assert kinds[0] == "Start" and kinds.count("Start") == 1
            assert kinds[-1] == "Stop" and kinds.count("Stop") == 1
        assert _one(acct.got[0], "Acct-Delay-Time") >= 3  # it waited out the outage
        f.close()

    asyncio.run(run())


@dataclass
class SlowAcctServer(AcctServer):
    """An accounting server ``delay`` seconds away, answering requests concurrently; notes
    a request that arrives while an earlier one of its session is still unanswered."""

    delay: float = 0.05
    open_sessions: set[str] = field(default_factory=set)
    overlaps: int = 0
    most_in_flight: int = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        req = AcctPacket(packet=data, secret=SECRET, dict=DICT)
        assert req.VerifyAcctRequest()
        sid = _one(req, "Acct-Session-Id")
        self.overlaps += sid in self.open_sessions
        self.open_sessions.add(sid)
        self.most_in_flight = max(self.most_in_flight, len(self.open_sessions))
        asyncio.get_running_loop().call_later(self.delay, self._answer, req, sid, addr)

    def _answer(self, req: AcctPacket, sid: str, addr: tuple[str, int]) -> None:
        self.open_sessions.discard(sid)
        self.got.append(req)
        reply = req.CreateReply()
        reply.code = AccountingResponse
        self.transport.sendto(reply.ReplyPacket(), addr)


def test_a_distant_server_gets_a_window_of_records_and_each_session_in_order(
        tmp_path: Path) -> None:
    async def run() -> None:
        _, acct = await asyncio.get_running_loop().create_datagram_endpoint(
            SlowAcctServer, local_addr=("127.0.0.1", 0))
        auth = await serve(accept({}))
        f = acct_feature(acct_config(auth.port, acct.port), tmp_path,
                         lambda a: Usage(1, 1, 1, 1), limit=1000)
        f.restore({}, lambda key: None)
        n = 40
        for i in range(1, n + 1):  # a Start and a Stop of each session, queued at once
            s = await _bound(f, i)
            s.end_reason = EndReason.RELEASED
            f.on_ended(s)
        t0 = time.monotonic()
        await _until(lambda: len(acct.got) >= 2 * n, timeout=10)
        took = time.monotonic() - t0
        # one at a time: 80 x 50 ms = 4 s; a window of 32: a few round trips
        assert took < 2.0, f"{2 * n} records took {took:.2f} s"
        assert 1 < acct.most_in_flight <= ACCT_WINDOW
        assert acct.overlaps == 0  # never two records of one session in flight
        kinds: dict[str, list[str]] = {}
        for p in acct.got:
            kinds.setdefault(_one(p, "Acct-Session-Id"), []).append(_one(p, "Acct-Status-Type"))
        assert len(kinds) == n and all(k == ["Start", "Stop"] for k in kinds.values())
        await _until(lambda: not f.queue)
        f.close()

    asyncio.run(run())


def test_a_restart_keeps_the_queue_and_sends_no_start_twice(tmp_path: Path) -> None:
    async def run() -> None:
        acct = await acct_server()
        auth = await serve(accept())
        cfg = acct_config(auth.port, acct.port, deadAfter=1, deadTime="1s")
        f = acct_feature(cfg, tmp_path, lambda a: None)
        f.restore({}, lambda key: None)
        s = await _bound(f)
        await _until(lambda: len(acct.got) == 1)  # its Start, acknowledged
        acct.up = False
        other = await _bound(f, 2)  # its Start waits in the queue
        await asyncio.sleep(0.2)
        assert f.store is not None
        f.store.flush()
        f.close()  # as a kill -9 leaves it: what was written is on disk

        g = acct_feature(cfg, tmp_path, lambda a: None)
        assert [r.status for r in g.queue] == [START]
        acct.up = True
        g.restore({s.key: session(1), other.key: session(2)},
                  lambda key: s.lease if key == s.key else other.lease)
        await _until(lambda: not g.queue)
        starts = [(_one(p, "Acct-Session-Id")) for p in acct.got
                  if _one(p, "Acct-Status-Type") == "Start"]
        assert len(starts) == 2 and len(set(starts)) == 2  # one each, never twice
        assert g.sessions[s.key].acct_session_id == starts[0]
        g.close()

    asyncio.run(run())


def test_a_full_queue_keeps_starts_and_stops_and_counts_what_it_drops(tmp_path: Path) -> None:
    async def run() -> None:
        acct = await acct_server()
        acct.up = False
        auth = await serve(accept({"Acct-Interim-Interval": 1}))
        f = acct_feature(acct_config(auth.port, acct.port, deadAfter=1, deadTime="60s"),
                         tmp_path, lambda a: None, limit=3)
        f.restore({}, lambda key: None)
        s = await _bound(f)
        await asyncio.sleep(3.3)  # Start + 3 Interims: one too many
        assert [r.status for r in f.queue] == [START, INTERIM, INTERIM]
        assert sample(f, "bng_radius_acct_dropped_total", type=INTERIM, reason="overflow") >= 1
        s.end_reason = EndReason.RELEASED
        f.on_ended(s)  # the Stop takes the oldest Interim's place
        assert [r.status for r in f.queue] == [START, INTERIM, STOP]
        f.close()

    asyncio.run(run())


def test_a_session_that_ended_while_the_agent_was_away_gets_its_stop(tmp_path: Path) -> None:
    async def run() -> None:
        acct = await acct_server()
        auth = await serve(accept({"Acct-Interim-Interval": 1}))
        cfg = acct_config(auth.port, acct.port)
        f = acct_feature(cfg, tmp_path, lambda a: Usage(3 * G, 2, 5, 4))
        f.restore({}, lambda key: None)
        s = await _bound(f)
        await _until(lambda: [_one(p, "Acct-Status-Type") for p in acct.got]
                     == ["Start", INTERIM])
        assert f.store is not None
        f.store.flush()
        f.close()

        g = acct_feature(cfg, tmp_path, lambda a: None)
        g.restore({}, lambda key: None)  # its lease expired meanwhile
        await _until(lambda: len(acct.got) == 3)
        stop = acct.got[-1]
        assert _one(stop, "Acct-Status-Type") == "Stop"
        assert _one(stop, "Acct-Terminate-Cause") == "Lost-Carrier"
        assert _one(stop, "Acct-Session-Id") == _one(acct.got[0], "Acct-Session-Id")
        assert _octets(stop, "Input") == 3 * G  # the last record's counters
        assert _one(stop, "Calling-Station-Id") == s.identity.mac
        assert g.sessions == {} and g.store is not None and g.store.load() == {}
        g.close()

    asyncio.run(run())


def test_a_queued_record_and_the_session_state_round_trip_through_their_rows() -> None:
    from dataclasses import fields

    from bng_operator.agent.config import ShapingRates
    from bng_operator.agent.radius.store import STATE_FIELDS, AcctRecord, RadiusSession

    r = AcctRecord(7, STOP, "residential", 1700000000.25, "00AB",
                   [("Acct-Status-Type", STOP), ("Class", b"\x00gold\xff"),
                    ("Acct-Input-Gigawords", 5), ("Acct-Terminate-Cause", "Lost-Carrier")])
    assert AcctRecord.from_row(7, r.to_row()) == r
    st = RadiusSession("00AB", "u", classes=(b"gold",), start_queued=True,
                       carried=(1, 2, 3, 4), last_usage=(5, 6, 7, 8),
                       rates=ShapingRates("radius", 50_000_000, 625_000, 10_000_000, 125_000),
                       identity={"mac": "02:00:00:00:00:01", "circuit_id": "", "remote_id": ""},
                       quiet_since=1700000001.5, quiet_packets=12)
    assert RadiusSession.from_row(st.to_row()) == st
    # every field is stored, each once (a new one is appended to STATE_FIELDS)
    assert sorted(STATE_FIELDS) == sorted(f.name for f in fields(RadiusSession))


def test_rows_an_older_agent_wrote_in_json_are_read() -> None:
    from bng_operator.agent.radius.store import AcctRecord, RadiusSession

    old = RadiusSession.from_row('{"acct_session_id": "00AB", "user_name": "u"}')
    assert old.acct_session_id == "00AB" and not old.start_queued
    assert old.carried == (0, 0, 0, 0) and old.quiet_packets == -1
    rates = {"policy": "radius", "down_bps": 1, "down_burst": 2, "up_bps": 3, "up_burst": 4,
             "down": "", "up": ""}
    st = RadiusSession.from_row('{"acct_session_id": "00AB", "user_name": "u", '
                                '"classes": ["676f6c64"], "rates": ' + json.dumps(rates) + "}")
    assert st.classes == (b"gold",) and st.rates is not None and st.rates.up_bps == 3
    r = AcctRecord.from_row(3, '{"status": "Stop", "class": "residential", "time": 5.5, '
                               '"id": "00AB", "attributes": [["Class", {"hex": "00ff"}], '
                               '["Acct-Input-Gigawords", 5]]}')
    assert r.attributes == [("Class", b"\x00\xff"), ("Acct-Input-Gigawords", 5)]
    assert (r.seq, r.status, r.event_time) == (3, "Stop", 5.5)


@pytest.mark.parametrize("data", [
    pickle.dumps((1, "00AB", "u"), 5)[:-3],  # cut short
    pickle.dumps([1, "00AB"], 5),  # not a tuple
    pickle.dumps((2, "00AB", "u"), 5),  # a format this agent does not know
    pickle.dumps((1, 7, "u"), 5),  # an Acct-Session-Id that is not a string
    pickle.dumps((1, "00AB", "u", "", 1.0, False, 0, "", {"policy": "x"}), 5),  # rates short
    b"garbage",
    b"\x80\x05\x8e\xff\xff\xff\xff\xff\xff\x00\x00.",  # BINBYTES8 of 2^48 octets
    b"\x80\x05\x95\xff\xff\xff\xff\xff\xff\xff\x7f.",  # a frame far past the row
    b"F1e999\n.",  # a float in text: not an opcode rows use
    b"\x80\x05h\x07.",  # a memo entry never made
    b"\x80\x05\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.",  # eval("1")
    pickle.dumps((1, Path("/etc/passwd"), "u"), 5),  # would build a Path
])
def test_an_unreadable_row_is_a_value_error(data: bytes) -> None:
    from bng_operator.agent.radius.store import AcctRecord, RadiusSession

    with pytest.raises(ValueError):
        RadiusSession.from_row(data)
    with pytest.raises(ValueError):
        AcctRecord.from_row(1, data)


def test_the_unpickler_builds_no_object_of_a_class() -> None:
    # behind the opcode check, in case a row slips past it
    import io

    from bng_operator.agent.radius.store import _PlainUnpickler

    data = pickle.dumps((1, Path("/etc/passwd"), "u"), 5)
    with pytest.raises(pickle.UnpicklingError, match="only plain values"):
        _PlainUnpickler(io.BytesIO(data)).load()

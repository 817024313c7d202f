"""The DHCP server decides with what an authoriser granted a session (RADIUS
Framed-IP-Address, Framed-Pool): the static address as a reservation, the pool instead of
the class's; and the address stays held while the authoriser takes its time."""

from __future__ import annotations

from ipaddress import IPv4Address

from bng_lab.dhcp_env import CTX, server
from bng_lab.messages import request
from bng_operator.agent.dhcp.codec import MessageType
from bng_operator.agent.dhcp.server import OFFER_HOLD, DhcpServer, Outcome
from bng_operator.agent.sessions.session import Grant, Session, State

D, R = MessageType.DISCOVER, MessageType.REQUEST
RES = {"remote": "res-1001"}
KEY = "remote:res-1001"


def authorising() -> DhcpServer:
    s, _, _ = server()
    s.needs_authorisation = lambda sess: sess.subscriber_class == "residential"
    return s


def held(s: DhcpServer, mac: str = "02:00:00:00:00:01") -> Session:
    out = s.handle(request(D, mac, **RES), CTX)  # type: ignore[arg-type]
    assert out.kind == "authorize" and out.session is not None
    return out.session


def granted(s: DhcpServer, sess: Session, grant: Grant | None,
            mac: str = "02:00:00:00:00:01") -> Outcome:
    sess.grant = grant
    return s.authorised(sess, request(D, mac, **RES), CTX)  # type: ignore[arg-type]


def addr(a: str) -> int:
    return int(IPv4Address(a))


def test_a_granted_address_wins_over_the_pool_and_the_held_one_goes_back() -> None:
    s = authorising()
    sess = held(s)
    first = sess.address
    free = s.pool_usage()["residential"]["free"]
    out = granted(s, sess, Grant(addr("100.64.9.9"), "residential"))
    assert out.kind == "offer" and out.reply is not None
    assert str(out.reply.yiaddr) == "100.64.9.9"
    assert first not in s.offered and s.offered[addr("100.64.9.9")] == KEY
    assert s.pool_usage()["residential"]["free"] == free  # one back, one taken
    ack = s.handle(request(R, "02:00:00:00:00:01", requested="100.64.9.9",  # type: ignore[arg-type]
                           server_id="100.64.0.1", **RES), CTX)
    assert ack.kind == "ack" and s.by_address[addr("100.64.9.9")].identity == KEY
    assert sess.state == State.BOUND


def test_a_granted_address_of_an_excluded_range_never_joins_the_free_list() -> None:
    s = authorising()
    sess = held(s)
    granted(s, sess, Grant(addr("100.64.0.7"), "residential"))
    s.handle(request(R, "02:00:00:00:00:01", requested="100.64.0.7",  # type: ignore[arg-type]
                     server_id="100.64.0.1", **RES), CTX)
    lease = s.by_address[addr("100.64.0.7")]
    # restored after a restart: taken again, not an orphan
    t, _, _ = server()
    assert t.load([lease], []) == []
    s.handle(request(MessageType.RELEASE, "02:00:00:00:00:01", ciaddr="100.64.0.7",  # type: ignore[arg-type]
                     server_id="100.64.0.1", **RES), CTX)
    assert addr("100.64.0.7") not in s.by_address
    assert not s.pools["residential"].take(addr("100.64.0.7"))  # still excluded


def test_a_granted_pool_gives_an_address_from_it() -> None:
    s = authorising()
    sess = held(s)
    out = granted(s, sess, Grant(0, "business"))
    assert out.kind == "offer" and out.reply is not None
    assert str(out.reply.yiaddr).startswith("198.51.100.")
    assert sess.pool == "business"


def test_a_granted_address_another_client_holds_is_refused() -> None:
    s = authorising()
    a = held(s)
    granted(s, a, Grant(addr("100.64.9.9"), "residential"))
    other = s.handle(request(D, "02:00:00:00:00:02", remote="res-2002"), CTX)
    assert other.session is not None
    other.session.grant = Grant(addr("100.64.9.9"), "residential")
    out = s.authorised(other.session, request(D, "02:00:00:00:00:02", remote="res-2002"), CTX)
    assert out.drop == "granted_address_in_use"


def test_the_address_stays_held_while_the_authoriser_takes_its_time() -> None:
    s = authorising()
    sess = held(s)
    s.clock.t += OFFER_HOLD * 3  # type: ignore[attr-defined]
    s.expire()
    assert sess.state == State.AUTHORIZING
    out = granted(s, sess, None)
    assert out.kind == "offer"


def test_a_bound_session_ends_on_demand_and_its_address_is_free() -> None:
    from bng_operator.agent.sessions.session import EndReason

    s = authorising()
    sess = held(s)
    out = granted(s, sess, None)
    assert out.reply is not None
    a = out.reply.yiaddr
    s.handle(request(R, "02:00:00:00:00:01", requested=str(a), server_id="100.64.0.1",  # type: ignore[arg-type]
                     **RES), CTX)
    s.take_events()
    assert s.end_session(KEY, EndReason.DISCONNECTED)
    assert KEY not in s.by_identity and int(a) not in s.by_address and KEY not in s.sessions
    [event] = s.take_events()
    assert (event.kind, event.session.end_reason) == ("ended", EndReason.DISCONNECTED)
    assert not s.end_session(KEY, EndReason.DISCONNECTED)
    assert s.pools["residential"].take(int(a))  # free again

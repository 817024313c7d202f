"""BNGNode spec.commitAtOffer: a new client's offer is committed as a lease in state offered,
the fast path ACKs its REQUEST, and the kernel's report of that ACK binds the session."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from bng_lab.dhcp_env import CTX, Clock, MemoryStore, server
from bng_lab.messages import request
from bng_operator.agent.dhcp.codec import MessageType
from bng_operator.agent.dhcp.server import OFFER_HOLD, WITHDRAW_GRACE, DhcpServer
from bng_operator.agent.sessions.events import Event, SessionEvents
from bng_operator.agent.sessions.session import Session, State

D, R = MessageType.DISCOVER, MessageType.REQUEST
MAC = "02:00:00:00:00:01"
LINE = "res-1001"  # the sample's residential class knows subscribers by option 82 remote-id
LEASE = 4 * 3600  # the sample residential pool's lease time


def committing(store: MemoryStore | None = None, clock: Clock | None = None,
               ) -> tuple[DhcpServer, MemoryStore, Clock]:
    s, store, clock = server(store=store, clock=clock)
    s.config = replace(s.config, commit_at_offer=True)
    return s, store, clock


def offer(s: DhcpServer, line: str = LINE) -> int:
    out = s.handle(request(D, MAC, remote=line), CTX)
    assert out.kind == "offer" and out.reply is not None
    return int(out.reply.yiaddr)


def ip_of(addr: int) -> str:
    return str(IPv4Address(addr))


def free(s: DhcpServer, addr: int) -> bool:
    block = s.pools["residential"].block_of(addr)
    return block is not None and addr in block.free


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def test_the_offer_is_committed_before_it_leaves() -> None:
    s, store, clock = committing()
    out = s.handle(request(D, MAC, remote=LINE), CTX)
    assert out.kind == "offer" and out.commit  # sent once the lease store committed it
    assert out.reply is not None
    addr = int(out.reply.yiaddr)
    row = store.leases[addr]
    assert (row.state, row.expires, row.lease_seconds) == ("offered", clock.t + OFFER_HOLD, LEASE)
    assert row.server_id == int(out.server_id) and row.mac == MAC
    events = s.take_events()
    assert kinds(events) == ["offered"] and events[0].offer == row
    assert s.sessions[row.identity].state == State.OFFERED
    assert s.by_address == {} and s.pool_usage()["residential"]["used"] == 0


def test_the_kernels_ack_binds_the_session() -> None:
    s, store, clock = committing()
    addr = offer(s)
    s.take_events()
    clock.t += 0.01
    acked_until = clock.t + LEASE
    assert s.extend(addr, clock.t + OFFER_HOLD - 1) is None  # not moved: no ACK
    assert s.extend(addr, clock.t - 0.01 + OFFER_HOLD + 0.004) is None  # read a tick late
    lease = s.extend(addr, acked_until)
    assert lease is not None and lease.state == "bound" and lease.expires == acked_until
    assert lease.bound_at == clock.t
    assert store.leases[addr].state == "bound" and s.by_address[addr] is lease
    session = s.sessions[lease.identity]
    assert session.state == State.BOUND and session.lease is lease
    assert kinds(s.take_events()) == ["bound"]
    assert s.offers == {} and s.offered == {}
    assert s.pool_usage()["residential"]["used"] == 1
    assert not free(s, addr)


def test_a_request_the_slow_path_gets_binds_it_as_any_offer() -> None:
    s, store, _ = committing()
    addr = offer(s)
    s.take_events()
    ack = s.handle(request(R, MAC, remote=LINE, requested=str(ip_of(addr)), server_id="100.64.0.1"), CTX)
    assert ack.kind == "ack" and ack.commit
    assert store.leases[addr].state == "bound"
    assert kinds(s.take_events()) == ["bound"]  # nothing withdrawn: the entry becomes its own
    assert s.extend(addr, 0.0) is None


def test_an_unanswered_offer_is_withdrawn_and_its_address_kept_a_grace() -> None:
    s, store, clock = committing()
    addr = offer(s)
    s.take_events()
    clock.t += OFFER_HOLD
    s.expire()
    assert kinds(s.take_events()) == ["withdrawn", "ended"]
    assert s.sessions == {} and addr in store.leases and not free(s, addr)
    clock.t += WITHDRAW_GRACE
    s.expire()
    assert addr not in store.leases and free(s, addr)


def test_an_ack_within_the_grace_still_binds() -> None:
    s, store, clock = committing()
    addr = offer(s)
    clock.t += OFFER_HOLD
    s.expire()
    s.take_events()
    lease = s.extend(addr, clock.t + LEASE)
    assert lease is not None and store.leases[addr].state == "bound"
    assert kinds(s.take_events()) == ["bound"]
    assert s.sessions[lease.identity].state == State.BOUND
    clock.t += WITHDRAW_GRACE
    s.expire()
    assert store.leases[addr].state == "bound" and s.by_address[addr] is lease


def test_an_ack_whose_report_was_lost_is_found_in_the_map_at_the_hold() -> None:
    s, store, clock = committing()
    addr = offer(s)
    s.take_events()
    clock.t += OFFER_HOLD
    s.expire(renewed_elsewhere=lambda lease: clock.t + LEASE)
    assert kinds(s.take_events()) == ["bound"] and store.leases[addr].state == "bound"


def test_an_end_read_back_a_tick_late_is_no_ack() -> None:
    s, store, clock = committing()
    addr = offer(s)
    s.take_events()
    end = store.leases[addr].expires
    clock.t += OFFER_HOLD
    s.expire(renewed_elsewhere=lambda lease: end + 0.004)  # jiffies round the end up
    assert kinds(s.take_events()) == ["withdrawn", "ended"] and s.by_address == {}


def test_a_retransmitted_discover_keeps_the_address_committed() -> None:
    s, store, clock = committing()
    addr = offer(s)
    clock.t += 1
    assert offer(s) == addr
    assert store.leases[addr].expires == clock.t + OFFER_HOLD
    assert kinds(s.take_events()) == ["offered", "offered"]
    s.config = replace(s.config, commit_at_offer=False)  # turned off live: it stays committed
    clock.t += 1
    out = s.handle(request(D, MAC, remote=LINE), CTX)
    assert not out.commit and s.take_events() == []
    assert s.offers[store.leases[addr].identity].lease is not None


def test_a_bound_client_is_offered_without_a_commit() -> None:
    s, _, clock = committing()
    addr = offer(s)
    s.extend(addr, clock.t + LEASE)
    s.take_events()
    out = s.handle(request(D, MAC, remote=LINE), CTX)
    assert out.kind == "offer" and not out.commit and s.take_events() == []


def test_a_restart_holds_a_committed_offer_until_any_ack_it_got_would_end() -> None:
    s, store, clock = committing()
    addr = offer(s)
    row = store.leases[addr]
    clock.t += 1
    again, _, _ = committing(store=store, clock=clock)
    assert again.load(list(store.leases.values()), []) == []
    assert again.by_address == {} and again.sessions == {}  # not reported bound
    assert again.offers[row.identity].expires == row.expires + LEASE
    clock.t += OFFER_HOLD + 1
    again.expire()
    assert not free(again, addr)  # its client may hold it
    ack = again.handle(request(R, MAC, remote=LINE, requested=str(ip_of(addr)), server_id="100.64.0.1"),
                       CTX)
    assert ack.kind == "ack" and store.leases[addr].state == "bound"


def test_a_restart_binds_what_the_kernel_acked_meanwhile() -> None:
    s, store, clock = committing()
    addr = offer(s)
    again, _, _ = committing(store=store, clock=clock)
    again.load(list(store.leases.values()), [])
    lease = again.extend(addr, clock.t + LEASE)  # the adopted map's end
    assert lease is not None and again.sessions[lease.identity].state == State.BOUND
    assert kinds(again.take_events()) == ["bound"]


def test_a_reload_keeps_a_withdrawn_address_taken() -> None:
    s, _, clock = committing()
    addr = offer(s)
    s.take_events()
    s.reconfigure(s.config)  # offers end (moved): this one is withdrawn
    assert kinds(s.take_events()) == ["withdrawn", "ended"]
    assert not free(s, addr)
    assert s.extend(addr, clock.t + LEASE) is not None


def test_only_features_with_the_handler_hear_offers() -> None:
    heard: list[tuple[str, int]] = []

    class Plain:
        name = "plain"

        def on_bound(self, s: Session) -> None: ...
        def on_changed(self, s: Session, what: object, before: object) -> None: ...
        def on_ended(self, s: Session) -> None: ...

    class FastPath(Plain):
        name = "fastpath"

        def on_offered(self, s: Session, offer: object) -> None:
            heard.append(("offered", getattr(offer, "address", 0)))

        def on_withdrawn(self, s: Session, offer: object) -> None:
            heard.append(("withdrawn", getattr(offer, "address", 0)))

    errors: list[str] = []
    bus = SessionEvents(on_error=errors.append)
    bus.subscribe(Plain())
    bus.subscribe(FastPath())
    s, _, clock = committing()
    addr = offer(s)
    clock.t += OFFER_HOLD
    s.expire()
    bus.publish(s.take_events())
    assert heard == [("offered", addr), ("withdrawn", addr)] and errors == []

"""The DHCP state machine over the sample ISP: RFC 2131 behaviour, classes, limits."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bng_lab.dhcp_env import CTX, server
from bng_lab.messages import relay82, request
from bng_operator.agent.dhcp.codec import Message, MessageType, Opt
from bng_operator.agent.dhcp.server import DECLINE_HOLD, OFFER_HOLD, Context, DhcpServer
from bng_operator.api import IPPool, SubscriberClass

D, R = MessageType.DISCOVER, MessageType.REQUEST
RES = {"remote": "res-1001"}  # a residential line (option 82 remote-id)
BIZ = {"circuit": "biz-olt1-1/1/3"}  # a business port (option 82 circuit-id)


def ip(m: Message) -> str:
    return str(m.yiaddr)


def opt(m: Message, code: int) -> bytes:
    return m.options[code]


def dora(s: DhcpServer, mac: str = "02:00:00:00:00:01", **kw: object) -> Message:
    offer = s.handle(request(D, mac, **kw), CTX)  # type: ignore[arg-type]
    assert offer.kind == "offer", offer
    assert offer.reply is not None
    ack = s.handle(request(R, mac, requested=ip(offer.reply), server_id="100.64.0.1", **kw), CTX)  # type: ignore[arg-type]
    assert ack.kind == "ack" and ack.commit, ack
    assert ack.reply is not None
    return ack.reply


def test_discover_offer_carries_the_pool_options() -> None:
    s, store, _ = server()
    out = s.handle(request(D, **RES), CTX)
    assert out.kind == "offer" and not out.commit and store.leases == {}
    o = out.reply
    assert o is not None and o.op == 2
    a = o.yiaddr
    assert a in IPv4Network("100.64.0.0/20") and int(a) > int(IPv4Address("100.64.0.15"))
    assert opt(o, Opt.MESSAGE_TYPE) == bytes([MessageType.OFFER])
    assert opt(o, Opt.SERVER_ID) == IPv4Address("100.64.0.1").packed
    assert int.from_bytes(opt(o, Opt.LEASE_TIME), "big") == 4 * 3600
    assert int.from_bytes(opt(o, Opt.RENEWAL_TIME), "big") == 2 * 3600
    assert int.from_bytes(opt(o, Opt.REBINDING_TIME), "big") == 4 * 3600 * 7 // 8
    assert opt(o, Opt.SUBNET_MASK) == IPv4Address("255.255.240.0").packed
    assert opt(o, Opt.ROUTER) == IPv4Address("100.64.0.1").packed
    assert opt(o, Opt.DNS) == IPv4Address("192.0.2.53").packed + IPv4Address("192.0.2.54").packed
    assert opt(o, Opt.DOMAIN_NAME) == b"home.example.net"
    assert opt(o, Opt.BROADCAST) == IPv4Address("100.64.15.255").packed
    assert out.reply_order[:2] == [Opt.MESSAGE_TYPE, Opt.SERVER_ID]


def test_request_selecting_acks_and_stores_the_lease() -> None:
    s, store, clock = server()
    ack = dora(s, **RES)
    lease = store.leases[int(ack.yiaddr)]
    assert lease.identity == "remote:res-1001" and lease.pool == "residential"
    assert lease.expires == clock.t + 4 * 3600 and lease.subscriber_class == "residential"


def test_option_82_is_echoed_verbatim_and_last() -> None:
    s, _, _ = server()
    raw = relay82("port 7", "res-77") + b"\x09\x05abcde"
    out = s.handle(request(D, extra={Opt.RELAY_AGENT: raw}), CTX)
    assert out.reply is not None and out.reply.options[Opt.RELAY_AGENT] == raw
    assert out.reply_order[-1] == Opt.RELAY_AGENT


@pytest.mark.parametrize("prl", [None, bytes([Opt.DNS, Opt.ROUTER]), bytes([Opt.SUBNET_MASK])])
def test_every_reply_carries_the_subnets_options_in_one_order(prl: bytes | None) -> None:
    # The XDP fast path cannot read option 55, so neither path tailors replies to it: a
    # client gets the same options, in the same order, whichever path answers.
    s, _, _ = server()
    out = s.handle(request(D, prl=prl, hostname="cpe", **RES), CTX)
    assert out.reply is not None
    assert out.reply_order == [Opt.MESSAGE_TYPE, Opt.SERVER_ID, Opt.LEASE_TIME,
                               Opt.RENEWAL_TIME, Opt.REBINDING_TIME, Opt.SUBNET_MASK, Opt.ROUTER,
                               Opt.BROADCAST, Opt.DNS, Opt.DOMAIN_NAME, Opt.RELAY_AGENT]
    assert Opt.HOSTNAME not in out.reply.options


def test_request_naming_another_server_frees_our_offer() -> None:
    s, store, _ = server()
    offer = s.handle(request(D, **RES), CTX).reply
    assert offer is not None
    out = s.handle(request(R, requested=ip(offer), server_id="10.9.9.9", **RES), CTX)
    assert out.drop == "other_server" and out.reply is None and store.leases == {}
    assert s.offers == {}
    assert int(offer.yiaddr) in s.pools["residential"].blocks[0].free


def test_request_for_an_address_not_offered_is_naked() -> None:
    s, _, _ = server()
    dora(s, "02:00:00:00:00:01", remote="res-1")
    taken = next(iter(s.by_address))
    out = s.handle(request(R, "02:00:00:00:00:02", requested=str(IPv4Address(taken)),
                           server_id="100.64.0.1", remote="res-2"), CTX)
    assert out.kind == "nak" and out.reply is not None
    assert out.reply.yiaddr == IPv4Address(0)
    assert opt(out.reply, Opt.MESSAGE_TYPE) == bytes([MessageType.NAK])


def test_init_reboot_known_unknown_and_foreign() -> None:
    s, _, _ = server()
    addr = ip(dora(s, **RES))
    assert s.handle(request(R, requested=addr, **RES), CTX).kind == "ack"  # known
    out = s.handle(request(R, "02:00:00:00:00:09", requested="10.1.2.3", remote="res-9"), CTX)
    assert out.kind == "nak"  # not our network
    out = s.handle(request(R, "02:00:00:00:00:09", requested=addr, remote="res-9"), CTX)
    assert out.kind == "nak"  # someone else's
    out = s.handle(request(R, "02:00:00:00:00:09", requested="100.64.3.3", remote="res-9"), CTX)
    assert out.kind == "ack" and ip(out.reply) == "100.64.3.3"  # type: ignore[arg-type]


@pytest.mark.parametrize("unicast", [True, False], ids=["renewing", "rebinding"])
def test_renewing_and_rebinding_extend_the_lease(unicast: bool) -> None:
    s, store, clock = server()
    addr = ip(dora(s, **RES))
    clock.t += 3600
    ctx = Context(CTX.interface, CTX.server_addresses, unicast=unicast)
    out = s.handle(request(R, ciaddr=addr, **RES), ctx)
    assert out.kind == "ack" and out.commit and out.reply is not None
    assert out.reply.ciaddr == IPv4Address(addr) and ip(out.reply) == addr
    assert store.leases[int(IPv4Address(addr))].expires == clock.t + 4 * 3600


def test_release_frees_and_the_client_gets_it_back() -> None:
    s, store, _ = server()
    addr = ip(dora(s, **RES))
    out = s.handle(request(MessageType.RELEASE, ciaddr=addr, **RES), CTX)
    assert out.kind == "release" and out.commit and out.reply is None
    assert store.leases[int(IPv4Address(addr))].state == "released"
    assert s.by_address == {}
    assert ip(dora(s, **RES)) == addr  # its previous address, while still free


def test_release_by_someone_else_is_ignored() -> None:
    s, _, _ = server()
    addr = ip(dora(s, **RES))
    out = s.handle(request(MessageType.RELEASE, "02:00:00:00:00:66", ciaddr=addr, remote="x"), CTX)
    assert out.drop == "release_unknown_lease" and len(s.by_address) == 1


def test_decline_holds_the_address_out_of_use() -> None:
    s, store, clock = server()
    addr = ip(dora(s, **RES))
    out = s.handle(request(MessageType.DECLINE, requested=addr, **RES), CTX)
    assert out.kind == "decline" and out.commit and int(IPv4Address(addr)) in store.declines
    for i in range(50):  # nobody is offered it during the hold, not even its old client
        o = s.handle(request(D, f"02:00:00:00:01:{i:02x}", remote=f"res-{i}"), CTX).reply
        assert o is not None and ip(o) != addr
    clock.t += DECLINE_HOLD + 1
    s.expire()
    assert int(IPv4Address(addr)) not in store.declines
    assert int(IPv4Address(addr)) in s.pools["residential"].blocks[0].free


def test_inform_acks_without_a_lease() -> None:
    s, store, _ = server()
    out = s.handle(request(MessageType.INFORM, ciaddr="100.64.1.50"), CTX)
    assert out.kind == "inform" and not out.commit and store.leases == {}
    r = out.reply
    assert r is not None and r.yiaddr == IPv4Address(0) and r.ciaddr == IPv4Address("100.64.1.50")
    assert Opt.LEASE_TIME not in r.options and Opt.ROUTER in r.options


def test_two_classes_pick_two_pools_by_circuit_versus_remote_id() -> None:
    s, store, _ = server()
    res = dora(s, "02:00:00:00:00:01", **RES)
    biz = dora(s, "02:00:00:00:00:02", **BIZ)
    assert res.yiaddr in IPv4Network("100.64.0.0/20")
    assert biz.yiaddr in IPv4Network("198.51.100.0/24") and int(biz.yiaddr) > int(IPv4Address("198.51.100.7"))
    assert int.from_bytes(opt(biz, Opt.LEASE_TIME), "big") == 12 * 3600  # the class's lease time
    assert store.leases[int(biz.yiaddr)].identity == "circuit:biz-olt1-1/1/3"


def test_business_identity_is_the_port_not_the_cpe() -> None:
    s, _, _ = server()
    first = dora(s, "02:00:00:00:00:01", **BIZ)
    second = dora(s, "02:00:00:00:00:99", **BIZ)  # CPE swapped on the same port
    assert first.yiaddr == second.yiaddr


def test_client_without_a_class_gets_nothing() -> None:
    s, _, _ = server()
    assert s.handle(request(D), CTX).drop == "no_class"


def test_reservation_is_honoured_and_never_offered_to_others() -> None:
    s, _, _ = server()
    for i in range(200):
        o = s.handle(request(D, f"02:00:00:00:02:{i:02x}", circuit=f"biz-port-{i}"), CTX).reply
        if o is None:
            break
        assert ip(o) != "198.51.100.10"
    ack = dora(s, "02:00:00:00:00:aa", circuit="biz-olt1-1/1/7")
    assert ip(ack) == "198.51.100.10"


def test_giaddr_picks_the_pool_when_no_class_matches() -> None:
    s, _, _ = server()
    out = s.handle(request(D, giaddr="198.51.100.1"), CTX)
    assert out.kind == "offer" and out.reply is not None
    assert out.reply.yiaddr in IPv4Network("198.51.100.0/24")
    assert out.reply.giaddr == IPv4Address("198.51.100.1")
    assert opt(out.reply, Opt.SERVER_ID) == IPv4Address("198.51.100.1").packed


def test_class_matching_on_relays() -> None:
    def edit(objs):  # type: ignore[no-untyped-def]
        out = []
        for o in objs:
            if isinstance(o, SubscriberClass) and o.name == "business":
                spec = o.spec.model_copy(update={"match": o.spec.match.model_copy(
                    update={"circuit_id": None, "relays": ["198.51.100.0/24"]})})
                o = o.model_copy(update={"spec": spec})
            out.append(o)
        return out

    s, _, _ = server(edit)
    out = s.handle(request(D, giaddr="198.51.100.1"), CTX)
    assert out.reply is not None and out.reply.yiaddr in IPv4Network("198.51.100.0/24")
    assert s.handle(request(D, "02:00:00:00:00:02"), CTX).drop == "no_class"


def _tiny_pool(objs):  # type: ignore[no-untyped-def]
    out = []
    for o in objs:
        if isinstance(o, IPPool) and o.name == "residential":
            spec = o.spec.model_copy(update={"subnets": [o.spec.subnets[0].model_copy(
                update={"cidr": "100.64.0.0/29", "exclude": []})], "block_size": 29})
            o = o.model_copy(update={"spec": spec})
        out.append(o)
    return out


def test_exhaustion_sends_no_offer_and_logs_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    s, _, clock = server(_tiny_pool)
    # /29: 8 addresses less network, broadcast and gateway = 5
    for i in range(5):
        dora(s, f"02:00:00:00:03:{i:02x}", remote=f"res-{i}")
    with caplog.at_level(logging.WARNING, logger="bng.dhcp"):
        for i in range(20):
            out = s.handle(request(D, f"02:00:00:00:04:{i:02x}", remote=f"res-{100 + i}"), CTX)
            assert out.drop == "pool_exhausted" and out.reply is None
        clock.t += 61
        s.handle(request(D, "02:00:00:00:05:00", remote="res-999"), CTX)
    lines = [r for r in caplog.records if "exhausted" in r.getMessage()]
    assert len(lines) == 2
    assert s.pool_usage()["residential"] == {"free": 0, "used": 5, "declined": 0, "reserved": 0}


def test_one_circuit_cannot_drain_the_pool() -> None:
    s, _, clock = server()
    offered = set()
    for i in range(40):  # one line (remote-id), 40 MACs: identity is the line, so one address
        out = s.handle(request(D, f"02:00:00:00:06:{i:02x}", circuit="olt9/9", remote="res-5"), CTX)
        assert out.reply is not None
        offered.add(out.reply.yiaddr)
    assert len(offered) == 1
    granted = 0
    for i in range(40):  # forty lines behind one circuit-id: the circuit's bucket runs dry
        out = s.handle(request(D, f"02:00:00:00:07:{i:02x}", circuit="olt9/9",
                               remote=f"res-{200 + i}"), CTX)
        granted += out.kind == "offer"
    assert granted == 9  # the first above took one token of ten
    clock.t += 60
    assert s.handle(request(D, "02:00:00:00:08:00", circuit="olt9/9", remote="res-300"),
                    CTX).kind == "offer"


def test_expiry_frees_and_the_client_gets_its_address_back() -> None:
    s, store, clock = server()
    addr = ip(dora(s, **RES))
    clock.t += 4 * 3600 + 1
    assert [lease.identity for lease in s.expire()] == ["remote:res-1001"]
    assert store.leases[int(IPv4Address(addr))].state == "expired"
    for i in range(3):
        dora(s, f"02:00:00:00:09:{i:02x}", remote=f"res-{500 + i}")
    assert ip(dora(s, **RES)) == addr


def test_offers_expire() -> None:
    s, _, clock = server()
    o = s.handle(request(D, **RES), CTX).reply
    assert o is not None
    clock.t += OFFER_HOLD + 1
    s.expire()
    assert s.offers == {} and int(o.yiaddr) in s.pools["residential"].blocks[0].free


def test_restart_restores_leases_from_the_store() -> None:
    s, store, clock = server()
    addrs = {ip(dora(s, f"02:00:00:00:0a:{i:02x}", remote=f"res-{i}")) for i in range(10)}
    s2, _, _ = server(store=store, clock=clock)
    assert s2.load(list(store.leases.values()), list(store.declines.values())) == []
    assert {str(IPv4Address(a)) for a in s2.by_address} == addrs
    for i in range(10):  # each client renews into the same address
        assert ip(dora(s2, f"02:00:00:00:0a:{i:02x}", remote=f"res-{i}")) in addrs
    fresh = dora(s2, "02:00:00:00:0b:00", remote="res-7777")
    assert ip(fresh) not in addrs


def _with(kind: type, name: str, **update: object):  # type: ignore[no-untyped-def]
    """An edit of the sample objects: ``update`` applied to one object's spec."""
    def edit(objs):  # type: ignore[no-untyped-def]
        return [o.model_copy(update={"spec": o.spec.model_copy(update=update)})
                if isinstance(o, kind) and o.name == name else o for o in objs]
    return edit


def test_reconfigure_keeps_leases_and_new_lease_time_applies_to_new_leases() -> None:
    from bng_lab.dhcp_env import sample_config

    s, _, _ = server()
    addr = ip(dora(s, **RES))
    s.reconfigure(sample_config(_with(IPPool, "residential", lease_time="1h", dns=["192.0.2.99"])))
    assert int(IPv4Address(addr)) in s.by_address  # the lease survived
    again = dora(s, **RES)
    assert ip(again) == addr
    assert int.from_bytes(opt(again, Opt.LEASE_TIME), "big") == 3600
    assert opt(again, Opt.DNS) == IPv4Address("192.0.2.99").packed
    other = dora(s, "02:00:00:00:00:02", remote="res-2")
    assert ip(other) != addr  # the kept lease's address is not handed out again


def test_reconfigure_moves_a_class_to_another_pool_on_next_request() -> None:
    from bng_lab.dhcp_env import sample_config

    s, _, _ = server()
    addr = ip(dora(s, **RES))
    s.reconfigure(sample_config(_with(SubscriberClass, "residential", pool="business")))
    renewed = s.handle(request(R, ciaddr=addr, **RES), CTX)
    assert renewed.kind == "nak"  # its address is not in its class's pool any more
    moved = dora(s, **RES)
    assert moved.yiaddr in IPv4Network("198.51.100.0/24")


@pytest.mark.parametrize(("match", "msg_kw", "vlans", "hit"), [
    ({"mac_prefix": "02:aa"}, {"mac": "02:aa:00:00:00:01"}, (), True),
    ({"mac_prefix": "02:aa"}, {"mac": "02:ab:00:00:00:01"}, (), False),
    ({"vendor_class": "^MSFT"}, {"extra": {Opt.VENDOR_CLASS: b"MSFT 5.0"}}, (), True),
    ({"vendor_class": "^MSFT"}, {"extra": {Opt.VENDOR_CLASS: b"udhcp 1.35"}}, (), False),
    ({"vendor_class": "^MSFT"}, {}, (), False),
    ({"vlan": 100}, {}, (100, 7), True),
    ({"vlan": 100}, {}, (7, 100), False),
    ({"vlan": 100}, {}, (), False),
    ({"circuit_id": "^port"}, {"circuit": "port-1"}, (), True),
    ({"circuit_id": "^port"}, {"remote": "port-1"}, (), False),
])
def test_class_match_fields(match: dict[str, object], msg_kw: dict[str, object],
                            vlans: tuple[int, ...], hit: bool) -> None:
    from bng_operator.api.subscriberclass import Match

    s, _, _ = server(_with(SubscriberClass, "business", match=Match(**match)))  # type: ignore[arg-type]
    mac = str(msg_kw.pop("mac", "02:00:00:00:00:01"))
    ctx = Context(CTX.interface, CTX.server_addresses, vlans=vlans)
    out = s.handle(request(D, mac, **msg_kw), ctx)  # type: ignore[arg-type]
    in_business = out.reply is not None and out.reply.yiaddr in IPv4Network("198.51.100.0/24")
    assert in_business == hit


def test_a_lease_records_the_request_the_fast_path_must_see_again() -> None:
    s, store, _ = server()
    ctx = Context("access0", CTX.server_addresses, (100,), tags=b"\x81\x00\x20\x64")
    kw = {"remote": "res-7", "giaddr": "100.64.0.2"}
    offer = s.handle(request(D, **kw), ctx).reply  # type: ignore[arg-type]
    assert offer is not None
    s.handle(request(R, requested=ip(offer), **kw), ctx)  # type: ignore[arg-type]
    lease = store.leases[int(offer.yiaddr)]
    assert (lease.vlan, IPv4Address(lease.giaddr), IPv4Address(lease.server_id)) == \
        (100, IPv4Address("100.64.0.2"), IPv4Address("100.64.0.1"))
    assert lease.relay_agent == relay82(None, "res-7") and lease.lease_seconds == 4 * 3600
    # the access data path's: the tags as they came (priority bits too), the interface
    assert (lease.tags, lease.interface) == (b"\x81\x00\x20\x64", "access0")


def test_renewals_answered_elsewhere_extend_leases_and_expiry_waits_for_them() -> None:
    s, store, clock = server()
    ack = dora(s, **RES)
    addr = int(ack.yiaddr)
    ends = store.leases[addr].expires
    s.take_events()

    def unbound() -> list[int]:  # the sessions that ended (the fast path forgets them)
        return [e.session.address for e in s.take_events() if e.kind == "ended"]

    assert s.extend(addr, ends - 10) is None  # never backwards
    assert s.extend(addr, ends + 100) is not None and store.leases[addr].expires == ends + 100
    clock.t = ends + 50  # the old end has passed; the extended one has not
    assert s.expire() == [] and unbound() == []
    clock.t = ends + 101
    assert s.expire(grace=2.0) == []  # within the grace a late renewal may still arrive
    clock.t = ends + 103
    assert [lease.address for lease in s.expire(grace=2.0)] == [addr] and unbound() == [addr]


def test_a_store_written_by_an_older_agent_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    from bng_operator.agent.dhcp.leases import LeaseStore

    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute("CREATE TABLE leases (address INTEGER PRIMARY KEY, identity TEXT NOT NULL UNIQUE,"
               " mac TEXT NOT NULL, client_id TEXT, circuit_id TEXT, remote_id TEXT, pool TEXT "
               "NOT NULL, class TEXT NOT NULL, expires REAL NOT NULL, hostname TEXT, bound_at "
               "REAL NOT NULL, state TEXT NOT NULL)")
    db.execute("INSERT INTO leases VALUES (1684275220, 'mac:02:00:00:00:00:01', "
               "'02:00:00:00:00:01', NULL, NULL, NULL, 'residential', 'default', 2e9, NULL, "
               "1e9, 'bound')")
    db.commit()
    db.close()
    store = LeaseStore(tmp_path / "old.sqlite")
    (lease,), _ = store.load()
    store.close()
    assert lease.identity == "mac:02:00:00:00:00:01"
    assert (lease.vlan, lease.giaddr, lease.server_id, lease.relay_agent, lease.lease_seconds,
            lease.tags, lease.interface) == (0, 0, 0, None, 0, b"", "")


def test_a_nak_through_a_relay_sets_the_broadcast_bit() -> None:
    """RFC 2131 §4.3.2 (issue 14, point 8); a direct NAK goes out broadcast anyway."""
    s, _, _ = server()
    out = s.handle(request(R, requested="192.0.2.77", giaddr="100.64.0.2", **RES), CTX)  # type: ignore[arg-type]
    assert out.kind == "nak" and out.reply is not None and out.reply.flags & 0x8000
    direct = s.handle(request(R, requested="192.0.2.77", **RES), CTX)  # type: ignore[arg-type]
    assert direct.kind == "nak" and direct.reply is not None and not direct.reply.flags & 0x8000


def _reserved_without_class(objs):  # type: ignore[no-untyped-def]
    """A reservation by MAC, with no class, in the business pool."""
    from bng_operator.api.documents import parse

    extra = parse({"apiVersion": "bng.dev/v1alpha1", "kind": "Subscriber",
                   "metadata": {"name": "no-class", "namespace": "bng-system"},
                   "spec": {"identity": {"mac": "02:00:00:00:0c:01"}, "pool": "business",
                            "address": "198.51.100.20"}})
    return [*objs, extra]


def test_a_relayed_reservation_without_a_class_gets_the_link_check_of_everyone_else() -> None:
    """Issue 14, point 8: through a relay on another pool's link, a reserved client gets no
    offer of its reserved address (nor anything else); through its own link it does."""
    s, _, _ = server(_reserved_without_class)
    wrong = s.handle(request(D, "02:00:00:00:0c:01", giaddr="100.64.0.2"), CTX)
    assert wrong.reply is None and wrong.drop == "no_subnet_for_relay"
    req = s.handle(request(R, "02:00:00:00:0c:01", requested="198.51.100.20",
                           giaddr="100.64.0.2"), CTX)
    assert req.reply is None and req.drop == "no_subnet_for_relay"
    assert int(IPv4Address("198.51.100.20")) not in s.by_address
    right = s.handle(request(D, "02:00:00:00:0c:01", giaddr="198.51.100.2"), CTX)
    assert right.reply is not None and ip(right.reply) == "198.51.100.20"


def _untrusted(mode: str, relays: list[str] | None = None):  # type: ignore[no-untyped-def]
    """The samples with option 82 trusted on access0 only (as shipped), ``mode`` elsewhere."""
    from bng_operator.api import BNGNode

    def edit(objs):  # type: ignore[no-untyped-def]
        out = []
        for o in objs:
            if isinstance(o, BNGNode):
                ifs = o.spec.interfaces
                o82 = ifs.option82.model_copy(update={"untrusted": mode,
                                                      "trusted_relays": relays or []})
                spec = o.spec.model_copy(update={"interfaces": ifs.model_copy(
                    update={"option82": o82, "access": ["access0", "access9"]})})
                o = o.model_copy(update={"spec": spec})
            out.append(o)
        return out
    return edit


UNTRUSTED = Context("access9", CTX.server_addresses)  # a port with no access node


@pytest.mark.parametrize("mode", ["drop", "strip"])
def test_a_forged_circuit_id_on_an_untrusted_port_gets_no_business_address(mode: str) -> None:
    """Issue 14, point 4: a directly attached subscriber claiming a business line (and the
    reserved address of acme-hq, biz-olt1-1/1/7) gets neither."""
    s, store, _ = server(_untrusted(mode))
    for circuit in ("biz-olt1-1/1/3", "biz-olt1-1/1/7"):
        out = s.handle(request(D, "02:00:00:00:0e:01", circuit=circuit), UNTRUSTED)
        if mode == "drop":
            assert out.reply is None and out.drop == "untrusted_option82"
        else:  # served as if it carried no option 82: no class takes a bare MAC here
            assert out.stripped and out.reply is None and out.drop == "no_class"
        req = s.handle(request(R, "02:00:00:00:0e:01", circuit=circuit,
                               requested="198.51.100.10"), UNTRUSTED)
        assert req.reply is None or req.kind == "nak"
    assert not any(lease.pool == "business" for lease in store.leases.values())
    assert int(IPv4Address("198.51.100.10")) not in s.by_address
    # The same request on the access node's port is believed.
    ok = s.handle(request(D, "02:00:00:00:0e:01", circuit="biz-olt1-1/1/7"), CTX)
    assert ok.reply is not None and ip(ok.reply) == "198.51.100.10"


def test_option_82_from_a_trusted_relay_is_believed_on_any_port() -> None:
    s, _, _ = server(_untrusted("drop", ["100.64.0.0/30"]))
    ok = s.handle(request(D, "02:00:00:00:0e:02", giaddr="100.64.0.2", remote="res-9"),
                  UNTRUSTED)
    assert ok.kind == "offer"
    other = s.handle(request(D, "02:00:00:00:0e:03", giaddr="100.64.0.9", remote="res-9"),
                     UNTRUSTED)
    assert other.drop == "untrusted_option82"


@pytest.mark.parametrize("authoritative", [True, False])
def test_init_reboot_of_a_stranger_follows_the_pools_authoritative_setting(
        authoritative: bool) -> None:
    """Issue 14, point 8: an authoritative pool (the default) answers a client it has no
    record of (ACK when the address is free, NAK when it is not ours); a pool that is not
    stays silent and takes nothing. A known client is answered either way."""
    s, _, _ = server(_with(IPPool, "residential", authoritative=authoritative))
    free = s.pool_usage()["residential"]["free"]
    claim = s.handle(request(R, "02:00:00:00:0f:01", requested="100.64.2.2", **RES), CTX)  # type: ignore[arg-type]
    wrong = s.handle(request(R, "02:00:00:00:0f:02", requested="192.0.2.9",
                             remote="res-77"), CTX)
    if authoritative:
        assert claim.kind == "ack" and wrong.kind == "nak"
    else:
        assert claim.reply is None and claim.drop == "not_authoritative"
        assert wrong.reply is None and wrong.drop == "not_authoritative"
        assert s.pool_usage()["residential"]["free"] == free
    dora(s, "02:00:00:00:0f:03", remote="res-78")
    again = s.handle(request(R, "02:00:00:00:0f:03", requested="192.0.2.9", remote="res-78"),
                     CTX)
    assert again.kind == "nak"  # a client we know, on the wrong network: NAK either way

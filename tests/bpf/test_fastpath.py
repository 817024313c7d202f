"""The XDP fast path under BPF_PROG_TEST_RUN: its replies equal the slow path's, field by field."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bng_lab.dhcp_env import bound_lease, server
from bng_lab.messages import relay82, request
from bng_lab.netlab import NetLab
from bng_operator import netlink
from bng_operator.agent.dataplane import fastpath
from bng_operator.agent.dataplane.fastpath import XDP_PASS, XDP_TX, FastPath
from bng_operator.agent.dataplane.loader import DataplaneError, program_id
from bng_operator.agent.dhcp.codec import HEADER_LEN, MAGIC, Message, MessageType, Opt, encode
from bng_operator.agent.dhcp.server import Context
from bng_operator.agent.dhcp.transport import (
    BROADCAST_IP,
    BROADCAST_MAC,
    build_frame,
    parse_frame,
    reply_destination,
)
from bng_operator.agent.fastpath import entries
from bng_operator.agent.fastpath.entries import FastEntry, entry_for, subnet_options
from bng_operator.api import SubscriberClass
from bng_operator.api.documents import parse
from tests.bpf.cheader import enum_names

HEADER = Path(fastpath.SOURCE).parent / "lib" / "dhcp.h"
SERVER_MAC = bytes.fromhex("02aabbccddee")
CLIENT = "02:00:00:00:00:01"
SERVER_ID = IPv4Address("100.64.0.1")
RELAY = IPv4Address("100.64.0.2")
RELAY_MAC = bytes.fromhex("02000000cafe")
CLIENT_ID = b"\x01\x02\x00\x00\x00\x00\x01"
ORDER = [Opt.MESSAGE_TYPE, Opt.REQUESTED_IP, Opt.SERVER_ID, Opt.CLIENT_ID, Opt.PARAM_REQUEST,
         Opt.HOSTNAME, *range(200, 216), Opt.RELAY_AGENT]
WRITTEN = {Opt.MESSAGE_TYPE, Opt.SERVER_ID, Opt.LEASE_TIME, Opt.RENEWAL_TIME,
           Opt.REBINDING_TIME, Opt.SUBNET_MASK, Opt.ROUTER, Opt.BROADCAST, Opt.DNS,
           Opt.DOMAIN_NAME, Opt.RELAY_AGENT}
TAGS = {"untagged": b"", "dot1q": b"\x81\x00\x00\x64", "qinq": b"\x88\xa8\x00\x0a\x81\x00\x00\x14"}
O82 = relay82("olt1 xpon 0/1/2:3", "res-4711") + b"\x09\x02ab"


def test_constants_agree_with_the_c_header() -> None:
    h = HEADER.read_text()
    defines = {m[0]: m[1] for m in re.findall(r"#define (\w+) ([^/\n]+)", h)}
    assert int(defines["MIN_REPLY_DHCP_LEN"]) == fastpath.MIN_REPLY_DHCP_LEN
    for name in ("INTERFACE_SLOTS", "INTERFACE_PROBES", "REFRESH_LOG_LEN"):
        assert int(defines[name]) == getattr(fastpath, name), name
    clocks = re.search(r"enum refresh_clock \{(.*?)\};", h, re.S)
    assert clocks is not None
    for name, value in re.findall(r"(REFRESH_CLOCK_\w+) = (\d+)", clocks.group(1)):
        assert getattr(fastpath, name) == int(value), name
    for name in ("MAX_RELAY_AGENT_LEN", "MAX_CLIENT_ID_LEN", "MAX_DNS", "MAX_DOMAIN_LEN"):
        assert int(defines[name]) == getattr(entries, name), name
    assert enum_names(h, "fastpath_counter", "CNT_") == [*fastpath.COUNTERS, "max"]
    assert int(defines["BOOTP_FIXED"]) == HEADER_LEN
    assert int(defines["CIRCUIT_HASH_MUL"].strip().removesuffix("ULL"), 16) == \
        entries.CIRCUIT_HASH_MUL
    maps = (HEADER.parent / "maps.h").read_text()
    assert f"#define MAX_SUBNETS {fastpath.MAX_SUBNETS}" in maps


@pytest.fixture(scope="module")
def fp(bpffs: Path) -> Iterator[FastPath]:
    f = FastPath(max_subscribers=1024)
    f.put_interface(1, SERVER_MAC)  # BPF_PROG_TEST_RUN runs as if received on lo (ifindex 1)
    yield f
    f.close()


def _with_class(identity: str):  # type: ignore[no-untyped-def]
    """The samples plus a class that takes every client, under the given identity."""
    def edit(objs):  # type: ignore[no-untyped-def]
        extra = parse({"apiVersion": "bng.dev/v1alpha1", "kind": "SubscriberClass",
                       "metadata": {"name": "everyone"},
                       "spec": {"priority": 1, "pool": "residential", "identity": identity}})
        return [o for o in objs if not isinstance(o, SubscriberClass)] + [extra]
    return edit


def _frame(msg: Message, tags: bytes, relayed: bool, unicast_to: IPv4Address | None = None) -> bytes:
    payload = encode(msg, ORDER)
    if relayed:
        return build_frame(SERVER_MAC, RELAY_MAC, tags, RELAY, SERVER_ID, 67, payload, 67)
    src = msg.chaddr[:6]
    if unicast_to is not None:
        return build_frame(SERVER_MAC, src, tags, msg.ciaddr, unicast_to, 67, payload, 68)
    return build_frame(BROADCAST_MAC, src, tags, IPv4Address(0), BROADCAST_IP, 67, payload, 68)


def _reply_fields(payload: bytes) -> tuple[tuple[object, ...], dict[int, bytes]]:
    from bng_operator.agent.dhcp.codec import walk_options

    op, _, _, _, xid, _, flags, ci, yi, si, gi, chaddr = struct.unpack_from(
        "!BBBBIHHIIII16s", payload)
    assert payload[HEADER_LEN:HEADER_LEN + 4] == MAGIC
    opts: dict[int, bytes] = {}
    walk_options(payload[HEADER_LEN + 4:], "options", opts, allow_overload=False)
    return (op, xid, flags, ci, yi, si, gi, chaddr), opts


def _install(fp: FastPath, s, lease) -> FastEntry:  # type: ignore[no-untyped-def]
    """What the agent does after an ACK: the lease's entry and its subnet into the maps."""
    entry = entry_for(lease, s.config)
    assert entry is not None
    so = subnet_options(s.config.pools[lease.pool].subnet_config(lease.address))
    assert so is not None
    fp.put_subnet(so)
    fp.put(replace(entry, expires=time.time() + lease.expires - s.clock()))  # fake clock
    return entry


def _slow_and_fast(fp: FastPath, kind: str, tags: bytes, o82: bytes | None, relayed: bool,
                   identity: str = "mac", **req_kw: object,
                   ) -> tuple[Message, bytes, bytes, bytes]:
    s, _, _ = server(_with_class(identity))
    vlans = tuple(struct.unpack_from("!H", tags, i + 2)[0] & 0xFFF for i in range(0, len(tags), 4))
    ctx = Context("access0", (SERVER_ID,), vlans)
    kw: dict[str, object] = {"prl": bytes([1, 3, 6]), "giaddr": str(RELAY) if relayed else "0.0.0.0",
                             "hostname": "cpe",
                             "xid": 0xFEDCBA98}  # large words: the checksum's carries matter
    if identity == "client-id":
        kw["client_id"] = CLIENT_ID
    if o82 is not None:
        kw["extra"] = {Opt.RELAY_AGENT: o82}
    offer = s.handle(request(MessageType.DISCOVER, CLIENT, **kw), ctx).reply  # type: ignore[arg-type]
    assert offer is not None
    ack = s.handle(request(MessageType.REQUEST, CLIENT, requested=str(offer.yiaddr),
                           server_id=str(SERVER_ID), **kw), ctx)  # type: ignore[arg-type]
    assert ack.kind == "ack"
    lease = s.by_address[int(offer.yiaddr)]
    entry = _install(fp, s, lease)
    assert entry.by_circuit == (identity == "circuit-id")
    addr = str(IPv4Address(lease.address))
    kw.update(req_kw)
    unicast = None
    if kind == "discover":
        req = request(MessageType.DISCOVER, CLIENT, **kw)  # type: ignore[arg-type]
    elif kind == "selecting":
        req = request(MessageType.REQUEST, CLIENT, requested=addr, server_id=str(SERVER_ID), **kw)  # type: ignore[arg-type]
    elif kind == "init-reboot":
        req = request(MessageType.REQUEST, CLIENT, requested=addr, **kw)  # type: ignore[arg-type]
    else:  # renewing: unicast from the client's address
        req = request(MessageType.REQUEST, CLIENT, ciaddr=addr, **kw)  # type: ignore[arg-type]
        unicast = None if relayed else SERVER_ID
    frame = _frame(req, tags, relayed, unicast)
    slow = s.handle(req, Context("access0", (SERVER_ID,), vlans, unicast=unicast is not None))
    assert slow.reply is not None
    result = fp.run(frame)
    assert result.action == XDP_TX, {k: v for k, v in fp.counters().items() if v}
    return req, encode(slow.reply, slow.reply_order), frame, result.frame


@pytest.mark.parametrize("relayed", [False, True], ids=["direct", "relayed"])
@pytest.mark.parametrize(("identity", "o82"), [
    ("mac", None), ("mac", O82), ("client-id", None), ("client-id", O82), ("circuit-id", O82),
], ids=["mac", "mac-82", "client-id", "client-id-82", "circuit-id-82"])
@pytest.mark.parametrize("tags", list(TAGS.values()), ids=list(TAGS))
@pytest.mark.parametrize("kind", ["discover", "selecting", "init-reboot", "renewing"])
def test_fast_reply_equals_slow_reply(fp: FastPath, kind: str, tags: bytes, identity: str,
                                      o82: bytes | None, relayed: bool) -> None:
    req, slow_wire, frame_in, frame_out = _slow_and_fast(fp, kind, tags, o82, relayed, identity)
    f_out = parse_frame(frame_out)
    assert len(f_out.payload) >= fastpath.MIN_REPLY_DHCP_LEN and len(f_out.payload) % 4 == 0
    # Byte for byte the slow path's message, up to the padding after END.
    assert f_out.payload.rstrip(b"\0") == slow_wire.rstrip(b"\0")
    fast_fields, fast_opts = _reply_fields(f_out.payload)
    slow_fields, slow_opts = _reply_fields(slow_wire)
    assert fast_fields == slow_fields
    assert set(slow_opts) == WRITTEN - ({Opt.RELAY_AGENT} if o82 is None else set())
    assert fast_opts == slow_opts
    # Addressed as the slow path would send it (RFC 2131 §4.1), VLAN tags kept.
    slow = Message(op=2, xid=0, chaddr=b"", yiaddr=IPv4Address(fast_fields[4]),  # type: ignore[arg-type]
                   options={Opt.MESSAGE_TYPE: slow_opts[Opt.MESSAGE_TYPE]})
    dst_mac, dst_ip, dst_port = reply_destination(req, slow, parse_frame(frame_in))
    assert (f_out.dst_mac, f_out.dst_ip) == (dst_mac, dst_ip)
    assert f_out.src_mac == SERVER_MAC and f_out.src_ip == SERVER_ID and f_out.tags == tags
    ip = dpkt.ethernet.Ethernet(frame_out).data  # dpkt strips the VLAN tags
    assert isinstance(ip, dpkt.ip.IP)
    udp = ip.data
    assert udp.dport == dst_port and udp.sport == 67
    want_ip, want_udp = ip.sum, udp.sum
    ip.sum = udp.sum = 0
    again = dpkt.ip.IP(bytes(ip))
    assert (again.sum, again.data.sum) == (want_ip, want_udp)


def test_a_long_option_list_is_walked(fp: FastPath) -> None:
    """Twenty options and more (more than clients send) are still answered in the kernel."""
    extra = {Opt.RELAY_AGENT: O82} | {200 + i: b"x" * i for i in range(16)}
    _, slow_wire, _, frame_out = _slow_and_fast(fp, "renewing", b"", O82, True, extra=extra)
    assert _reply_fields(parse_frame(frame_out).payload)[1] == _reply_fields(slow_wire)[1]


@pytest.mark.parametrize("pads", range(13))
def test_an_unpadded_option_list_of_any_length_is_answered(fp: FastPath, pads: int) -> None:
    """Option lists of 4 to 16 bytes ending at the frame's end: under a word the helper
    copies them, longer ones are copied as words with an overlapping last word."""
    s, _, _ = server(_with_class("mac"))
    fp.put_subnet(replace(subnet_options(s.config.pools["residential"].subnets[0]),  # type: ignore[type-var]
                          network=int(IPv4Address("100.64.0.0"))))
    entry = entry_for(bound_lease(), s.config)
    assert entry is not None
    raw = encode(request(MessageType.DISCOVER, CLIENT), ORDER).rstrip(b"\0")
    assert raw[HEADER_LEN + 4:] == bytes([53, 1, 1, 255])
    payload = raw[:-1] + bytes(pads) + b"\xff"
    frame = build_frame(BROADCAST_MAC, bytes.fromhex(CLIENT.replace(":", "")), b"",
                        IPv4Address(0), BROADCAST_IP, 67, payload, 68)
    try:
        fp.put(entry)
        r = fp.run(frame)
        assert r.action == XDP_TX, {k: v for k, v in fp.counters().items() if v}
        fields, opts = _reply_fields(parse_frame(r.frame).payload)
        assert opts[Opt.MESSAGE_TYPE] == bytes([MessageType.OFFER])
        assert fields[4] == int(IPv4Address("100.64.0.20"))
    finally:
        fp.delete(entry.key)


def test_ack_refreshes_the_expiry_and_tells_userspace(fp: FastPath) -> None:
    fp.refreshes()
    _slow_and_fast(fp, "discover", b"", None, False)
    key = (False, 0, bytes.fromhex(CLIENT.replace(":", "")))
    before = fp.expiry(key)
    assert fp.refreshes() == []  # an OFFER renews nothing
    time.sleep(0.05)  # longer than a tick: the program reads jiffies
    renewing = _slow_and_fast(fp, "renewing", b"", None, False)[2]
    assert fp.expiry(key) > before
    fp.refreshes()  # logged or not, as the time from install to run had it
    # As an ACK just now left it: a renewal at once moves the entry by less than a second,
    # which is not logged (issue 14, point 1).
    leaf = fp.subscribers[fp._key(*key)]
    leaf.expires = fp._sample_clock()[0] + int(leaf.lease_jiffies)
    fp.subscribers[fp._key(*key)] = leaf
    assert fp.run(renewing).action == XDP_TX
    soon = fp.expiry(key)
    assert soon >= int(leaf.expires)
    assert fp.refreshes() == []
    time.sleep(1.05)
    assert fp.run(renewing).action == XDP_TX
    after = fp.expiry(key)
    assert after > soon
    (_, expires), = fp.refreshes()
    assert abs(expires - fp.clock.wall(after)) < 0.01
    # The lease time from now, within a tick or two of the sample and of the program's clock.
    lease_s = int(fp.subscribers[fp._key(*key)].lease_seconds)
    assert abs(expires - (time.time() + lease_s)) < 3 / fp.clock.hz + 0.05


def test_the_program_clock_converts_both_ways(fp: FastPath) -> None:
    """Expiries are jiffies; the agent converts them with the kernel's HZ, which it measures
    (the headers BCC compiles with may be another kernel's)."""
    c = fp.clock
    config = Path("/proc/config.gz")
    if config.exists():
        import gzip
        hz = re.search(rb"^CONFIG_HZ=(\d+)$", gzip.decompress(config.read_bytes()), re.M)
        assert hz is not None and c.hz == int(hz.group(1))
    assert c.hz in fastpath.KERNEL_HZ_CHOICES
    now = time.time()
    assert abs(c.at(now + 100) - c.at(now) - 100 * c.hz) <= 1
    assert abs(c.wall(c.at(now + 42)) - (now + 42)) <= 1 / c.hz
    assert c.ticks(3600) == 3600 * c.hz


def test_the_refresh_log_loses_only_what_was_overwritten(fp: FastPath) -> None:
    """The log is read where the program writes it (the map, mmapped): written past the
    reader by more than its length, the oldest entries are gone and counted lost, the
    oldest kept one too (it sits in the slot the program writes next, so it may be half
    rewritten as it is read), the rest arrive, and the reader's place is kept in the map
    for the next agent."""
    fp.refreshes()
    lost = fp.counters()["refresh_lost"]
    log = fp._log.heads[0]  # CPU 0's; the program on it is not running now
    head = int(log.head)
    assert int(log.tail) == head  # all read
    extra = 5
    n = fastpath.REFRESH_LOG_LEN + extra
    # The end the entries carry, fixed before the loop: writing 16k entries through ctypes
    # takes a noticeable part of a second on a slow machine.
    ends = time.time() + 60
    expires = fp.clock.at(ends)
    for i in range(head, head + n):  # what the program does, 5 entries more than fit
        e = fp._log.entries[i % fastpath.REFRESH_LOG_LEN]
        e.address, e.clock, e.expires = (fastpath._u32(i & 0xFFFFFF),
                                         fastpath.REFRESH_CLOCK_JIFFIES, expires)
    log.head = head + n
    got = fp.refreshes()
    assert [a for a, _ in got] == [i & 0xFFFFFF for i in range(head + extra + 1, head + n)]
    assert all(abs(t - ends) < 0.1 for _, t in got)
    assert fp.counters()["refresh_lost"] == lost + extra + 1
    assert (int(log.head), int(log.tail)) == (head + n, head + n)
    assert fp.refreshes() == []


def test_an_interface_is_found_in_any_of_its_probe_slots(bpffs: Path) -> None:
    """The interfaces array: lo's first slots taken by interfaces whose ifindex is the same
    modulo INTERFACE_SLOTS, its MAC is found in the next free one, and when all of an
    interface's slots are taken the agent is told, not the program misled."""
    f = FastPath(max_subscribers=16)
    try:
        others = [1 + fastpath.INTERFACE_SLOTS * k for k in (1, 2)]
        for ifindex in others:
            f.put_interface(ifindex, bytes.fromhex("020000000bad"))
        f.put_interface(1, SERVER_MAC)
        f.put_interface(1, SERVER_MAC)  # again: the same slot, not another
        _, _, _, frame_out = _slow_and_fast(f, "discover", b"", None, False)
        assert parse_frame(frame_out).src_mac == SERVER_MAC
        f.put_interface(1 + fastpath.INTERFACE_SLOTS * 3, SERVER_MAC)  # the last probe slot
        with pytest.raises(DataplaneError, match="slots are taken"):
            f.put_interface(1 + fastpath.INTERFACE_SLOTS * 4, SERVER_MAC)
    finally:
        f.close()


def test_an_interface_in_slot_zero_keeps_it(fp: FastPath) -> None:
    """Slot 0 is a slot like the others: an interface put there again stays there."""
    ifindex = fastpath.INTERFACE_SLOTS  # its first probe slot is 0
    try:
        fp.put_interface(ifindex, SERVER_MAC)
        fp.put_interface(ifindex, SERVER_MAC)
        held = [int(fp.interfaces[fp.interfaces.Key(s)].ifindex)
                for s in range(fastpath.INTERFACE_PROBES)]
        assert held.count(ifindex) == 1 and held[0] == ifindex
    finally:
        for s in range(fastpath.INTERFACE_PROBES):
            if int(fp.interfaces[fp.interfaces.Key(s)].ifindex) == ifindex:
                fp.interfaces[fp.interfaces.Key(s)] = fp.interfaces.Leaf()


def test_a_reused_subnet_slot_is_not_the_old_leases(fp: FastPath) -> None:
    """subnet_options is an array the lease indexes: once its subnet is gone and the slot
    holds another subnet, the lease's requests go to the slow path, not out with the other
    subnet's options."""
    s, _, _ = server(_with_class("mac"))
    so = replace(subnet_options(s.config.pools["residential"].subnets[0]),  # type: ignore[type-var]
                 network=int(IPv4Address("100.64.0.0")))
    elsewhere = int(IPv4Address("10.99.0.0"))
    fp.put_subnet(so)
    lease = bound_lease(expires=time.time() + 3600, giaddr=int(RELAY))
    entry = entry_for(lease, s.config)
    assert entry is not None
    msg = request(MessageType.REQUEST, CLIENT, requested="100.64.0.20", giaddr=str(RELAY))
    frame = _frame(msg, b"", True)
    try:
        fp.put(entry)
        assert fp.run(frame).action == XDP_TX
        slot = fp._slots[so.network]
        fp.delete_subnet(so.network)
        fp.put_subnet(replace(so, network=elsewhere))
        assert fp._slots[elsewhere] == slot  # the freed slot, reused
        _counted(fp, frame, "pass_no_subnet")
    finally:
        fp.delete_subnet(elsewhere)
        fp.put_subnet(so)
        fp.delete(entry.key)


def _counted(fp: FastPath, frame: bytes, reason: str) -> None:
    before = fp.counters()[reason]
    r = fp.run(frame)
    assert r.action == XDP_PASS
    assert fp.counters()[reason] == before + 1


@pytest.mark.parametrize(("case", "reason"), [
    ("miss", "pass_miss"), ("expired", "pass_expired"), ("wrong-address", "pass_wrong_address"),
    ("other-server", "pass_wrong_address"), ("release", "pass_other_type"),
    ("inform", "pass_other_type"), ("decline", "pass_other_type"), ("overload", "pass_layout"),
    ("many-options", "pass_layout"), ("repeated-option", "pass_layout"),
    ("not-dhcp", "pass_not_dhcp"), ("new-client-id", "pass_changed"),
    ("new-option-82", "pass_changed"), ("other-relay", "pass_changed"),
    ("no-subnet", "pass_no_subnet"),
])
def test_everything_else_goes_to_the_slow_path(fp: FastPath, case: str, reason: str) -> None:
    s, _, _ = server(_with_class("mac"))
    sub = replace(subnet_options(s.config.pools["residential"].subnets[0]),  # type: ignore[type-var]
                  network=int(IPv4Address("100.64.0.0")))
    fp.put_subnet(sub)
    lease = bound_lease(expires=time.time() - 1 if case == "expired" else time.time() + 3600,
                        giaddr=int(RELAY))
    entry = entry_for(lease, s.config)
    assert entry is not None
    if case == "no-subnet":
        entry = replace(entry, subnet=int(IPv4Address("10.99.0.0")))
    fp.put(entry)
    mac = "02:00:00:00:00:99" if case == "miss" else CLIENT
    kind = {"release": MessageType.RELEASE, "inform": MessageType.INFORM,
            "decline": MessageType.DECLINE}.get(case, MessageType.REQUEST)
    kw: dict[str, object] = {"requested": "100.64.0.20"}
    extra: dict[int, bytes] = {}
    if case == "wrong-address":
        kw["requested"] = "100.64.0.21"
    if case == "other-server":
        kw["server_id"] = "10.9.9.9"
    if case == "overload":
        extra[Opt.OVERLOAD] = b"\x01"
    if case == "many-options":
        extra.update({200 + i: b"x" for i in range(30)})
    if case == "new-client-id":
        kw["client_id"] = CLIENT_ID
    if case == "new-option-82":
        kw["circuit"] = "elsewhere"
    if case == "other-relay":
        kw["giaddr"] = "100.64.0.3"
    msg = request(kind, mac, extra=extra, **kw)  # type: ignore[arg-type]
    order = [Opt.MESSAGE_TYPE, Opt.REQUESTED_IP, Opt.SERVER_ID, Opt.OVERLOAD, Opt.CLIENT_ID,
             Opt.RELAY_AGENT, *range(200, 230)]
    payload = encode(msg, order)
    if case == "repeated-option":  # a second option 50, as RFC 3396 concatenation writes it
        payload = payload.replace(bytes([50, 4]), bytes([50, 2, 100, 64, 50, 2]), 1)
    dport = 68 if case == "not-dhcp" else 67  # a reply crossing the interface: not ours
    frame = build_frame(BROADCAST_MAC, bytes.fromhex(mac.replace(":", "")), b"", IPv4Address(0),
                        BROADCAST_IP, dport, payload, 68)
    _counted(fp, frame, reason)


def test_a_circuit_key_is_checked_against_the_lease_bytes(fp: FastPath) -> None:
    """The circuit map is keyed by a hash of option 82: a lease stored under a request's
    key but granted on other option 82 bytes (a hash collision) is not that request's."""
    s, _, _ = server(_with_class("circuit-id"))
    fp.put_subnet(replace(subnet_options(s.config.pools["residential"].subnets[0]),  # type: ignore[type-var]
                          network=int(IPv4Address("100.64.0.0"))))
    mac, value = "02:00:00:00:00:77", relay82("olt7 xpon 0/7/7:7", "res-7")
    lease = bound_lease(mac=mac, identity="circuit:olt7 xpon 0/7/7:7", relay_agent=value,
                        giaddr=int(RELAY), address=int(IPv4Address("100.64.0.77")))
    entry = entry_for(lease, s.config)
    assert entry is not None and entry.by_circuit
    frame = _frame(request(MessageType.REQUEST, mac, requested="100.64.0.77", giaddr=str(RELAY),
                           extra={Opt.RELAY_AGENT: value}), b"", True)
    try:
        fp.put(entry)
        assert fp.run(frame).action == XDP_TX  # C and Python hash alike
        elsewhere = relay82("olt8", "r")
        other = replace(entry, relay=bytes([82, len(elsewhere)]) + elsewhere)
        fp.circuits[fp._key(*entry.key)] = fp._leaf(other)
        _counted(fp, frame, "pass_miss")
    finally:
        fp.delete(entry.key)


def test_without_a_fresh_heartbeat_the_program_answers_nothing(fp: FastPath) -> None:
    """A program whose agent is gone stops extending leases once the agent's last heartbeat
    is older than its window (issue 14, point 2), and answers again after a beat."""
    _, _, frame, _ = _slow_and_fast(fp, "renewing", b"", None, False)  # answered: fresh beat
    hb = fp._heartbeat[fp._heartbeat.Key(0)]
    try:
        hb.beat = fp._sample_clock()[0] - 5 * fp.clock.hz  # the kernel's jiffies, 5 s ago
        hb.window = 4 * fp.clock.hz
        fp._heartbeat[fp._heartbeat.Key(0)] = hb
        before = fp.counters()
        assert fp.run(frame).action == XDP_PASS
        after = fp.counters()
        assert after["pass_no_agent"] == before["pass_no_agent"] + 1
        assert after["ack"] == before["ack"]
        hb.window = 6 * fp.clock.hz  # the same beat, a longer window: in authority
        fp._heartbeat[fp._heartbeat.Key(0)] = hb
        assert fp.run(frame).action == XDP_TX
    finally:
        fp.beat()
    assert fp.run(frame).action == XDP_TX
    when, window = fp.last_beat()
    assert abs(when - time.time()) < 1 and window == fastpath.FAST_PATH_AUTHORITY


def test_option_82_is_answered_only_on_an_interface_that_trusts_it(fp: FastPath) -> None:
    """Issue 14, point 4: on a port with no access node, a request carrying option 82 goes
    to the slow path (which drops or strips it); one without it is answered as ever."""
    with82 = _slow_and_fast(fp, "renewing", b"", O82, False, identity="circuit-id")[2]
    bare = _slow_and_fast(fp, "renewing", b"", None, False)[2]
    try:
        fp.put_interface(1, SERVER_MAC, trust_option82=False)
        before = fp.counters()
        assert fp.run(with82).action == XDP_PASS
        assert fp.counters()["pass_untrusted_82"] == before["pass_untrusted_82"] + 1
        assert fp.run(bare).action == XDP_TX
    finally:
        fp.put_interface(1, SERVER_MAC)
    assert fp.run(with82).action == XDP_TX


def test_the_verifier_accepts_the_program_with_half_its_budget_to_spare(fp: FastPath) -> None:
    """The verifier explores at most 1,000,000 instructions. Another kernel's verifier may
    explore more for the same program, and a change of shape can nearly double the count
    (splitting reply() once did: 369k -> 634k), so the program keeps half the budget free."""
    from bng_operator.agent.dataplane.loader import verified_instructions

    n = verified_instructions(fp.fd)
    if n is None:
        pytest.skip("this kernel does not report verified_insns (Linux < 5.16)")
    assert 1000 < n < 500_000, n


@pytest.fixture(scope="module")
def valid_frame(fp: FastPath) -> bytes:
    s, _, _ = server(_with_class("mac"))
    lease = bound_lease(relay_agent=relay82("c", "r"))
    _install(fp, s, lease)
    msg = request(MessageType.DISCOVER, CLIENT, prl=bytes([1, 3, 6]),
                  extra={Opt.RELAY_AGENT: relay82("c", "r")})
    frame = _frame(msg, b"", False)
    assert fp.run(frame).action == XDP_TX
    return frame


@settings(max_examples=400, deadline=None)
@given(cut=st.integers(14, 420))  # BPF_PROG_TEST_RUN refuses frames under 14 bytes
def test_truncated_frames_never_get_a_reply(fp: FastPath, valid_frame: bytes, cut: int) -> None:
    short = valid_frame[: min(cut, len(valid_frame) - 1)]
    assert fp.run(short).action in (XDP_PASS, 1)  # PASS or DROP


@settings(max_examples=400, deadline=None)
@given(pos=st.integers(282, 420), value=st.integers(0, 255))
def test_corrupted_options_never_crash_and_never_misreply(fp: FastPath, valid_frame: bytes,
                                                          pos: int, value: int) -> None:
    frame = bytearray(valid_frame)
    frame[min(pos, len(frame) - 1)] = value
    r = fp.run(bytes(frame))
    if r.action == XDP_TX:  # only a still-valid request may be answered, and well-formed
        f = parse_frame(r.frame)
        assert f.payload[0] == 2 and len(f.payload) >= fastpath.MIN_REPLY_DHCP_LEN
    else:
        assert r.action in (XDP_PASS, 1)


def test_a_restart_in_another_xdp_mode_moves_the_program(fp: FastPath, netlab: NetLab) -> None:
    """An agent restarted with another --xdp-mode must run in that mode, not adopt the
    program where it was: the kernel runs one mode at a time."""
    node, peer = netlab.namespace("bng"), netlab.namespace("sw")
    netlab.link(node, "access0", peer, "up0")
    try:
        assert fp.attach("access0", node, "generic") == "attached"
        assert netlink.xdp_program("access0", node) == (program_id(fp.fd), "generic")
        assert fp.attach("access0", node, "generic") == "adopted"
        fp.attach("access0", node, "native")
        assert netlink.xdp_program("access0", node) == (program_id(fp.fd), "native")
    finally:
        netlink.detach_xdp("access0", node, "native")
        netlink.detach_xdp("access0", node, "generic")

"""The XDP fast path under BPF_PROG_TEST_RUN: its replies equal the slow path's, field by field."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bng_operator.agent.dataplane import fastpath
from bng_operator.agent.dataplane.fastpath import XDP_PASS, XDP_TX, FastPath
from bng_operator.agent.dhcp.codec import HEADER_LEN, MAGIC, Message, MessageType, Opt, encode
from bng_operator.agent.dhcp.server import Context
from bng_operator.agent.dhcp.transport import (
    BROADCAST_IP,
    BROADCAST_MAC,
    build_frame,
    parse_frame,
    reply_destination,
)
from bng_operator.api import SubscriberClass
from bng_operator.api.documents import parse
from tests.dhcp_env import server
from tests.dhcp_messages import relay82, request

HEADER = Path(fastpath.SOURCE).parent / "lib" / "dhcp.h"
SERVER_MAC = bytes.fromhex("02aabbccddee")
CLIENT = "02:00:00:00:00:01"
SERVER_ID = IPv4Address("100.64.0.1")
RELAY = IPv4Address("100.64.0.2")
RELAY_MAC = bytes.fromhex("02000000cafe")
ORDER = [Opt.MESSAGE_TYPE, Opt.REQUESTED_IP, Opt.SERVER_ID, Opt.PARAM_REQUEST, Opt.HOSTNAME,
         Opt.RELAY_AGENT]
WRITTEN = {Opt.MESSAGE_TYPE, Opt.SERVER_ID, Opt.LEASE_TIME, Opt.RENEWAL_TIME,
           Opt.REBINDING_TIME, Opt.SUBNET_MASK, Opt.ROUTER, Opt.DNS, Opt.RELAY_AGENT}
TAGS = {"untagged": b"", "dot1q": b"\x81\x00\x00\x64", "qinq": b"\x88\xa8\x00\x0a\x81\x00\x00\x14"}


def test_constants_agree_with_the_c_header() -> None:
    h = HEADER.read_text()
    defines = {m[0]: m[1] for m in re.findall(r"#define (\w+) ([^/\n]+)", h)}
    expr = defines["REPLY_DHCP_LEN"].replace("BOOTP_FIXED", defines["BOOTP_FIXED"]).replace(
        "REPLY_OPTIONS_LEN", defines["REPLY_OPTIONS_LEN"])
    assert eval(expr) == fastpath.REPLY_DHCP_LEN
    assert int(defines["MAX_RELAY_AGENT_LEN"]) == fastpath.MAX_RELAY_AGENT_LEN
    enum = re.search(r"enum fastpath_counter \{(.*?)\};", h, re.S)
    assert enum is not None
    names = [n.strip().split("=")[0].strip().removeprefix("CNT_").lower()
             for n in enum.group(1).split(",") if n.strip()]
    assert names == [*fastpath.COUNTERS, "max"]
    assert int(defines["BOOTP_FIXED"]) == HEADER_LEN


@pytest.fixture(scope="module")
def fp(bpffs: Path) -> Iterator[FastPath]:
    f = FastPath(max_subscribers=1024)
    f.put_interface(1, SERVER_MAC)  # BPF_PROG_TEST_RUN runs as if received on lo (ifindex 1)
    yield f
    f.close()


def _everyone(objs):  # type: ignore[no-untyped-def]
    """The samples plus a class for every client, identified by MAC (the fast path's key)."""
    extra = parse({"apiVersion": "bng.dev/v1alpha1", "kind": "SubscriberClass",
                   "metadata": {"name": "everyone"},
                   "spec": {"priority": 10000, "pool": "residential", "identity": "mac"}})
    return [o for o in objs if not isinstance(o, SubscriberClass)] + [extra]


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


def _slow_and_fast(fp: FastPath, kind: str, tags: bytes, o82: bytes | None, relayed: bool,
                   ) -> tuple[Message, bytes, bytes, bytes]:
    s, _, _ = server(_everyone)
    vlans = tuple(struct.unpack_from("!H", tags, i + 2)[0] & 0xFFF for i in range(0, len(tags), 4))
    ctx = Context("access0", (SERVER_ID,), vlans)
    kw: dict[str, object] = {"prl": bytes([1, 3, 6]), "giaddr": str(RELAY) if relayed else "0.0.0.0"}
    if o82 is not None:
        kw["extra"] = {Opt.RELAY_AGENT: o82}
    offer = s.handle(request(MessageType.DISCOVER, CLIENT, **kw), ctx).reply  # type: ignore[arg-type]
    assert offer is not None
    ack = s.handle(request(MessageType.REQUEST, CLIENT, requested=str(offer.yiaddr),
                           server_id=str(SERVER_ID), **kw), ctx)  # type: ignore[arg-type]
    assert ack.kind == "ack"
    lease = s.by_identity[f"mac:{CLIENT}"]
    fp.put_pool(0, "255.255.240.0", "100.64.0.1", ["192.0.2.53", "192.0.2.54"])
    fp.put_subscriber(CLIENT, vlans[0] if vlans else 0, str(IPv4Address(lease.address)),
                      str(SERVER_ID), lease.expires - s.clock() + time.time(), 4 * 3600, 0)
    addr = str(IPv4Address(lease.address))
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
    assert result.action == XDP_TX, fp.counters()
    # The slow path's reply as it goes on the wire (its order list honours option 55).
    return req, encode(slow.reply, slow.reply_order), frame, result.frame


@pytest.mark.parametrize("relayed", [False, True], ids=["direct", "relayed"])
@pytest.mark.parametrize("o82", [None, relay82("olt1 xpon 0/1/2:3", "res-4711") + b"\x09\x02ab"],
                         ids=["no82", "82"])
@pytest.mark.parametrize("tags", list(TAGS.values()), ids=list(TAGS))
@pytest.mark.parametrize("kind", ["discover", "selecting", "init-reboot", "renewing"])
def test_fast_reply_equals_slow_reply(fp: FastPath, kind: str, tags: bytes, o82: bytes | None,
                                      relayed: bool) -> None:
    req, slow_wire, frame_in, frame_out = _slow_and_fast(fp, kind, tags, o82, relayed)
    f_out = parse_frame(frame_out)
    fast_fields, fast_opts = _reply_fields(f_out.payload)
    slow_fields, slow_opts = _reply_fields(slow_wire)
    assert fast_fields == slow_fields
    assert set(slow_opts) <= WRITTEN  # the client asked for 1, 3, 6 only
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


def test_ack_refreshes_the_expiry_in_the_map(fp: FastPath) -> None:
    _slow_and_fast(fp, "discover", b"", None, False)
    before = fp.subscriber_expiry_ns(CLIENT, 0)
    time.sleep(0.01)
    _slow_and_fast(fp, "renewing", b"", None, False)
    assert fp.subscriber_expiry_ns(CLIENT, 0) > before


def _counted(fp: FastPath, frame: bytes, reason: str) -> None:
    before = fp.counters()[reason]
    r = fp.run(frame)
    assert r.action == XDP_PASS
    assert fp.counters()[reason] == before + 1


@pytest.mark.parametrize(("case", "reason"), [
    ("miss", "pass_miss"), ("expired", "pass_expired"), ("wrong-address", "pass_wrong_address"),
    ("other-server", "pass_wrong_address"), ("release", "pass_other_type"),
    ("inform", "pass_other_type"), ("decline", "pass_other_type"), ("overload", "pass_layout"),
    ("many-options", "pass_layout"), ("not-dhcp", "pass_not_dhcp"),
])
def test_everything_else_goes_to_the_slow_path(fp: FastPath, case: str, reason: str) -> None:
    fp.put_pool(0, "255.255.240.0", "100.64.0.1", ["192.0.2.53"])
    fp.put_subscriber(CLIENT, 0, "100.64.0.20", str(SERVER_ID),
                      time.time() - 1 if case == "expired" else time.time() + 3600, 3600, 0)
    mac = "02:00:00:00:00:99" if case == "miss" else CLIENT
    kind = {"release": MessageType.RELEASE, "inform": MessageType.INFORM,
            "decline": MessageType.DECLINE}.get(case, MessageType.REQUEST)
    kw: dict[str, object] = {"requested": "100.64.0.20"}
    if case == "wrong-address":
        kw["requested"] = "100.64.0.21"
    if case == "other-server":
        kw["server_id"] = "10.9.9.9"
    if case == "overload":
        kw["extra"] = {Opt.OVERLOAD: b"\x01"}
    if case == "many-options":
        kw["extra"] = {200 + i: b"x" for i in range(8)}
    msg = request(kind, mac, **kw)  # type: ignore[arg-type]
    payload = encode(msg, [Opt.MESSAGE_TYPE, Opt.REQUESTED_IP, Opt.SERVER_ID, Opt.OVERLOAD,
                           *range(200, 208)])
    dport = 68 if case == "not-dhcp" else 67  # a reply crossing the interface: not ours
    frame = build_frame(BROADCAST_MAC, bytes.fromhex(mac.replace(":", "")), b"", IPv4Address(0),
                        BROADCAST_IP, dport, payload, 68)
    _counted(fp, frame, reason)


@pytest.fixture(scope="module")
def valid_frame(fp: FastPath) -> bytes:
    fp.put_pool(0, "255.255.240.0", "100.64.0.1", ["192.0.2.53"])
    fp.put_subscriber(CLIENT, 0, "100.64.0.20", str(SERVER_ID), time.time() + 3600, 3600, 0)
    msg = request(MessageType.DISCOVER, CLIENT, prl=bytes([1, 3, 6]),
                  extra={Opt.RELAY_AGENT: relay82("c", "r")})
    frame = _frame(msg, b"", False)
    assert fp.run(frame).action == XDP_TX
    return frame


@settings(max_examples=400, deadline=None)
@given(cut=st.integers(14, 341))  # BPF_PROG_TEST_RUN refuses frames under 14 bytes
def test_truncated_frames_never_get_a_reply(fp: FastPath, valid_frame: bytes, cut: int) -> None:
    assert fp.run(valid_frame[:cut]).action in (XDP_PASS, 1)  # PASS or DROP


@settings(max_examples=400, deadline=None)
@given(pos=st.integers(282, 341), value=st.integers(0, 255))
def test_corrupted_options_never_crash_and_never_misreply(fp: FastPath, valid_frame: bytes,
                                                          pos: int, value: int) -> None:
    frame = bytearray(valid_frame)
    frame[pos] = value
    r = fp.run(bytes(frame))
    if r.action == XDP_TX:  # only a still-valid request may be answered, and well-formed
        f = parse_frame(r.frame)
        assert f.payload[0] == 2 and len(f.payload) == fastpath.REPLY_DHCP_LEN
    else:
        assert r.action in (XDP_PASS, 1)

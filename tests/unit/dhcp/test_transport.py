"""Frames we build are what dpkt (an independent parser) reads, checksums included."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address

import dpkt
import pytest

from bng_lab.messages import request
from bng_operator.agent.dhcp.codec import MessageType, Opt, decode, encode
from bng_operator.agent.dhcp.transport import (
    BROADCAST_IP,
    BROADCAST_MAC,
    Malformed,
    _checksum,
    build_frame,
    dhcp_server_filter,
    is_discover,
    parse_frame,
    reply_destination,
)

MAC = bytes.fromhex("020000000001")
SRV = bytes.fromhex("02000000aaaa")


def _payload() -> bytes:
    return encode(request(MessageType.DISCOVER, hostname="x" * 7), [Opt.MESSAGE_TYPE, Opt.HOSTNAME])


@pytest.mark.parametrize("tags", [b"", b"\x81\x00\x00\x64", b"\x88\xa8\x00\x0a\x81\x00\x00\x14"])
def test_built_frames_parse_in_dpkt_with_valid_checksums(tags: bytes) -> None:
    payload = _payload() + b"z"  # odd length exercises checksum padding
    frame = build_frame(MAC, SRV, tags, IPv4Address("100.64.0.1"), IPv4Address("100.64.3.4"),
                        68, payload)
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    assert isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP)
    assert bytes(ip.data.data) == payload and ip.data.dport == 68 and ip.data.sport == 67
    # Recompute with dpkt from zeroed fields and compare.
    want_ip, want_udp = ip.sum, ip.data.sum
    ip.sum = 0
    ip.data.sum = 0
    again = dpkt.ip.IP(bytes(ip))
    assert (again.sum, again.data.sum) == (want_ip, want_udp)


@pytest.mark.parametrize(("tags", "vlans"), [(b"", ()), (b"\x81\x00\x20\x64", (100,)),
                                             (b"\x88\xa8\x00\x0a\x81\x00\x00\x14", (10, 20))])
def test_parse_frame_reads_tags_addresses_and_payload(tags: bytes, vlans: tuple[int, ...]) -> None:
    payload = _payload()
    wire = build_frame(BROADCAST_MAC, MAC, tags, IPv4Address(0), BROADCAST_IP, 67, payload, 68)
    f = parse_frame(wire)
    assert (f.src_mac, f.dst_mac, f.tags, f.vlans) == (MAC, BROADCAST_MAC, tags, vlans)
    assert f.payload == payload and f.dst_ip == BROADCAST_IP
    assert decode(f.payload).type == MessageType.DISCOVER


def test_stripped_tag_goes_first() -> None:
    wire = build_frame(BROADCAST_MAC, MAC, b"\x81\x00\x00\x14", IPv4Address(0), BROADCAST_IP, 67,
                       _payload(), 68)
    f = parse_frame(wire, stripped_tag=b"\x88\xa8\x00\x0a")
    assert f.vlans == (10, 20)


@pytest.mark.parametrize("cut", [10, 20, 40, 300])
def test_truncated_frames_are_malformed(cut: int) -> None:
    wire = build_frame(BROADCAST_MAC, MAC, b"", IPv4Address(0), BROADCAST_IP, 67, _payload(), 68)
    with pytest.raises(Malformed):
        parse_frame(wire[:cut])


@pytest.mark.parametrize(("giaddr", "ciaddr", "broadcast", "kind", "expect"), [
    ("198.51.100.2", "0.0.0.0", False, MessageType.OFFER, ("src", "198.51.100.2", 67)),
    ("0.0.0.0", "0.0.0.0", False, MessageType.NAK, ("bcast", "255.255.255.255", 68)),
    ("0.0.0.0", "100.64.0.9", False, MessageType.ACK, ("src", "100.64.0.9", 68)),
    ("0.0.0.0", "0.0.0.0", True, MessageType.OFFER, ("bcast", "255.255.255.255", 68)),
    ("0.0.0.0", "0.0.0.0", False, MessageType.OFFER, ("chaddr", "100.64.0.20", 68)),
])
def test_reply_destination_follows_rfc2131_4_1(giaddr: str, ciaddr: str, broadcast: bool,
                                               kind: MessageType, expect: tuple[str, str, int]) -> None:
    req = request(MessageType.DISCOVER, "02:00:00:00:00:01", giaddr=giaddr, ciaddr=ciaddr,
                  broadcast=broadcast)
    reply = request(kind)
    reply.options[Opt.MESSAGE_TYPE] = bytes([kind])
    reply.yiaddr = IPv4Address("100.64.0.20")
    src = bytes.fromhex("0200000000ff")
    frame = parse_frame(build_frame(BROADCAST_MAC, src, b"", IPv4Address(0), BROADCAST_IP, 67,
                                    encode(req, [Opt.MESSAGE_TYPE]), 68))
    mac, ip, port = reply_destination(req, reply, frame)
    want_mac = {"src": src, "bcast": BROADCAST_MAC, "chaddr": MAC}[expect[0]]
    assert (mac, str(ip), port) == (want_mac, expect[1], expect[2])


def test_socket_filter_is_well_formed() -> None:
    prog = dhcp_server_filter()
    assert prog[-1] == (0x06, 0, 0, 0) and len(prog) < 64
    for i, (code, jt, jf, _) in enumerate(prog):
        if code in (0x15, 0x45):  # conditional jumps stay inside the program
            assert i + 1 + max(jt, jf) < len(prog)
    struct.pack("=HBBI", *prog[0])


def _wire(kind: MessageType, order: list[int], tags: bytes = b"") -> bytes:
    msg = request(kind, hostname="cpe", requested="100.64.0.9")
    return build_frame(BROADCAST_MAC, MAC, tags, IPv4Address(0), BROADCAST_IP, 67,
                       encode(msg, order), 68)


FIRST = [Opt.MESSAGE_TYPE, Opt.HOSTNAME]
LATER = [Opt.HOSTNAME, Opt.REQUESTED_IP, Opt.MESSAGE_TYPE]


@pytest.mark.parametrize(("wire", "expected"), [
    (_wire(MessageType.DISCOVER, FIRST), True),
    (_wire(MessageType.DISCOVER, FIRST, b"\x81\x00\x00\x64"), True),
    (_wire(MessageType.DISCOVER, FIRST, b"\x88\xa8\x00\x0a\x81\x00\x00\x14"), True),
    (_wire(MessageType.DISCOVER, LATER), True),  # third option: still seen
    (_wire(MessageType.REQUEST, FIRST), False),
    (_wire(MessageType.RELEASE, LATER, b"\x81\x00\x00\x64"), False),
    (_wire(MessageType.DISCOVER, FIRST)[:280], False),  # cut before its options
    (b"", False),
    (b"\x00" * 14, False),
])
def test_is_discover_looks_at_option_53_only(wire: bytes, expected: bool) -> None:
    assert is_discover(wire) is expected
    if expected:  # the quick look agrees with the full decode
        assert decode(parse_frame(wire).payload).type == MessageType.DISCOVER


def test_a_discover_with_option_53_far_down_is_taken_for_another_request() -> None:
    fifth = [Opt.REQUESTED_IP, Opt.HOSTNAME, Opt.REQUESTED_IP, Opt.HOSTNAME, Opt.MESSAGE_TYPE]
    wire = _wire(MessageType.DISCOVER, fifth)
    assert not is_discover(wire)  # handled first with the REQUESTs: never worse off


def _rfc1071(data: bytes) -> int:
    """The checksum as RFC 1071 spells it out: 16-bit words summed, carries folded back."""
    data += b"\x00" * (len(data) % 2)
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize("data", [b"", b"\x00" * 8, b"\xff\xff", b"\xff" * 7, b"\xff\xfe\x00\x01",
                                  b"\x45\x00\x01\x48" * 5, *(random.Random(n).randbytes(n)
                                                             for n in (1, 2, 3, 20, 299, 300, 1500))])
def test_checksum_is_rfc_1071s(data: bytes) -> None:
    assert _checksum(data) == _rfc1071(data)

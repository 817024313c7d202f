"""The access data path (bpf/access_qos.c) on crafted frames with BPF_PROG_RUN: ARP for the
gateway answered in XDP on the session's tags; upstream, anti-spoofing by address, MAC and
tags, the tags taken off, the packet counted and (shaped) redirected to its interface's
IFB; downstream, the session's MAC and tags put on, its class in skb->priority. Untagged,
802.1Q and QinQ, DHCP, and IPv4 options. And the C headers and the Python mirror agree."""

from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bng_operator.agent.dataplane import classifiers, qos
from bng_operator.agent.dataplane.loader import BPF_DIR, _prog_run
from bng_operator.agent.dataplane.loader import test_run as run_prog
from bng_operator.agent.dhcp.transport import build_frame
from bng_operator.agent.qos import plan
from bng_operator.agent.qos.plan import Access
from tests.bpf.cheader import enum_names
from tests.bpf.hooks import check_pinned_links, qdiscs, tcx_programs

HEADER = Path(BPF_DIR) / "lib" / "qos.h"
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
SUB, OTHER, SERVER = IPv4Address("100.64.0.20"), IPv4Address("100.64.0.21"), \
    IPv4Address("203.0.113.5")
GATEWAY = IPv4Address("100.64.0.1")
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
IF_MAC = bytes.fromhex("02aa00000001")
DOT1Q = b"\x81\x00\x00\x64"  # 802.1Q VLAN 100
QINQ = b"\x88\xa8\x00\xc8" + b"\x81\x00\x00\x0a"  # S-VLAN 200, C-VLAN 10
LO = 1  # BPF_PROG_RUN runs as if on lo


def test_constants_agree_with_the_c_headers() -> None:
    h = HEADER.read_text()
    assert enum_names(h, "qos_stat", "QOS_") == [*qos.STATS, "stats_max"]
    assert f"#define QOS_INTERFACES {qos.QOS_INTERFACES}" in h
    for name, value in (("QOS_GROUP_CLASS_BASE", plan.GROUP_CLASS_BASE),
                        ("QOS_FIRST_GROUP", plan.FIRST_GROUP), ("QOS_LAST_GROUP", plan.LAST_GROUP)):
        assert re.search(rf"#define {name} (0x[0-9A-F]+|\d+)\n", h) and \
            int(re.search(rf"#define {name} (\S+)", h).group(1), 0) == value  # type: ignore[union-attr]
    access = (Path(BPF_DIR) / "lib" / "access.h").read_text()
    assert f"#define ACCESS_NEXT_ARP {qos.ACCESS_NEXT_ARP}" in access
    assert re.findall(r'BPF_TABLE\("\w+", [^,]+, [^,]+, (\w+),', h) == list(qos.MAPS)


def test_a_slot_holds_a_session_as_the_hash_does(path: qos.QosPath) -> None:
    # qos_slots's entries are qos_sessions's values: 36 bytes per subscriber of capacity
    # (docs/qos.md), written by put() from the one Leaf
    assert path.slots_map.Leaf is path.sessions.Leaf or \
        path.slots_map.Leaf._fields_ == path.sessions.Leaf._fields_
    assert ctypes.sizeof(path.slots_map.Leaf) == 36
    assert path.slots_map.max_entries == path.max_subscribers


@pytest.mark.parametrize(("tags", "vlans"), [
    (b"", (0, 0, 0)), (DOT1Q, (0x8100, 100, 0)), (QINQ, (0x88A8, 200, 10)),
    (b"\x81\x00\xe0\x64", (0x8100, 100, 0)),  # priority bits are not the VLAN
])
def test_a_sessions_tags_are_read_as_the_program_compares_them(
        tags: bytes, vlans: tuple[int, int, int]) -> None:
    assert Access(tags=tags).vlans == vlans


@pytest.fixture(scope="module")
def path() -> Iterator[qos.QosPath]:
    p = qos.QosPath(max_subscribers=64)
    leaf = p.interfaces.Leaf()
    leaf.ifb = LO
    for i, b in enumerate(IF_MAC):
        leaf.mac[i] = b
    p.interfaces[p.interfaces.Key(LO)] = leaf
    yield p
    p.close()


class _SkbCtx(ctypes.Structure):
    """The head of struct __sk_buff, up to priority (what BPF_PROG_RUN hands back)."""

    _fields_ = [(n, ctypes.c_uint32) for n in (
        "len", "pkt_type", "mark", "queue_mapping", "protocol", "vlan_present", "vlan_tci",
        "vlan_proto", "priority")] + [("rest", ctypes.c_uint8 * (192 - 36))]


@dataclass(frozen=True)
class TcRun:
    action: int
    frame: bytes
    priority: int


def run_tc(fd: int, frame: bytes, priority: int = 0) -> TcRun:
    out = ctypes.create_string_buffer(4096)
    ctx_in, ctx_out = _SkbCtx(priority=priority), _SkbCtx()
    o = _prog_run(fd, frame, data_out=ctypes.addressof(out), data_size_out=len(out),
                  ctx_in=ctypes.addressof(ctx_in), ctx_size_in=ctypes.sizeof(ctx_in),
                  ctx_out=ctypes.addressof(ctx_out), ctx_size_out=ctypes.sizeof(ctx_out))
    return TcRun(o.retval, out.raw[: o.data_size_out], ctx_out.priority)


def _udp(src: IPv4Address, dst: IPv4Address, size: int = 200, tags: bytes = b"",
         src_mac: bytes = MAC_A, dport: int = 5001) -> bytes:
    return build_frame(MAC_B, src_mac, tags, src, dst, dport, bytes(size), src_port=5001)


def _arp(sender: IPv4Address, target: IPv4Address, tags: bytes = b"", mac: bytes = MAC_A,
         op: int = 1) -> bytes:
    return (b"\xff" * 6 + mac + tags + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04" +
            op.to_bytes(2, "big") + mac + sender.packed + bytes(6) + target.packed)


def _delta(path: qos.QosPath, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in path.stats().items() if v != before[k]}


@pytest.fixture
def session(path: qos.QosPath) -> Iterator[Callable[..., None]]:
    put: list[IPv4Address] = []

    def make(address: IPv4Address = SUB, minor: int = 7, tags: bytes = b"",
             mac: bytes = MAC_A) -> None:
        path.put(int(address), minor, Access(mac=mac, tags=tags, gateway=int(GATEWAY)))
        put.append(address)

    yield make
    for a in put:
        path.delete(int(a))



# --- downstream ---------------------------------------------------------------------------


@pytest.mark.parametrize(("tags", "inline"), [
    (b"", b""),
    (DOT1Q, b""),  # one tag: in the skb's VLAN field, as the NIC inserts it
    (QINQ, b"\x81\x00\x00\x0a"),  # the C-tag goes into the frame, the S-tag in the field
])
def test_download_gets_the_sessions_mac_and_tags_and_its_class(
        path: qos.QosPath, session: Callable[..., None], tags: bytes, inline: bytes) -> None:
    session(tags=tags)
    frame = build_frame(IF_MAC, IF_MAC, b"", SERVER, SUB, 5001, bytes(200), src_port=5001)
    before = path.stats()
    r = run_tc(path._fds["qos_down"], frame)
    assert r.action == TC_ACT_OK
    assert r.priority == 0x10007
    assert r.frame[:6] == MAC_A
    assert r.frame[12:12 + len(inline) + 2] == inline + b"\x08\x00"
    assert _delta(path, before) == {"down_shaped": 1}
    c = path.counters(int(SUB))
    assert (c.packets_down, c.bytes_down, c.packets_up) == (1, len(frame) - 14, 0)  # IP bytes
    assert abs(c.last_seen_ns - time.monotonic_ns()) < 500_000_000  # jiffies, converted
    assert path.installed()[int(SUB)] == 0x10007


def test_an_unshaped_session_is_sent_with_no_class(
        path: qos.QosPath, session: Callable[..., None]) -> None:
    session(minor=0)
    frame = build_frame(IF_MAC, IF_MAC, b"", SERVER, SUB, 5001, bytes(200), src_port=5001)
    r = run_tc(path._fds["qos_down"], frame)
    assert (r.action, r.priority, r.frame[:6]) == (TC_ACT_OK, 0, MAC_A)


@pytest.mark.parametrize(("frame", "action", "stat"), [
    # routed to the access subnets (the fixed neighbour: our own MAC both ways), no session
    (build_frame(IF_MAC, IF_MAC, b"", SERVER, OTHER, 1, bytes(64), src_port=1), TC_ACT_SHOT,
     "down_no_session"),
    (_udp(SERVER, OTHER), TC_ACT_OK, "down_unknown"),  # another neighbour's: not ours
    (MAC_B + MAC_A + b"\x08\x06" + bytes(28), TC_ACT_OK, "down_not_ipv4"),  # ARP
])
def test_download_to_anything_else(path: qos.QosPath, frame: bytes, action: int,
                                   stat: str) -> None:
    before = path.stats()
    assert run_tc(path._fds["qos_down"], frame).action == action
    assert _delta(path, before) == {stat: 1}


def _tcp(src: IPv4Address, dst: IPv4Address, payload: int) -> bytes:
    """Ethernet / IPv4 / TCP with 12 bytes of options (timestamps): 52 bytes of headers."""
    tcp = struct.pack("!HHIIBBHHH", 5201, 40000, 1, 1, 8 << 4, 0x10, 512, 0, 0) + bytes(12)
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + payload, 0, 0, 64, 6, 0,
                      src.packed, dst.packed)
    return MAC_B + MAC_A + b"\x08\x00" + iph + tcp + bytes(payload)


class _GsoSkb(ctypes.Structure):
    """struct __sk_buff as far as gso_size: zero but for the GSO fields."""

    _fields_ = [("_before", ctypes.c_uint8 * 164), ("gso_segs", ctypes.c_uint32),
                ("_between", ctypes.c_uint8 * 8), ("gso_size", ctypes.c_uint32)]


def test_a_gso_packet_counts_as_its_segments_with_their_headers(path: qos.QosPath) -> None:
    """TSO sends (and GRO hands up) one packet of many segments, its headers once: on the
    wire each segment has its own, and so do the counters (IP bytes, no Ethernet header)."""
    bulk = IPv4Address("100.64.0.30")
    path.put(int(bulk), 11)
    try:
        frame = _tcp(SERVER, bulk, 3 * 1000)  # BPF_PROG_RUN takes at most ~3.7 kB
        ctx = _GsoSkb(gso_segs=3, gso_size=1000)
        o = _prog_run(path._fds["qos_down"], frame, ctx_in=ctypes.addressof(ctx),
                      ctx_size_in=ctypes.sizeof(ctx))
        assert o.retval == TC_ACT_OK
        c = path.counters(int(bulk))
        assert (c.packets_down, c.bytes_down) == (3, 3 * (52 + 1000))
    finally:
        path.delete(int(bulk))


# --- upstream -----------------------------------------------------------------------------


@pytest.mark.parametrize("tags", [b"", DOT1Q, QINQ])
def test_upload_from_its_session_loses_its_tags_and_goes_to_the_ifb(
        path: qos.QosPath, session: Callable[..., None], tags: bytes) -> None:
    session(tags=tags)
    frame = _udp(SUB, SERVER, tags=tags)
    before = path.stats()
    r = run_tc(path._fds["qos_up"], frame)
    assert r.action == TC_ACT_REDIRECT
    assert r.priority == 0x10007
    assert r.frame == frame[:12] + frame[12 + len(tags):]  # untagged now
    assert _delta(path, before) == {"up_shaped": 1}
    c = path.counters(int(SUB))
    assert (c.packets_up, c.bytes_up) == (1, len(frame) - len(tags) - 14)


def test_an_unshaped_session_goes_to_the_stack(
        path: qos.QosPath, session: Callable[..., None]) -> None:
    session(minor=0, tags=DOT1Q)
    r = run_tc(path._fds["qos_up"], _udp(SUB, SERVER, tags=DOT1Q))
    assert (r.action, r.priority) == (TC_ACT_OK, 0)


def test_ipv4_options_do_not_hide_dhcp_or_the_source(
        path: qos.QosPath, session: Callable[..., None]) -> None:
    session()
    plain = _udp(SUB, SERVER, dport=67)
    # the same datagram with 4 bytes of options (IHL 6): NOP NOP NOP EOL
    ip = bytearray(plain[14:34])
    ip[0] = 0x46
    ip[2:4] = (int.from_bytes(ip[2:4], "big") + 4).to_bytes(2, "big")
    frame = plain[:14] + bytes(ip) + b"\x01\x01\x01\x00" + plain[34:]
    before = path.stats()
    assert run_tc(path._fds["qos_up"], frame).action == TC_ACT_OK
    assert _delta(path, before) == {"up_dhcp": 1}
    spoofed = frame.replace(SUB.packed, OTHER.packed, 1)
    spoofed = spoofed[:14 + 12] + OTHER.packed + spoofed[14 + 16:]
    spoofed = spoofed[:14 + 24 + 2] + (5001).to_bytes(2, "big") + spoofed[14 + 24 + 4:]
    before = path.stats()
    assert run_tc(path._fds["qos_up"], spoofed).action == TC_ACT_SHOT
    assert _delta(path, before) == {"spoof_source": 1}


@pytest.mark.parametrize(("frame", "stat"), [
    (_udp(OTHER, SERVER), "spoof_source"),  # an address no session holds (a neighbour's)
    (_udp(SUB, SERVER, src_mac=MAC_B), "spoof_mac"),  # its address from another MAC
    (_udp(SUB, SERVER, tags=b"\x81\x00\x00\x65"), "spoof_vlan"),  # from another VLAN
    (_udp(SUB, SERVER, tags=b"\x88\xa8\x00\xc8\x81\x00\x00\x0b"), "spoof_vlan"),  # C-VLAN
    (_udp(SUB, SERVER, tags=QINQ), "spoof_vlan"),  # tagged, the session is on DOT1Q
    (_udp(SUB, SERVER), "spoof_vlan"),  # untagged
    (MAC_B + MAC_A + DOT1Q + b"\x86\xdd" + bytes(60), "spoof_not_ipv4"),  # tagged IPv6
    (_arp(SUB, GATEWAY, DOT1Q), "arp_dropped"),  # ARP past XDP: the fast path is off
])
def test_anything_else_from_a_subscriber_is_dropped_and_counted(
        path: qos.QosPath, session: Callable[..., None], frame: bytes, stat: str) -> None:
    session(tags=DOT1Q)
    before = path.stats()
    assert run_tc(path._fds["qos_up"], frame).action == TC_ACT_SHOT
    assert _delta(path, before) == {stat: 1}
    assert path.counters(int(SUB)).packets_up == 0


@pytest.mark.parametrize(("frame", "stat"), [
    (_udp(IPv4Address(0), IPv4Address("255.255.255.255"), dport=67), "up_dhcp"),
    (_udp(IPv4Address(0), IPv4Address("255.255.255.255"), dport=67, tags=QINQ), "up_dhcp"),
    (MAC_B + MAC_A + b"\x86\xdd" + bytes(60), "up_not_ipv4"),  # untagged, not a subscriber's
])
def test_dhcp_and_untagged_non_ip_pass(path: qos.QosPath, frame: bytes, stat: str) -> None:
    before = path.stats()
    assert run_tc(path._fds["qos_up"], frame).action == TC_ACT_OK
    assert _delta(path, before) == {stat: 1}


def test_a_relayed_session_is_checked_by_address_only(path: qos.QosPath) -> None:
    path.put(int(SUB), 7)  # no Access: behind a relay
    try:
        r = run_tc(path._fds["qos_up"], _udp(SUB, SERVER, src_mac=MAC_B))
        assert r.action == TC_ACT_REDIRECT
        down = run_tc(path._fds["qos_down"], _udp(SERVER, SUB))
        assert (down.frame[:6], down.priority) == (MAC_B, 0x10007)  # the relay's L2 kept
    finally:
        path.delete(int(SUB))


def test_a_removed_session_returns_its_counters_and_its_traffic_is_dropped(
        path: qos.QosPath) -> None:
    path.put(int(OTHER), 9, Access(mac=MAC_A, gateway=int(GATEWAY)))
    frame = build_frame(IF_MAC, IF_MAC, b"", SERVER, OTHER, 5001, bytes(64), src_port=5001)
    for _ in range(2):
        run_tc(path._fds["qos_down"], frame)
    last = path.delete(int(OTHER))
    assert last.packets_down == 2
    assert int(OTHER) not in path.installed()
    assert path.counters(int(OTHER)).packets_down == 0
    assert run_tc(path._fds["qos_down"], frame).action == TC_ACT_SHOT
    assert run_tc(path._fds["qos_up"], _udp(OTHER, SERVER)).action == TC_ACT_SHOT


def test_a_session_whose_own_slot_is_taken_is_found_by_the_hash(path: qos.QosPath) -> None:
    first = IPv4Address(int(OTHER) + 64 * 3)  # the same slot as OTHER's (64 slots)
    path.put(int(first), 5, Access(mac=MAC_A, gateway=int(GATEWAY)))
    path.put(int(OTHER), 6, Access(mac=MAC_B, gateway=int(GATEWAY)))
    try:
        slot = int(OTHER) % path.max_subscribers
        assert path.slots_map[path.slots_map.Key(slot)].address == qos._u32(int(first))
        for address, priority, mac in ((first, 0x10005, MAC_A), (OTHER, 0x10006, MAC_B)):
            frame = build_frame(IF_MAC, IF_MAC, b"", SERVER, address, 5001, bytes(64),
                                src_port=5001)
            r = run_tc(path._fds["qos_down"], frame)
            assert (r.action, r.priority, r.frame[:6]) == (TC_ACT_OK, priority, mac)
            assert path.counters(int(address)).packets_down == 1
        path.delete(int(first))  # its slot is cleared: OTHER is still found, by the hash
        assert not path.slots_map[path.slots_map.Key(slot)].used
        frame = build_frame(IF_MAC, IF_MAC, b"", SERVER, OTHER, 5001, bytes(64), src_port=5001)
        assert run_tc(path._fds["qos_down"], frame).priority == 0x10006
        assert run_tc(path._fds["qos_up"], _udp(OTHER, SERVER, src_mac=MAC_B)).action \
            == TC_ACT_REDIRECT
    finally:
        for address in (first, OTHER):
            path.delete(int(address))


def test_slots_give_a_session_its_own_slot_when_free() -> None:
    slots = qos.Slots(8, {3})
    assert [slots.take(5), slots.take(5), slots.take(3), slots.take()] == [5, 0, 1, 2]
    slots.release(5)
    assert slots.take(5) == 5 and slots.take() == 4


# --- ARP (XDP) ----------------------------------------------------------------------------


@pytest.mark.parametrize("tags", [b"", DOT1Q, QINQ])
def test_arp_for_the_gateway_is_answered_on_the_sessions_tags(
        path: qos.QosPath, session: Callable[..., None], tags: bytes) -> None:
    session(tags=tags)
    before = path.stats()
    r = run_prog(path._fds[qos.ARP_PROGRAM], _arp(SUB, GATEWAY, tags))
    assert r.action == XDP_TX
    assert _delta(path, before) == {"arp_answered": 1}
    reply = r.frame
    assert reply[:6] == MAC_A and reply[6:12] == IF_MAC
    assert reply[12:12 + len(tags)] == tags
    arp = reply[12 + len(tags) + 2:]
    assert arp[6:8] == b"\x00\x02"  # a reply
    assert (arp[8:14], arp[14:18]) == (IF_MAC, GATEWAY.packed)  # the gateway is at our MAC
    assert (arp[18:24], arp[24:28]) == (MAC_A, SUB.packed)


@pytest.mark.parametrize(("frame", "action", "stat"), [
    (_arp(SUB, OTHER, DOT1Q), XDP_DROP, "arp_dropped"),  # not for its gateway
    (_arp(SUB, GATEWAY, b"\x81\x00\x00\x65"), XDP_DROP, "arp_dropped"),  # other VLAN
    (_arp(SUB, GATEWAY, DOT1Q, mac=MAC_B), XDP_DROP, "arp_dropped"),  # other MAC
    (_arp(SUB, GATEWAY, DOT1Q, op=2), XDP_DROP, "arp_dropped"),  # a reply
    (_arp(OTHER, GATEWAY, DOT1Q), XDP_DROP, "arp_dropped"),  # tagged, no session
    (_arp(OTHER, GATEWAY), XDP_PASS, "arp_passed"),  # untagged, no session: a relay's
])
def test_other_arp_is_dropped_or_left_to_the_kernel(
        path: qos.QosPath, session: Callable[..., None], frame: bytes, action: int,
        stat: str) -> None:
    session(tags=DOT1Q)
    before = path.stats()
    assert run_prog(path._fds[qos.ARP_PROGRAM], frame).action == action
    assert _delta(path, before) == {stat: 1}


# --- pins ---------------------------------------------------------------------------------


def test_a_new_generation_adopts_nothing_old_and_sweeps_the_old_pins(bpffs: Path) -> None:
    root = bpffs / "bngtest-qos-sweep"
    shutil.rmtree(root, ignore_errors=True)  # a crashed run's
    old = root / "qos" / "0123456789ab"
    old.mkdir(parents=True)
    (root / "qos" / "not-a-generation").mkdir()
    p = qos.QosPath(max_subscribers=64, pin_root=root)
    try:
        assert p.pin_dir is not None and (p.pin_dir / "qos_sessions").exists()
        assert (root / "access_next").exists()  # above the generations, shared
        assert p.remove_other_generations() == ["0123456789ab"]
        assert not old.exists() and (root / "qos" / "not-a-generation").exists()
        assert p.pin_dir.exists()
    finally:
        p.close()
        shutil.rmtree(root, ignore_errors=True)


# --- more sessions than one HTB root has class ids -----------------------------------------


@pytest.mark.parametrize(("priority", "classid"), [
    (0x20005, 0x1F002),  # group 2's session: to the root class holding group 2
    (0x0FFE0001, 0x1FFFE),  # the last group
    (0x10005, 0),  # the root's own (HTB finds it before any filter): no match
    (0, 0),  # unshaped
    (0x0FFF0001, 0),  # past the groups
])
def test_the_root_filter_sends_a_groups_session_to_its_group(
        path: qos.QosPath, priority: int, classid: int) -> None:
    r = run_tc(path._fds[qos.GROUP_FILTER], _udp(SERVER, SUB), priority=priority)
    assert r.action == classid


def _class_packets(ns: str, dev: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "tc", "-s", "class", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(
        r"class htb (\S+) .*?\n Sent \d+ bytes (\d+) pkt", out)}


def test_a_session_past_the_roots_class_ids_is_shaped_in_its_group(
        two_hosts: tuple[str, str]) -> None:
    from bng_operator import netlink

    ns_a, _ = two_hosts
    p = qos.QosPath(max_subscribers=64)
    tc = netlink.Tc(ns_a)
    try:
        p.attach("a0", "bngu-a0", ns=ns_a)
        tc.htb_group("a0", plan.group_class(3), 3)
        tc.htb_class("a0", 3 << 16 | 7, 50_000_000, 62_500)
        p.put(int(IPv4Address("10.9.0.2")), 3 << 16 | 7)  # routed: no L2 of its own
        subprocess.run(["ip", "netns", "exec", ns_a, "ping", "-c", "3", "-i", "0.2", "-W", "1",
                        "10.9.0.2"], check=True, capture_output=True)
        sent = _class_packets(ns_a, "a0")
        assert sent.get("3:7", 0) >= 3, sent  # the session's class, in group 3
        assert sent.get("1:f003", 0) >= 3, sent  # through the root's class holding group 3
    finally:
        tc.close()
        p.close()


# --- attaching: tcx links, or clsact without tcx --------------------------------------------


def test_the_classifiers_are_pinned_tcx_links_adopted_swapped_and_removed(
        two_hosts: tuple[str, str], bpffs: Path) -> None:
    from bng_operator import netlink
    from bng_operator.agent.dataplane.loader import program_id

    ns_a, _ = two_hosts
    root = bpffs / "bngtest-qos-tcx"

    def make(gen: int) -> qos.QosPath:
        return qos.QosPath(max_subscribers=64 + gen, pin_root=root)

    check_pinned_links(
        ns_a, root, "qos", make,
        lambda p: p.attach("a0", "bngu-a0", ns=ns_a),  # type: ignore[attr-defined]
        lambda p: {d: program_id(p._fds[fn])  # type: ignore[attr-defined]
                   for d, fn in qos.PROGRAMS.items()},
        lambda: qos.remove(root, [("a0", "bngu-a0")], ns_a), "qos_down")
    assert netlink.tc_program_name("a0", "egress", ns_a) is None


def test_an_unpinned_link_goes_with_its_path(two_hosts: tuple[str, str]) -> None:
    ns_a, _ = two_hosts
    p = qos.QosPath(max_subscribers=64)
    try:
        p.attach("a0", "bngu-a0", ns=ns_a)
        p.attach("a0", "bngu-a0", ns=ns_a)  # again: the same links, none added
        assert [len(ids) for ids in tcx_programs(ns_a, "a0").values()] == [1, 1]
    finally:
        p.close()
    assert tcx_programs(ns_a, "a0") == {"ingress": [], "egress": []}


def test_without_tcx_the_classifiers_go_on_clsact(
        two_hosts: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from bng_operator import netlink

    ns_a, _ = two_hosts
    monkeypatch.setattr(classifiers, "attach_tcx", lambda *_: None)  # what a kernel < 6.6 says
    p = qos.QosPath(max_subscribers=64)
    try:
        p.attach("a0", "bngu-a0", ns=ns_a)
        assert tcx_programs(ns_a, "a0") == {"ingress": [], "egress": []}
        assert "clsact" in qdiscs(ns_a, "a0")
        assert netlink.tc_program_name("a0", "egress", ns_a) == "qos_down"
        assert p.attached("a0", ns_a)
        p.put(int(IPv4Address("10.9.0.2")), 0)  # routed, unshaped: still classified
        subprocess.run(["ip", "netns", "exec", ns_a, "ping", "-c", "2", "-i", "0.2", "-W", "1",
                        "10.9.0.2"], check=True, capture_output=True)
        assert p.stats()["down_shaped"] >= 2
    finally:
        p.close()
    qos.remove(Path("/nonexistent"), [("a0", "bngu-a0")], ns_a)
    assert not p.attached("a0", ns_a) and "clsact" not in qdiscs(ns_a, "a0")

"""NAT44 on the uplink (bpf/nat44.c) on crafted frames with BPF_PROG_RUN: TCP, UDP and ICMP
echo each way; ICMP errors quoting TCP, UDP and ICMP, each way; fragments (first then later,
later alone); IPv4 options; truncated frames; endpoint-independent mapping; the three
filtering behaviours; ports random inside the blocks; a full block (dropped, ICMP 3/13 back,
rate-limited, signalled); hairpinning; the collector's timeouts and the hold; taking over an
expired port. Every checksum of every frame is checked with dpkt's in_cksum. Then real
traffic through veths in namespaces (CHECKSUM_PARTIAL and GSO packets), and the C header and
the Python mirror agree."""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import dpkt
import pytest

from bng_operator.agent.dataplane import classifiers, nat
from bng_operator.agent.dataplane.loader import (
    BPF_DIR,
    DataplaneError,
    _prog_run,
    program_id,
    verified_instructions,
)
from bng_operator.agent.dataplane.nat import Binding, Pool, Timeouts
from tests.bpf.cheader import enum_names
from tests.bpf.hooks import check_pinned_links, qdiscs, tcx_programs

HEADER = Path(BPF_DIR) / "lib" / "nat.h"
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
TCP, UDP, ICMP = 6, 17, 1
SYN, ACK, FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN
SUB, SUB2, UNBOUND = IPv4Address("100.64.0.20"), IPv4Address("100.64.0.21"), \
    IPv4Address("100.64.0.99")
INSIDE = IPv4Network("100.64.0.0/10")
REMOTE, REMOTE2, ROUTER = IPv4Address("198.51.100.7"), IPv4Address("198.51.100.8"), \
    IPv4Address("203.0.113.1")
NODE = IPv4Address("198.51.100.1")  # the uplink's own address
EIF, ADF, APDF, SHORT = 0, 1, 2, 3  # pool indexes
PUBLIC = {EIF: IPv4Address("192.0.2.1"), ADF: IPv4Address("192.0.2.2"),
          APDF: IPv4Address("192.0.2.3"), SHORT: IPv4Address("192.0.2.4")}
SHORT_TIMEOUTS = Timeouts(udp=2, tcp_established=4, tcp_transitory=2, icmp=2, hold=3)
UPLINK_MAC, NEXT_HOP_MAC = bytes.fromhex("02aa00000001"), bytes.fromhex("02bb00000001")
OPTIONS = b"\x07\x07\x04" + bytes(4) + b"\x00"  # record route, one slot; end of options
S = 1_000_000_000


# --- the header and the mirror -------------------------------------------------------------


def _define(h: str, name: str) -> int:
    for line in h.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define" and parts[1] == name:
            return int(parts[2].removesuffix("ULL"), 0)
    raise AssertionError(f"#define {name} not found")


def test_constants_agree_with_the_c_header() -> None:
    h = HEADER.read_text()
    assert enum_names(h, "nat_stat", "NAT_") == [*nat.STATS, "stats_max"]
    assert [n.replace("_", "-") for n in enum_names(h, "nat_filtering", "NAT_FILTER_")] == \
        list(nat.FILTERING)
    body = h[h.index("enum nat_stat {"):h.index("NAT_STATS_MAX")]
    dropped = [line.split(",")[0].strip().removeprefix("NAT_").lower()
               for line in body.splitlines() if "// dropped:" in line]
    assert dropped == list(nat.DROPS)
    for name, value in (("NAT_TCP_SYN", nat.TCP_SYN), ("NAT_TCP_FIN", nat.TCP_FIN),
                        ("NAT_TCP_RST", nat.TCP_RST), ("NAT_F_HELD", nat.F_HELD),
                        ("NAT_FRAG_OUT", nat.FRAG_OUT), ("NAT_FRAG_IN", nat.FRAG_IN),
                        ("NAT_MAX_POOLS", nat.MAX_POOLS), ("NAT_MAX_INSIDE", nat.MAX_INSIDE),
                        ("NAT_MAX_EXHAUSTED", nat.MAX_EXHAUSTED),
                        ("NAT_ICMP_INTERVAL_NS", nat.ICMP_INTERVAL_NS),
                        ("NAT_PROBES", nat.PROBES), ("NAT_TAKEOVER_PROBES", nat.TAKEOVER_PROBES),
                        ("NAT_MAX_BLOCKS", nat.DEFAULT_MAX_BLOCKS),
                        ("NAT_MAX_RECENT", nat.DEFAULT_MAX_RECENT),
                        ("NAT_RECHECK_NS", nat.RECHECK_NS),
                        ("NAT_PROG_OUT", 0), ("NAT_PROG_NEW", 1)):
        assert _define(h, name) == value, name
    assert nat.TAIL_CALLS == {0: "nat_out", 1: "nat_new"}
    declared = re.findall(r"^BPF_\w*TABLE\([^,]+,[^,]+,[^,]+,\s*(\w+)", h, re.M)
    assert sorted(nat.MAPS) == sorted(declared)


def test_the_timeout_rule_is_the_programs() -> None:
    c = (Path(BPF_DIR) / "nat44.c").read_text()
    assert "s = established ? pool->tcp_established : pool->tcp_transitory;" in c
    t = Timeouts(udp=1, tcp_established=2, tcp_transitory=3, icmp=4)
    assert [nat.timeout_s(t, p, e) for p, e in ((TCP, True), (TCP, False), (UDP, True),
                                                (ICMP, False))] == [2, 3, 1, 4]


# --- running the programs ------------------------------------------------------------------


class _SkbCtx(ctypes.Structure):
    """struct __sk_buff, zeroed: what BPF_PROG_RUN takes for a tc program."""

    _fields_ = [("head", ctypes.c_uint32 * 48)]


@dataclass(frozen=True)
class Run:
    action: int
    frame: bytes

    @property
    def ip(self) -> bytes:
        return self.frame[14:]


def run(fd: int, frame: bytes) -> Run:
    out = ctypes.create_string_buffer(4096)
    ctx = _SkbCtx()
    o = _prog_run(fd, frame, data_out=ctypes.addressof(out), data_size_out=len(out),
                  ctx_in=ctypes.addressof(ctx), ctx_size_in=ctypes.sizeof(ctx))
    return Run(o.retval, out.raw[: o.data_size_out])


@pytest.fixture(scope="module")
def path() -> Iterator[nat.NatPath]:
    p = nat.NatPath(max_subscribers=64, max_mappings=4096)
    p.set_pool(EIF, Pool())
    p.set_pool(ADF, Pool("address-dependent"))
    p.set_pool(APDF, Pool("address-and-port-dependent"))
    p.set_pool(SHORT, Pool(timeouts=SHORT_TIMEOUTS))
    for pool, address in PUBLIC.items():
        p.put_address(address, pool)
    p.put_inside(INSIDE)
    yield p
    p.close()


def out(path: nat.NatPath, ip: bytes) -> Run:
    return run(path.fds["nat_out"], frame(ip))


def inn(path: nat.NatPath, ip: bytes) -> Run:
    return run(path.fds["nat_in"], frame(ip, UPLINK_MAC, NEXT_HOP_MAC))


@pytest.fixture
def bind(path: nat.NatPath) -> Iterator[Callable[..., Binding]]:
    made: list[IPv4Address] = []

    def make(inside: IPv4Address = SUB, pool: int = EIF, block_size: int = 64,
             blocks: tuple[int, ...] = (4096,)) -> Binding:
        b = Binding(PUBLIC[pool], pool, block_size, blocks)
        path.put_binding(inside, b)
        made.append(inside)
        return b

    yield make
    for a in made:
        path.delete_binding(a)
        path.flush(a)  # what a test wrote past the programs, by a walk of the table
    for table in (path.fragments, path.exhausted_map):
        for k in list(table):
            del table[k]


def delta(path: nat.NatPath, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in path.stats().items() if v != before[k]}


# --- frames (dpkt builds; the header is written here when it carries options) -------------


def frame(ip: bytes, dst: bytes = NEXT_HOP_MAC, src: bytes = UPLINK_MAC) -> bytes:
    return dst + src + b"\x08\x00" + ip


def ipv4(src: IPv4Address, dst: IPv4Address, proto: int, l4: bytes, ttl: int = 63,
         ident: int = 0x1234, options: bytes = b"", frag_off: int = 0) -> bytes:
    hl = 20 + len(options)
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | hl // 4, 0, hl + len(l4), ident, frag_off, ttl,
                    proto, 0, src.packed, dst.packed) + options
    return h[:10] + struct.pack("!H", dpkt.in_cksum(h)) + h[12:] + l4


def _pseudo(src: IPv4Address, dst: IPv4Address, proto: int, length: int) -> bytes:
    return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)


def tcp(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, flags: int = SYN,
        payload: bytes = b"", **kw: object) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1000, win=65535, data=payload)
    raw = bytes(t)
    raw = raw[:16] + struct.pack("!H", dpkt.in_cksum(_pseudo(src, dst, TCP, len(raw)) + raw)) \
        + raw[18:]
    return ipv4(src, dst, TCP, raw, **kw)  # type: ignore[arg-type]


def udp(src: IPv4Address, dst: IPv4Address, sport: int, dport: int, payload: bytes = b"x" * 32,
        checksum: bool = True, **kw: object) -> bytes:
    raw = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if checksum:
        c = dpkt.in_cksum(_pseudo(src, dst, UDP, len(raw)) + raw) or 0xFFFF
        raw = raw[:6] + struct.pack("!H", c) + raw[8:]
    return ipv4(src, dst, UDP, raw, **kw)  # type: ignore[arg-type]


def icmp(src: IPv4Address, dst: IPv4Address, type_: int, code: int, rest: bytes,
         **kw: object) -> bytes:
    raw = struct.pack("!BBH", type_, code, 0) + rest
    raw = raw[:2] + struct.pack("!H", dpkt.in_cksum(raw)) + raw[4:]
    return ipv4(src, dst, ICMP, raw, **kw)  # type: ignore[arg-type]


def echo(src: IPv4Address, dst: IPv4Address, ident: int, reply: bool = False,
         payload: bytes = b"ping" * 8) -> bytes:
    return icmp(src, dst, 0 if reply else 8, 0, struct.pack("!HH", ident, 1) + payload)


def icmp_error(src: IPv4Address, dst: IPv4Address, quoted: bytes, type_: int = 3,
               code: int = 4, mtu: int = 1400) -> bytes:
    return icmp(src, dst, type_, code, struct.pack("!HH", 0, mtu) + quoted)


def hl(ip: bytes) -> int:
    return (ip[0] & 0xF) * 4


def fields(ip: bytes) -> tuple[IPv4Address, IPv4Address, int, int]:
    """(source, destination, source port, destination port); ICMP echo: the identifier."""
    h = hl(ip)
    src, dst = IPv4Address(ip[12:16]), IPv4Address(ip[16:20])
    if ip[9] == ICMP:
        ident = struct.unpack("!H", ip[h + 4:h + 6])[0]
        return src, dst, ident, ident
    sport, dport = struct.unpack("!HH", ip[h:h + 4])
    return src, dst, sport, dport


def assert_checksums(ip: bytes) -> None:
    """The IP header's, and the L4 one of an unfragmented datagram, all valid (dpkt's
    in_cksum over the bytes, checksum included, is 0)."""
    h = hl(ip)
    assert dpkt.in_cksum(ip[:h]) == 0, "IP header checksum"
    total = struct.unpack("!H", ip[2:4])[0]
    assert total == len(ip), (total, len(ip))
    if struct.unpack("!H", ip[6:8])[0] & 0x3FFF:
        return  # a fragment: see assert_datagram
    assert_l4(ip[:h], ip[h:total])


def assert_l4(header: bytes, l4: bytes) -> None:
    src, dst, proto = IPv4Address(header[12:16]), IPv4Address(header[16:20]), header[9]
    if proto == ICMP:
        assert dpkt.in_cksum(l4) == 0, "ICMP checksum"
    elif proto == UDP and l4[6:8] == b"\0\0":
        return  # sent without a checksum
    else:
        assert dpkt.in_cksum(_pseudo(src, dst, proto, len(l4)) + l4) == 0, "L4 checksum"


def quoted(ip: bytes) -> bytes:
    """What an ICMP error quotes."""
    return ip[hl(ip) + 8:]


# --- TCP, UDP, ICMP echo -------------------------------------------------------------------


@pytest.mark.parametrize("proto", [TCP, UDP, ICMP])
def test_a_flow_goes_out_as_its_public_endpoint_and_comes_back(
        path: nat.NatPath, bind: Callable[..., Binding], proto: int) -> None:
    b = bind()
    send = {TCP: lambda: tcp(SUB, REMOTE, 40000, 443, SYN, b"hello"),
            UDP: lambda: udp(SUB, REMOTE, 40000, 53),
            ICMP: lambda: echo(SUB, REMOTE, 40000)}[proto]()
    before = path.stats()
    r = out(path, send)
    assert r.action == TC_ACT_OK
    src, dst, sport, dport = fields(r.ip)
    assert (src, dst) == (PUBLIC[EIF], REMOTE)
    assert b.holds(sport)
    if proto != ICMP:
        assert dport == {TCP: 443, UDP: 53}[proto]
    assert_checksums(r.ip)
    header = 20 if proto == TCP else 8
    assert r.ip[20 + header:] == send[20 + header:]  # the payload, untouched
    assert r.frame[:12] == NEXT_HOP_MAC + UPLINK_MAC
    assert delta(path, before) == {"out_translated": 1, "new_mapping": 1}
    reply = {TCP: lambda: tcp(REMOTE, PUBLIC[EIF], 443, sport, SYN | ACK),
             UDP: lambda: udp(REMOTE, PUBLIC[EIF], 53, sport),
             ICMP: lambda: echo(REMOTE, PUBLIC[EIF], sport, reply=True)}[proto]()
    before = path.stats()
    back = inn(path, reply)
    assert back.action == TC_ACT_OK
    assert fields(back.ip)[1] == SUB
    assert fields(back.ip)[3] == 40000
    assert_checksums(back.ip)
    assert delta(path, before) == {"in_translated": 1}
    [m] = path.mappings(SUB)
    assert (m.protocol, m.inside, m.inside_port, m.public, m.public_port) == \
        (proto, SUB, 40000, PUBLIC[EIF], sport)


def test_the_mapping_is_endpoint_independent(path: nat.NatPath,
                                             bind: Callable[..., Binding]) -> None:
    bind()
    first = fields(out(path, udp(SUB, REMOTE, 5000, 3478)).ip)[2]
    # another destination, another destination port: the same public endpoint
    assert fields(out(path, udp(SUB, REMOTE2, 5000, 19302)).ip)[2] == first
    assert fields(out(path, tcp(SUB, REMOTE2, 5000, 80)).ip)[0] == PUBLIC[EIF]
    # another inside port: another public port
    assert fields(out(path, udp(SUB, REMOTE, 5001, 3478)).ip)[2] != first
    assert len(path.mappings(SUB)) == 3  # UDP 5000, UDP 5001, TCP 5000


def test_ports_are_random_inside_the_blocks(path: nat.NatPath,
                                            bind: Callable[..., Binding]) -> None:
    b = bind(block_size=256, blocks=(1024, 30000))
    ports = [fields(out(path, udp(SUB, REMOTE, 10000 + i, 53)).ip)[2] for i in range(60)]
    assert all(b.holds(p) for p in ports)
    assert len(set(ports)) == 60
    assert any(p < 1024 + 256 for p in ports) and any(p >= 30000 for p in ports)
    assert sorted(ports) != list(range(min(ports), min(ports) + 60))  # not sequential


def test_a_udp_datagram_without_a_checksum_keeps_none(
        path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    bind()
    r = out(path, udp(SUB, REMOTE, 7000, 9, checksum=False))
    assert r.ip[26:28] == b"\0\0"
    assert_checksums(r.ip)
    back = inn(path, udp(REMOTE, PUBLIC[EIF], 9, fields(r.ip)[2], checksum=False))
    assert back.ip[26:28] == b"\0\0" and fields(back.ip)[1] == SUB


def test_ipv4_options_are_kept_and_skipped(path: nat.NatPath,
                                          bind: Callable[..., Binding]) -> None:
    bind()
    send = tcp(SUB, REMOTE, 41000, 80, SYN, b"opt", options=OPTIONS)
    r = out(path, send)
    assert r.action == TC_ACT_OK and hl(r.ip) == 28
    assert r.ip[20:28] == OPTIONS
    assert_checksums(r.ip)
    src, _, sport, dport = fields(r.ip)
    assert (src, dport) == (PUBLIC[EIF], 80)
    back = inn(path, tcp(REMOTE, PUBLIC[EIF], 80, sport, SYN | ACK, options=OPTIONS))
    assert fields(back.ip)[1:4:2] == (SUB, 41000)
    assert_checksums(back.ip)


def test_tcp_state_picks_the_timeout(path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    bind()
    sport = fields(out(path, tcp(SUB, REMOTE, 42000, 80, SYN)).ip)[2]
    assert not path.mappings(SUB)[0].tcp_established  # transitory until the SYN-ACK
    inn(path, tcp(REMOTE, PUBLIC[EIF], 80, sport, SYN | ACK))
    assert path.mappings(SUB)[0].tcp_established
    out(path, tcp(SUB, REMOTE, 42000, 80, FIN | ACK))
    assert not path.mappings(SUB)[0].tcp_established
    out(path, tcp(SUB, REMOTE, 42000, 80, SYN))  # a new connection on the same mapping
    inn(path, tcp(REMOTE, PUBLIC[EIF], 80, sport, SYN | ACK))
    assert path.mappings(SUB)[0].tcp_established


# --- nat_recent: the steady packet's copy of its mapping ----------------------------------


@pytest.fixture
def steady() -> Iterator[nat.NatPath]:
    """A path whose pools are all endpoint-independent (the module's has filtering ones,
    and then nat_out keeps no copies), SUB bound to PUBLIC[EIF] in pool 0 with UDP and
    ICMP timeouts of 2 s."""
    p = nat.NatPath(max_subscribers=64, max_mappings=4096)
    try:
        p.set_pool(0, Pool(timeouts=SHORT_TIMEOUTS))
        p.put_address(PUBLIC[EIF], 0)
        p.put_inside(INSIDE)
        p.put_binding(SUB, Binding(PUBLIC[EIF], 0, 64, (4096,)))
        yield p
    finally:
        p.close()


def _recent(path: nat.NatPath, proto: int, port: int) -> tuple[IPv4Address, int] | None:
    """The copy nat_out keeps of SUB's ``port`` mapping: (public address, port), or None."""
    try:
        r = path.recent[path.recent.Key(nat._be32(SUB), nat._be16(port), proto)]
    except KeyError:
        return None
    return nat._address(r.addr), nat._port(r.port)


def test_a_steady_flow_goes_by_its_copy_until_the_mapping_is_read_again(
        steady: nat.NatPath) -> None:
    path = steady
    first = fields(out(path, udp(SUB, REMOTE, 7200, 53)).ip)[2]
    assert _recent(path, UDP, 7200) is None  # the first packet: the mapping is made
    assert fields(out(path, udp(SUB, REMOTE, 7200, 53)).ip)[2] == first
    assert _recent(path, UDP, 7200) == (PUBLIC[EIF], first)  # the second: copied
    del path.outbound[path.outbound.Key(nat._be32(SUB), nat._be16(7200), UDP)]
    # the mapping gone behind the copy's back: the copy still translates, for a second
    assert fields(out(path, udp(SUB, REMOTE, 7200, 53)).ip)[2] == first
    key = path.recent.Key(nat._be32(SUB), nat._be16(7200), UDP)
    r = path.recent[key]
    r.checked_ns -= nat.RECHECK_NS  # a second on: the copy is no longer trusted
    path.recent[key] = r
    before = path.stats()
    second = fields(out(path, udp(SUB, REMOTE, 7200, 53)).ip)[2]
    assert delta(path, before)["new_mapping"] == 1  # read again: none, so a new one
    assert second != first  # (the old port is still the inbound half's)
    assert _recent(path, UDP, 7200) == (PUBLIC[EIF], first)  # made now: copied next time
    assert fields(out(path, udp(SUB, REMOTE, 7200, 53)).ip)[2] == second  # (read again)
    assert _recent(path, UDP, 7200) == (PUBLIC[EIF], second)


def test_the_copy_goes_with_its_mapping(steady: nat.NatPath) -> None:
    path = steady
    now = time.monotonic_ns()
    for _ in range(2):  # the second packet of a flow is copied
        out(path, udp(SUB, REMOTE, 7300, 53))
        out(path, echo(SUB, REMOTE, 7301))
    assert _recent(path, UDP, 7300) and _recent(path, ICMP, 7301)
    assert path.collect(now + 3 * S).ended == 2  # the collector ends them: copies too
    assert _recent(path, UDP, 7300) is None and _recent(path, ICMP, 7301) is None
    out(path, udp(SUB, REMOTE, 7302, 53))
    out(path, udp(SUB, REMOTE, 7302, 53))
    assert _recent(path, UDP, 7302)
    assert path.delete_binding(SUB) == 1  # the session ends: its mappings and copies go
    assert _recent(path, UDP, 7302) is None
    assert out(path, udp(SUB, REMOTE, 7302, 53)).action == TC_ACT_SHOT  # no_binding


def test_tcp_syn_fin_and_rst_go_by_the_mapping_not_the_copy(steady: nat.NatPath) -> None:
    path = steady
    sport = fields(out(path, tcp(SUB, REMOTE, 42100, 80, SYN)).ip)[2]
    assert _recent(path, TCP, 42100) is None  # a SYN is not steady
    inn(path, tcp(REMOTE, PUBLIC[EIF], 80, sport, SYN | ACK))
    assert fields(out(path, tcp(SUB, REMOTE, 42100, 80, ACK)).ip)[2] == sport
    assert _recent(path, TCP, 42100) == (PUBLIC[EIF], sport)
    assert fields(out(path, tcp(SUB, REMOTE, 42100, 80, ACK)).ip)[2] == sport  # by the copy
    assert path.mappings(SUB)[0].tcp_established
    assert fields(out(path, tcp(SUB, REMOTE, 42100, 80, FIN | ACK)).ip)[2] == sport
    assert not path.mappings(SUB)[0].tcp_established  # the mapping saw the FIN


def test_a_copy_is_translated_as_the_mapping_is(steady: nat.NatPath) -> None:
    """Every checksum of a packet sent by the copy is right, for each protocol."""
    path = steady
    for proto, ip in ((UDP, udp(SUB, REMOTE, 7400, 53)), (TCP, tcp(SUB, REMOTE, 7400, 80, ACK)),
                      (ICMP, echo(SUB, REMOTE, 7400))):
        out(path, ip)  # made
        by_mapping = out(path, ip)  # read, and copied
        assert _recent(path, proto, 7400) is not None
        by_copy = out(path, ip)
        assert by_copy.action == by_mapping.action == TC_ACT_OK
        assert by_copy.ip == by_mapping.ip, proto
        assert_checksums(by_copy.ip)


# --- what is not translated ------------------------------------------------------------------


@pytest.mark.parametrize(("program", "ip", "action", "stat"), [
    ("nat_out", lambda: udp(NODE, REMOTE, 1, 2), TC_ACT_OK, "out_passed"),  # the node's own
    ("nat_out", lambda: udp(UNBOUND, REMOTE, 1, 2), TC_ACT_SHOT, "no_binding"),
    ("nat_out", lambda: ipv4(SUB, REMOTE, 47, bytes(24)), TC_ACT_SHOT, "unsupported"),  # GRE
    ("nat_out", lambda: icmp(SUB, REMOTE, 13, 0, bytes(16)), TC_ACT_SHOT, "unsupported"),
    ("nat_out", lambda: echo(SUB, REMOTE, 7, reply=True), TC_ACT_SHOT, "unsupported"),
    ("nat_out", lambda: tcp(SUB, REMOTE, 7, 80, dpkt.tcp.TH_RST), TC_ACT_SHOT, "no_mapping"),
    ("nat_in", lambda: udp(REMOTE, NODE, 1, 2), TC_ACT_OK, "in_passed"),  # not a public address
    ("nat_in", lambda: udp(REMOTE, PUBLIC[EIF], 53, 4097), TC_ACT_SHOT, "no_mapping"),
    ("nat_in", lambda: tcp(REMOTE, PUBLIC[EIF], 53, 22), TC_ACT_SHOT, "no_mapping"),
    ("nat_in", lambda: echo(REMOTE, PUBLIC[EIF], 4097), TC_ACT_SHOT, "no_mapping"),  # a ping
    ("nat_in", lambda: ipv4(REMOTE, PUBLIC[EIF], 47, bytes(24)), TC_ACT_SHOT, "unsupported"),
    ("nat_in", lambda: icmp_error(REMOTE, PUBLIC[EIF], udp(PUBLIC[EIF], REMOTE, 4097, 53)[:28]),
     TC_ACT_SHOT, "icmp_error_unknown"),
])
def test_what_is_not_translated(path: nat.NatPath, bind: Callable[..., Binding], program: str,
                                ip: Callable[[], bytes], action: int, stat: str) -> None:
    bind()
    f = frame(ip())
    before = path.stats()
    r = run(path.fds[program], f)
    assert r.action == action
    if action == TC_ACT_OK:
        assert r.frame == f
    assert delta(path, before) == {stat: 1}


@pytest.mark.parametrize("program", ["nat_out", "nat_in"])
def test_other_than_ipv4_passes(path: nat.NatPath, program: str) -> None:
    arp = NEXT_HOP_MAC + UPLINK_MAC + b"\x08\x06" + bytes(28)
    before = path.stats()
    assert run(path.fds[program], arp).action == TC_ACT_OK
    assert delta(path, before) == {"not_ipv4": 1}


def cut(ip: bytes, n: int) -> bytes:
    """``ip`` cut to ``n`` bytes, its header saying so: consistent, but short inside."""
    h = ip[:2] + struct.pack("!H", n) + ip[4:10] + b"\0\0" + ip[12:hl(ip)]
    return h[:10] + struct.pack("!H", dpkt.in_cksum(h)) + h[12:] + ip[hl(ip):n]


def _truncated() -> list[tuple[str, bytes]]:
    syn = tcp(SUB, REMOTE, 43000, 80, SYN, b"x" * 20)
    to_public = udp(REMOTE, PUBLIC[EIF], 53, 4097)
    ihl4 = b"\x44" + syn[1:]
    err = icmp_error(REMOTE, PUBLIC[EIF], to_public[:16])  # the quoted header cut short
    err_l4 = icmp_error(REMOTE, PUBLIC[EIF], udp(PUBLIC[EIF], REMOTE, 4097, 53)[:24])
    cases = []
    for name, ip in (("a runt's padding", bytes(46)),
                     ("total length past the frame", syn[:50]), ("IHL 4", ihl4),
                     ("TCP header cut", cut(syn, 30)),
                     ("UDP header cut", cut(udp(SUB, REMOTE, 1, 2), 24)),
                     ("ICMP header cut", cut(echo(SUB, REMOTE, 1), 26))):
        cases.append((f"out: {name}", ip))
    for name, ip in (("header only", to_public[:20]),
                     ("total length past the frame", to_public[:30]),
                     ("IP header past its total length", cut(to_public, 16)),
                     ("quoted header cut", err), ("quoted L4 cut", err_l4)):
        cases.append((f"in: {name}", ip))
    return cases


@pytest.mark.parametrize(("case", "ip"), _truncated(), ids=[c for c, _ in _truncated()])
def test_truncated_and_malformed_frames_are_dropped_and_counted(
        path: nat.NatPath, bind: Callable[..., Binding], case: str, ip: bytes) -> None:
    """(BPF_PROG_RUN wants a whole IPv4 header after an IPv4 ethertype; on the wire a runt
    is padded to 46 bytes past the Ethernet header anyway.)"""
    bind()
    program = "nat_out" if case.startswith("out") else "nat_in"
    f = frame(ip)
    before = path.stats()
    assert run(path.fds[program], f).action == TC_ACT_SHOT
    assert delta(path, before) == {"malformed": 1}
    assert path.mappings(SUB) == []


# --- filtering -----------------------------------------------------------------------------


@pytest.mark.parametrize(("pool", "remote", "port", "passes"), [
    (EIF, REMOTE, 80, True), (EIF, REMOTE, 81, True), (EIF, REMOTE2, 999, True),
    (ADF, REMOTE, 80, True), (ADF, REMOTE, 81, True), (ADF, REMOTE2, 80, False),
    (APDF, REMOTE, 80, True), (APDF, REMOTE, 81, False), (APDF, REMOTE2, 80, False),
])
@pytest.mark.parametrize("proto", [TCP, UDP])
def test_filtering_lets_in_what_the_pool_says(
        path: nat.NatPath, bind: Callable[..., Binding], pool: int, remote: IPv4Address,
        port: int, passes: bool, proto: int) -> None:
    bind(pool=pool)
    make = tcp if proto == TCP else udp
    sport = fields(out(path, make(SUB, REMOTE, 44000, 80)).ip)[2]
    before = path.stats()
    r = inn(path, make(remote, PUBLIC[pool], port, sport))
    assert r.action == (TC_ACT_OK if passes else TC_ACT_SHOT)
    assert delta(path, before) == ({"in_translated": 1} if passes else {"filtered": 1})


@pytest.mark.parametrize("pool", [ADF, APDF])
def test_filtering_lets_echo_replies_and_errors_from_routers_in(
        path: nat.NatPath, bind: Callable[..., Binding], pool: int) -> None:
    bind(pool=pool)
    r = out(path, echo(SUB, REMOTE, 900))
    ident = fields(r.ip)[2]
    assert inn(path, echo(REMOTE, PUBLIC[pool], ident, reply=True)).action == TC_ACT_OK
    assert inn(path, echo(REMOTE2, PUBLIC[pool], ident, reply=True)).action == TC_ACT_SHOT
    sent = out(path, udp(SUB, REMOTE, 901, 53)).ip
    # a router on the way reports on it: judged by the quoted destination, the remote
    err = inn(path, icmp_error(ROUTER, PUBLIC[pool], sent[:28], type_=11, code=0))
    assert err.action == TC_ACT_OK
    elsewhere = udp(PUBLIC[pool], REMOTE2, fields(sent)[2], 53)  # never sent there
    assert inn(path, icmp_error(ROUTER, PUBLIC[pool], elsewhere[:28])).action == TC_ACT_SHOT


# --- ICMP errors ---------------------------------------------------------------------------


def _outbound(proto: int) -> bytes:
    if proto == TCP:
        return tcp(SUB, REMOTE, 45000, 443, SYN, b"x" * 40)
    if proto == UDP:
        return udp(SUB, REMOTE, 45000, 53, b"q" * 40)
    return echo(SUB, REMOTE, 45000)


@pytest.mark.parametrize("quote", ["8 bytes", "all"])
@pytest.mark.parametrize("proto", [TCP, UDP, ICMP])
@pytest.mark.parametrize("options", [b"", OPTIONS])
def test_an_icmp_error_about_an_outbound_packet_is_translated_back(
        path: nat.NatPath, bind: Callable[..., Binding], proto: int, quote: str,
        options: bytes) -> None:
    """PMTU discovery: "fragmentation needed" from a router about a translated packet
    reaches the subscriber quoting the packet as it sent it, byte for byte (addresses,
    ports or identifier, and both checksums translated back)."""
    bind()
    sent = _outbound(proto)
    if options:
        sent = ipv4(SUB, REMOTE, proto, sent[20:], options=options)
    translated = out(path, sent).ip
    n = hl(translated) + 8 if quote == "8 bytes" else len(translated)
    before = path.stats()
    r = inn(path, icmp_error(ROUTER, PUBLIC[EIF], translated[:n]))
    assert r.action == TC_ACT_OK
    assert fields(r.ip)[:2] == (ROUTER, SUB)
    assert quoted(r.ip) == sent[:n]
    assert_checksums(r.ip)
    assert struct.unpack("!H", r.ip[26:28])[0] == 1400  # the next-hop MTU, untouched
    assert delta(path, before) == {"icmp_error": 1, "in_translated": 1}


@pytest.mark.parametrize("proto", [TCP, UDP, ICMP])
@pytest.mark.parametrize("sender", ["subscriber", "node"])
def test_an_icmp_error_about_an_inbound_packet_is_translated_back(
        path: nat.NatPath, bind: Callable[..., Binding], proto: int, sender: str) -> None:
    """The subscriber's port unreachable (or the node's own "fragmentation needed" towards
    the access side) quotes the remote's packet as the remote sent it."""
    bind()
    sport = fields(out(path, _outbound(proto)).ip)[2]
    arrived = {TCP: lambda: tcp(REMOTE, PUBLIC[EIF], 443, sport, SYN | ACK, b"y" * 40),
               UDP: lambda: udp(REMOTE, PUBLIC[EIF], 53, sport, b"a" * 40),
               ICMP: lambda: echo(REMOTE, PUBLIC[EIF], sport, reply=True)}[proto]()
    delivered = inn(path, arrived).ip
    source = SUB if sender == "subscriber" else NODE
    before = path.stats()
    r = out(path, icmp_error(source, REMOTE, delivered[:28], code=3))
    assert r.action == TC_ACT_OK
    assert fields(r.ip)[:2] == ((PUBLIC[EIF] if sender == "subscriber" else NODE), REMOTE)
    assert quoted(r.ip) == arrived[:28]
    assert_checksums(r.ip)
    assert delta(path, before) == {"icmp_error": 1, "out_translated": 1}


def test_an_icmp_error_about_no_mapping_of_ours(path: nat.NatPath,
                                               bind: Callable[..., Binding]) -> None:
    bind()
    stray = udp(REMOTE, SUB, 53, 1234)
    before = path.stats()
    assert out(path, icmp_error(SUB, REMOTE, stray[:28], code=3)).action == TC_ACT_SHOT
    node_own = udp(REMOTE, NODE, 53, 1234)  # the node's own unreachable: not ours to touch
    assert out(path, icmp_error(NODE, REMOTE, node_own[:28], code=3)).action == TC_ACT_OK
    assert delta(path, before) == {"icmp_error_unknown": 1, "out_passed": 1}
    # about SUB's mapping, from an inside address with no binding: never out as it is
    sport = fields(out(path, udp(SUB, REMOTE, 1235, 53)).ip)[2]
    arrived = inn(path, udp(REMOTE, PUBLIC[EIF], 53, sport)).ip
    before = path.stats()
    assert out(path, icmp_error(UNBOUND, REMOTE, arrived[:28], code=3)).action == TC_ACT_SHOT
    assert delta(path, before) == {"no_binding": 1}


# --- fragments -----------------------------------------------------------------------------


def fragments(ip: bytes, size: int) -> list[bytes]:
    """``ip`` cut into fragments of ``size`` payload bytes (a multiple of 8)."""
    h, payload = ip[:hl(ip)], ip[hl(ip):]
    out_ = []
    for off in range(0, len(payload), size):
        chunk = payload[off:off + size]
        more = off + size < len(payload)
        fh = h[:2] + struct.pack("!HHH", len(h) + len(chunk), struct.unpack("!H", h[4:6])[0],
                                 (0x2000 if more else 0) | off // 8) + h[8:10] + b"\0\0" + h[12:]
        fh = fh[:10] + struct.pack("!H", dpkt.in_cksum(fh)) + fh[12:]
        out_.append(fh + chunk)
    return out_


def assert_datagram(frags: list[bytes]) -> bytes:
    """Reassembled, the fragments are one datagram whose L4 checksum is valid; returns its
    L4 bytes."""
    for f in frags:
        assert_checksums(f)
    payload = b"".join(f[hl(f):] for f in sorted(
        frags, key=lambda f: struct.unpack("!H", f[6:8])[0] & 0x1FFF))
    assert_l4(frags[0][:hl(frags[0])], payload)
    return payload


@pytest.mark.parametrize("proto", [UDP, ICMP, TCP])
def test_fragments_follow_their_first(path: nat.NatPath, bind: Callable[..., Binding],
                                      proto: int) -> None:
    b = bind()
    big = {UDP: lambda: udp(SUB, REMOTE, 46000, 4500, bytes(range(256)) * 11, ident=0x4001),
           TCP: lambda: tcp(SUB, REMOTE, 46000, 80, ACK, bytes(range(256)) * 11, ident=0x4001),
           ICMP: lambda: icmp(SUB, REMOTE, 8, 0, struct.pack("!HH", 46000, 1) +
                              bytes(range(256)) * 11, ident=0x4001)}[proto]()
    frags = fragments(big, 1024)
    assert len(frags) == 3
    before = path.stats()
    sent = [out(path, f) for f in frags]
    assert all(r.action == TC_ACT_OK for r in sent)
    l4 = assert_datagram([r.ip for r in sent])
    assert all(IPv4Address(r.ip[12:16]) == PUBLIC[EIF] for r in sent)
    sport = struct.unpack("!H", l4[4:6] if proto == ICMP else l4[0:2])[0]
    assert b.holds(sport)
    assert delta(path, before) == {"out_translated": 3, "new_mapping": 1, "fragment": 2}
    # the reply, in fragments too
    reply = {UDP: lambda: udp(REMOTE, PUBLIC[EIF], 4500, sport, bytes(3000), ident=0x4002),
             TCP: lambda: tcp(REMOTE, PUBLIC[EIF], 80, sport, ACK, bytes(3000), ident=0x4002),
             ICMP: lambda: icmp(REMOTE, PUBLIC[EIF], 0, 0, struct.pack("!HH", sport, 1) +
                                bytes(3000), ident=0x4002)}[proto]()
    back = [inn(path, f) for f in fragments(reply, 1480)]
    assert all(r.action == TC_ACT_OK and IPv4Address(r.ip[16:20]) == SUB for r in back)
    l4 = assert_datagram([r.ip for r in back])
    assert struct.unpack("!H", l4[4:6] if proto == ICMP else l4[2:4])[0] == 46000


def test_a_later_fragment_without_its_first_is_dropped(path: nat.NatPath,
                                                      bind: Callable[..., Binding]) -> None:
    bind()
    frags = fragments(udp(SUB, REMOTE, 47000, 4500, bytes(3000), ident=0x5001), 1024)
    before = path.stats()
    assert out(path, frags[1]).action == TC_ACT_SHOT
    back = fragments(udp(REMOTE, PUBLIC[EIF], 4500, 4100, bytes(3000), ident=0x5002), 1024)
    assert inn(path, back[2]).action == TC_ACT_SHOT
    assert delta(path, before) == {"fragment_unknown": 2}
    # the first comes late: it is translated, and the later ones after it
    assert [out(path, f).action for f in (frags[0], frags[1], frags[2])] == [TC_ACT_OK] * 3


def test_a_first_fragment_too_short_for_the_checksum_is_dropped(
        path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    """RFC 1858: a first fragment that does not hold the TCP header."""
    bind()
    tiny = fragments(tcp(SUB, REMOTE, 48000, 80, ACK, bytes(64), ident=0x6001), 8)[0]
    before = path.stats()
    assert out(path, tiny).action == TC_ACT_SHOT
    assert delta(path, before) == {"malformed": 1}


# --- a full block ----------------------------------------------------------------------------


def test_a_full_block_drops_the_next_flow_and_says_so(
        path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    b = bind(block_size=2, blocks=(6000, 7000))
    ports = {fields(out(path, tcp(SUB, REMOTE, 49000 + i, 80)).ip)[2] for i in range(4)}
    assert ports == {6000, 6001, 7000, 7001}
    syn = tcp(SUB, REMOTE, 49100, 80, SYN, b"", options=OPTIONS)
    before = path.stats()
    r = out(path, syn)
    # the SYN became an ICMP 3/13 to the subscriber, sent back in, to the node itself
    assert r.action == TC_ACT_REDIRECT
    assert r.frame[:12] == UPLINK_MAC + NEXT_HOP_MAC
    assert_checksums(r.ip)
    assert fields(r.ip)[:2] == (PUBLIC[EIF], SUB)
    assert r.ip[9] == ICMP and r.ip[20:22] == b"\x03\x0d"
    assert quoted(r.ip) == syn[:hl(syn) + 8]
    assert delta(path, before) == {"block_full": 1, "icmp_sent": 1}
    # at most one ICMP each NAT_ICMP_INTERVAL_NS
    before = path.stats()
    assert out(path, tcp(SUB, REMOTE, 49101, 80)).action == TC_ACT_SHOT
    assert delta(path, before) == {"block_full": 1}
    time.sleep(0.15)
    assert out(path, tcp(SUB, REMOTE, 49102, 80)).action == TC_ACT_REDIRECT
    assert path.exhausted()[SUB].refused == 3
    assert path.exhausted() == {}  # read and cleared
    # the existing flows go on, other protocols have their own ports, others are unaffected
    assert out(path, tcp(SUB, REMOTE, 49000, 80, ACK)).action == TC_ACT_OK
    assert out(path, echo(SUB, REMOTE, 49000)).action == TC_ACT_OK
    bind(SUB2, block_size=2, blocks=(8000,))
    assert out(path, tcp(SUB2, REMOTE, 49000, 80)).action == TC_ACT_OK
    assert b.holds(min(ports))


def test_a_pool_that_filters_makes_mapped_packets_look_their_pool_up() -> None:
    """While every pool is endpoint-independent, nat_out translates a mapped packet without
    looking its pool up; once one filters, its mapped packets let their remotes in (and
    only those come back), on mappings made before as well."""
    p = nat.NatPath(max_subscribers=4, max_mappings=1024)

    def send(src: IPv4Address, dst: IPv4Address, sport: int, dport: int) -> Run:
        if src == SUB:
            return run(p.fds["nat_out"], frame(udp(src, dst, sport, dport)))
        return run(p.fds["nat_in"], frame(udp(src, dst, sport, dport), UPLINK_MAC,
                                          NEXT_HOP_MAC))

    try:
        p.set_pool(0, Pool())
        p.put_address(PUBLIC[EIF], 0)
        p.put_binding(SUB, Binding(PUBLIC[EIF], 0, 64, (4096,)))
        assert not p.filtering_anywhere()
        pub = fields(send(SUB, REMOTE, 5000, 53).ip)[2]  # the mapping is made
        assert send(SUB, REMOTE, 5000, 53).action == TC_ACT_OK
        assert send(REMOTE2, PUBLIC[EIF], 53, pub).action == TC_ACT_OK
        p.set_pool(0, Pool("address-dependent"))
        assert p.filtering_anywhere()
        assert send(SUB, REMOTE, 5000, 53).action == TC_ACT_OK  # lets REMOTE in
        assert send(REMOTE, PUBLIC[EIF], 53, pub).action == TC_ACT_OK
        assert send(REMOTE2, PUBLIC[EIF], 53, pub).action == TC_ACT_SHOT
        p.set_pool(0, Pool())
        assert p.filtering_anywhere()  # never cleared
    finally:
        p.close()


# --- hairpinning ---------------------------------------------------------------------------


def test_hairpinning_reaches_an_address_added_past_the_others(
        path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    """nat_out looks a destination up only within the span of the public addresses: one
    added later, above them, widens it, and is hairpinned as well; one past it is not."""
    lo, hi = path.public_span()
    assert (lo, hi) == (int(min(PUBLIC.values())), int(max(PUBLIC.values())))
    later = IPv4Address(hi + 16)
    path.put_address(later, EIF)
    try:
        assert path.public_span() == (lo, int(later))
        bind(SUB)
        r = out(path, udp(SUB, later, 5000, 3478))
        assert r.action == TC_ACT_REDIRECT  # back in: the address is ours
        r = out(path, udp(SUB, IPv4Address(int(later) + 1), 5000, 3478))
        assert r.action == TC_ACT_OK  # out: past the span
    finally:
        path.delete_address(later)


@pytest.mark.parametrize("proto", [UDP, TCP])
def test_hairpinning_reaches_another_subscriber_by_its_public_endpoint(
        path: nat.NatPath, bind: Callable[..., Binding], proto: int) -> None:
    """RFC 4787 REQ-9: SUB2 reaches SUB's public endpoint and sees SUB2's public one."""
    b1, b2 = bind(SUB), bind(SUB2, blocks=(9000,))
    make = udp if proto == UDP else tcp
    pub1 = fields(out(path, make(SUB, REMOTE, 5000, 3478)).ip)[2]  # SUB's mapping
    before = path.stats()
    r = out(path, make(SUB2, PUBLIC[EIF], 6000, pub1))
    assert r.action == TC_ACT_REDIRECT  # back in, to the node
    assert r.frame[:12] == UPLINK_MAC + NEXT_HOP_MAC
    src, _, pub2, _ = fields(r.ip)
    assert src == PUBLIC[EIF] and b2.holds(pub2)
    assert_checksums(r.ip)
    back = run(path.fds["nat_in"], r.frame)
    assert back.action == TC_ACT_OK
    assert fields(back.ip) == (PUBLIC[EIF], SUB, pub2, 5000)
    assert_checksums(back.ip)
    assert delta(path, before) == {"out_translated": 1, "new_mapping": 1, "hairpin": 1,
                                   "in_translated": 1}
    # and the answer the other way
    answer = run(path.fds["nat_in"], out(path, make(SUB, PUBLIC[EIF], 5000, pub2)).frame)
    assert fields(answer.ip) == (PUBLIC[EIF], SUB2, pub1, 6000)
    assert b1.holds(pub1)


# --- timeouts, the hold, the collector, taking over ----------------------------------------


def test_a_mappings_time_is_clock_monotonic(
        path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    """The programs time a mapping by the coarse clock (CLOCK_MONOTONIC_COARSE, a tick
    behind at most), the collector by CLOCK_MONOTONIC: the two agree."""
    bind()
    before = time.monotonic_ns()
    out(path, udp(SUB, REMOTE, 7100, 53))
    after = time.monotonic_ns()
    [m] = [m for m in path.mappings(SUB) if m.inside_port == 7100]
    assert before - 10_000_000 <= m.last_seen_ns <= after  # a tick: 10 ms at HZ=100


def test_the_collector_ends_idle_mappings_and_holds_their_ports(
        path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    bind(pool=SHORT, block_size=2, blocks=(6100,))
    now = time.monotonic_ns()
    first = fields(out(path, udp(SUB, REMOTE, 7000, 53)).ip)[2]
    assert path.collect(now + 1 * S).ended == 0  # UDP timeout 2 s
    c = path.collect(now + 3 * S)
    assert (c.ended, c.released) == (1, 0)
    assert path.mappings(SUB) == []
    before = path.stats()
    assert inn(path, udp(REMOTE, PUBLIC[SHORT], 53, first)).action == TC_ACT_SHOT
    assert delta(path, before) == {"no_mapping": 1}
    # the same inside endpoint gets a new mapping; the held port is not free
    second = fields(out(path, udp(SUB, REMOTE, 7000, 53)).ip)[2]
    assert second != first
    assert path.collect(now + 4 * S).released == 0  # held 3 s from the end
    assert path.collect(now + 7 * S).released == 1
    third = fields(out(path, udp(SUB, REMOTE, 7001, 53)).ip)[2]
    assert third == first  # free again


def test_an_established_tcp_mapping_outlives_a_transitory_one(
        path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    bind(pool=SHORT)
    now = time.monotonic_ns()
    est = fields(out(path, tcp(SUB, REMOTE, 8000, 80, SYN)).ip)[2]
    inn(path, tcp(REMOTE, PUBLIC[SHORT], 80, est, SYN | ACK))
    out(path, tcp(SUB, REMOTE, 8001, 80, SYN))  # never answered: transitory (2 s)
    assert path.collect(now + 3 * S).ended == 1  # established: 4 s
    assert [m.inside_port for m in path.mappings(SUB)] == [8000]
    assert path.collect(now + 5 * S).ended == 1


def _put(path: nat.NatPath, proto: int, inside_port: int, public_port: int, seen: int,
         pool: int = SHORT) -> None:
    """A mapping of SUB, written as the programs would have made it ``seen`` ns ago."""
    ik = path.inbound.Key(nat._be32(PUBLIC[pool]), nat._be16(public_port), proto)
    iv = path.inbound.Leaf()
    iv.addr, iv.port, iv.last_seen_ns = nat._be32(SUB), nat._be16(inside_port), seen
    path.inbound[ik] = iv
    ok = path.outbound.Key(nat._be32(SUB), nat._be16(inside_port), proto)
    ov = path.outbound.Leaf()
    ov.addr, ov.port, ov.last_seen_ns = nat._be32(PUBLIC[pool]), nat._be16(public_port), seen
    path.outbound[ok] = ov


def test_a_full_block_takes_over_a_port_expired_past_its_hold(
        path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    """With no collector running, a port whose mapping expired (UDP 2 s) and was held (3 s)
    goes to the next flow; a live one never does."""
    bind(pool=SHORT, block_size=2, blocks=(6200,))
    now = time.monotonic_ns()
    _put(path, UDP, 1, 6200, now)  # live
    _put(path, UDP, 2, 6201, now - 6 * S)  # expired 4 s ago, held 3 s: free
    before = path.stats()
    r = out(path, udp(SUB, REMOTE, 3, 53))
    assert r.action == TC_ACT_OK and fields(r.ip)[2] == 6201
    assert delta(path, before) == {"out_translated": 1, "new_mapping": 1, "taken_over": 1}
    assert sorted(m.inside_port for m in path.mappings(SUB)) == [1, 3]
    back = inn(path, udp(REMOTE, PUBLIC[SHORT], 53, 6201))
    assert fields(back.ip)[1:4:2] == (SUB, 3)
    # both live now: the next flow is refused
    assert out(path, udp(SUB, REMOTE, 4, 53)).action == TC_ACT_REDIRECT
    _put(path, UDP, 5, 6200, now - 4 * S)  # expired, but still in its hold
    assert out(path, udp(SUB, REMOTE, 6, 53)).action == TC_ACT_SHOT  # ICMP rate-limited


def test_a_subscriber_removed_takes_its_mappings(path: nat.NatPath,
                                                bind: Callable[..., Binding]) -> None:
    b = bind(pool=ADF)
    sport = fields(out(path, udp(SUB, REMOTE, 9000, 53)).ip)[2]
    assert path.flush(SUB, keep=b) == 0  # its block kept: nothing goes
    assert path.delete_binding(SUB) == 1
    assert path.binding(SUB) is None and path.mappings(SUB) == []
    path.collect()  # the remotes it let in go with the mapping
    assert not any(int(k.public_port) == nat._be16(sport) for k in list(path.filters))
    before = path.stats()
    assert inn(path, udp(REMOTE, PUBLIC[ADF], 53, sport)).action == TC_ACT_SHOT
    assert out(path, udp(SUB, REMOTE, 9000, 53)).action == TC_ACT_SHOT  # inside, unbound
    assert delta(path, before) == {"no_mapping": 1, "no_binding": 1}


def test_a_binding_changed_keeps_the_mappings_of_the_blocks_it_keeps(
        path: nat.NatPath, bind: Callable[..., Binding]) -> None:
    old = bind(block_size=4, blocks=(5000, 5100))
    ports = {fields(out(path, tcp(SUB, REMOTE, 9100 + i, 80)).ip)[2]: 9100 + i
             for i in range(8)}
    new = bind(block_size=4, blocks=(5100, 5200))
    assert path.flush(SUB, old, keep=new) == 4  # those of block 5000
    left = {m.public_port: m.inside_port for m in path.mappings(SUB)}
    assert left == {p: i for p, i in ports.items() if p >= 5100}
    assert new.holds(fields(out(path, tcp(SUB, REMOTE, 9200, 80)).ip)[2])


def test_configuration_reads_back(path: nat.NatPath) -> None:
    assert path.pool(SHORT) == Pool(timeouts=SHORT_TIMEOUTS)
    assert path.pool(APDF).filtering == "address-and-port-dependent"
    assert path.addresses() == {a: p for p, a in PUBLIC.items()}
    assert path.inside_prefixes() == [INSIDE]
    with pytest.raises(DataplaneError):
        path.put_binding(SUB, Binding(PUBLIC[EIF], EIF, 64, (65500,)))  # past 65535
    with pytest.raises(DataplaneError):
        path.put_binding(SUB, Binding(PUBLIC[EIF], EIF, 8, tuple(range(1024, 1104, 16))))


def test_the_verifier_accepts_every_program_well_within_its_budget(path: nat.NatPath) -> None:
    counts = {fn: verified_instructions(fd) for fn, fd in path.fds.items()}
    print(f"verified instructions: {counts}")
    assert all(c is not None and c < 100_000 for c in counts.values()), counts


# --- pins ----------------------------------------------------------------------------------


def test_a_restarted_agent_adopts_the_mappings_and_sweeps_old_generations(
        bpffs: Path) -> None:
    root = bpffs / "bngtest-nat-pins"
    shutil.rmtree(root, ignore_errors=True)  # a crashed run's
    old = root / "nat" / "0123456789ab"
    old.mkdir(parents=True)
    first = nat.NatPath(max_subscribers=64, max_mappings=1024, pin_root=root)
    try:
        assert not first.adopted
        first.set_pool(0, Pool())
        first.put_address(PUBLIC[EIF], 0)
        first.put_binding(SUB, Binding(PUBLIC[EIF], 0, 64, (4096,)))
        sport = fields(out(first, udp(SUB, REMOTE, 10000, 53)).ip)[2]
    finally:
        first.close()
    second = nat.NatPath(max_subscribers=64, max_mappings=1024, pin_root=root)
    try:
        assert second.adopted and second.generation == first.generation
        [m] = second.mappings(SUB)
        assert (m.inside_port, m.public_port) == (10000, sport)
        assert fields(inn(second, udp(REMOTE, PUBLIC[EIF], 53, sport)).ip)[1] == SUB
        assert out(second, udp(SUB, REMOTE, 10001, 53)).action == TC_ACT_OK  # tail calls
        assert second.remove_other_generations() == ["0123456789ab"]
    finally:
        second.close()
        shutil.rmtree(root, ignore_errors=True)


def test_the_programs_are_pinned_tcx_links_adopted_swapped_and_removed(
        two_hosts: tuple[str, str], bpffs: Path) -> None:
    """A restarted agent keeps the same links; a new generation (other table sizes) swaps
    its programs into them, so the uplink never goes untranslated; ``remove`` takes them
    off (and an uplink that is not there is no error)."""
    ns, _ = two_hosts
    root = bpffs / "bngtest-nat-tcx"

    def make(gen: int) -> nat.NatPath:
        return nat.NatPath(max_subscribers=64, max_mappings=1024 << gen, pin_root=root)

    check_pinned_links(
        ns, root, "nat", make, lambda p: p.attach("a0", ns=ns),  # type: ignore[attr-defined]
        lambda p: {d: program_id(p.fds[fn])  # type: ignore[attr-defined]
                   for d, fn in nat.PROGRAMS.items()},
        lambda: nat.remove(root, ["a0", "gone0"], ns), "nat_out")


def test_without_tcx_the_programs_go_on_clsact(
        two_hosts: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from bng_operator import netlink

    ns, _ = two_hosts
    monkeypatch.setattr(classifiers, "attach_tcx", lambda *_: None)  # what a kernel < 6.6 says
    p = nat.NatPath(max_subscribers=64, max_mappings=1024)
    try:
        p.attach("a0", ns=ns)
        assert tcx_programs(ns, "a0") == {"ingress": [], "egress": []}
        assert netlink.tc_program_name("a0", "egress", ns) == "nat_out"
        assert netlink.tc_program_name("a0", "ingress", ns) == "nat_in"
        assert p.attached("a0", ns)
    finally:
        p.close()
    nat.remove(Path("/nonexistent"), ["a0"], ns)
    assert not p.attached("a0", ns) and "clsact" not in qdiscs(ns, "a0")


# --- real traffic: veths, CHECKSUM_PARTIAL and GSO -------------------------------------------


SERVER = r"""
import hashlib, json, socket, threading
def listen(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    return s
def hold(s):
    held = []
    while True:
        held.append(s.accept()[0])
bulk, held = listen(5201), listen(5202)
threading.Thread(target=hold, args=(held,), daemon=True).start()
print("ready", flush=True)
while True:
    c, peer = bulk.accept()
    h, n = hashlib.sha256(), 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        h.update(d); n += len(d)
    c.sendall(bytes(range(256)) * 32768)  # 8 MiB back
    c.close()
    print(json.dumps({"peer": list(peer), "n": n, "sha": h.hexdigest()}), flush=True)
"""

CLIENT = r"""
import hashlib, json, socket
data = bytes((i * 7) & 0xFF for i in range(256)) * 32768  # 8 MiB
c = socket.create_connection(("198.51.100.2", 5201), timeout=20)
c.sendall(data); c.shutdown(socket.SHUT_WR)
got = bytearray()
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    got += d
print(json.dumps({"sent": hashlib.sha256(data).hexdigest(),
                  "back_ok": bytes(got) == bytes(range(256)) * 32768}))
"""

CONNECTS = r"""
import errno, json, socket, time
held, t = [], time.monotonic()
for i in range(4):
    held.append(socket.create_connection(("198.51.100.2", 5202), timeout=5))
try:
    socket.create_connection(("198.51.100.2", 5202), timeout=5)
    print(json.dumps({"fifth": "connected"}))
except OSError as e:
    print(json.dumps({"fifth": errno.errorcode.get(e.errno, str(e)),
                      "seconds": time.monotonic() - t}))
"""

ECHO = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 6000))
s.sendto(b"hello", ("198.51.100.2", 9))  # makes the mapping
print("ready", flush=True)
while True:
    d, peer = s.recvfrom(2048)
    s.sendto(d + (" from %s:%d" % peer).encode(), peer)
"""

HAIRPIN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 6001))
s.settimeout(5)
s.sendto(b"hi", ("192.0.2.1", int(sys.argv[1])))
d, peer = s.recvfrom(2048)
print(d.decode(), "|", "%s:%d" % peer)
"""


def test_real_traffic_through_veths_with_checksum_offload_and_gso(netlab: object) -> None:
    """Two subscriber namespaces behind a node whose uplink runs the NAT, and an "internet"
    namespace. The senders' veths leave checksums to the device and send GSO packets; the
    node's own veths checksum in software, after the NAT: a checksum it got wrong would
    be wrong on the wire, and the receiver would drop the segment."""
    from bng_lab.netlab import NetLab, in_netns
    from bng_operator import netlink

    lab: NetLab = netlab  # type: ignore[assignment]
    sub1, sub2, bng, inet = (lab.namespace(r) for r in ("nsub1", "nsub2", "nbng", "ninet"))
    lab.link(sub1, "eth0", bng, "acc1", "100.64.0.20/24", "100.64.0.1/24")
    lab.link(sub2, "eth0", bng, "acc2", "100.64.1.20/24", "100.64.1.1/24")
    lab.link(bng, "up0", inet, "eth0", "198.51.100.1/24", "198.51.100.2/24")
    lab.run(sub1, "ip", "route", "add", "default", "via", "100.64.0.1")
    lab.run(sub2, "ip", "route", "add", "default", "via", "100.64.1.1")
    lab.run(bng, "ip", "route", "add", "default", "via", "198.51.100.2")
    lab.run(bng, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.up0.rp_filter=0")
    lab.run(inet, "ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
    with in_netns(sub1):
        assert netlink.feature("eth0", "tx-tcp-segmentation")  # TSO: GSO packets come in
    with in_netns(bng):
        for dev in ("up0", "acc1", "acc2"):
            assert netlink.set_feature(dev, "tx-checksum-ip-generic", False), dev

    p = nat.NatPath(max_subscribers=64, max_mappings=4096)
    procs = []
    try:
        p.set_pool(0, Pool())
        p.put_address(IPv4Address("192.0.2.1"), 0)
        p.put_inside(INSIDE)
        b1 = Binding(IPv4Address("192.0.2.1"), 0, 64, (10000,))
        b2 = Binding(IPv4Address("192.0.2.1"), 0, 4, (20000,))
        p.put_binding(IPv4Address("100.64.0.20"), b1)
        p.put_binding(IPv4Address("100.64.1.20"), b2)
        p.attach("up0", ns=bng)
        assert p.attached("up0", ns=bng)

        server = lab.popen(inet, sys.executable, "-c", SERVER, stdout=-1)
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        # TCP both ways, 8 MiB each: GSO and CHECKSUM_PARTIAL through nat_out and nat_in
        client = json.loads(lab.run(sub1, sys.executable, "-c", CLIENT, timeout=60).stdout)
        seen = json.loads(server.stdout.readline())
        assert client["back_ok"] and seen["sha"] == client["sent"] and seen["n"] == 8 << 20
        assert seen["peer"][0] == "192.0.2.1" and b1.holds(seen["peer"][1])
        # ICMP echo
        lab.run(sub1, "ping", "-c", "2", "-i", "0.2", "-W", "2", "198.51.100.2")
        # hairpinning: sub2 reaches sub1's public endpoint, and sub1 sees sub2's
        echo_ = lab.popen(sub1, sys.executable, "-c", ECHO, stdout=-1)
        procs.append(echo_)
        assert echo_.stdout is not None and echo_.stdout.readline().strip() == b"ready"
        [m] = [m for m in p.mappings(IPv4Address("100.64.0.20")) if m.protocol == UDP]
        said = lab.run(sub2, sys.executable, "-c", HAIRPIN, str(m.public_port)).stdout
        text, peer = (s.strip() for s in said.split("|"))
        assert peer == f"192.0.2.1:{m.public_port}"
        assert text.startswith("hi from 192.0.2.1:")
        assert b2.holds(int(text.rsplit(":", 1)[1]))
        # a full block: sub2 has 4 ports; its fifth connection is refused at once (ICMP 3/13)
        before = p.stats()
        fifth = json.loads(lab.run(sub2, sys.executable, "-c", CONNECTS, timeout=30).stdout)
        d = delta(p, before)
        assert fifth["fifth"] == "EHOSTUNREACH" and fifth["seconds"] < 3, (fifth, d)
        assert d["block_full"] >= 1 and d["icmp_sent"] >= 1, d
        assert d.get("write_error", 0) == 0 and d.get("malformed", 0) == 0, d
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        p.close()


def test_the_carried_layout_covers_the_carried_tables_structs_and_flags() -> None:
    """A renamed struct or flag must not drop silently out of the hash that decides whether
    a new generation may take the old one's mappings."""
    found = nat._CARRIED_LAYOUT.findall((Path(nat.BPF_DIR) / "lib" / "nat.h").read_text())
    structs = sorted(f.split()[1] for f in found if f.startswith("struct"))
    assert structs == ["nat_endpoint", "nat_filter_key", "nat_mapping"]
    assert {f.split()[1] for f in found if f.startswith("#define")} >= {
        "NAT_TCP_SYN", "NAT_TCP_FIN", "NAT_TCP_RST", "NAT_F_HELD"}
    assert all(f.endswith("};") for f in found if f.startswith("struct"))
    assert nat.carried_layout() == nat.carried_layout()

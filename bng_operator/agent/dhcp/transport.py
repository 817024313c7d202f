"""DHCP on the wire: raw Ethernet frames on an access interface.

Clients without an address can only be answered at layer 2 (to their MAC, or broadcast), and
VLAN tags must come back as they came in, so the server reads and writes whole frames on an
AF_PACKET socket. A classic BPF filter keeps everything but UDP to port 67 (untagged, 802.1Q
or QinQ) in the kernel, so subscriber traffic on the same interface never reaches Python.
A UDP socket on port 67 stays open only so that the kernel does not answer relayed or
unicast requests with ICMP port-unreachable; its own filter drops everything.

Requests are read in batches, up to 64 frames a ``recvmmsg`` call, with their VLAN
auxdata: one system call a batch, where ``socket.recvmsg`` made two a frame (it looks up
the interface's name for an address nobody reads). Reads and sends keep the GIL
(``syscalls``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from bng_operator import netlink
from bng_operator.agent import syscalls
from bng_operator.agent.dhcp.codec import Malformed, Message, MessageType

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
VLAN_TPIDS = (0x8100, 0x88A8)
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
SO_ATTACH_FILTER = 26
RCVBUF = 1 << 20
PACKET_OUTGOING = 4
SERVER_PORT, CLIENT_PORT = 67, 68
BROADCAST_MAC = b"\xff" * 6
BROADCAST_IP = IPv4Address("255.255.255.255")
_AUX = struct.Struct("=IIIHHHH")
_CMSG_HDR = struct.Struct("=QiI")  # struct cmsghdr on a 64-bit kernel: len, level, type
FRAME_MAX = 2048  # a DHCP request is at most 576 bytes (plus tags); longer frames are cut
BATCH = 64


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_recvmmsg = syscalls.LIBC.recvmmsg  # with MSG_DONTWAIT: the GIL is kept (syscalls.py)
_recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int,
                      ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int


class _Batch:
    """Buffers for one ``recvmmsg`` call of up to ``n`` frames with their auxdata, made once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.control_len = socket.CMSG_SPACE(_AUX.size)
        self.frames = ctypes.create_string_buffer(FRAME_MAX * n)
        self.controls = ctypes.create_string_buffer(self.control_len * n)
        self.iovs = (_Iovec * n)()
        self.msgs = (_Mmsghdr * n)()
        self.frame_view = memoryview(self.frames).cast("B")  # read without copying it all
        self.control_view = memoryview(self.controls).cast("B")
        frames, controls = ctypes.addressof(self.frames), ctypes.addressof(self.controls)
        for i in range(n):
            self.iovs[i].base, self.iovs[i].len = frames + i * FRAME_MAX, FRAME_MAX
            h = self.msgs[i].hdr
            h.iov, h.iovlen = ctypes.pointer(self.iovs[i]), 1
            h.control = controls + i * self.control_len

    def receive(self, fd: int, limit: int) -> list[tuple[bytes, bytes]]:
        """The frames waiting on ``fd`` (up to ``limit``), as (frame, stripped VLAN tag)."""
        n = min(limit, self.n)
        for i in range(n):  # the kernel shortens these to what it wrote
            self.msgs[i].hdr.controllen = self.control_len
        got = _recvmmsg(fd, self.msgs, n, syscalls.MSG_DONTWAIT, None)
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return []
            raise OSError(err, os.strerror(err))
        out = []
        for i in range(got):
            m = self.msgs[i]
            data = bytes(self.frame_view[i * FRAME_MAX : i * FRAME_MAX + min(m.len, FRAME_MAX)])
            out.append((data, _stripped_tag(self.control_view, i * self.control_len,
                                            m.hdr.controllen)))
        return out


def _stripped_tag(controls: memoryview, start: int, length: int) -> bytes:
    """The VLAN tag the NIC took off, from a frame's PACKET_AUXDATA (b"" when none)."""
    if length < _CMSG_HDR.size + _AUX.size:
        return b""
    _, level, kind = _CMSG_HDR.unpack_from(controls, start)
    if level != SOL_PACKET or kind != PACKET_AUXDATA:
        return b""
    status, _, _, _, _, tci, tpid = _AUX.unpack_from(controls, start + _CMSG_HDR.size)
    if not status & TP_STATUS_VLAN_VALID:
        return b""
    return struct.pack("!HH", tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)

# --- classic BPF socket filter ----------------------------------------------------------------
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS, _LD_H_IND = 0x20, 0x28, 0x30, 0x48
_LDX_MSH, _JEQ, _JSET, _RET = 0xB1, 0x15, 0x45, 0x06
_SKF_AD_PKTTYPE = 0xFFFFF000 + 4
_ACCEPT = 0xFFFF


def _assemble(prog: list[tuple[object, ...]]) -> list[tuple[int, int, int, int]]:
    """Instructions with label names for jump targets -> (code, jt, jf, k)."""
    labels: dict[object, int] = {}
    flat: list[tuple[object, ...]] = []
    for ins in prog:
        if len(ins) == 1:
            labels[ins[0]] = len(flat)
        else:
            flat.append(ins)
    out = []
    for i, (code, jt, jf, k) in enumerate(flat):
        rel = [labels[t] - i - 1 if isinstance(t, str) else int(t) for t in (jt, jf)]  # type: ignore[call-overload]
        out.append((int(code), rel[0], rel[1], int(k)))  # type: ignore[call-overload]
    return out


def dhcp_server_filter() -> list[tuple[int, int, int, int]]:
    """Accept incoming IPv4 UDP to port 67 under 0, 1 or 2 VLAN tags; drop the rest."""
    p: list[tuple[object, ...]] = [
        (_LD_W_ABS, 0, 0, _SKF_AD_PKTTYPE), (_JEQ, "drop", 0, PACKET_OUTGOING),
        (_LD_H_ABS, 0, 0, 12), (_JEQ, "ip14", 0, ETH_P_IP), (_JEQ, "t16", 0, 0x8100),
        (_JEQ, "t16", "drop", 0x88A8),
        ("t16",), (_LD_H_ABS, 0, 0, 16), (_JEQ, "ip18", 0, ETH_P_IP), (_JEQ, "t20", "drop", 0x8100),
        ("t20",), (_LD_H_ABS, 0, 0, 20), (_JEQ, "ip22", "drop", ETH_P_IP),
    ]
    for off in (14, 18, 22):
        p += [
            (f"ip{off}",), (_LD_B_ABS, 0, 0, off + 9), (_JEQ, 0, "drop", socket.IPPROTO_UDP),
            (_LD_H_ABS, 0, 0, off + 6), (_JSET, "drop", 0, 0x1FFF),  # no fragments
            (_LDX_MSH, 0, 0, off), (_LD_H_IND, 0, 0, off + 2), (_JEQ, "accept", "drop", SERVER_PORT),
        ]
    p += [("accept",), (_RET, 0, 0, _ACCEPT), ("drop",), (_RET, 0, 0, 0)]
    return _assemble(p)


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# --- frames ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """A DHCP request as it arrived: L2/L3 addressing, VLAN tags and the UDP payload."""

    src_mac: bytes
    dst_mac: bytes
    tags: bytes  # raw 802.1Q/802.1ad tags, outermost first, to put back on the reply
    vlans: tuple[int, ...]
    src_ip: IPv4Address
    dst_ip: IPv4Address
    payload: bytes


_ETH_TYPE = struct.Struct("!H")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")


def parse_frame(data: bytes, stripped_tag: bytes = b"") -> Frame:
    """Decode Ethernet/VLAN/IPv4/UDP. ``stripped_tag`` is the tag the NIC took off (auxdata)."""
    n = len(data)
    off = 12
    while n >= off + 4 and _ETH_TYPE.unpack_from(data, off)[0] in VLAN_TPIDS:
        off += 4
    tags = stripped_tag + data[12:off]
    ip = off + 2
    if n < ip + 20 or _ETH_TYPE.unpack_from(data, off)[0] != ETH_P_IP:
        raise Malformed("malformed_frame", "not an IPv4 frame")
    vihl, _, total, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(data, ip)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or total < ihl + 8 or n < ip + total:
        raise Malformed("malformed_frame", "bad IPv4 header or truncated datagram")
    if proto != 17 or frag & 0x3FFF:
        raise Malformed("malformed_frame", "not an unfragmented UDP datagram")
    _, _, ulen, _ = _UDP.unpack_from(data, ip + ihl)
    if ulen < 8 or ip + ihl + ulen > n:
        raise Malformed("malformed_frame", "UDP length past the end of the frame")
    vlans = tuple(_ETH_TYPE.unpack_from(tags, i + 2)[0] & 0x0FFF for i in range(0, len(tags), 4))
    start = ip + ihl + 8
    return Frame(data[6:12], data[:6], tags, vlans, IPv4Address(src), IPv4Address(dst),
                 data[start : start + ulen - 8])


_OPTIONS_AT = 8 + 236 + 4  # past the UDP header, BOOTP's fixed part and the magic cookie
_TPID_BYTES = tuple(t.to_bytes(2, "big") for t in VLAN_TPIDS)
# Option 53 comes first in practice. A DISCOVER with it further on is taken for another
# request: it gets their priority, nothing worse.
_PEEK_OPTIONS = 4


def is_discover(data: bytes) -> bool:
    """Whether a frame is a DHCPDISCOVER, from a quick look (no validation): option 53 among
    the first few options. The overload backlog uses it to put other requests first."""
    n, off = len(data), 12
    while n >= off + 4 and data[off:off + 2] in _TPID_BYTES:
        off += 4
    if n < off + 3:
        return False
    o = off + 2 + (data[off + 2] & 0x0F) * 4 + _OPTIONS_AT
    for _ in range(_PEEK_OPTIONS):
        if o + 2 >= n:
            return False
        code = data[o]
        if code == 53:
            return data[o + 1] == 1 and data[o + 2] == MessageType.DISCOVER
        if code == 0:
            o += 1
        elif code == 255:
            return False
        else:
            o += 2 + data[o + 1]
    return False


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``, as a number in network order."""
    if len(data) % 2:
        data += b"\x00"
    # The ones' complement sum of the 16-bit words is the number they make, modulo 0xFFFF
    # (2**16 = 1 modulo 0xFFFF), with 0xFFFF for a non-zero multiple: one C-level division
    # instead of an array and a sum, a third of the time on a reply.
    n = int.from_bytes(data, "big")
    s = n % 0xFFFF or (0xFFFF if n else 0)
    return ~s & 0xFFFF


def reply_destination(req: Message, reply: Message, frame: Frame) -> tuple[bytes, IPv4Address, int]:
    """(MAC, IP, port) a reply goes to, per RFC 2131 §4.1."""
    if int(req.giaddr):
        return frame.src_mac, req.giaddr, SERVER_PORT
    if reply.type == MessageType.NAK:
        return BROADCAST_MAC, BROADCAST_IP, CLIENT_PORT
    if int(req.ciaddr):
        return frame.src_mac, req.ciaddr, CLIENT_PORT
    if req.broadcast:
        return BROADCAST_MAC, BROADCAST_IP, CLIENT_PORT
    return req.chaddr[:6], reply.yiaddr, CLIENT_PORT


def build_frame(dst_mac: bytes, src_mac: bytes, tags: bytes, src_ip: IPv4Address,
                dst_ip: IPv4Address, dst_port: int, payload: bytes,
                src_port: int = SERVER_PORT) -> bytes:
    """Ethernet (+ tags) / IPv4 / UDP around ``payload``, with both checksums."""
    src, dst = src_ip.packed, dst_ip.packed
    ulen = 8 + len(payload)
    pseudo = src + dst + struct.pack("!HHHHHH", 17, ulen, src_port, dst_port, ulen, 0)
    ucsum = _checksum(pseudo + payload) or 0xFFFF  # 0 would mean "no checksum"
    iph = _IPV4.pack(0x45, 0, 20 + ulen, 0, 0, 64, 17, 0, src, dst)
    iph = iph[:10] + struct.pack("!H", _checksum(iph)) + iph[12:]
    return b"".join((dst_mac, src_mac, tags, b"\x08\x00", iph,
                     _UDP.pack(src_port, dst_port, ulen, ucsum), payload))


# --- the interface ---------------------------------------------------------------------------------


class AccessInterface:
    """The sockets of one access interface."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.index, mac, addrs = netlink.interface_info(ifname)
        self.mac = bytes.fromhex(mac.replace(":", ""))
        self.addresses = tuple(IPv4Address(a) for a in addrs)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        attach_filter(self.sock, dhcp_server_filter())
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        # Small on purpose: past saturation a long queue only holds requests whose clients
        # have given up; dropping the excess in the kernel keeps the replies that go out fresh.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.bind((ifname, ETH_P_ALL))
        self.sock.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        attach_filter(self.udp, [(_RET, 0, 0, 0)])
        self.udp.bind(("0.0.0.0", SERVER_PORT))
        self._batch = _Batch(BATCH)

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, limit: int = BATCH) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` waiting frames as (frame, stripped VLAN tag or b"")."""
        return self._batch.receive(self.sock.fileno(), limit)

    def send(self, frame: bytes) -> bool:
        try:
            syscalls.send(self.sock.fileno(), frame)
        except OSError:  # ENOBUFS, EAGAIN, the interface gone: counted by the caller
            return False
        return True

    def close(self) -> None:
        self.sock.close()
        self.udp.close()

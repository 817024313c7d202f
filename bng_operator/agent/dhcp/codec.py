"""DHCPv4 messages: strict decoding of what clients send, encoding of what we answer.

Written with struct rather than dpkt: dpkt accepts an option whose length runs past the end
and knows nothing of option overload (RFC 2131 §4.1, option 52), each of which must be a
counted drop, and building dpkt objects cost more than the rest of a request together
(profiled under perfdhcp). dpkt stays the independent parser the tests check us against.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

MAGIC = b"\x63\x82\x53\x63"
HEADER_LEN = 236  # BOOTP fixed fields, before the magic cookie
MIN_LEN = HEADER_LEN + len(MAGIC)
MAX_LEN = 1472  # what fits a 1500-byte MTU after IPv4 and UDP headers; larger is dropped
MIN_REPLY_LEN = 300
BOOTREQUEST, BOOTREPLY = 1, 2
BROADCAST_FLAG = 0x8000
ZERO = IPv4Address(0)
_HDR = struct.Struct("!BBBBIHHIIII16s64s128s")


class MessageType(enum.IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


_TYPES = {int(t): t for t in MessageType}


class Opt(enum.IntEnum):
    """Option codes bng reads or writes (RFC 2132, RFC 3046)."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    BROADCAST = 28
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAM_REQUEST = 55
    MESSAGE = 56
    MAX_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    RELAY_AGENT = 82
    END = 255


class RelaySub(enum.IntEnum):
    CIRCUIT_ID = 1
    REMOTE_ID = 2


class Malformed(ValueError):
    """A message we drop; ``reason`` is the label of bng_dhcp_drops_total."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(slots=True)
class Message:
    """One DHCP message. Addresses are IPv4Address; options map code -> raw bytes."""

    op: int
    xid: int
    chaddr: bytes  # the full 16-byte field; ``mac`` is the first 6 for Ethernet
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO
    yiaddr: IPv4Address = ZERO
    siaddr: IPv4Address = ZERO
    giaddr: IPv4Address = ZERO
    options: dict[int, bytes] = field(default_factory=dict)
    _relay: dict[int, bytes] | None = field(default=None, repr=False, compare=False)

    # --- reading options --------------------------------------------------------------------

    @property
    def type(self) -> MessageType | None:
        raw = self.options.get(Opt.MESSAGE_TYPE)
        if raw is None or len(raw) != 1:
            return None
        return _TYPES.get(raw[0])

    @property
    def mac(self) -> str:
        return self.chaddr[:6].hex(":")

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)

    def _address(self, code: int) -> IPv4Address | None:
        raw = self.options.get(code)
        return IPv4Address(raw) if raw is not None and len(raw) == 4 else None

    @property
    def requested_ip(self) -> IPv4Address | None:
        return self._address(Opt.REQUESTED_IP)

    @property
    def server_id(self) -> IPv4Address | None:
        return self._address(Opt.SERVER_ID)

    @property
    def client_id(self) -> bytes | None:
        return self.options.get(Opt.CLIENT_ID)

    @property
    def hostname(self) -> str | None:
        raw = self.options.get(Opt.HOSTNAME)
        return raw.decode("ascii", "replace") if raw else None

    @property
    def vendor_class(self) -> str | None:
        raw = self.options.get(Opt.VENDOR_CLASS)
        return raw.decode("ascii", "replace") if raw else None

    @property
    def relay_agent(self) -> bytes | None:
        """Option 82 exactly as received, for echoing."""
        return self.options.get(Opt.RELAY_AGENT)

    def strip_relay_agent(self) -> None:
        """Forget option 82: the request is served as if it had come without it."""
        self.options.pop(Opt.RELAY_AGENT, None)
        self._relay = None

    def relay_sub(self, sub: int) -> bytes | None:
        if self._relay is None:
            raw = self.relay_agent
            if raw is None:
                return None
            self._relay = _suboptions(raw)  # parsed once; classification asks several times
        return self._relay.get(sub)

    @property
    def circuit_id(self) -> str | None:
        v = self.relay_sub(RelaySub.CIRCUIT_ID)
        return v.decode("ascii", "backslashreplace") if v is not None else None

    @property
    def remote_id(self) -> str | None:
        v = self.relay_sub(RelaySub.REMOTE_ID)
        return v.decode("ascii", "backslashreplace") if v is not None else None


def _suboptions(raw: bytes) -> dict[int, bytes]:
    """Option 82's sub-options; a malformed tail is ignored (we echo the raw bytes anyway)."""
    out: dict[int, bytes] = {}
    i = 0
    while i + 2 <= len(raw):
        code, n = raw[i], raw[i + 1]
        if i + 2 + n > len(raw):
            break
        out.setdefault(code, raw[i + 2 : i + 2 + n])
        i += 2 + n
    return out


def walk_options(buf: bytes, where: str, into: dict[int, bytes], allow_overload: bool) -> None:
    """Parse one options area. Repeated options are concatenated (RFC 3396)."""
    i, n = 0, len(buf)
    while i < n:
        code = buf[i]
        if code == Opt.PAD:
            i += 1
            continue
        if code == Opt.END:
            return
        if i + 1 >= n:
            raise Malformed("option_overrun", f"option {code} in {where} has no length byte")
        length = buf[i + 1]
        end = i + 2 + length
        if end > n:
            raise Malformed("option_overrun",
                            f"option {code} in {where} claims {length} bytes, {n - i - 2} remain")
        if code == Opt.OVERLOAD and not allow_overload:
            raise Malformed("overload_loop", f"option 52 inside the overloaded {where} field")
        value = buf[i + 2 : end]
        into[code] = into[code] + value if code in into else value
        i = end


def decode(payload: bytes) -> Message:
    """A BOOTREQUEST from a UDP payload. Raises Malformed with the drop reason."""
    if len(payload) < MIN_LEN:
        raise Malformed("truncated", f"{len(payload)} bytes, a DHCP message has at least {MIN_LEN}")
    if len(payload) > MAX_LEN:
        raise Malformed("oversized", f"{len(payload)} bytes, more than {MAX_LEN}")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = _HDR.unpack_from(payload)
    if op != BOOTREQUEST:
        raise Malformed("wrong_op", f"op {op}, a server only takes BOOTREQUEST (1)")
    if payload[HEADER_LEN:MIN_LEN] != MAGIC:
        raise Malformed("no_magic_cookie", "no DHCP magic cookie after the BOOTP header")
    if htype != 1 or hlen != 6:
        raise Malformed("bad_hardware", f"htype {htype} hlen {hlen}, only Ethernet is served")
    options: dict[int, bytes] = {}
    walk_options(payload[MIN_LEN:], "options", options, allow_overload=True)
    overload = options.get(Opt.OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise Malformed("bad_overload", f"option 52 value {overload.hex()}")
        # RFC 2131 §4.1: file first, then sname.
        if overload[0] & 1:
            walk_options(file, "file", options, allow_overload=False)
        if overload[0] & 2:
            walk_options(sname, "sname", options, allow_overload=False)
    msg = Message(op=op, xid=xid, chaddr=chaddr, htype=htype, hlen=hlen, hops=hops, secs=secs,
                  flags=flags, ciaddr=IPv4Address(ciaddr), yiaddr=IPv4Address(yiaddr),
                  siaddr=IPv4Address(siaddr), giaddr=IPv4Address(giaddr), options=options)
    if msg.type is None:
        raise Malformed("no_message_type", "option 53 is missing or not a known message type")
    return msg


def encode(msg: Message, option_order: list[int]) -> bytes:
    """The wire form of ``msg``, options in ``option_order`` (53 first, as RFC 2131 asks)."""
    parts = [_HDR.pack(msg.op, msg.htype, msg.hlen, msg.hops, msg.xid, msg.secs, msg.flags,
                       int(msg.ciaddr), int(msg.yiaddr), int(msg.siaddr), int(msg.giaddr),
                       msg.chaddr, b"", b""), MAGIC]
    opts = msg.options
    for code in option_order:
        value = opts.get(code)
        if value is None:
            continue
        if len(value) <= 255:
            parts.append(bytes((code, len(value))))
            parts.append(value)
        else:  # an option longer than 255 bytes is split into several (RFC 3396)
            for i in range(0, len(value), 255):
                chunk = value[i : i + 255]
                parts.append(bytes((code, len(chunk))))
                parts.append(chunk)
    parts.append(b"\xff")
    raw = b"".join(parts)
    # RFC 1542 §2.1: some relays and clients drop BOOTP messages shorter than 300 bytes.
    return raw + bytes(MIN_REPLY_LEN - len(raw)) if len(raw) < MIN_REPLY_LEN else raw

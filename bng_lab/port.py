"""Raw DHCP from a subscriber's namespace: a packet socket opened there from this process,
frames out as a subscriber sends them (tags and option 82 as given), BOOTREPLYs back. For
tests that need what dhclient cannot send."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address

from bng_lab.messages import request
from bng_lab.netlab import in_netns
from bng_operator.agent.dhcp.codec import HEADER_LEN, MAGIC, MessageType, Opt, encode, walk_options
from bng_operator.agent.dhcp.transport import BROADCAST_IP, BROADCAST_MAC, build_frame

ETH_P_ALL = 0x0003


@dataclass(frozen=True)
class Reply:
    kind: int  # option 53
    xid: int
    yiaddr: IPv4Address
    options: dict[int, bytes]


def _reply(frame: bytes) -> Reply | None:
    """The BOOTREPLY in an untagged Ethernet/IPv4/UDP frame to port 68, else None."""
    if len(frame) < 42 + HEADER_LEN + 4 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    udp = 14 + (frame[14] & 0x0F) * 4
    if frame[udp + 2 : udp + 4] != (68).to_bytes(2, "big"):
        return None
    return bootreply(frame[udp + 8 :])


def bootreply(p: bytes) -> Reply | None:
    if len(p) < HEADER_LEN + 4 or p[0] != 2 or p[HEADER_LEN : HEADER_LEN + 4] != MAGIC:
        return None
    opts: dict[int, bytes] = {}
    walk_options(p[HEADER_LEN + 4 :], "options", opts, allow_overload=True)
    kind = opts.get(Opt.MESSAGE_TYPE, b"\0")[0]
    return Reply(kind, int.from_bytes(p[4:8], "big"), IPv4Address(p[16:20]), opts)


class Port:
    """A packet socket on a subscriber's interface, opened from this process in its
    namespace: frames out as the subscriber sends them, BOOTREPLYs in."""

    def __init__(self, ns: str, iface: str = "eth0") -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sock.bind((iface, ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.seen: list[Reply] = []  # every BOOTREPLY read so far

    def close(self) -> None:
        self.sock.close()

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def drain(self, seconds: float = 0.0) -> list[Reply]:
        """Read replies for ``seconds`` (0: only those waiting); returns the new ones."""
        new: list[Reply] = []
        deadline = time.monotonic() + seconds
        while True:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.sock], [], [], left)[0]:
                break
            r = _reply(self.sock.recv(4096))
            if r is not None:
                new.append(r)
        self.seen += new
        return new

    def exchange(self, frame: bytes, xid: int, timeout: float = 4.0) -> Reply | None:
        """Send ``frame`` and wait for the reply with ``xid`` (resent once a second)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send(frame)
            for r in self.drain(min(1.0, max(0.0, deadline - time.monotonic()))):
                if r.xid == xid:
                    return r
        return None


def client_frame(kind: MessageType, chaddr: bytes, xid: int, *, requested: str | None = None,
                 server_id: str | None = None, option82: bytes | None = None,
                 tags: bytes = b"") -> bytes:
    """A client's broadcast request, as dhclient sends it: from port 68, broadcast flag set;
    ``tags``: 802.1Q tags, inline."""
    msg = request(kind, chaddr.hex(":"), xid=xid, requested=requested, server_id=server_id,
                  broadcast=True)
    order = [Opt.MESSAGE_TYPE, Opt.REQUESTED_IP, Opt.SERVER_ID]
    if option82 is not None:
        msg.options[Opt.RELAY_AGENT] = option82
        order.append(Opt.RELAY_AGENT)  # last, as relay agents put it (RFC 3046 §2.1)
    return build_frame(BROADCAST_MAC, chaddr, tags, IPv4Address(0), BROADCAST_IP, 67,
                       encode(msg, order), src_port=68)


def dora(port: Port, chaddr: bytes, xid: int, option82: bytes | None = None, tags: bytes = b"",
         ) -> tuple[Reply | None, Reply | None]:
    """DISCOVER, then REQUEST what was offered: (offer, ack-or-nak), None where none came."""
    offer = port.exchange(client_frame(MessageType.DISCOVER, chaddr, xid, option82=option82,
                                       tags=tags), xid)
    if offer is None or offer.kind != MessageType.OFFER:
        return offer, None
    sid = str(IPv4Address(offer.options[Opt.SERVER_ID]))
    ack = port.exchange(client_frame(MessageType.REQUEST, chaddr, xid + 1,
                                     requested=str(offer.yiaddr), server_id=sid,
                                     option82=option82, tags=tags), xid + 1)
    return offer, ack


@contextmanager
def port(ns: str) -> Iterator[Port]:
    p = Port(ns)
    try:
        yield p
    finally:
        p.close()

"""A flow: one thing the node did with one packet, from the kernel's programs or the slow
path. Our own model; observe/hubble.py maps it to Hubble's ``flow.Flow``.

A kernel flow event (bpf/lib/flow.h, ``struct flow_event``) decodes with ``from_kernel``;
tests/bpf/test_flows.py holds ``EVENT`` to the C layout.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from bng_operator.agent.dataplane.names import DHCP_COUNTERS, NAT_STATS, QOS_STATS


class Source(IntEnum):
    """Which program saw the packet (enum flow_source); SLOW_PATH is the agent's."""

    DHCP = 1  # the XDP DHCP fast path
    ACCESS = 2  # the access data path: anti-spoofing, VLAN termination, ARP
    NAT = 3
    SLOW_PATH = 16  # the agent's DHCP server
    RADIUS = 17  # the agent's RADIUS client


class Verdict(IntEnum):
    """enum flow_verdict; the values are Hubble's."""

    FORWARDED = 1
    DROPPED = 2
    TRANSLATED = 7


class Point(IntEnum):
    """enum flow_point: where a forwarded packet went."""

    NONE = 0
    TO_NETWORK = 1  # sent back out (XDP_TX, the slow path's reply)
    TO_STACK = 2  # to the kernel's stack: the slow path


DHCP_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
              7: "RELEASE", 8: "INFORM"}

# struct flow_event, little-endian: addresses and ports as they are on the wire
EVENT = struct.Struct("<QIBBBB6s6sHH4s4s2s2sBBH4s4s4s2sH")
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP"}


@dataclass(frozen=True, slots=True)
class Flow:
    time_ns: int  # wall clock, ns since the epoch
    source: Source
    verdict: Verdict
    point: Point
    reason: str  # the counter or drop reason's name ("ack", "spoof_source", ...)
    ifindex: int = 0
    interface: str = ""
    src_mac: str = ""
    dst_mac: str = ""
    vlans: tuple[int, ...] = ()
    saddr: str = ""
    daddr: str = ""
    proto: int = 0
    sport: int = 0
    dport: int = 0
    dhcp_type: int = 0
    yiaddr: str = ""
    xid: int = 0
    xlated_addr: str = ""
    xlated_port: int = 0
    subscriber: str = ""  # the Subscriber object's name, when known
    note: str = ""  # what the summary adds (a RADIUS decision's reason, ...)

    @property
    def dhcp(self) -> str:
        return DHCP_TYPES.get(self.dhcp_type, "")

    def summary(self) -> str:
        """One line, as Hubble's ``Summary``: "DHCP ACK 100.64.0.20 (fast path)"."""
        where = {Source.DHCP: "fast path", Source.SLOW_PATH: "slow path"}.get(self.source, "")
        if self.source == Source.RADIUS:
            return f"RADIUS {self.reason}" + (f": {self.note}" if self.note else "")
        if self.dhcp_type:
            text = f"DHCP {self.dhcp}"
            if self.yiaddr and self.yiaddr != "0.0.0.0":
                text += f" {self.yiaddr}"
            if self.verdict == Verdict.DROPPED:
                return f"{text} dropped: {self.reason} ({where})"
            if self.point == Point.TO_STACK:
                return f"{text} to the slow path: {self.reason}"
            return f"{text} ({where})"
        if self.verdict == Verdict.TRANSLATED and self.reason.startswith("block_"):
            return f"NAT block {self.note}"
        if self.verdict == Verdict.TRANSLATED:
            return f"NAT {PROTOCOLS.get(self.proto, self.proto)} {self.saddr}:{self.sport} " \
                   f"as {self.xlated_addr}:{self.xlated_port}"
        if self.verdict == Verdict.DROPPED:
            return f"dropped: {self.reason}" + (f" ({self.note})" if self.note else "")
        return self.reason


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def reason_name(source: int, reason: int) -> str:
    names = {Source.DHCP: DHCP_COUNTERS, Source.ACCESS: QOS_STATS, Source.NAT: NAT_STATS}.get(
        Source(source) if source in Source._value2member_map_ else Source.SLOW_PATH, ())
    return names[reason] if reason < len(names) else f"reason_{reason}"


def from_kernel(raw: bytes, wall_ns: Callable[[int], int]) -> Flow:
    """A kernel flow event; ``wall_ns`` turns the event's jiffies into wall-clock ns.
    Raises ValueError for an event of another layout or an unknown source."""
    (jiffies, ifindex, source, verdict, point, reason, src_mac, dst_mac, outer, inner, saddr,
     daddr, sport, dport, proto, dhcp_type, _, yiaddr, xid, xaddr, xport, _) = \
        EVENT.unpack_from(raw)
    return Flow(
        time_ns=wall_ns(jiffies), source=Source(source), verdict=Verdict(verdict),
        point=Point(point), reason=reason_name(source, reason), ifindex=ifindex,
        src_mac=_mac(src_mac), dst_mac=_mac(dst_mac),
        vlans=tuple(v for v in (outer, inner) if v), saddr=_ip(saddr), daddr=_ip(daddr),
        proto=proto, sport=int.from_bytes(sport, "big"), dport=int.from_bytes(dport, "big"),
        dhcp_type=dhcp_type, yiaddr=_ip(yiaddr) if dhcp_type else "",
        xid=int.from_bytes(xid, "big"), xlated_addr=_ip(xaddr) if any(xaddr) else "",
        xlated_port=int.from_bytes(xport, "big"))

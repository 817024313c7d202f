"""The agent's own flows, built when read (FlowHub.add_lazy): a reply the slow path sent, a
request it dropped, a RADIUS decision, a NAT block given or taken. Recording one costs an
append."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from bng_operator.agent.dhcp.codec import HEADER_LEN, Malformed, Message, Opt, walk_options
from bng_operator.agent.dhcp.transport import Frame, parse_frame
from bng_operator.agent.nat.log import Record
from bng_operator.agent.observe.flow import DHCP_TYPES, Flow, Point, Source, Verdict


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ports(wire: bytes) -> tuple[int, int]:
    off = 12
    while wire[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    ihl = (wire[off + 2] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", wire, off + 2 + ihl)
    return sport, dport


def reply_flow(time_ns: int, interface: str, wire: bytes) -> Flow | None:
    """A reply the slow path sent: ``wire`` is the whole frame."""
    try:
        frame = parse_frame(wire)
        p = frame.payload  # a BOOTREPLY: the codec decodes requests only
        options: dict[int, bytes] = {}
        walk_options(p[HEADER_LEN + 4:], "options", options, allow_overload=False)
    except (Malformed, IndexError):
        return None
    mtype = options.get(Opt.MESSAGE_TYPE, b"\0")[0]
    sport, dport = _ports(wire)
    return Flow(time_ns=time_ns, source=Source.SLOW_PATH, verdict=Verdict.FORWARDED,
                point=Point.TO_NETWORK, reason=DHCP_TYPES.get(mtype, "").lower(),
                interface=interface, src_mac=_mac(frame.src_mac), dst_mac=_mac(frame.dst_mac),
                vlans=frame.vlans, saddr=str(frame.src_ip), daddr=str(frame.dst_ip), proto=17,
                sport=sport, dport=dport, dhcp_type=mtype,
                yiaddr=str(IPv4Address(p[16:20])), xid=int.from_bytes(p[4:8], "big"))


def drop_flow(time_ns: int, interface: str, frame: Frame | None, msg: Message | None,
              reason: str) -> Flow:
    """A request the slow path dropped, and why (bng_dhcp_drops_total's reason)."""
    return Flow(time_ns=time_ns, source=Source.SLOW_PATH, verdict=Verdict.DROPPED,
                point=Point.NONE, reason=reason, interface=interface,
                src_mac=_mac(frame.src_mac) if frame else "",
                dst_mac=_mac(frame.dst_mac) if frame else "",
                vlans=frame.vlans if frame else (), saddr=str(frame.src_ip) if frame else "",
                daddr=str(frame.dst_ip) if frame else "", proto=17 if frame else 0,
                sport=68 if frame else 0, dport=67 if frame else 0,
                dhcp_type=int(msg.type or 0) if msg else 0, xid=msg.xid if msg else 0)


def radius_flow(time_ns: int, mac: str, decision: str, note: str = "",
                address: str = "") -> Flow:
    """A RADIUS decision on a session: accept, reject, fallback_admit, fallback_refuse."""
    return Flow(time_ns=time_ns, source=Source.RADIUS,
                verdict=Verdict.FORWARDED if decision in ("accept", "fallback_admit")
                else Verdict.DROPPED, point=Point.NONE, reason=decision, src_mac=mac,
                saddr=address, note=note)


def block_flow(r: Record) -> Flow:
    """A NAT port block given to (or taken from) a subscriber: who had these ports."""
    h = r.holder
    return Flow(time_ns=int(r.time * 1e9), source=Source.NAT, verdict=Verdict.TRANSLATED,
                point=Point.NONE, reason=f"block_{r.event}", src_mac=h.mac or "",
                saddr=str(h.inside), xlated_addr=str(r.public), xlated_port=r.first_port,
                note=f"{r.public}:{r.first_port}-{r.last_port} {r.event} "
                     f"{'to' if r.event == 'allocated' else 'from'} {h.inside}"
                     + (f" ({r.reason})" if r.reason else ""))

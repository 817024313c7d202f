"""Pure parts of RADIUS accounting (RFC 2866, 2869): the attributes of an Accounting-Request
(Start, Interim-Update, Stop), the 64-bit counters split into Octets and Gigawords, the
Acct-Terminate-Cause of each way a session ends, and the bounded queue's choice of what
to drop. No sockets, no disk: tested with tables.

Directions are the subscriber's (RFC 2866): *input* is what the NAS received from the
subscriber (its upload), *output* what it sent to it (its download).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from bng_operator.agent.radius.attributes import NAS_PORT_TYPE, line_attributes, nas_identifier
from bng_operator.agent.sessions.session import EndReason, Identity
from bng_operator.api.radius import RadiusAuth

START, STOP, INTERIM = "Start", "Stop", "Interim-Update"
STATUS_TYPES = (START, STOP, INTERIM)

# Acct-Terminate-Cause (RFC 2866 §5.10) of each way a session ends. A lease that expired:
# the CPE stopped renewing (unplugged, powered off, its line down); for IPoE that is what
# Lost-Carrier means, as accel-ppp and most IPoE BNGs send it. Session-Timeout is told
# apart from other disconnects by the RADIUS feature, which ends those sessions itself.
TERMINATE_CAUSE: dict[EndReason, str] = {
    EndReason.RELEASED: "User-Request",  # DHCPRELEASE
    EndReason.EXPIRED: "Lost-Carrier",  # no renewal before the lease ran out
    EndReason.DECLINED: "User-Error",  # DHCPDECLINE: the CPE found its address in use
    EndReason.MOVED: "NAS-Request",  # its lease went elsewhere (another pool, node, identity)
    EndReason.DISCONNECTED: "Admin-Reset",  # Disconnect-Request, an operator
    EndReason.NODE_DRAINED: "NAS-Request",  # the node stops serving it
    EndReason.REJECTED: "NAS-Request",  # never bound: no Start, so never sent
}
SESSION_TIMEOUT = "Session-Timeout"
# RFC 2866 §5.10 values (the shipped dictionary names them)
CAUSE_CODES = {"User-Request": 1, "Lost-Carrier": 2, "Lost-Service": 3, "Idle-Timeout": 4,
               "Session-Timeout": 5, "Admin-Reset": 6, "Admin-Reboot": 7, "Port-Error": 8,
               "NAS-Error": 9, "NAS-Request": 10, "NAS-Reboot": 11, "User-Error": 17}


def terminate_cause(reason: EndReason | None, session_timeout: bool = False) -> str:
    """The Acct-Terminate-Cause of a session that ended for ``reason``;
    ``session_timeout``: it was ended by its Session-Timeout."""
    if session_timeout:
        return SESSION_TIMEOUT
    return TERMINATE_CAUSE.get(reason, "NAS-Request") if reason else "NAS-Request"


def split64(n: int) -> tuple[int, int]:
    """A 64-bit counter as (Octets, Gigawords): the low and high 32 bits (RFC 2869 §5.1)."""
    n &= (1 << 64) - 1
    return n & 0xFFFFFFFF, n >> 32


@dataclass(frozen=True, slots=True)
class Usage:
    """A session's traffic so far, the subscriber's view turned into RADIUS's."""

    bytes_up: int = 0  # from the subscriber: Acct-Input
    packets_up: int = 0
    bytes_down: int = 0  # to the subscriber: Acct-Output
    packets_down: int = 0

    def __add__(self, o: Usage) -> Usage:
        return Usage(self.bytes_up + o.bytes_up, self.packets_up + o.packets_up,
                     self.bytes_down + o.bytes_down, self.packets_down + o.packets_down)


def acct_attributes(status: str, *, acct_session_id: str, user_name: str,
                    identity: Identity, auth: RadiusAuth, node: str, address: int,
                    classes: tuple[bytes, ...], event_time: float, session_time: float,
                    usage: Usage | None = None, cause: str = "",
                    ) -> list[tuple[str, str | int | bytes]]:
    """An Accounting-Request's attributes, without NAS-IP-Address and Acct-Delay-Time (the
    client's, when it sends: they depend on the server and on how long the record waited).
    Counters are sent with Interim-Update and Stop; the cause with Stop."""
    if status not in STATUS_TYPES:
        raise ValueError(f"no such Acct-Status-Type {status!r}")
    attrs: list[tuple[str, str | int | bytes]] = [
        ("Acct-Status-Type", status),
        ("Acct-Session-Id", acct_session_id),
        ("User-Name", user_name),
        ("NAS-Identifier", nas_identifier(auth, node)),
        ("NAS-Port-Type", NAS_PORT_TYPE),
    ]
    attrs += line_attributes(identity, auth)
    attrs += [("Service-Type", "Framed-User"),
              ("Framed-IP-Address", str(IPv4Address(address))),
              ("Event-Timestamp", int(event_time))]
    attrs += [("Class", c) for c in classes]
    if status != START:
        u = usage or Usage()
        in_o, in_g = split64(u.bytes_up)
        out_o, out_g = split64(u.bytes_down)
        attrs += [("Acct-Session-Time", max(0, int(session_time))),
                  ("Acct-Input-Octets", in_o), ("Acct-Input-Gigawords", in_g),
                  ("Acct-Output-Octets", out_o), ("Acct-Output-Gigawords", out_g),
                  ("Acct-Input-Packets", u.packets_up & 0xFFFFFFFF),
                  ("Acct-Output-Packets", u.packets_down & 0xFFFFFFFF)]
    if status == STOP:
        attrs.append(("Acct-Terminate-Cause", cause or "NAS-Request"))
    return attrs


def delay_time(event_time: float, now: float) -> int:
    """Acct-Delay-Time: how long the record waited before this transmission (RFC 2866)."""
    return max(0, int(now - event_time))


def overflow(depth: int, limit: int, new_status: str, interims_queued: int,
             ) -> str:
    """What a full queue does with a new record: ``"keep"`` (room), ``"drop_new"`` (it is
    an Interim-Update, or nothing else can go), or ``"drop_oldest_interim"`` (a Start or
    Stop takes the place of the oldest queued Interim-Update). Starts and Stops are never
    dropped for Interims: an Interim is superseded by the next record of its session, a
    lost Start or Stop is lost billing."""
    if depth < limit:
        return "keep"
    if new_status != INTERIM and interims_queued > 0:
        return "drop_oldest_interim"
    return "drop_new"

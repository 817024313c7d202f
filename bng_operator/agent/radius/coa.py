"""Dynamic Authorization (RFC 5176): the pure parts of the CoA/Disconnect listener. What a
request is (verified against its client's secret, not a replay), which sessions it names,
and what a CoA-Request asks of them. No sockets: tested with tables.

    check(data, now, secret, replays)       -> Request | Drop
    identify(request attributes)            -> Ident (or an Error-Cause)
    matches(ident, candidates)              -> [session keys]
    coa_changes(attributes)                 -> the rate attributes, or Error-Cause 401

Decisions (docs/radius.md, "Change of Authorization and Disconnect"):

- The Request Authenticator (MD5 over the packet and the secret, RFC 5176 §3.3) is always
  checked: a wrong secret fails it, and the request is dropped without a reply.
- Message-Authenticator is verified when present and not required: RFC 5176 makes it
  optional, the Request Authenticator already covers the whole packet, and ``radclient``
  and most policy servers do not send it.
- Event-Timestamp, when present, must be within ``window`` seconds of the node's clock
  (RFC 5176 §3.4); a request without one is accepted. A duplicate (same client, Identifier
  and Request Authenticator within the window) gets the first answer again and is not
  acted on twice (a retransmission).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from pyrad.dictionary import Dictionary
from pyrad.packet import CoAPacket, CoARequest, DisconnectRequest

COA, DISCONNECT = "coa", "disconnect"
REPLAY_WINDOW = 300.0  # seconds an Event-Timestamp may differ from the node's clock
DUPLICATES = 4096  # requests remembered for duplicate detection, at most

# Error-Cause (RFC 5176 §3.5)
UNSUPPORTED_ATTRIBUTE = 401
MISSING_ATTRIBUTE = 402
NAS_IDENTIFICATION_MISMATCH = 403
INVALID_REQUEST = 404
SESSION_NOT_FOUND = 503
CAUSE_NAMES = {UNSUPPORTED_ATTRIBUTE: "unsupported_attribute",
               MISSING_ATTRIBUTE: "missing_attribute",
               NAS_IDENTIFICATION_MISMATCH: "nas_identification_mismatch",
               INVALID_REQUEST: "invalid_request", SESSION_NOT_FOUND: "session_not_found"}

IDENTIFIERS = ("Acct-Session-Id", "User-Name", "Framed-IP-Address", "Calling-Station-Id")
# Attributes that say who sent it or to whom, and are not acted on
CONTEXT = frozenset({"NAS-IP-Address", "NAS-Identifier", "Event-Timestamp",
                     "Message-Authenticator", "Proxy-State", "NAS-Port-Type", "NAS-Port-Id",
                     "Service-Type", "Reply-Message"})
RATES = ("Filter-Id", "WISPr-Bandwidth-Max-Up", "WISPr-Bandwidth-Max-Down")
# A CoA-Request's timers: Session-Timeout counts from the CoA, 0 ends none; Idle-Timeout 0
# watches none; Acct-Interim-Interval 0 goes back to the class's interimInterval
TIMERS = ("Session-Timeout", "Idle-Timeout", "Acct-Interim-Interval")
# Disconnect-Request may say why (RFC 5176 §3.2); the Stop says Admin-Reset regardless
DISCONNECT_ONLY = frozenset({"Acct-Terminate-Cause"})


@dataclass(frozen=True)
class Request:
    kind: str  # COA or DISCONNECT
    packet: CoAPacket
    attrs: dict[str, list[object]]  # decoded, by name
    unknown: tuple[str, ...]  # attributes the dictionary does not know (codes)


@dataclass(frozen=True)
class Drop:
    """No reply: ``reason`` is the metric label."""

    reason: str
    message: str


class Duplicates:
    """Requests seen in the last ``window`` seconds, by (client, Identifier, Request
    Authenticator), with the reply each got (None until there is one)."""

    def __init__(self, window: float = REPLAY_WINDOW, limit: int = DUPLICATES) -> None:
        self.window, self.limit = window, limit
        self.seen: OrderedDict[tuple[str, int, bytes], tuple[float, bytes | None]] = \
            OrderedDict()

    def _prune(self, now: float) -> None:
        while self.seen and (len(self.seen) > self.limit or
                             next(iter(self.seen.values()))[0] < now - self.window):
            self.seen.popitem(last=False)

    def get(self, key: tuple[str, int, bytes], now: float) -> tuple[float, bytes | None] | None:
        self._prune(now)
        return self.seen.get(key)

    def put(self, key: tuple[str, int, bytes], now: float, reply: bytes | None) -> None:
        self.seen[key] = (self.seen.get(key, (now, None))[0], reply)
        self._prune(now)


def check(data: bytes, secret: bytes, dictionary: Dictionary, now: float,
          window: float = REPLAY_WINDOW) -> Request | Drop:
    """Decode and verify one datagram from a configured client. ``now``: wall-clock."""
    if len(data) < 20:
        return Drop("malformed", "shorter than a RADIUS header")
    code = data[0]
    if code not in (CoARequest, DisconnectRequest):
        return Drop("malformed", f"code {code} is neither CoA-Request nor Disconnect-Request")
    try:
        pkt = CoAPacket(code=code, secret=secret, dict=dictionary, packet=data)
    except Exception as e:  # pyrad raises PacketError, and KeyError/struct errors too
        return Drop("malformed", f"undecodable: {e}")
    if not pkt.VerifyCoARequest():
        return Drop("bad_authenticator", "the Request Authenticator does not match the "
                                         "client's secret")
    if pkt.message_authenticator and not pkt.verify_message_authenticator():
        return Drop("bad_authenticator", "the Message-Authenticator does not match")
    names = list(pkt.keys())
    attrs = {k: list(pkt[k]) for k in names if isinstance(k, str)}
    unknown = tuple(str(k) for k in names if not isinstance(k, str) and k != 80)
    stamp = attrs.get("Event-Timestamp")
    if stamp:
        t = stamp[0]
        ts = float(t.timestamp()) if hasattr(t, "timestamp") else float(str(t))
        if abs(ts - now) > window:
            return Drop("replay", f"Event-Timestamp {ts:.0f} is {ts - now:+.0f} s from the "
                                  f"node's clock (window {window:g} s)")
    return Request(DISCONNECT if code == DisconnectRequest else COA, pkt, attrs, unknown)


def mac_digits(mac: str) -> str:
    """A MAC address in any of the formats RADIUS sends, as 12 lowercase hex digits."""
    return re.sub(r"[^0-9a-f]", "", mac.lower())


@dataclass(frozen=True)
class Ident:
    """What a request identifies sessions by (each given one must match)."""

    acct_session_id: str | None = None
    user_name: str | None = None
    address: int | None = None
    mac: str | None = None  # digits

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.acct_session_id, self.user_name, self.address,
                                       self.mac))


@dataclass(frozen=True)
class Candidate:
    """A bound session as the listener sees it."""

    key: str
    acct_session_id: str
    user_name: str
    address: int
    mac: str  # as the session's identity has it, any format


def identify(attrs: dict[str, list[object]]) -> Ident | int:
    """The session identification attributes (RFC 5176 §3), or Error-Cause 402 (none
    given) or 404 (one that cannot be read)."""
    def one(name: str) -> str | None:
        v = attrs.get(name)
        return str(v[0]) if v else None

    try:
        addr = one("Framed-IP-Address")
        ident = Ident(one("Acct-Session-Id"), one("User-Name"),
                      int(IPv4Address(addr)) if addr is not None else None,
                      mac_digits(m) if (m := one("Calling-Station-Id")) is not None else None)
    except ValueError:
        return INVALID_REQUEST
    return MISSING_ATTRIBUTE if ident.empty else ident


def matches(ident: Ident, candidates: Iterable[Candidate]) -> list[str]:
    """The keys of the sessions every given identifier matches."""
    out = []
    for c in candidates:
        if ident.acct_session_id is not None and ident.acct_session_id != c.acct_session_id:
            continue
        if ident.user_name is not None and ident.user_name != c.user_name:
            continue
        if ident.address is not None and ident.address != c.address:
            continue
        if ident.mac is not None and ident.mac != mac_digits(c.mac):
            continue
        out.append(c.key)
    return out


def nas_mismatch(attrs: dict[str, list[object]], identifiers: set[str],
                 addresses: set[str]) -> str:
    """Why a request is not for this NAS (Error-Cause 403), or "": a NAS-Identifier that is
    none of this node's (its name, its classes' nasIdentifier), a NAS-IP-Address that is
    none of the addresses it sends RADIUS from. Not given, or nothing known to compare
    with: no mismatch."""
    for name, known in (("NAS-Identifier", identifiers), ("NAS-IP-Address", addresses)):
        if name in attrs and known and str(attrs[name][0]) not in known:
            return f"{name} {attrs[name][0]} is not this node's ({', '.join(sorted(known))})"
    return ""


def unsupported(kind: str, attrs: dict[str, list[object]], unknown: tuple[str, ...],
                ) -> list[str]:
    """The attributes of a request this node does not act on (Error-Cause 401): a
    Disconnect-Request carries only identification and context; a CoA-Request also rates
    and timers."""
    allowed = set(IDENTIFIERS) | CONTEXT | (set(RATES) | set(TIMERS) if kind == COA
                                            else DISCONNECT_ONLY)
    return sorted([n for n in attrs if n not in allowed] + list(unknown))


def rate_attributes(attrs: dict[str, list[object]]) -> dict[str, list[object]]:
    """What a CoA-Request changes of the rates: its rate attributes (read as an
    Access-Accept's)."""
    return {n: attrs[n] for n in RATES if n in attrs}


def timer_attributes(attrs: dict[str, list[object]]) -> dict[str, int] | None:
    """What a CoA-Request changes of the timers, in seconds; None: one is not a whole
    number of seconds (Error-Cause 404)."""
    out: dict[str, int] = {}
    for n in TIMERS:
        if n in attrs:
            v = attrs[n][0]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                return None
            out[n] = v
    return out

"""Pure parts of RADIUS: the Access-Request a session sends, and what an Access-Accept
grants it. No sockets, no secrets: tested with tables.

    request_attributes(identity, class's radius, node)   -> [(attribute, value), ...]
    read_accept({attribute: [values]}, node config, class) -> Authorisation | Refusal
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from bng_operator.agent.config import NodeConfig, PoolConfig, ShapingRates
from bng_operator.agent.sessions.session import Grant, Identity
from bng_operator.api.qospolicy import MIN_BURST_BYTES
from bng_operator.api.radius import RadiusAuth

NAS_PORT_TYPE = "Ethernet"  # IPoE (RFC 2865 NAS-Port-Type 15)
UNSHAPED_BPS = 10_000_000_000  # a direction a rate attribute leaves open, on an unshaped class
# Attributes of a reply that are no instruction to the NAS: neither honoured nor "unknown".
NOT_INSTRUCTIONS = frozenset({"Message-Authenticator", "Proxy-State", "Reply-Message"})
HONOURED = frozenset({"Framed-IP-Address", "Framed-Pool", "Session-Timeout", "Idle-Timeout",
                      "Acct-Interim-Interval", "Class", "Filter-Id", "WISPr-Bandwidth-Max-Up",
                      "WISPr-Bandwidth-Max-Down"})


_NOT_HEX = re.compile(r"[^0-9a-fA-F]")
_FIELD = re.compile(r"\{(mac|circuit-id|remote-id)\}")


@functools.lru_cache(maxsize=4096)
def format_mac(mac: str, fmt: str) -> str:
    """``mac`` (any case, ``:`` or ``-`` separated, or bare) in the class's macFormat. Cached:
    a session's requests name its MAC three times or more (User-Name, Calling-Station-Id,
    each accounting record)."""
    digits = _NOT_HEX.sub("", mac)
    digits = digits.upper() if fmt.endswith("-upper") else digits.lower()
    style = fmt.split("-", 1)[0]
    if style == "bare":
        return digits
    if style == "dotted":
        return ".".join(digits[i:i + 4] for i in range(0, 12, 4))
    sep = ":" if style == "colon" else "-"
    return sep.join(digits[i:i + 2] for i in range(0, 12, 2))


@functools.lru_cache(maxsize=64)
def _parts(template: str) -> tuple[str, ...]:
    """``template`` split into literal text and field names, alternately (literal first)."""
    return tuple(_FIELD.split(template))


class MissingField(ValueError):
    """A template names a field the request does not carry (no option 82)."""


def render(template: str, identity: Identity, mac_format: str) -> str:
    """A User-Name or password template filled from the request. Raises MissingField."""
    parts = _parts(template)
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        name = parts[i]
        value = (format_mac(identity.mac, mac_format) if name == "mac" else
                 identity.circuit_id if name == "circuit-id" else identity.remote_id)
        if not value:
            raise MissingField(f"the request carries no {name} (option 82) for the "
                               f"template {template!r}")
        out += (value, parts[i + 1])
    return "".join(out)


def nas_identifier(auth: RadiusAuth, node: str) -> str:
    """The NAS-Identifier this node sends for a class: its nasIdentifier, else its name."""
    return auth.nas_identifier or node


def request_attributes(identity: Identity, auth: RadiusAuth, node: str, nas_ip: str,
                       ) -> list[tuple[str, str | int]]:
    """The Access-Request's attributes, User-Password in clear text (the client hides it).
    Message-Authenticator is the client's. Raises MissingField."""
    attrs: list[tuple[str, str | int]] = [("User-Name", render(auth.user_name, identity,
                                                                auth.mac_format))]
    if auth.password is not None:
        attrs.append(("User-Password", render(auth.password, identity, auth.mac_format)))
    attrs += [("Service-Type", "Framed-User"),
              ("NAS-Identifier", nas_identifier(auth, node)),
              ("NAS-IP-Address", nas_ip),
              ("NAS-Port-Type", NAS_PORT_TYPE)]
    return attrs + line_attributes(identity, auth)


def line_attributes(identity: Identity, auth: RadiusAuth) -> list[tuple[str, str | int]]:
    """The subscriber's line, as every request names it: NAS-Port-Id (the circuit-id),
    Calling-Station-Id (the MAC) and the option 82 sub-options (RFC 4679)."""
    attrs: list[tuple[str, str | int]] = []
    if identity.circuit_id:
        attrs.append(("NAS-Port-Id", identity.circuit_id))
    attrs.append(("Calling-Station-Id", format_mac(identity.mac, auth.mac_format)))
    if identity.circuit_id:
        attrs.append(("Agent-Circuit-Id", identity.circuit_id))
    if identity.remote_id:
        attrs.append(("Agent-Remote-Id", identity.remote_id))
    return attrs


@dataclass(frozen=True)
class RadiusRates:
    """A session's rate attributes as RADIUS sent them (Access-Accept or CoA-Request): the
    QoSPolicy Filter-Id names ("": none) and the WISPr rates, bit/s (0: not set)."""

    filter_id: str = ""
    down_bps: int = 0
    up_bps: int = 0

    def __bool__(self) -> bool:
        return bool(self.filter_id or self.down_bps or self.up_bps)


def session_rates(wanted: RadiusRates, config: NodeConfig, class_rates: ShapingRates | None,
                  ) -> tuple[ShapingRates | None, str]:
    """The rates a session gets over its class's policy (None: the class's), from its rate
    attributes and the QoSPolicies as they are now; and why a Filter-Id was passed over
    (it names no QoSPolicy of this node: the class's policy is the base), else "".
    Called again at every reload: a session follows edits of the policies it names."""
    rates, why = class_rates, ""
    if wanted.filter_id:
        named = config.qos_policies.get(wanted.filter_id)
        if named is None:
            why = (f"Filter-Id {wanted.filter_id} names no QoSPolicy this node knows; the "
                   "class's policy applies")
        else:
            rates = named
    override = rates if wanted.filter_id and rates is not class_rates else None
    if wanted.down_bps or wanted.up_bps:
        base = rates
        down_bps = wanted.down_bps or (base.down_bps if base else UNSHAPED_BPS)
        up_bps = wanted.up_bps or (base.up_bps if base else UNSHAPED_BPS)
        override = ShapingRates(
            "radius", down_bps,
            _burst(down_bps) if wanted.down_bps or not base else base.down_burst,
            up_bps, _burst(up_bps) if wanted.up_bps or not base else base.up_burst,
            _rate_text(down_bps), _rate_text(up_bps))
    return override, why


@dataclass(frozen=True)
class Authorisation:
    """What an Access-Accept grants a session, as this node applies it."""

    grant: Grant | None = None  # an address or a pool of its own
    rates: ShapingRates | None = None  # over its class's policy (Filter-Id, WISPr rates)
    wanted: RadiusRates = RadiusRates()  # the rate attributes themselves (kept: rates
    # follow edits of the policies they name)
    session_timeout: int | None = None  # seconds (stored; enforced with accounting)
    idle_timeout: int | None = None
    interim_interval: int | None = None  # Acct-Interim-Interval
    classes: tuple[bytes, ...] = ()  # Class, echoed in accounting
    ignored: tuple[str, ...] = ()  # attributes not honoured (counted)
    warnings: tuple[str, ...] = ()  # honoured in part (a Filter-Id naming no QoSPolicy)


@dataclass(frozen=True)
class Refusal:
    """An Access-Accept this node cannot honour (the address or pool it names): refused."""

    reason: str  # metric label
    message: str  # for the log
    ignored: tuple[str, ...] = field(default=())


def _one(attrs: dict[str, list[object]], name: str) -> object | None:
    values = attrs.get(name)
    return values[0] if values else None


def read_accept(attrs: dict[str, list[object]], config: NodeConfig, class_pool: str,
                class_rates: ShapingRates | None) -> Authorisation | Refusal:
    """Map an Access-Accept's attributes (decoded: names to values) onto the session."""
    ignored = tuple(sorted(n for n in attrs if n not in HONOURED and n not in NOT_INSTRUCTIONS))
    warnings: list[str] = []
    pool_name = str(_one(attrs, "Framed-Pool") or "")
    if pool_name and pool_name not in config.pools:
        return Refusal("unknown_pool", f"Framed-Pool {pool_name} is not an IPPool this node "
                                       "serves", ignored)
    address = 0
    framed = _one(attrs, "Framed-IP-Address")
    if framed is not None:
        addr = IPv4Address(str(framed))
        pool, why = _static_pool(config, int(addr), pool_name or class_pool, bool(pool_name))
        if pool is None:
            return Refusal("unusable_address", f"Framed-IP-Address {addr}: {why}", ignored)
        address, pool_name = int(addr), pool.name
    filter_id = _one(attrs, "Filter-Id")
    up, down = _one(attrs, "WISPr-Bandwidth-Max-Up"), _one(attrs, "WISPr-Bandwidth-Max-Down")
    wanted = RadiusRates(str(filter_id) if filter_id is not None else "",
                         int(str(down)) if down else 0, int(str(up)) if up else 0)
    override, why = session_rates(wanted, config, class_rates)
    if why:
        warnings.append(why)
    grant = Grant(address, pool_name) if address or (pool_name and pool_name != class_pool) \
        else None
    return Authorisation(
        grant=grant, rates=override, wanted=wanted,
        session_timeout=_int(_one(attrs, "Session-Timeout")),
        idle_timeout=_int(_one(attrs, "Idle-Timeout")),
        interim_interval=_int(_one(attrs, "Acct-Interim-Interval")),
        classes=tuple(v if isinstance(v, bytes) else str(v).encode()
                      for v in attrs.get("Class", [])),
        ignored=ignored, warnings=tuple(warnings))


def _int(v: object | None) -> int | None:
    return int(str(v)) if v is not None else None


def _burst(bps: int) -> int:
    """The QoSPolicy default: 10 ms of rate, at least one full frame."""
    return max(MIN_BURST_BYTES, bps // 8 // 100)


def _rate_text(bps: int) -> str:
    for unit, n in (("Gbit", 10**9), ("Mbit", 10**6), ("kbit", 10**3)):
        if bps >= n and bps % n == 0:
            return f"{bps // n}{unit}"
    return f"{bps}bit"


def _static_pool(config: NodeConfig, addr: int, preferred: str, only: bool,
                 ) -> tuple[PoolConfig | None, str]:
    """The pool a static address is served from: ``preferred`` (the Framed-Pool, else the
    class's) if it holds it, else (unless ``only``) any pool of the node that does. The
    address must be one this node may hand out: in its blocks of the pool, or in an
    excluded range (a static range), never a gateway, network or broadcast address."""
    pools = [config.pools[preferred]] if preferred in config.pools else []
    if not only:
        pools += [p for n, p in config.pools.items() if n != preferred]
    for pool in pools:
        sub = pool.subnet_config(addr)
        if sub is None:
            continue
        if addr in (sub.first, sub.last, int(sub.gateway)):
            return None, f"is the network, broadcast or gateway address of pool {pool.name}"
        in_block = any(int(b.network_address) <= addr <= int(b.broadcast_address)
                       for b, _ in pool.blocks)
        if in_block or addr in pool.never:
            return pool, ""
        return None, (f"is in pool {pool.name} but neither in this node's blocks nor in an "
                      "excluded range (give static addresses an excluded range)")
    where = f"pool {preferred}" if only else "any pool of this node"
    return None, f"is not in {where}"

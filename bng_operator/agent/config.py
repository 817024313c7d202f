"""What one agent runs on: its BNGNode spec and reservations, checked and indexed.

``node_config`` is a pure function of the objects, whichever source they came from (a
standalone YAML file or the apiserver), so both modes run the same code.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from bng_operator.api.bngnode import BNGNodeSpec
from bng_operator.api.common import parse_duration
from bng_operator.api.ippool import IPPoolSpec
from bng_operator.api.subscriber import Subscriber
from bng_operator.api.subscriberclass import SubscriberClassSpec


class ConfigError(ValueError):
    """The node's configuration cannot be served; the message says what to fix."""


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet with the reply options that depend only on it, encoded once."""

    network: IPv4Network
    first: int
    last: int
    gateway: IPv4Address
    options: dict[int, bytes]  # subnet mask, router, DNS, domain name, broadcast


@dataclass(frozen=True)
class PoolConfig:
    name: str
    spec: IPPoolSpec
    # (block, subnet) pairs this node allocates from
    blocks: tuple[tuple[IPv4Network, IPv4Network], ...]
    never: frozenset[int]  # gateways and excluded ranges
    reserved: frozenset[int]  # addresses of reservations
    subnets: tuple[SubnetConfig, ...] = ()
    lease_seconds: int = 0

    def subnet_config(self, addr: IPv4Address | int) -> SubnetConfig | None:
        a = int(addr)
        for s in self.subnets:
            if s.first <= a <= s.last:
                return s
        return None


def _subnet_config(spec: IPPoolSpec, cidr: str, gateway: str) -> SubnetConfig:
    # Option codes from RFC 2132; the codec's Opt enum is not imported to keep config
    # independent of the wire format module.
    net = IPv4Network(cidr)
    opts = {1: net.netmask.packed, 3: IPv4Address(gateway).packed,
            28: net.broadcast_address.packed}
    if spec.dns:
        opts[6] = b"".join(IPv4Address(d).packed for d in spec.dns)
    if spec.domain_name:
        opts[15] = spec.domain_name.encode()
    return SubnetConfig(net, int(net.network_address), int(net.broadcast_address),
                        IPv4Address(gateway), opts)


@dataclass(frozen=True)
class ClassConfig:
    name: str
    spec: SubscriberClassSpec
    circuit_id: re.Pattern[str] | None
    remote_id: re.Pattern[str] | None
    vendor_class: re.Pattern[str] | None
    relays: tuple[IPv4Network, ...]
    lease_seconds: int | None = None


@dataclass(frozen=True)
class ShapingRates:
    """A QoSPolicy as the shaper applies it: bits per second and burst bytes each way."""

    policy: str
    down_bps: int
    down_burst: int
    up_bps: int
    up_burst: int
    down: str = ""  # the rates as the policy writes them, for the Subscriber status
    up: str = ""


@dataclass(frozen=True)
class Reservation:
    name: str
    keys: tuple[str, ...]  # identity keys; all given must match the client
    address: int
    pool: str
    subscriber_class: str | None


@dataclass(frozen=True)
class NodeConfig:
    node_name: str
    access_interfaces: tuple[str, ...]
    max_leases: int
    pools: dict[str, PoolConfig]
    classes: tuple[ClassConfig, ...]  # in the order they are tried
    reservations: tuple[Reservation, ...] = ()
    reservation_by_key: dict[str, Reservation] = field(default_factory=dict)
    # Where option 82 is honoured (BNGNode spec.interfaces.option82)
    option82_trusted: frozenset[str] = frozenset()  # access interfaces
    option82_relays: tuple[IPv4Network, ...] = ()  # giaddr ranges
    option82_untrusted: str = "drop"  # drop | strip
    # SubscriberClass name -> the rates of its qosPolicy (classes without one: unshaped)
    shaping: dict[str, ShapingRates] = field(default_factory=dict)


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern else None


def identity_keys(mac: str | None, client_id: str | None, circuit_id: str | None,
                  remote_id: str | None) -> list[str]:
    """The keys a subscriber is known by: ``mac:..``, ``cid:<hex>``, ``circuit:..``,
    ``remote:..``. Leases, reservations and the subscriber map all use these strings."""
    keys = [f"mac:{mac}"] if mac else []
    if client_id:
        keys.append(f"cid:{client_id}")
    if circuit_id:
        keys.append(f"circuit:{circuit_id}")
    if remote_id:
        keys.append(f"remote:{remote_id}")
    return keys


def reservation_keys(s: Subscriber) -> tuple[str, ...]:
    i = s.spec.identity
    return tuple(identity_keys(i.mac.lower() if i.mac else None,
                               i.client_id.lower().replace(":", "") if i.client_id else None,
                               i.circuit_id, i.remote_id))


def node_config(spec: BNGNodeSpec, subscribers: list[Subscriber] = ()) -> NodeConfig:  # type: ignore[assignment]
    """Check and index a node's spec. Raises ConfigError naming the object at fault."""
    pools: dict[str, PoolConfig] = {}
    reservations: list[Reservation] = []
    for s in subscribers:
        if s.spec.address is None:
            continue
        addr = IPv4Address(s.spec.address)
        pool = s.spec.pool or next(
            (p.name for p in spec.pools if any(addr in sub.network for sub in p.spec.subnets)), None)
        if pool is None:
            raise ConfigError(f"Subscriber {s.name}: reserved address {addr} is in no pool of "
                              f"node {spec.node_name}")
        reservations.append(Reservation(s.name, reservation_keys(s), int(addr), pool,
                                        s.spec.subscriber_class))

    for p in spec.pools:
        never: set[int] = set()
        for sub in p.spec.subnets:
            never.add(int(IPv4Address(sub.gateway)))
            for ex in sub.exclude:
                start, end = ex.addresses()
                never.update(range(int(start), int(end) + 1))
        blocks: list[tuple[IPv4Network, IPv4Network]] = []
        if p.blocks:
            for b in p.blocks:
                net = ipaddress.IPv4Network(b)
                subnet = next((s.network for s in p.spec.subnets if net.subnet_of(s.network)), None)
                if subnet is None:
                    raise ConfigError(f"pool {p.name}: block {b} is outside every subnet")
                blocks.append((net, subnet))
        else:  # standalone: the node owns the whole pool
            blocks = [(s.network, s.network) for s in p.spec.subnets]
        mine = frozenset(r.address for r in reservations if r.pool == p.name)
        subnets = tuple(_subnet_config(p.spec, s.cidr, s.gateway) for s in p.spec.subnets)
        pools[p.name] = PoolConfig(p.name, p.spec, tuple(blocks), frozenset(never), mine,
                                   subnets, parse_duration(p.spec.lease_time))

    for r in reservations:
        if r.pool not in pools:
            raise ConfigError(f"Subscriber {r.name}: pool {r.pool} is not served by this node")
        if pools[r.pool].subnet_config(r.address) is None:
            raise ConfigError(f"Subscriber {r.name}: {IPv4Address(r.address)} is outside "
                              f"pool {r.pool}")

    classes = []
    for c in sorted(spec.classes, key=lambda c: (c.spec.priority, c.name)):
        if c.spec.pool not in pools:
            raise ConfigError(f"SubscriberClass {c.name}: pool {c.spec.pool} does not exist")
        m = c.spec.match
        classes.append(ClassConfig(
            c.name, c.spec, _compile(m.circuit_id), _compile(m.remote_id),
            _compile(m.vendor_class), tuple(IPv4Network(r) for r in m.relays),
            parse_duration(c.spec.lease_time) if c.spec.lease_time else None))

    policies = {q.name: q.spec for q in spec.qos_policies}
    shaping = {}
    for c in spec.classes:
        if c.spec.qos_policy is None:
            continue
        q = policies.get(c.spec.qos_policy)
        if q is None:
            raise ConfigError(f"SubscriberClass {c.name}: QoSPolicy {c.spec.qos_policy} does "
                              "not exist")
        shaping[c.name] = ShapingRates(c.spec.qos_policy, q.download.rate_bps,
                                       q.download.burst_bytes, q.upload.rate_bps,
                                       q.upload.burst_bytes, q.download.rate, q.upload.rate)

    by_key = {k: r for r in reservations for k in r.keys}
    o82 = spec.interfaces.option82
    return NodeConfig(spec.node_name, tuple(spec.interfaces.access), spec.max_leases, pools,
                      tuple(classes), tuple(reservations), by_key, frozenset(o82.trusted),
                      tuple(IPv4Network(r) for r in o82.trusted_relays), o82.untrusted,
                      shaping)

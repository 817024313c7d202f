"""What one agent runs on: its BNGNode spec and reservations, checked and indexed.

``node_config`` is a pure function of the objects, whichever source they came from (a
standalone YAML file or the apiserver), so both modes run the same code.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network

from bng_operator.agent.nat.blocks import Layout, expand
from bng_operator.api.bngnode import BNGNodeSpec, NodeNATPool
from bng_operator.api.common import parse_duration
from bng_operator.api.ippool import IPPoolSpec
from bng_operator.api.natpool import NATPoolSpec
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
class NatConfig:
    """A NATPool as this node applies it."""

    name: str
    spec: NATPoolSpec
    layout: Layout  # this node's public addresses and how they are cut into blocks
    inside: tuple[IPv4Network, ...]  # the subnets of the pools whose classes use it
    hold: int  # seconds a freed port or block is held
    # The public addresses this node translates to: its share (port-block mode); in
    # deterministic mode those whose inside addresses are in this node's address blocks.
    served: tuple[IPv4Address, ...] = ()

    @property
    def deterministic(self) -> bool:
        return self.spec.mode == "deterministic"


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
    uplink: str | None = None  # towards the core: NAT translates there
    nat: dict[str, NatConfig] = field(default_factory=dict)  # the NATPools classes use
    nat_pool_of: dict[str, str] = field(default_factory=dict)  # SubscriberClass -> NATPool
    # Every QoSPolicy the node knows, by name: RADIUS's Filter-Id names one for a session
    qos_policies: dict[str, ShapingRates] = field(default_factory=dict)
    # BNGNode spec.commitAtOffer: a new client's lease is committed with its OFFER
    commit_at_offer: bool = False
    # BNGNode spec.eventLoopCPU: the agent's process on it, its helper processes elsewhere
    event_loop_cpu: int | None = None

    @cached_property
    def class_by_name(self) -> dict[str, ClassConfig]:
        """The classes by name (made once per configuration: looked up per request)."""
        return {c.name: c for c in self.classes}


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

    policies = {q.name: ShapingRates(q.name, q.spec.download.rate_bps,
                                     q.spec.download.burst_bytes, q.spec.upload.rate_bps,
                                     q.spec.upload.burst_bytes, q.spec.download.rate,
                                     q.spec.upload.rate) for q in spec.qos_policies}
    shaping = {}
    for c in spec.classes:
        if c.spec.qos_policy is None:
            continue
        rates = policies.get(c.spec.qos_policy)
        if rates is None:
            raise ConfigError(f"SubscriberClass {c.name}: QoSPolicy {c.spec.qos_policy} does "
                              "not exist")
        shaping[c.name] = rates

    nat, nat_pool_of = _nat(spec, pools)
    by_key = {k: r for r in reservations for k in r.keys}
    o82 = spec.interfaces.option82
    return NodeConfig(spec.node_name, tuple(spec.interfaces.access), spec.max_leases, pools,
                      tuple(classes), tuple(reservations), by_key, frozenset(o82.trusted),
                      tuple(IPv4Network(r) for r in o82.trusted_relays), o82.untrusted,
                      shaping, spec.interfaces.uplink, nat, nat_pool_of, policies,
                      spec.commit_at_offer, spec.event_loop_cpu)


def _nat(spec: BNGNodeSpec, pools: dict[str, PoolConfig],
         ) -> tuple[dict[str, NatConfig], dict[str, str]]:
    """The NATPools the node's classes use, and which class uses which."""
    by_name = {n.name: n for n in spec.nat_pools}
    pool_of: dict[str, str] = {}
    inside: dict[str, list[IPv4Network]] = {}
    blocks: dict[str, list[IPv4Network]] = {}
    for c in spec.classes:
        if c.spec.nat_pool is None:
            continue
        if c.spec.nat_pool not in by_name:
            raise ConfigError(f"SubscriberClass {c.name}: NATPool {c.spec.nat_pool} does not "
                              "exist")
        pool_of[c.name] = c.spec.nat_pool
        inside.setdefault(c.spec.nat_pool, []).extend(
            s.network for s in pools[c.spec.pool].subnets)
        blocks.setdefault(c.spec.nat_pool, []).extend(b for b, _ in pools[c.spec.pool].blocks)
    # A pool some class serves without NAT is not "inside": that class's sessions go out
    # with their own addresses. A pool only NAT classes use is: a source in it without a
    # binding (no block free, NAT not loaded yet) is dropped, never sent out un-NATed.
    plain = {c.spec.pool for c in spec.classes if c.spec.nat_pool is None}
    plain_nets = {s.network for name in plain if name in pools for s in pools[name].subnets}
    return {name: _nat_config(by_name[name], tuple(ipaddress.collapse_addresses(
                n for n in nets if n not in plain_nets)), blocks[name])
            for name, nets in inside.items()}, pool_of


def _served(layout: Layout, blocks: list[IPv4Network]) -> tuple[IPv4Address, ...]:
    """Deterministic mode: the public addresses the inside addresses of ``blocks`` map to."""
    out: dict[IPv4Address, None] = {}
    for b in ipaddress.collapse_addresses(blocks):
        first, last = layout.formula(b.network_address), layout.formula(b.broadcast_address)
        lo = layout.addresses.index(first.public) if first else 0
        hi = layout.addresses.index(last.public) if last else len(layout.addresses) - 1
        if first is None and last is None and not any(
                b.overlaps(n) for n in layout.inside):
            continue
        for a in layout.addresses[lo:hi + 1]:
            out.setdefault(a, None)
    return tuple(out)


def _nat_config(n: NodeNATPool, inside: tuple[IPv4Network, ...],
                blocks: list[IPv4Network]) -> NatConfig:
    s = n.spec
    deterministic = s.mode == "deterministic"
    # Deterministic: the formula is over the whole pool, in its own order, on every node.
    layout = Layout(expand(s.addresses if deterministic or not n.addresses else n.addresses),
                    s.port_range.start, s.port_range.end, s.ports_per_block,
                    s.blocks_per_subscriber,
                    tuple(IPv4Network(p) for p in s.inside_prefixes) if deterministic else ())
    if deterministic and (why := layout.capacity_error()):
        raise ConfigError(f"NATPool {n.name}: deterministic mode: {why}")
    if not deterministic and n.addresses:
        outside = [a for a in layout.addresses if not any(a in IPv4Network(p)
                                                          for p in s.addresses)]
        if outside:
            raise ConfigError(f"NATPool {n.name}: this node's address {outside[0]} is not "
                              "in the pool")
    served = _served(layout, blocks) if deterministic else layout.addresses
    return NatConfig(n.name, s, layout, inside, parse_duration(s.timeouts.hold), served)

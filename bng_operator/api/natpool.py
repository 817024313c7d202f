"""NATPool: public addresses shared by subscribers through NAT44 / CGNAT (RFC 6888)."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from bng_operator.api.common import Conditions, Duration, IPv4CIDR, Model
from bng_operator.api.resource import AGE, PrinterColumn, Resource, ResourceInfo, ready_column
from bng_operator.api.rules import Checked, Rule, is_cidr, is_ipv4, is_masked

PublicPrefix = Annotated[
    str,
    Field(max_length=18),
    Checked(
        Rule("(isIP(self) && ip(self).family() == 4) || "
             "(isCIDR(self) && cidr(self).ip().family() == 4)",
             "must be an IPv4 address or CIDR such as 203.0.113.0/28",
             lambda s: is_ipv4(s) or (is_cidr(s) and ipaddress.ip_interface(s).version == 4)),
        Rule("!isCIDR(self) || cidr(self) == cidr(self).masked()",
             "has host bits set: write the network address", is_masked),
    ),
]

# Public addresses one node may hold of one pool: the data path's NAT_MAX_ADDRESSES.
MAX_NODE_ADDRESSES = 4096

Behavior = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]


class PortRange(Model):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("self.start <= self.end", "start must not be greater than end",
             lambda r: r.start <= r.end, field_path=".start"),
    )
    start: int = Field(default=1024, ge=1, le=65535)
    end: int = Field(default=65535, ge=1, le=65535)

    @property
    def size(self) -> int:
        return self.end - self.start + 1


class NATTimeouts(Model):
    """Mapping lifetimes; defaults are RFC 5382 / RFC 4787 / RFC 5508 minimums."""

    tcp_established: Duration("2h4m", "24h") = "2h4m"  # type: ignore[valid-type]
    tcp_transitory: Duration("4m", "1h") = "4m"  # type: ignore[valid-type]
    udp: Duration("2m", "1h") = "5m"  # type: ignore[valid-type]
    icmp: Duration("60s", "1h") = "60s"  # type: ignore[valid-type]
    hold: Duration("0s", "1h") = Field(  # type: ignore[valid-type]
        default="2m",
        description="How long a port whose mapping ended, or a released block, is held "
                    "before another flow or subscriber may take it (RFC 6888 REQ-8).")


class NATLogging(Model):
    block_allocations: bool = Field(
        default=True,
        description="Log one line per port-block allocation and release (who had which ports).",
    )


class NATPoolSpec(Model):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.portRange.start > self.portRange.end || "
            "(self.portRange.end - self.portRange.start + 1) % self.portsPerBlock == 0",
            "portsPerBlock must divide the number of ports in portRange evenly",
            lambda p: p.port_range.start > p.port_range.end
            or p.port_range.size % p.ports_per_block == 0,
            field_path=".portsPerBlock",
        ),
        Rule("self.mode != 'deterministic' || size(self.insidePrefixes) > 0",
             "deterministic mode needs insidePrefixes: the inside addresses its formula maps",
             lambda p: p.mode != "deterministic" or len(p.inside_prefixes) > 0,
             field_path=".insidePrefixes"),
        Rule("self.portsPerBlock * self.blocksPerSubscriber <= "
             "self.portRange.end - self.portRange.start + 1",
             "blocksPerSubscriber blocks of portsPerBlock ports must fit in portRange",
             lambda p: p.ports_per_block * p.blocks_per_subscriber <= p.port_range.size,
             field_path=".blocksPerSubscriber"),
    )
    addresses: list[PublicPrefix] = Field(min_length=1, max_length=64)
    port_range: PortRange = Field(default=PortRange())
    ports_per_block: int = Field(default=512, ge=1, le=65535)
    blocks_per_subscriber: int = Field(default=1, ge=1, le=64,
                                       description="Blocks a subscriber may hold at once.")
    mode: Literal["port-block", "deterministic"] = Field(
        default="port-block",
        description="port-block: blocks are given as sessions bind, and logged (RFC 6888). "
                    "deterministic: each inside address has its blocks by a fixed formula "
                    "over insidePrefixes (RFC 7422), so nothing is logged per subscriber.")
    inside_prefixes: list[IPv4CIDR] = Field(
        default_factory=list, max_length=64,
        description="Deterministic mode: the inside addresses the formula maps, in this "
                    "order (the n-th address of their concatenation gets slot n).")
    mapping_behavior: Behavior = "endpoint-independent"
    filtering_behavior: Behavior = "endpoint-independent"
    timeouts: NATTimeouts = Field(default=NATTimeouts())
    logging: NATLogging = Field(default=NATLogging())


class NATNodeUsage(Model):
    """One node's share of a NATPool: the public addresses it holds, its blocks in use.

    The operator keeps the split here, so that a restarted operator splits the same way."""

    node: str = Field(max_length=253)
    addresses: list[str] = Field(
        default_factory=list, max_length=MAX_NODE_ADDRESSES,
        description="Public addresses the node translates to (port-block mode; empty in "
                    "deterministic mode, where every node holds every address).")
    releasing: list[str] = Field(
        default_factory=list, max_length=MAX_NODE_ADDRESSES,
        description="Addresses taken from the node for another one: in no node's spec, and "
                    "free once the node has applied that, reports no block on them, and "
                    "releaseAfter has passed.")
    release_after: datetime | None = Field(
        default=None,
        description="When releasing addresses may go to another node; when the node no "
                    "longer uses the pool, when all its addresses return to the pool (every "
                    "subscriber it may still translate for has ended).")
    blocks_total: int = Field(default=0, ge=0)
    blocks_used: int = Field(default=0, ge=0, description="As the node last reported them.")


class NATPoolStatus(Model):
    blocks_total: int = Field(default=0, ge=0, description="Port blocks of the whole pool.")
    blocks_used: int = Field(default=0, ge=0)
    nodes: list[NATNodeUsage] = Field(default_factory=list, max_length=1024)
    observed_generation: int | None = None
    conditions: Conditions


class NATPool(Resource):
    info: ClassVar[ResourceInfo] = ResourceInfo(
        kind="NATPool",
        plural="natpools",
        short_names=("natp",),
        scope="Cluster",
        columns=(
            PrinterColumn("Addresses", "string", ".spec.addresses[0]", "First public prefix"),
            PrinterColumn("Mode", "string", ".spec.mode"),
            PrinterColumn("Ports/Block", "integer", ".spec.portsPerBlock"),
            PrinterColumn("Blocks-Used", "integer", ".status.blocksUsed"),
            ready_column(),
            AGE,
        ),
    )
    spec: NATPoolSpec
    status: NATPoolStatus | None = None

"""IPPool: the addresses subscribers are given, and how they are split across nodes."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import ClassVar

from pydantic import Field

from bng_operator.api.common import Conditions, Duration, IPv4, IPv4CIDR, Model
from bng_operator.api.resource import AGE, PrinterColumn, Resource, ResourceInfo, ready_column
from bng_operator.api.rules import Rule, cidr_contains, cidr_prefix, is_cidr, is_ipv4


def cel_ipv4_int(expr: str) -> str:
    """CEL for the integer value of a dotted IPv4 string; the CEL ip type has no ordering."""
    parts = [f"int({expr}.split('.')[{i}])" for i in range(4)]
    return f"({parts[0]} * 16777216 + {parts[1]} * 65536 + {parts[2]} * 256 + {parts[3]})"


class AddressRange(Model):
    """A single address, or ``start``..``end`` inclusive."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.end) || !isIP(self.start) || !isIP(self.end) || "
            f"{cel_ipv4_int('self.start')} <= {cel_ipv4_int('self.end')}",
            "end must not come before start",
            lambda r: r.end is None or not (is_ipv4(r.start) and is_ipv4(r.end))
            or ipaddress.IPv4Address(r.start) <= ipaddress.IPv4Address(r.end),
            field_path=".end",
        ),
    )
    start: IPv4
    end: IPv4 | None = None

    def addresses(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        start = ipaddress.IPv4Address(self.start)
        return start, ipaddress.IPv4Address(self.end) if self.end else start


class Subnet(Model):
    """One on-link subnet: clients get addresses from ``cidr`` and route via ``gateway``."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!isCIDR(self.cidr) || !isIP(self.gateway) || cidr(self.cidr).containsIP(self.gateway)",
            "gateway must be inside the subnet's cidr",
            lambda s: cidr_contains(s.cidr, s.gateway),
            field_path=".gateway",
        ),
        Rule(
            "!isCIDR(self.cidr) || !isIP(self.gateway) || string(cidr(self.cidr).ip()) != self.gateway",
            "gateway must not be the subnet's network address",
            lambda s: not (is_cidr(s.cidr) and is_ipv4(s.gateway))
            or ipaddress.ip_interface(s.cidr).ip != ipaddress.IPv4Address(s.gateway),
            field_path=".gateway",
        ),
        Rule(
            "!isCIDR(self.cidr) || cidr(self.cidr).prefixLength() <= 30",
            "must be a /30 or larger: it holds a gateway and at least one client",
            lambda s: not is_cidr(s.cidr) or cidr_prefix(s.cidr) <= 30,
            field_path=".cidr",
        ),
        Rule(
            "!isCIDR(self.cidr) || !has(self.exclude) || self.exclude.all(r, "
            "(!isIP(r.start) || cidr(self.cidr).containsIP(r.start)) && "
            "(!has(r.end) || !isIP(r.end) || cidr(self.cidr).containsIP(r.end)))",
            "every excluded range must lie inside the subnet's cidr",
            lambda s: all(
                cidr_contains(s.cidr, r.start) and (r.end is None or cidr_contains(s.cidr, r.end))
                for r in s.exclude
            ),
            field_path=".exclude",
        ),
    )
    cidr: IPv4CIDR = Field(description="Subnet the addresses come from, e.g. 100.64.0.0/16.")
    gateway: IPv4 = Field(description="Default router given to clients (option 3).")
    exclude: list[AddressRange] = Field(
        default_factory=list, max_length=64,
        description="Addresses never handed out (infrastructure, static hosts).",
    )

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)


def _no_overlap(spec: IPPoolSpec) -> bool:
    nets = [s.network for s in spec.subnets if is_cidr(s.cidr)]
    return not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])


class IPPoolSpec(Model):
    """What a pool hands out and with which options."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.subnets.all(s, !isCIDR(s.cidr) || cidr(s.cidr).prefixLength() <= self.blockSize)",
            "blockSize must be a prefix at least as long as every subnet's: "
            "a block cannot be larger than the subnet it is carved from",
            lambda p: all(not is_cidr(s.cidr) or cidr_prefix(s.cidr) <= p.block_size
                          for s in p.subnets),
            field_path=".blockSize",
        ),
        Rule(
            "self.subnets.all(a, !isCIDR(a.cidr) || self.subnets.exists_one(b, isCIDR(b.cidr) && "
            "(cidr(a.cidr).containsCIDR(cidr(b.cidr)) || cidr(b.cidr).containsCIDR(cidr(a.cidr)))))",
            "subnets must not overlap one another",
            _no_overlap,
            field_path=".subnets",
        ),
    )
    subnets: list[Subnet] = Field(min_length=1, max_length=16)
    block_size: int = Field(
        default=24, ge=16, le=32,
        description="Prefix length of the blocks each node is given (Calico-style IPAM).",
    )
    lease_time: Duration("60s", "8760h") = Field(  # type: ignore[valid-type]
        default="12h", description="Lease time (option 51); T1 and T2 are 50% and 87.5% of it.",
    )
    dns: list[IPv4] = Field(default_factory=list, max_length=4, description="Option 6.")
    domain_name: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?$",
        description="Option 15.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Only nodes with these labels get blocks of this pool.",
    )
    authoritative: bool = Field(
        default=True,
        description="Answer a client this node has no record of that asks for an address "
                    "without a DISCOVER (INIT-REBOOT): ACK it when the address is free here, "
                    "else NAK. false: stay silent, for a network another server also serves.",
    )


class BlockAssignment(Model):
    """One block of the pool and the node that allocates from it (Calico-style affinity)."""

    cidr: str = Field(max_length=18)
    node: str = Field(max_length=253)
    leases: int = Field(default=0, ge=0, description="Leases in the block, as the node last "
                                                      "reported them.")
    release_after: datetime | None = Field(
        default=None, description="The node has left: the block returns to the pool at this "
                                  "time, when every lease it may still hold has ended.")


class NodeBlocks(Model):
    node: str = Field(max_length=253)
    blocks: int = Field(ge=0)
    leases: int = Field(ge=0)


class IPPoolStatus(Model):
    blocks: list[BlockAssignment] = Field(default_factory=list, max_length=4096)
    nodes: list[NodeBlocks] = Field(default_factory=list, max_length=4096,
                                    description="Blocks and leases per node.")
    size: int = Field(default=0, ge=0, description="Addresses that can be handed out.")
    allocated: int = Field(default=0, ge=0)
    free: int = Field(default=0, ge=0)
    utilization: int = Field(default=0, ge=0, le=100, description="Allocated / size, percent.")
    observed_generation: int | None = None
    conditions: Conditions


class IPPool(Resource):
    info: ClassVar[ResourceInfo] = ResourceInfo(
        kind="IPPool",
        plural="ippools",
        short_names=("ipp", "bngpool"),
        scope="Cluster",
        columns=(
            PrinterColumn("Subnet", "string", ".spec.subnets[0].cidr", "First subnet"),
            PrinterColumn("Gateway", "string", ".spec.subnets[0].gateway", priority=1),
            PrinterColumn("Block", "integer", ".spec.blockSize", "Per-node block prefix"),
            PrinterColumn("Lease", "string", ".spec.leaseTime"),
            PrinterColumn("Allocated", "integer", ".status.allocated"),
            PrinterColumn("Free", "integer", ".status.free"),
            PrinterColumn("Util%", "integer", ".status.utilization"),
            ready_column(),
            AGE,
        ),
    )
    spec: IPPoolSpec
    status: IPPoolStatus | None = None

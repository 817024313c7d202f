"""SubscriberClass: how subscribers are recognised and which policy they get."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from bng_operator.api.common import (
    Conditions,
    Duration,
    IPv4CIDR,
    MACPrefix,
    Model,
    ObjectName,
    Regex,
)
from bng_operator.api.radius import RadiusAuth
from bng_operator.api.resource import AGE, PrinterColumn, Resource, ResourceInfo, ready_column
from bng_operator.api.rules import Rule

# client-id: option 61 when the client sends one, else the MAC (RFC 2131 §4.2).
Identity = Literal["client-id", "mac", "circuit-id", "remote-id"]


class Match(Model):
    """Every field given must match; an empty match takes every subscriber (a default class)."""

    circuit_id: Regex | None = Field(default=None, description="Option 82.1, as text.")
    remote_id: Regex | None = Field(default=None, description="Option 82.2, as text.")
    mac_prefix: MACPrefix | None = None
    vendor_class: Regex | None = Field(default=None, description="Option 60.")
    relays: list[IPv4CIDR] = Field(default_factory=list, max_length=32,
                                   description="giaddr must be inside one of these.")
    vlan: int | None = Field(default=None, ge=1, le=4094, description="Outer 802.1Q tag.")


class Limits(Model):
    allocations_per_minute: int = Field(
        default=30, ge=1, le=100000,
        description="New addresses one circuit-id or MAC may take per minute (pool drain guard).",
    )
    max_leases_per_circuit: int | None = Field(
        default=None, ge=1, le=65536,
        description="Addresses one circuit-id (option 82) may hold at once: leases, offers and "
                    "declined addresses together. Unset: 32.")


class SubscriberClassSpec(Model):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("self.auth != 'radius' || has(self.radius)",
             "auth: radius needs a radius section (its servers and their secret)",
             lambda s: s.auth != "radius" or s.radius is not None, field_path=".radius"),
    )
    priority: int = Field(default=1000, ge=0, le=1000000,
                          description="Classes are tried lowest first; the first match wins.")
    match: Match = Field(default=Match())
    identity: Identity = Field(
        default="client-id",
        description="What identifies one subscriber: client-id (option 61, else the MAC), mac, "
                    "circuit-id or remote-id (option 82).")
    pool: ObjectName = Field(description="IPPool the addresses come from.")
    qos_policy: ObjectName | None = None
    nat_pool: ObjectName | None = None
    auth: Literal["none", "radius"] = Field(
        default="none",
        description="radius: each new session is authenticated first (see radius); none: "
                    "every subscriber the class matches is served.")
    radius: RadiusAuth | None = Field(
        default=None, description="The RADIUS servers and request of auth: radius.")
    lease_time: Duration("60s", "8760h") | None = Field(  # type: ignore[valid-type]
        default=None, description="Overrides the pool's lease time.")
    limits: Limits = Field(default=Limits())


class SubscriberClassStatus(Model):
    subscribers: int = Field(default=0, ge=0)
    conditions: Conditions


class SubscriberClass(Resource):
    info: ClassVar[ResourceInfo] = ResourceInfo(
        kind="SubscriberClass",
        plural="subscriberclasses",
        short_names=("subclass", "bsc"),
        scope="Cluster",
        columns=(
            PrinterColumn("Priority", "integer", ".spec.priority"),
            PrinterColumn("Identity", "string", ".spec.identity"),
            PrinterColumn("Pool", "string", ".spec.pool"),
            PrinterColumn("QoS", "string", ".spec.qosPolicy"),
            PrinterColumn("NAT", "string", ".spec.natPool"),
            PrinterColumn("Auth", "string", ".spec.auth", priority=1),
            ready_column(),
            AGE,
        ),
    )
    spec: SubscriberClassSpec
    status: SubscriberClassStatus | None = None

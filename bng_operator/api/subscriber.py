"""Subscriber: one customer line as the agent sees it, or a user's address reservation."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from bng_operator.api.common import MAC, Conditions, IPv4, Model, ObjectName
from bng_operator.api.resource import AGE, PrinterColumn, Resource, ResourceInfo
from bng_operator.api.rules import Rule

State = Literal["Offered", "Bound", "Released", "Expired", "Declined"]


class SubscriberIdentity(Model):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("has(self.mac) || has(self.clientId) || has(self.circuitId) || has(self.remoteId)",
             "give at least one of mac, clientId, circuitId, remoteId",
             lambda i: any((i.mac, i.client_id, i.circuit_id, i.remote_id))),
    )
    mac: MAC | None = None
    client_id: str | None = Field(default=None, max_length=255, description="Option 61, hex.")
    circuit_id: str | None = Field(default=None, max_length=255, description="Option 82.1.")
    remote_id: str | None = Field(default=None, max_length=255, description="Option 82.2.")


class SubscriberSpec(Model):
    identity: SubscriberIdentity
    subscriber_class: ObjectName | None = Field(default=None, alias="class")
    address: IPv4 | None = Field(default=None, description="Reserved address: always this one.")
    pool: ObjectName | None = Field(default=None, description="Pool the reservation belongs to.")


class QoSStatus(Model):
    policy: str | None = Field(default=None, max_length=253)
    download: str | None = Field(default=None, max_length=24)
    upload: str | None = Field(default=None, max_length=24)


class NATBlock(Model):
    """The subscriber's public address and ports (its first block's start to its last
    block's end; ``ports`` lists each block)."""

    pool: str | None = Field(default=None, max_length=253)
    address: IPv4
    port_start: int = Field(ge=1, le=65535)
    port_end: int = Field(ge=1, le=65535)
    ports: str | None = Field(default=None, max_length=1024)


class Counters(Model):
    """The subscriber's traffic from its side: rx downloaded, tx uploaded (frame bytes,
    Ethernet header included, as the shaper classified them)."""

    rx_bytes: int = Field(default=0, ge=0)
    tx_bytes: int = Field(default=0, ge=0)
    rx_packets: int = Field(default=0, ge=0)
    tx_packets: int = Field(default=0, ge=0)


class RadiusSessionStatus(Model):
    """The session's RADIUS accounting: its Acct-Session-Id, and when its last accounting
    record (Start, Interim-Update) was made (queued; sent when a server answers)."""

    acct_session_id: str | None = None
    last_accounting: datetime | None = None


class SubscriberStatus(Model):
    state: State | None = None
    address: IPv4 | None = None
    node: str | None = None
    pool: str | None = None
    subscriber_class: str | None = Field(default=None, alias="class")
    lease_expiry: datetime | None = None
    bound_at: datetime | None = None
    qos: QoSStatus | None = None
    nat: NATBlock | None = None
    counters: Counters | None = None
    radius: RadiusSessionStatus | None = None
    conditions: Conditions


class Subscriber(Resource):
    info: ClassVar[ResourceInfo] = ResourceInfo(
        kind="Subscriber",
        plural="subscribers",
        short_names=("sub", "subs"),
        scope="Namespaced",
        columns=(
            PrinterColumn("MAC", "string", ".spec.identity.mac"),
            PrinterColumn("Address", "string", ".status.address"),
            PrinterColumn("Node", "string", ".status.node"),
            PrinterColumn("Class", "string", ".status.class"),
            PrinterColumn("State", "string", ".status.state"),
            # A string: kubectl prints a "date" as the time since it, and "<invalid>" for
            # every lease, whose end is in the future.
            PrinterColumn("Expires", "string", ".status.leaseExpiry"),
            PrinterColumn("Reserved", "string", ".spec.address", priority=1),
            PrinterColumn("Circuit-ID", "string", ".spec.identity.circuitId", priority=1),
            PrinterColumn("Remote-ID", "string", ".spec.identity.remoteId", priority=1),
            AGE,
        ),
    )
    spec: SubscriberSpec
    status: SubscriberStatus | None = None

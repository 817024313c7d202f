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
    """The session's RADIUS state: how it was authorised, the Access-Accept's attributes in
    effect, its Acct-Session-Id, and when its last accounting record (Start,
    Interim-Update) was made (queued; sent when a server answers)."""

    auth_state: Literal["authorised", "fallback"] | None = Field(
        default=None, description="authorised: a server's Access-Accept; fallback: no server "
        "answered and the class's fallback (admit) let it in with the class's defaults.")
    server: str | None = Field(default=None, max_length=64,
                               description="The server that accepted it (address:port).")
    user_name: str | None = Field(default=None, max_length=253)
    authorised_at: datetime | None = None
    framed_ip_address: IPv4 | None = None
    framed_pool: str | None = Field(
        default=None, max_length=253,
        description="The IPPool the Accept chose: Framed-Pool, or its Framed-IP-Address's.")
    filter_id: str | None = Field(default=None, max_length=253)
    download: str | None = Field(default=None, max_length=24,
                                 description="A rate the Accept set (over the class's policy).")
    upload: str | None = Field(default=None, max_length=24)
    session_timeout: int | None = Field(default=None, ge=0, description="Seconds.")
    session_ends_at: datetime | None = Field(
        default=None, description="When Session-Timeout ends it (kept across restarts).")
    idle_timeout: int | None = Field(default=None, ge=0, description="Seconds.")
    interim_interval: int | None = Field(
        default=None, ge=0, description="Seconds between Interim-Updates: the Accept's "
        "Acct-Interim-Interval, else the class's interimInterval (0: none).")
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

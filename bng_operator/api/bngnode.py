"""BNGNode: the whole configuration of one node's agent, rendered by the operator."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from bng_operator.api.common import Conditions, IPv4CIDR, Model, ObjectName
from bng_operator.api.ippool import IPPoolSpec
from bng_operator.api.natpool import MAX_NODE_ADDRESSES, NATPoolSpec
from bng_operator.api.qospolicy import QoSPolicySpec
from bng_operator.api.resource import AGE, PrinterColumn, Resource, ResourceInfo, ready_column
from bng_operator.api.rules import Rule
from bng_operator.api.subscriberclass import SubscriberClassSpec

# The design limit of one node (DESIGN.md): map sizes are checked against it.
MAX_LEASES_PER_NODE = 100_000
# Seconds the XDP fast path keeps answering after its agent's last heartbeat: longer than any
# restart or upgrade, shorter than a lease. The operator holds a departed node's blocks as
# much longer than the node's longest lease. (`bng agent` and `bng operator`
# --fast-path-authority.)
FAST_PATH_AUTHORITY = 600.0
MAX_CPU = 4095  # the highest CPU number spec.eventLoopCPU may name (Linux's NR_CPUS bound)

InterfaceName = Annotated[str, Field(min_length=1, max_length=15, pattern=r"^[^/\s:]+$")]


class Option82Trust(Model):
    """Where DHCP option 82 (relay agent information) is believed (RFC 3046 §2.1, §2.2).

    A subscriber can put its own option 82 into a request to claim another line's class or
    reservation. Option 82 is honoured only from access interfaces whose access node (OLT,
    DSLAM, switch) inserts it and removes what subscribers send, and from trusted relays."""

    trusted: list[InterfaceName] = Field(
        default_factory=list, max_length=16,
        description="Access interfaces behind an access node that inserts option 82: it is "
                    "honoured on them (also from relays there).")
    trusted_relays: list[IPv4CIDR] = Field(
        default_factory=list, max_length=64,
        description="Relay agents (giaddr) whose option 82 is honoured on any access "
                    "interface. Requests from them are answered by the slow path only.")
    untrusted: Literal["drop", "strip"] = Field(
        default="drop",
        description="A request carrying option 82 from anywhere else: dropped, or served as "
                    "if it carried none. Counted either way.")


class Interfaces(Model):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("self.option82.trusted.all(i, i in self.access)",
             "every trusted interface must be one of the access interfaces",
             lambda i: all(t in i.access for t in i.option82.trusted),
             field_path=".option82.trusted"),
    )
    access: list[InterfaceName] = Field(
        min_length=1, max_length=16, description="Interfaces subscribers are reached on.")
    uplink: InterfaceName | None = Field(default=None,
                                         description="Towards the core; NAT runs here.")
    option82: Option82Trust = Field(
        default_factory=Option82Trust,
        description="Where option 82 is honoured. Default: nowhere (requests carrying it are "
                    "dropped).")


class NodePool(Model):
    name: ObjectName
    spec: IPPoolSpec
    blocks: list[IPv4CIDR] = Field(
        default_factory=list, max_length=4096,
        description="Blocks this node allocates from. Empty: the node owns the whole pool "
                    "(standalone mode).",
    )


class NodeClass(Model):
    name: ObjectName
    spec: SubscriberClassSpec


class NodeQoSPolicy(Model):
    name: ObjectName
    spec: QoSPolicySpec


class NodeNATPool(Model):
    name: ObjectName
    spec: NATPoolSpec
    addresses: list[str] = Field(
        default_factory=list, max_length=MAX_NODE_ADDRESSES,
        description="Public addresses this node translates to, in the pool's order. The "
                    "operator always lists them: a port-block pool's share of this node, or "
                    "every address of a deterministic pool. Empty: the node owns every "
                    "address of the pool (standalone mode).")


class BNGNodeSpec(Model):
    node_name: str = Field(max_length=253)
    interfaces: Interfaces
    max_leases: int = Field(default=MAX_LEASES_PER_NODE, ge=1, le=MAX_LEASES_PER_NODE,
                            description="Sizes the lease store and the eBPF subscriber maps.")
    commit_at_offer: bool = Field(
        default=False,
        description="Commit a new client's lease when it is offered (state offered, for the "
                    "offer's hold) and let the XDP fast path ACK its REQUEST: one message of "
                    "a DORA in Python instead of two, and the ACK in microseconds. Each "
                    "DISCOVER then costs a durable write. docs/fast-path.md.")
    event_loop_cpu: int | None = Field(
        default=None, ge=0, le=MAX_CPU, alias="eventLoopCPU",
        description="The CPU the agent's process runs on: its event loop (the DHCP slow path, "
                    "RADIUS, the features) and its threads, which share one interpreter lock "
                    "anyway. Its helper processes (the lease store's writer, the RADIUS "
                    "transport) run on the agent's other CPUs, so that waking them does not "
                    "take the event loop's CPU. Unset: the kernel places both (the default). "
                    "docs/tuning.md.")
    pools: list[NodePool] = Field(default_factory=list, max_length=256)
    classes: list[NodeClass] = Field(default_factory=list, max_length=256)
    qos_policies: list[NodeQoSPolicy] = Field(default_factory=list, max_length=256)
    nat_pools: list[NodeNATPool] = Field(default_factory=list, max_length=64)


class ProgramStatus(Model):
    hook: Literal["xdp", "tc-ingress", "tc-egress"]
    interface: str
    name: str
    attached: bool
    program_id: int | None = None


class MapFill(Model):
    name: str
    entries: int = Field(ge=0)
    capacity: int = Field(ge=0)


class BlockUsage(Model):
    pool: str
    cidr: str = Field(max_length=18)
    leases: int = Field(ge=0)
    size: int = Field(ge=0)


class NATUsage(Model):
    """Port blocks of one NATPool's public address in use on this node."""

    pool: str
    address: str = Field(max_length=15)
    blocks_used: int = Field(ge=0)
    blocks_total: int = Field(ge=0)


class RadiusServerStatus(Model):
    """A RADIUS server as this node sees it."""

    server: str = Field(max_length=32, description="address:authPort")
    up: bool = Field(description="False while marked dead (deadAfter timeouts in a row).")
    timeouts_in_row: int = Field(default=0, ge=0)
    last_error: str = Field(default="", max_length=1024)


class BNGNodeStatus(Model):
    programs: list[ProgramStatus] = Field(default_factory=list, max_length=64)
    maps: list[MapFill] = Field(default_factory=list, max_length=64)
    blocks: list[BlockUsage] = Field(default_factory=list, max_length=4096)
    nat: list[NATUsage] = Field(default_factory=list, max_length=4096)
    radius: list[RadiusServerStatus] = Field(
        default_factory=list, max_length=256,
        description="The RADIUS servers of the node's classes, and their health.")
    leases_active: int = Field(default=0, ge=0)
    hubble: str = Field(default="", max_length=256, description=(
        "Where this node's agent serves Hubble's API (host:port, as hubble-relay dials it); "
        "every agent's Peer service lists every node's."))
    last_sync: datetime | None = None
    observed_generation: int | None = None
    conditions: Conditions


class BNGNode(Resource):
    info: ClassVar[ResourceInfo] = ResourceInfo(
        kind="BNGNode",
        plural="bngnodes",
        short_names=("bngn",),
        scope="Cluster",
        spec_rules=False,
        columns=(
            PrinterColumn("Node", "string", ".spec.nodeName"),
            PrinterColumn("Access", "string", ".spec.interfaces.access[0]"),
            PrinterColumn("Uplink", "string", ".spec.interfaces.uplink", priority=1),
            PrinterColumn("Leases", "integer", ".status.leasesActive"),
            ready_column(),
            ready_column("Degraded"),
            PrinterColumn("Synced", "date", ".status.lastSync", priority=1),
            AGE,
        ),
    )
    spec: BNGNodeSpec
    status: BNGNodeStatus | None = None

"""A DhcpServer over the sample ISP, with a fake clock and an in-memory store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from bng_operator.agent.config import node_config
from bng_operator.agent.dhcp.leases import Decline, Lease
from bng_operator.agent.dhcp.server import Context, DhcpServer
from bng_operator.api import BNGNode, Subscriber
from bng_operator.api.documents import load, yaml_files
from bng_operator.policy.render import render_node

SAMPLES = Path(__file__).resolve().parents[1] / "config" / "samples"
CTX = Context("access0", (IPv4Address("100.64.0.1"), IPv4Address("198.51.100.1")))


@dataclass
class MemoryStore:
    leases: dict[int, Lease] = field(default_factory=dict)
    declines: dict[int, Decline] = field(default_factory=dict)

    def put(self, lease: Lease) -> None:
        self.leases[lease.address] = Lease(*[getattr(lease, f) for f in lease.__slots__])

    def delete(self, address: int) -> None:
        self.leases.pop(address, None)

    def put_decline(self, d: Decline) -> None:
        self.declines[d.address] = d
        self.leases.pop(d.address, None)

    def delete_decline(self, address: int) -> None:
        self.declines.pop(address, None)


def bound_lease(**kw: object) -> Lease:
    """A bound lease of 02:00:00:00:00:01 on 100.64.0.20 (residential), as the slow path
    records it after an ACK from 100.64.0.1; ``kw`` overrides fields."""
    fields: dict[str, object] = {
        "address": int(IPv4Address("100.64.0.20")), "identity": "mac:02:00:00:00:00:01",
        "mac": "02:00:00:00:00:01", "client_id": None, "circuit_id": None, "remote_id": None,
        "pool": "residential", "subscriber_class": "residential",
        "expires": time.time() + 3600, "hostname": None, "bound_at": time.time(),
        "server_id": int(IPv4Address("100.64.0.1")), "lease_seconds": 3600}
    fields.update(kw)
    return Lease(**fields)  # type: ignore[arg-type]


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def sample_config(edit=None):  # type: ignore[no-untyped-def]
    return config_from([SAMPLES], edit)


def config_from(paths, edit=None):  # type: ignore[no-untyped-def]
    """The node's configuration, as the agent renders it, from the objects in ``paths``."""
    objects, errors = load(yaml_files(paths))
    assert not errors, errors
    if edit:
        objects = edit(objects)
    node = next(o for o in objects if isinstance(o, BNGNode))
    subs = [o for o in objects if isinstance(o, Subscriber)]
    return node_config(render_node(node, objects), subs)


def server(edit=None, store: MemoryStore | None = None, clock: Clock | None = None):  # type: ignore[no-untyped-def]
    store = store or MemoryStore()
    clock = clock or Clock()
    return DhcpServer(sample_config(edit), store, clock), store, clock

"""Subscriber objects as the agent reports them: pure functions of a lease, no cluster.

One object per subscriber identity, named after it, so a subscriber that moves to another
node keeps its object. A user's reservation (a Subscriber with ``spec.address``) is reported
on in place.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any, Literal

from bng_operator.agent.dhcp.leases import Lease
from bng_operator.api import API_VERSION
from bng_operator.api.common import AGENT_MANAGER, MANAGED_BY

NODE_LABEL = "bng.dev/node"
AGENT = AGENT_MANAGER
Event = Literal["allocate", "release", "expire", "decline"]
STATE = {"allocate": "Bound", "release": "Released", "expire": "Expired", "decline": "Declined"}

_UNSAFE = re.compile(r"[^a-z0-9]+")


def object_name(identity: str) -> str:
    """A DNS-1123 name for an identity key. MACs read as themselves; free-form identities
    (circuit-id, remote-id, client-id) get a hash suffix, so two never share a name."""
    kind, _, value = identity.partition(":")
    if kind == "mac":
        return "mac-" + value.lower().replace(":", "-")
    slug = _UNSAFE.sub("-", value.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
    return f"{kind}-{slug}-{digest}" if slug else f"{kind}-{digest}"


def _time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def status(lease: Lease, event: Event, node: str, now: float) -> dict[str, Any]:
    """The object's status after ``event``. For an ended lease, ``leaseExpiry`` is when it
    ended: the time to live of released and expired objects counts from there."""
    ended = event != "allocate"
    return {"state": STATE[event], "address": str(IPv4Address(lease.address)), "node": node,
            "pool": lease.pool, "class": lease.subscriber_class,
            "leaseExpiry": _time(min(now, lease.expires) if ended else lease.expires),
            "boundAt": _time(lease.bound_at)}


def new_object(name: str, lease: Lease, node: str, namespace: str) -> dict[str, Any]:
    identity = {"mac": lease.mac, "clientId": lease.client_id, "circuitId": lease.circuit_id,
                "remoteId": lease.remote_id}
    return {"apiVersion": API_VERSION, "kind": "Subscriber",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {NODE_LABEL: node, MANAGED_BY: AGENT}},
            "spec": {"identity": {k: v for k, v in identity.items() if v}}}


def own_reports(node: str) -> str:
    """The label selector of ``node``'s own Subscriber reports."""
    return f"{NODE_LABEL}={node},{MANAGED_BY}={AGENT}"


def expired_past_ttl(obj: dict[str, Any], node: str, ttl: float, now: float) -> bool:
    """An object this agent made whose subscriber left more than ``ttl`` seconds ago."""
    meta, st = obj.get("metadata", {}), obj.get("status") or {}
    labels = meta.get("labels") or {}
    if labels.get(NODE_LABEL) != node or labels.get(MANAGED_BY) != AGENT:
        return False
    if st.get("state") not in ("Released", "Expired", "Declined") or st.get("node") != node:
        return False
    try:
        ended = datetime.fromisoformat(st["leaseExpiry"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError, AttributeError):
        return False
    return now - ended > ttl

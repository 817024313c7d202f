"""Which sessions a policy change reaches: pure, tested with tables."""

from __future__ import annotations

from bng_operator.agent.config import NodeConfig
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.api.ippool import IPPoolSpec


def policy_changed(lease: Lease, old: NodeConfig, new: NodeConfig) -> bool:
    """Whether a configuration change may change what this bound lease's session gets,
    beyond its subnet's options (DNS, domain: sent as they are, to everyone): its class or
    pool was redefined, or a reservation for it came or went. Such a session gets a
    ``changed(policy)`` event; the fast path then lets the slow path classify it anew."""
    if [c.name for c in old.classes] != [c.name for c in new.classes]:
        return True  # another order of classes may classify anyone differently
    before = next((c for c in old.classes if c.name == lease.subscriber_class), None)
    after = next((c for c in new.classes if c.name == lease.subscriber_class), None)
    if (before.spec if before else None) != (after.spec if after else None):
        return True
    p_old, p_new = old.pools.get(lease.pool), new.pools.get(lease.pool)
    if p_old is None or p_new is None or _terms(p_old.spec) != _terms(p_new.spec) \
            or p_old.blocks != p_new.blocks:
        return True
    changed = set(old.reservations) ^ set(new.reservations)
    keys = {lease.identity, f"mac:{lease.mac}"}
    return any(r.address == lease.address or keys & set(r.keys) for r in changed)


def _terms(spec: IPPoolSpec) -> IPPoolSpec:
    """A pool's spec without the options every subscriber of a subnet shares."""
    return spec.model_copy(update={"dns": [], "domain_name": None})

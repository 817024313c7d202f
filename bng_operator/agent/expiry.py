"""Time: leases, offers and declines that ran out, and leases of pools no longer served."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.dhcp.server import DhcpServer
from bng_operator.agent.health import Commits, Health
from bng_operator.agent.sessions.events import SessionEvents

log = logging.getLogger("bng.agent")
COMMIT_TIMEOUT = 5.0  # seconds a lease store commit may take before the node is not ready


@dataclass
class Expiry:
    server: DhcpServer
    sessions: SessionEvents
    commits: Commits
    health: Health
    grace: float = 0.0  # leases end this late, for renewals still on their way up
    # Run first on every round: a lease the kernel just renewed must not end.
    before: list[Callable[[], None]] = field(default_factory=list)
    # The end the fast path's map holds for a lease (unix time), asked before it ends.
    renewed_elsewhere: Callable[[Lease], float | None] | None = None
    # Leases whose pool this node no longer serves: counted in the status until they end.
    orphans: dict[int, Lease] = field(default_factory=dict)

    def adopt_orphans(self, leases: list[Lease], say: bool = True) -> None:
        for orphan in leases:
            self.orphans[orphan.address] = orphan
            if say:
                log.warning("stored lease of %s on %s has no pool on this node any more; it is "
                            "served again only if the client asks anew", orphan.identity,
                            IPv4Address(orphan.address))

    def run_once(self) -> None:
        self.commits.watch(COMMIT_TIMEOUT)
        for step in self.before:
            step()
        self.server.expire(self.grace, self.renewed_elsewhere)
        if self.commits.store.pending:  # ends, extensions, declines that ran out
            self.commits.quietly()
        self.sessions.publish(self.server.take_events())
        now = time.time()
        for addr, lease in list(self.orphans.items()):
            if lease.expires <= now or addr in self.server.by_address:
                del self.orphans[addr]
                self.health.dirty = True

"""What keeps the node from serving, or serves it degraded: shared by the agent's rooms and
read by the BNGNode status report."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

from bng_operator.agent.dhcp.leases import LeaseStore
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent")


@dataclass
class Health:
    problem: str = "starting"  # the node does not serve (Ready=False); "" when it does
    store_problem: str = ""  # the last lease store commit failed: no ACK can be sent
    reload_error: str = ""  # the last configuration did not apply (Degraded=True)
    refused: str = ""  # the apiserver refused the agent's credentials (Degraded=True)
    placement: str = ""  # spec.eventLoopCPU could not be followed (Degraded=True)
    last_sync: datetime | None = None  # when the configuration was last read
    dirty: bool = True  # the BNGNode status should be written again
    attached: set[str] = field(default_factory=set)  # interfaces with the fast path on them

    def ready(self) -> tuple[bool, str]:
        problem = self.problem or self.store_problem
        return (problem == "", problem or "ready")


@dataclass
class Commits:
    """Lease store commits whose outcome is only logged and counted (renewals the kernel
    answered, expiries): nobody waits on them."""

    store: LeaseStore
    metrics: AgentMetrics
    health: Health
    _stalled: bool = False  # the problem said is a commit that hangs

    def watch(self, timeout: float) -> None:
        """A commit that takes longer than ``timeout`` makes the node not ready (its ACKs
        wait), and says so; it is ready again when the commit ends."""
        stalled = self.store.stalled_for()
        if stalled > timeout:
            if not self._stalled:
                log.error("lease store: a commit has taken %.0f s; replies wait for it", stalled)
                self._stalled, self.health.dirty = True, True
            self.health.store_problem = f"lease store: a commit has taken {stalled:.0f} s"
        elif self._stalled:
            self._stalled = False
            self.health.store_problem, self.health.dirty = "", True

    def quietly(self) -> None:
        self.store.commit().add_done_callback(self.done)

    def done(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            return
        self._stalled = False  # it ended: what it says now is its outcome
        if fut.exception() is None:
            self.metrics.lease_commits.inc()
            if self.health.store_problem:
                log.info("lease store commits again")
                self.health.store_problem, self.health.dirty = "", True
            return
        self.metrics.lease_commit_failures.inc()
        log.error("lease store commit failed: %s; no ACK is sent for a lease not on disk",
                  fut.exception())
        self.health.store_problem = f"lease store: {fut.exception()}"
        self.health.dirty = True

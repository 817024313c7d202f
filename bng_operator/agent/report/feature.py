"""Kubernetes reporting as a session feature: Subscriber objects follow sessions, and the
BNGNode status follows the node.

A session's object is written when it is bound, changed or ended, and at the accounting
interval (renewals move lease ends without an event); never once per DHCP packet. After the
apiserver lost updates, every bound session is handed over again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bng_operator.agent.config import NodeConfig
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.dhcp.server import DhcpServer
from bng_operator.agent.health import Health
from bng_operator.agent.report.kube import KubeReporter
from bng_operator.agent.report.status import node_status
from bng_operator.agent.report.subscribers import Event, object_name
from bng_operator.agent.sessions.session import Change, EndReason, Session
from bng_operator.api.bngnode import (
    BNGNodeStatus,
    MapFill,
    NATUsage,
    ProgramStatus,
    RadiusServerStatus,
)
from bng_operator.api.common import Condition

log = logging.getLogger("bng.agent")
# How an ended session shows in its object's state.
_ENDED: dict[EndReason | None, Event] = {EndReason.EXPIRED: "expire",
                                         EndReason.DECLINED: "decline"}


@dataclass
class NodeView:
    """What the BNGNode status is made of, read from the agent's rooms when it is written."""

    config: Callable[[], NodeConfig]
    generation: Callable[[], int | None]
    programs: Callable[[], list[ProgramStatus]]
    maps: Callable[[], list[MapFill]]
    degraded: Callable[[], tuple[str, str]]  # the Degraded condition's reason, message
    orphans: Callable[[], list[Lease]]
    fast_path_on: Callable[[], bool]
    nat: Callable[[], list[NATUsage]] = list  # blocks in use per NAT public address
    radius: Callable[[], list[RadiusServerStatus]] = list  # servers and their health
    hubble: Callable[[], str] = str  # where its Hubble API is dialled


@dataclass
class KubeReporting:
    reporter: KubeReporter
    server: DhcpServer
    health: Health
    view: NodeView
    accounting_interval: float
    status_interval: float
    name: str = "report"
    _conditions: list[Condition] = field(default_factory=list)

    # --- session events ------------------------------------------------------------------------

    def on_bound(self, s: Session) -> None:
        self._write(s.lease, "allocate")

    def on_changed(self, s: Session, what: Change, before: Lease | None) -> None:
        if what in (Change.ADDRESS, Change.CLASS):  # the object shows those, not the policy
            self._write(s.lease, "allocate")

    def on_ended(self, s: Session) -> None:
        if s.lease is not None:  # never bound: never reported
            self._write(s.lease, _ENDED.get(s.end_reason, "release"))

    def refresh(self, lease: Lease) -> None:
        """A bound session's status fields of another feature changed (a NAT block given):
        written again, as an event (on the loop thread)."""
        if lease.address in self.server.by_address:
            self._write(lease, "allocate")

    def _write(self, lease: Lease | None, event: Event, refresh: bool = False) -> None:
        self.health.dirty = True
        if lease is not None:
            self.reporter.subscriber(self._name(lease), event, lease, refresh=refresh)

    def _name(self, lease: Lease) -> str:
        r = self.view.config().reservation_by_key.get(lease.identity)
        return r.name if r is not None else object_name(lease.identity)

    # --- the writer's rounds -----------------------------------------------------------------------

    def start(self) -> None:
        self.reporter.start()

    def stop(self) -> None:
        self.reporter.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """BNGNode status when it changed; every bound subscriber at the accounting interval
        (their lease ends moved by renewals), or once the last round is written if that
        took longer; everything again after updates were lost. Both in the reporter's
        background, behind the events."""
        next_accounting = time.monotonic() + self.accounting_interval
        last_round = time.monotonic()
        seen: tuple[object, ...] = ()
        while not stop.is_set():
            try:
                now_seen = (self.health.ready(), frozenset(self.health.attached),
                            self.health.reload_error, self.view.fast_path_on())
                if now_seen != seen:
                    seen, self.health.dirty = now_seen, True
                if self.reporter.need_resync and self.reporter.reachable:
                    self.reporter.need_resync = False
                    self.health.dirty = True
                    for lease in list(self.server.by_address.values()):
                        self.reporter.subscriber(self._name(lease), "allocate", lease,
                                                 background=True)
                now = time.monotonic()
                if now >= next_accounting and self.reporter.background_idle():
                    self.reporter.metrics.kube_accounting_interval.set(now - last_round)
                    last_round, next_accounting = now, now + self.accounting_interval
                    for lease in list(self.server.by_address.values()):
                        self.reporter.subscriber(self._name(lease), "allocate", lease,
                                                 refresh=True, background=True)
                if self.health.dirty:
                    self.health.dirty = False
                    self.reporter.node_status(self.node_status())
            except Exception:  # the reporter must outlive any one bad round
                log.exception("status report failed; retrying")
            await asyncio.sleep(self.status_interval)

    def node_status(self) -> BNGNodeStatus:
        leases = [*self.server.by_address.values(), *self.view.orphans()]
        st = node_status(self.view.config(), leases, self.view.programs(), self.view.maps(),
                         self.health.problem or self.health.store_problem, self.view.degraded(),
                         self.view.generation(),
                         self.health.last_sync, self._conditions, datetime.now(UTC),
                         self.view.nat(), self.view.radius(), self.view.hubble())
        self._conditions = list(st.conditions)
        return st


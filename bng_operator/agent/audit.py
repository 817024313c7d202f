"""The audit log as a session feature: one JSON line per change of who holds an address.

Logged to ``bng.audit`` on a session's bind, on a change of its address or class, and at its
end; never on a plain renewal. Event names: allocate, release, expire, decline.

Written ahead (``write_ahead``): the slow path's requests are heard when decided, before
their commit, and the lease store writes the lines gathered on the loop before it hands a
batch to its writer. A lease on disk therefore has its line, also when the agent is killed
between the commit and its ACK; a kill before the commit can leave a line for a lease that
never reached the disk (its client got no ACK).
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.sessions.session import Change, EndReason, Session

audit = logging.getLogger("bng.audit")
_ENDED: dict[EndReason | None, str] = {EndReason.EXPIRED: "expire", EndReason.DECLINED: "decline"}


class AuditLog:
    name = "audit"
    write_ahead = True  # see sessions/events.py: a lease on disk has its line

    def on_bound(self, s: Session) -> None:
        self._log("allocate", s.lease)

    def on_changed(self, s: Session, what: Change, before: Lease | None) -> None:
        if what in (Change.ADDRESS, Change.CLASS):
            self._log("allocate", s.lease)

    def on_ended(self, s: Session) -> None:
        if s.lease is not None:
            self._log(_ENDED.get(s.end_reason, "release"), s.lease)

    @staticmethod
    def _log(event: str, lease: Lease | None) -> None:
        if lease is None:
            return
        audit.info(event, extra={"audit": {
            "event": event, "identity": lease.identity, "mac": lease.mac,
            "address": str(IPv4Address(lease.address)), "pool": lease.pool,
            "class": lease.subscriber_class, "circuit_id": lease.circuit_id,
            "remote_id": lease.remote_id, "expires": lease.expires}})

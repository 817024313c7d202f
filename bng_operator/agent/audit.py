"""The audit log as a session feature: one JSON line per change of who holds an address.

Logged to ``bng.audit`` on a session's bind, on a change of its address or class, and at its
end; never on a plain renewal. Event names: allocate, release, expire, decline.
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

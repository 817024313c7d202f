"""The optional second phase of a decision: decide -> authorise -> commit -> reply.

The DHCP state machine decides (and holds the address it chose as an offer); when an
authoriser applies to the session, the packet path awaits its verdict without holding up
other clients, then asks the state machine again (accepted: it commits and replies) or ends
the session (rejected: nothing is sent and the held address goes back to the pool). RADIUS
plugs in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bng_operator.agent.sessions.session import Grant, Session


@dataclass(frozen=True, slots=True)
class Verdict:
    accept: bool
    reason: str = ""  # why not, for the log and the metric
    grant: Grant | None = None  # accepted: an address or pool of its own (RADIUS)


class Authoriser(Protocol):
    def applies(self, s: Session) -> bool:
        """Whether ``s`` (classified, not yet bound) must be authorised before it is
        offered or bound. Cheap and synchronous: it runs on every decision."""

    async def authorise(self, s: Session) -> Verdict: ...

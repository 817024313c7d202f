"""Session events, and the features that follow them.

Three events: ``bound`` (a session's lease is committed), ``changed`` (a bound session got
another address or class, or its policy changed) and ``ended``. A feature is any object
with the three handlers; ``SessionEvents.subscribe`` is its one registration line.

Handlers run on the agent's event loop, in the order of subscription, and must not block.
A handler that raises is logged and counted: a feature's failure costs that feature the
event, never the DHCP reply or another feature.

Two more, for the features that define their handler (the fast path): ``offered`` (a new
client's offer was committed as a lease in state offered: BNGNode spec.commitAtOffer) and
``withdrawn`` (such an offer ended unanswered, or was replaced).

A feature with ``write_ahead = True`` (the audit log) hears a request's events before the
commit that makes them durable (``SessionEvents.write_ahead``), not after it: the agent can
die between the commit and the events, and a lease on disk must not lack its audit line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from bng_operator.agent.sessions.session import Change, Session

if TYPE_CHECKING:
    from bng_operator.agent.dhcp.leases import Lease

log = logging.getLogger("bng.sessions")
Kind = Literal["bound", "changed", "ended", "offered", "withdrawn"]
OfferHandler = Callable[["Session", "Lease | None"], None]  # on_offered, on_withdrawn


class Feature(Protocol):
    name: str

    def on_bound(self, s: Session) -> None: ...

    def on_changed(self, s: Session, what: Change, before: Lease | None) -> None:
        """``before``: the lease the session held until now (for ADDRESS and CLASS)."""

    def on_ended(self, s: Session) -> None: ...


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    session: Session
    what: Change | None = None  # changed only
    before: Lease | None = None  # changed only
    offer: Lease | None = None  # offered and withdrawn: the committed offer


class SessionEvents:
    def __init__(self, on_error: Callable[[str], None] = lambda feature: None,
                 on_end: Callable[[str], None] = lambda reason: None) -> None:
        """``on_error(feature)``: a feature failed; ``on_end(reason)``: a session ended."""
        self.features: list[Feature] = []
        self._ahead: list[Feature] = []  # the features with write_ahead set
        self._behind: list[Feature] = []  # and the others
        self._on_error = on_error
        self._on_end = on_end
        # offered, withdrawn: the handlers of the features that define one (found once)
        self._offer_handlers: dict[str, list[tuple[str, OfferHandler]]] = {
            "offered": [], "withdrawn": []}

    def subscribe(self, feature: Feature) -> None:
        self.features.append(feature)
        (self._ahead if getattr(feature, "write_ahead", False) else self._behind).append(feature)
        for kind, handlers in self._offer_handlers.items():
            handler = getattr(feature, f"on_{kind}", None)
            if handler is not None:
                handlers.append((feature.name, handler))

    def write_ahead(self, events: list[Event]) -> None:
        """The write-ahead features hear ``events`` now, before their commit; the events are
        then published with ``written_ahead=True``."""
        if not self._ahead:  # every committing request of the slow path comes here
            return
        for e in events:
            if e.kind not in self._offer_handlers:
                self._deliver(self._ahead, e)

    def publish(self, events: Iterable[Event], written_ahead: bool = False) -> None:
        features = self._behind if written_ahead else self.features
        for e in events:
            offer_handlers = self._offer_handlers.get(e.kind)
            if offer_handlers is not None:
                for name, handler in offer_handlers:
                    try:
                        handler(e.session, e.offer)
                    except Exception:
                        self._failed(name, e)
                continue
            if e.kind == "ended":
                self._on_end(str(e.session.end_reason))
            self._deliver(features, e)

    def _deliver(self, features: list[Feature], e: Event) -> None:
        for f in features:
            try:
                if e.kind == "bound":
                    f.on_bound(e.session)
                elif e.kind == "changed":
                    assert e.what is not None
                    f.on_changed(e.session, e.what, e.before)
                else:
                    f.on_ended(e.session)
            except Exception:
                self._failed(f.name, e)

    def _failed(self, feature: str, e: Event) -> None:
        self._on_error(feature)
        log.exception("feature %s failed on %s of session %s", feature, e.kind, e.session.key)

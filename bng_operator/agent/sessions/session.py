"""A subscriber session: the unit the agent manages, and its states.

A session starts when the DHCP state machine first decides for a client identity and ends
when the client's address stops being its own. In between it is offered an address, may be
authorised (RADIUS), and is bound. Each feature (the fast path, Kubernetes reporting, the
audit log; later QoS, NAT, RADIUS and flows) follows sessions through the events of
``events.py`` and keeps what it attached to one in ``Session.attached``.

    start ──► offered ──────────► bound ──► ended
      │        │    ▲               ▲
      │        ▼    │               │
      └────► authorizing ───────────┘

Also: start ──► bound (a lease restored from the store, or a client that asks for its address
without a DISCOVER); offered ──► ended (the offer ran out); authorizing ──► ended (rejected).
docs/architecture.md draws the same machine. A transition not in ``TRANSITIONS`` raises
``IllegalTransition``: it is a bug, never ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bng_operator.agent.dhcp.leases import Lease


class State(enum.StrEnum):
    OFFERED = "offered"  # an address is held for the client (DHCPOFFER sent)
    AUTHORIZING = "authorizing"  # a decision waits for the authoriser (RADIUS)
    BOUND = "bound"  # the lease is committed; the client holds the address
    ENDED = "ended"  # final; ``Session.end_reason`` says why


class EndReason(enum.StrEnum):
    RELEASED = "released"  # DHCPRELEASE
    EXPIRED = "expired"  # the lease (or an unanswered offer) ran out
    DECLINED = "declined"  # DHCPDECLINE: the address is in use on the link
    MOVED = "moved"  # the identity's lease went elsewhere (another pool, node or identity)
    DISCONNECTED = "disconnected"  # ended on demand (RADIUS Disconnect-Request, an operator)
    NODE_DRAINED = "node-drained"  # the node stops serving it
    REJECTED = "rejected"  # the authoriser said no: nothing was sent, nothing is held


class Change(enum.StrEnum):
    """What a ``changed`` event reports of a bound session."""

    ADDRESS = "address"  # re-bound on another address (the old lease is in the event)
    CLASS = "class"  # renewed under another SubscriberClass
    POLICY = "policy"  # its class's or pool's definition changed (a reload)
    # ACKed by the slow path after a POLICY change, in the same class on the same address:
    # classified anew, its lease is current again (the fast path may answer it again).
    RECLASSIFIED = "reclassified"


# None: the session does not exist yet.
TRANSITIONS: dict[State | None, frozenset[State]] = {
    None: frozenset({State.OFFERED, State.AUTHORIZING, State.BOUND}),
    State.OFFERED: frozenset({State.AUTHORIZING, State.BOUND, State.ENDED}),
    State.AUTHORIZING: frozenset({State.OFFERED, State.BOUND, State.ENDED}),
    State.BOUND: frozenset({State.ENDED}),
    State.ENDED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A session was asked to move where its state machine does not go."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the subscriber is, as its requests say: what reservations, classes and the
    fast path key on."""

    mac: str
    client_id: str | None = None  # hex
    vlans: tuple[int, ...] = ()  # outer first
    circuit_id: str | None = None  # option 82 sub-option 1
    remote_id: str | None = None  # option 82 sub-option 2
    relay: int = 0  # giaddr, 0 when not relayed


@dataclass(frozen=True, slots=True)
class Grant:
    """What the authoriser granted a session beyond its class's defaults (RADIUS
    Framed-IP-Address, Framed-Pool): the DHCP server decides with it until the session
    ends."""

    address: int = 0  # a static address (wins over the pool); 0: one from the pool
    pool: str = ""  # the IPPool it comes from; "": the class's


@dataclass(eq=False, slots=True)
class Session:
    key: str  # the identity key its class chose: "mac:...", "circuit:...", ...
    identity: Identity
    state: State | None = None
    address: int = 0  # offered or bound
    pool: str = ""
    subscriber_class: str = ""
    lease: Lease | None = None  # while bound: the committed lease (times, terms)
    authorised: bool = False  # the authoriser accepted this session (kept until it ends)
    grant: Grant | None = None  # what the authoriser granted it (None: the class's defaults)
    end_reason: EndReason | None = None
    reclassify: bool = False  # a POLICY change awaits the slow path's next ACK
    # What each feature attached to it, by feature name (a fast-path key, a QoS class,
    # a NAT block, a RADIUS session id and its counters).
    attached: dict[str, object] = field(default_factory=dict)

    def move(self, to: State, reason: EndReason | None = None) -> None:
        """Go to state ``to``; ``reason`` is required for ENDED and refused otherwise."""
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"session {self.key}: {self.state or 'start'} -> {to} "
                                    "is not a transition of the session state machine")
        if (to == State.ENDED) != (reason is not None):
            raise IllegalTransition(f"session {self.key}: an end needs a reason, and only an "
                                    f"end has one ({to}, {reason})")
        self.state = to
        self.end_reason = reason

"""The CoA/Disconnect listener (RFC 5176): one UDP socket per node (``--radius-coa-port``,
3799 by default). A datagram from an address that is no configured client, or that fails
its client's secret, is dropped without a reply and counted; a retransmission gets the
first answer again; the rest goes to ``handle`` (the RADIUS feature), whose answer is the
ACK, or a NAK with its Error-Cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

from pyrad.dictionary import Dictionary
from pyrad.packet import CoANAK, DisconnectNAK, DisconnectRequest

from bng_operator.agent.radius.coa import CAUSE_NAMES, DISCONNECT, Drop, Duplicates, Request, check
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent.radius")
DROP_LOG_EVERY = 10.0  # seconds: dropped requests are logged at most this often (all counted)


class CoaListener(asyncio.DatagramProtocol):
    def __init__(self, metrics: AgentMetrics, dictionary: Dictionary,
                 clients: Callable[[], dict[str, bytes]],
                 handle: Callable[[Request], int | None],
                 wall: Callable[[], float] = time.time) -> None:
        self.metrics, self.dictionary = metrics, dictionary
        self.clients, self.handle, self.wall = clients, handle, wall
        self.transport: asyncio.DatagramTransport | None = None
        self.duplicates = Duplicates()
        self._logged = -1e18

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _drop(self, kind: str, reason: str, client: str, why: str) -> None:
        self.metrics.radius_dynauth.labels(kind, reason).inc()
        now = time.monotonic()
        if now - self._logged >= DROP_LOG_EVERY:
            self._logged = now
            log.warning("RADIUS CoA/Disconnect from %s dropped, no reply: %s (logged at most "
                        "every %g s; bng_radius_dynauth_requests_total counts each)", client,
                        why, DROP_LOG_EVERY)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        kind = "disconnect" if data[:1] == bytes([DisconnectRequest]) else "coa"
        secret = self.clients().get(addr[0])
        if secret is None:
            self._drop(kind, "unknown_client", addr[0], "not a configured client")
            return
        now = self.wall()
        key = (f"{addr[0]}:{addr[1]}", data[1] if len(data) > 1 else 0, data[4:20])
        seen = self.duplicates.get(key, now)
        if seen is not None:  # a retransmission: the first answer again, never acted on twice
            self.metrics.radius_dynauth.labels(kind, "duplicate").inc()
            if seen[1] is not None and self.transport is not None:
                self.transport.sendto(seen[1], addr)
            return
        r = check(data, secret, self.dictionary, now)
        if isinstance(r, Drop):
            self._drop(kind, r.reason, addr[0], r.message)
            return
        self.duplicates.put(key, now, None)
        try:
            cause = self.handle(r)
        except Exception:  # never kills the listener; the client hears a NAK
            log.exception("RADIUS %s from %s failed", r.kind, addr[0])
            cause = 506  # Resources-Unavailable
        reply = r.packet.CreateReply()
        if cause is not None:
            reply.code = DisconnectNAK if r.kind == DISCONNECT else CoANAK
            reply["Error-Cause"] = cause
        if r.packet.message_authenticator:
            reply.add_message_authenticator()
        raw = reply.ReplyPacket()
        self.duplicates.put(key, now, raw)
        self.metrics.radius_dynauth.labels(
            r.kind, "ack" if cause is None else CAUSE_NAMES.get(cause, f"nak_{cause}")).inc()
        if self.transport is not None:
            self.transport.sendto(raw, addr)

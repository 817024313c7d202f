"""The lease store: SQLite in WAL mode on local disk, written with group commit by a writer
process of its own (``lease_writer``).

A lease is durable (fsync'd) before its ACK leaves: ``commit()`` returns a future that the
agent waits on before sending. Writes queue up while a commit is in flight and all go in
the next one, so a burst of N requests costs one fsync, not N.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bng_operator import logs
from bng_operator.agent.child import Child
from bng_operator.agent.dhcp.lease_writer import (
    FRAME,
    LEASE_SELECT,
    REPLY,
    Write,
    open_db,
)

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 << 20  # bytes the socket to the writer holds each way
STOP_WAIT = 5.0  # seconds a closing store waits for its writer to finish


class LeaseStoreError(Exception):
    """A commit that did not reach the disk: the writer failed it, or died."""


@dataclass(slots=True)
class Lease:
    address: int
    identity: str  # e.g. "mac:02:00:00:00:00:01", "circuit:olt1/1/1"
    mac: str
    client_id: str | None
    circuit_id: str | None
    remote_id: str | None
    pool: str
    subscriber_class: str
    expires: float  # unix time
    hostname: str | None
    bound_at: float
    state: str = "bound"
    # The request it was granted on and the answer's terms: what the fast path needs.
    vlan: int = 0  # outer VLAN id
    giaddr: int = 0
    server_id: int = 0
    relay_agent: bytes | None = None  # option 82 value, verbatim
    lease_seconds: int = 0
    tags: bytes = b""  # its VLAN tags (TPID, TCI), outermost first: the access data path's
    interface: str = ""  # the access interface it came in on ("": before this was kept)


@dataclass(slots=True, frozen=True)
class Decline:
    address: int
    pool: str
    until: float


def _row(lease: Lease) -> tuple[object, ...]:
    # dataclasses.astuple deep-copies every field; this runs once per lease write.
    return (lease.address, lease.identity, lease.mac, lease.client_id, lease.circuit_id,
            lease.remote_id, lease.pool, lease.subscriber_class, lease.expires, lease.hostname,
            lease.bound_at, lease.state, lease.vlan, lease.giaddr, lease.server_id,
            lease.relay_agent, lease.lease_seconds, lease.tags, lease.interface)


class LeaseStore:
    """Durable leases. Reads at start; afterwards only writes, batched, by the writer."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = open_db(path)  # for load(); the writer process has its own connection
        self._pending: list[Write] = []  # queued (the loop's); no commit asked yet
        self._next: asyncio.Future[None] | None = None  # for the writes sealed, not yet sent
        self._sealed: list[Write] = []
        self._flush_due = False
        self._seq = 0
        self._flying: dict[int, _Batch] = {}  # sent, not answered yet, by number
        self._writer: Child | None = None
        # Told each answered batch's time at the writer (seconds): the agent's metric.
        self.timed: Callable[[float], None] = lambda seconds: None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one its commits run on
        self._closed = False
        # commit futures -> what runs the moment the store settles them (``when_settled``)
        self._at_once: dict[asyncio.Future[None],
                            list[Callable[[asyncio.Future[None]], None]]] = {}

    def load(self) -> tuple[list[Lease], list[Decline]]:
        leases = [Lease(*row) for row in self._db.execute(LEASE_SELECT)]
        declines = [Decline(*row) for row in self._db.execute(
            "SELECT address, pool, until FROM declined")]
        return leases, declines

    # --- writes --------------------------------------------------------------------------------
    # The queue (_pending) is the event loop's alone. Only commit() seals writes for the
    # writer, together with the future it returns, and the seal goes out once a turn of the
    # loop: every commit asked for in a step of requests shares one frame and one future.

    def put(self, lease: Lease) -> None:
        self._pending.append(("put", _row(lease)))

    def delete(self, address: int) -> None:
        self._pending.append(("delete", address))

    def put_decline(self, d: Decline) -> None:
        self._pending.append(("decline", (d.address, d.pool, d.until)))

    def delete_decline(self, address: int) -> None:
        self._pending.append(("undecline", address))

    @property
    def pending(self) -> int:
        """Writes queued for the next commit."""
        return len(self._pending)

    def commit(self) -> asyncio.Future[None]:
        """A future that completes once everything queued so far is on disk. Callers until
        the next batch goes to the writer share one future, so a burst costs one callback,
        not N."""
        loop = asyncio.get_running_loop()
        if self._closed:
            fut: asyncio.Future[None] = loop.create_future()
            fut.set_exception(LeaseStoreError("the lease store is closed"))
            return fut
        if self._loop is not loop:  # tests run one loop after another; the agent, one
            if self._loop is not None:
                self._abandon("the event loop the lease store ran on ended")
            self._loop = loop
        self._sealed += self._pending
        self._pending = []
        if self._next is None:
            self._next = loop.create_future()
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)
        return self._next

    def when_settled(self, fut: asyncio.Future[None],
                     fn: Callable[[asyncio.Future[None]], None]) -> None:
        """Run ``fn(fut)`` the moment the store settles ``fut`` (a future ``commit`` gave),
        when the writer's answer is read: not in the event loop's next turn, after the rest
        of this one (a step of DHCP requests, milliseconds under load), as the future's own
        callbacks run. For the replies that wait on the commit."""
        if fut.done():
            fut.add_done_callback(fn)
            return
        self._at_once.setdefault(fut, []).append(fn)

    def _settle(self, fut: asyncio.Future[None], err: BaseException | None) -> None:
        _resolve(fut, err)
        for fn in self._at_once.pop(fut, ()):
            try:
                fn(fut)
            except Exception:  # one waiter's failure must not keep the others waiting
                log.exception("internal error after a lease store commit")

    def stalled_for(self) -> float:
        """Seconds the oldest batch at the writer has taken so far; 0 when none is there. A
        disk that hangs makes this grow: the commits (and their ACKs) wait on it."""
        if not self._flying:
            return 0.0
        return time.monotonic() - next(iter(self._flying.values())).sent

    def _flush(self) -> None:
        """Send the sealed writes as one batch (frame) to the writer."""
        self._flush_due = False
        fut, batch = self._next, self._sealed
        self._next, self._sealed = None, []
        if fut is None or self._closed:
            return
        try:
            w = self._writer_running()
            body = marshal.dumps(batch)
        except Exception as e:  # no writer, or a value marshal cannot carry: this commit fails
            self._settle(fut, LeaseStoreError(f"the lease writer cannot take the batch: {e}"))
            return
        # The audit lines of these rows, gathered this turn, are on record before the rows
        # can reach the disk: the agent may die before it hears the commit, the writer not.
        logs.flush()
        self._seq += 1
        self._flying[self._seq] = _Batch(fut, time.monotonic())
        w.send(FRAME.pack(len(body), self._seq) + body)

    def _writer_running(self) -> Child:
        loop = asyncio.get_running_loop()
        if self._writer is None:
            w = Child.start("lease writer", "bng_operator.agent.dhcp.lease_writer",
                            [str(self.path)], SOCKET_BUFFER)
            w.attach(loop, lambda: self._answers(w), lambda why: self._lost(w, why))
            self._writer = w
        return self._writer

    def _answers(self, w: Child) -> None:
        """Take the writer's answers: each completes the commits of every batch up to the
        one it names."""
        for (last, _), why in w.frames(REPLY, 1):
            err = LeaseStoreError(why.decode(errors="replace")) if why else None
            now = time.monotonic()
            while self._flying and next(iter(self._flying)) <= last:
                b = self._flying.pop(next(iter(self._flying)))
                self._settle(b.fut, err)
                self.timed(now - b.sent)

    def _lost(self, w: Child, why: str) -> None:
        """The writer is gone: the batches it had fail (their ACKs are never sent), and the
        next commit starts another."""
        code = self._stop(w, 0.0)
        log.error("lease writer (pid %d): %s (exit code %s); %d commits fail", w.proc.pid,
                  why, code, len(self._flying))
        self._fail_flying(LeaseStoreError(f"the lease writer failed: {why}"))

    def close(self) -> None:
        """Stop the writer once it has written what it was sent, and close the store. The
        commits not answered by then fail (their leases may be on disk; no ACK says so)."""
        self._closed = True
        self._abandon("the lease store is closed")
        self._db.close()

    def _abandon(self, why: str) -> None:
        """Stop the writer (once it has written what it was sent) and fail every commit it
        has not answered, and the one being gathered: nothing will answer them now."""
        if self._writer is not None:
            self._stop(self._writer, STOP_WAIT)
        gathered, self._next, self._sealed, self._flush_due = self._next, None, [], False
        err = LeaseStoreError(why)
        self._fail_flying(err)
        if gathered is not None:
            with contextlib.suppress(RuntimeError):  # of a loop that is closed
                self._settle(gathered, err)

    def _stop(self, w: Child, wait: float) -> int | None:
        """Stop writer ``w`` (the frames not sent to it go); its exit code."""
        if self._writer is w:
            self._writer = None
        return w.stop(wait)

    def _fail_flying(self, err: LeaseStoreError) -> None:
        flying, self._flying = self._flying, {}
        for b in flying.values():
            with contextlib.suppress(RuntimeError):  # of a loop that is closed
                self._settle(b.fut, err)


@dataclass(slots=True)
class _Batch:
    fut: asyncio.Future[None]
    sent: float  # monotonic


def _resolve(fut: asyncio.Future[None], err: BaseException | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)

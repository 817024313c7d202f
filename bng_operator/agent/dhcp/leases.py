"""The lease store: SQLite in WAL mode on local disk, written with group commit.

A lease is durable (fsync'd) before its ACK leaves: ``commit()`` returns a future that the
agent waits on before sending. Writes queue up while a commit is in flight and all go in
the next one, so a burst of N requests costs one fsync, not N.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from bng_operator.agent.sqlrows import Statement, many_rows, rows_per_statement

# Columns added after the first release: in the schema, and added to older stores at open.
# They hold the request the lease was granted on, which the fast path must see again.
_ADDED_COLUMNS = {"vlan": "INTEGER NOT NULL DEFAULT 0", "giaddr": "INTEGER NOT NULL DEFAULT 0",
                  "server_id": "INTEGER NOT NULL DEFAULT 0", "relay_agent": "BLOB",
                  "lease_seconds": "INTEGER NOT NULL DEFAULT 0",
                  "tags": "BLOB NOT NULL DEFAULT X''", "interface": "TEXT NOT NULL DEFAULT ''"}

# Pauses between the tries of one batch write (a busy or briefly full disk), then it fails.
WRITE_RETRIES = (0.05, 0.2, 0.0)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS leases (
    address    INTEGER PRIMARY KEY,
    identity   TEXT NOT NULL UNIQUE,
    mac        TEXT NOT NULL,
    client_id  TEXT,
    circuit_id TEXT,
    remote_id  TEXT,
    pool       TEXT NOT NULL,
    class      TEXT NOT NULL,
    expires    REAL NOT NULL,
    hostname   TEXT,
    bound_at   REAL NOT NULL,
    state      TEXT NOT NULL,     -- bound | released | expired (kept: the address stays
                                  -- this client's "previous" one until someone else takes it)
    {", ".join(f"{name} {decl}" for name, decl in _ADDED_COLUMNS.items())}
);
CREATE TABLE IF NOT EXISTS declined (
    address INTEGER PRIMARY KEY,
    pool    TEXT NOT NULL,
    until   REAL NOT NULL
);
"""


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


_LEASE_COLS = ", ".join(f.name if f.name != "subscriber_class" else "class" for f in fields(Lease))
_LEASE_ROW = f"({', '.join('?' * len(fields(Lease)))})"
# One statement's rows, in order: a later row replaces an earlier one of its address or
# identity, as a later put does.
_UPSERT = f"INSERT OR REPLACE INTO leases ({_LEASE_COLS}) VALUES {{}}"


class LeaseStore:
    """Durable leases. Reads at start; afterwards only writes, batched."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection, used only by the writer thread after load().
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        self._db.executescript(SCHEMA)
        self._migrate()
        self._pending: list[tuple[str, object]] = []  # queued (the loop's); no commit asked yet
        self._sealed: list[tuple[str, object]] = []  # commit asked: the next batch, with _next
        self._next: asyncio.Future[None] | None = None  # completes with the next batch
        self._lock = threading.Lock()
        self._rows = rows_per_statement(self._db, len(fields(Lease)))
        self._writing = False
        self._writing_since: float | None = None  # when the batch being written started

    def _migrate(self) -> None:
        """Add the columns a store written by an older agent lacks (SQLite has no
        ADD COLUMN IF NOT EXISTS)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(leases)")}
        for name, decl in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE leases ADD COLUMN {name} {decl}")

    def load(self) -> tuple[list[Lease], list[Decline]]:
        leases = [Lease(*row) for row in self._db.execute(f"SELECT {_LEASE_COLS} FROM leases")]
        declines = [Decline(*row) for row in self._db.execute(
            "SELECT address, pool, until FROM declined")]
        return leases, declines

    # --- writes --------------------------------------------------------------------------------
    # The writer thread takes its batch under a lock, not through a turn of the event loop:
    # under load a turn is a whole step of requests away (~10 ms), and every such wait is a
    # wait for the GIL too. Only commit() hands writes to the writer, together with the
    # future it returns: a write the writer took before its commit was asked for could fail
    # with nobody told, and the commit's future then complete for an empty batch (an ACK for
    # a lease not on disk).
    # The queue (_pending) is the event loop's alone, so its writes take no lock; the lock
    # guards what the writer shares: the sealed batch, its future, and whether it runs.

    def put(self, lease: Lease) -> None:
        self._pending.append(("put", lease))

    def delete(self, address: int) -> None:
        self._pending.append(("delete", address))

    def put_decline(self, d: Decline) -> None:
        self._pending.append(("decline", d))

    def delete_decline(self, address: int) -> None:
        self._pending.append(("undecline", address))

    @property
    def pending(self) -> int:
        """Writes queued for the next commit."""
        return len(self._pending)

    def commit(self) -> asyncio.Future[None]:
        """A future that completes once everything queued so far is on disk. Callers until
        the next batch starts share one future, so a burst costs one callback, not N."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._sealed += self._pending
            self._pending = []
            if self._next is None:
                self._next = loop.create_future()
            fut = self._next
            start, self._writing = not self._writing, True
        if start:
            loop.run_in_executor(None, self._write_loop, loop)
        return fut

    def _write_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Writer thread: drain the queue in batches until nothing is left."""
        while True:
            with self._lock:
                batch, fut = self._sealed, self._next
                self._sealed, self._next = [], None
                if not batch and fut is None:
                    self._writing = False  # the next commit() starts a writer again
                    return
            self._writing_since = time.monotonic()
            err = self._write_retried(batch)
            self._writing_since = None
            if fut is not None:
                loop.call_soon_threadsafe(_resolve, fut, err)

    def stalled_for(self) -> float:
        """Seconds the batch being written has taken so far; 0 when none is being written.
        A disk that hangs makes this grow: the commits (and their ACKs) wait on it."""
        since = self._writing_since
        return 0.0 if since is None else time.monotonic() - since

    def _write_retried(self, batch: list[tuple[str, object]]) -> Exception | None:
        """Write one batch, trying again a bounded number of times. Any failure, not only
        SQLite's, fails the batch's commit (its replies are not sent) and never the writer:
        a writer that died would leave every later commit waiting for ever."""
        for attempt, pause in enumerate(WRITE_RETRIES):
            try:
                self._write(batch)
                return None
            except Exception as e:
                if attempt == len(WRITE_RETRIES) - 1:
                    return e
                time.sleep(pause)
        return None

    def _write(self, batch: list[tuple[str, object]]) -> None:
        """One transaction, in few statements (agent/sqlrows.py): a batch's leases are one
        INSERT of many rows, not one per lease. A batch that is one statement, the common
        case (leases only), is its own transaction."""
        if not batch:  # a commit asked for with nothing queued since the one before
            return
        statements: list[Statement] = []
        for op, items in _runs(batch):
            if op == "put":
                many_rows(statements, _UPSERT, _LEASE_ROW,
                          [_row(lease) for lease in items], self._rows)  # type: ignore[arg-type]
            elif op == "delete":
                many_rows(statements, "DELETE FROM leases WHERE address IN ({})", "?",
                          [(a,) for a in items], self._rows)
            elif op == "decline":
                for d in items:
                    assert isinstance(d, Decline)
                    statements.append(("INSERT OR REPLACE INTO declined VALUES (?, ?, ?)",
                                       (d.address, d.pool, d.until)))
                    statements.append(("DELETE FROM leases WHERE address = ?", (d.address,)))
            elif op == "undecline":
                many_rows(statements, "DELETE FROM declined WHERE address IN ({})", "?",
                          [(a,) for a in items], self._rows)
        db = self._db
        if len(statements) == 1:  # its own transaction
            db.execute(*statements[0])
            return
        db.execute("BEGIN")
        try:
            for sql, args in statements:
                db.execute(sql, args)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()


def _runs(batch: list[tuple[str, object]]) -> list[tuple[str, list[object]]]:
    """The batch's writes as runs of one kind, in order."""
    runs: list[tuple[str, list[object]]] = []
    for op, item in batch:
        if runs and runs[-1][0] == op:
            runs[-1][1].append(item)
        else:
            runs.append((op, [item]))
    return runs


def _resolve(fut: asyncio.Future[None], err: BaseException | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)

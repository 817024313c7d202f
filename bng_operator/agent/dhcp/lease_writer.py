"""The lease store's writer: a process of its own that writes the agent's batches of leases to
SQLite and fsyncs them, and says when each is on disk.

Why a process and not a thread: a writer thread shares the GIL with the event loop. Each
SQLite step gives it up, and the writer then waits for the busy loop to let go of it (at
least the switch interval) before it can start the next step or report the commit: on the
project's VM a batch of ~9 leases took a median of 2 ms that way, against 0.15 ms for the
fsync itself, and every REQUEST's ACK waits for it. The writer's own Python (rows,
statements, SQLite's bindings) ran under the same GIL, on the loop's time. Here the loop
only hands over the batch's rows (``marshal``, one send a turn of the loop), and its only
wait is for the answer.

The protocol, on a stream socket pair: the agent sends frames (``FRAME``: the length of a
``marshal``-ed list of writes, and the batch's number, increasing), and the writer answers
each run of batches it wrote in one transaction (``REPLY``: the last batch's number, and an
error message, empty when they are on disk). Batches that arrived while it was writing go
in its next transaction: group commit, with one fsync for all of them.

The writer stops when the agent closes its end, and dies with the agent
(``PR_SET_PDEATHSIG``): a batch it was writing then may still reach the disk, which is safe
(its ACK was never sent).
"""

from __future__ import annotations

import marshal
import socket
import sqlite3
import struct
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from bng_operator.agent import child
from bng_operator.agent.sqlrows import Statement, many_rows, rows_per_statement

FRAME = struct.Struct("<IQ")  # a batch: its length in bytes, its number
REPLY = struct.Struct("<QI")  # the last batch of a transaction, the length of its error
ERROR_MAX = 2000  # bytes of an error message sent back
# Pauses between the tries of one transaction (a busy or briefly full disk), then it fails.
WRITE_RETRIES = (0.05, 0.2, 0.0)

# A lease's columns, in the order of its row (leases.Lease's fields; a test checks).
LEASE_COLUMNS = ("address", "identity", "mac", "client_id", "circuit_id", "remote_id", "pool",
                 "class", "expires", "hostname", "bound_at", "state", "vlan", "giaddr",
                 "server_id", "relay_agent", "lease_seconds", "tags", "interface")
# Columns added after the first release: in the schema, and added to older stores at open.
# They hold the request the lease was granted on, which the fast path must see again.
_ADDED_COLUMNS = {"vlan": "INTEGER NOT NULL DEFAULT 0", "giaddr": "INTEGER NOT NULL DEFAULT 0",
                  "server_id": "INTEGER NOT NULL DEFAULT 0", "relay_agent": "BLOB",
                  "lease_seconds": "INTEGER NOT NULL DEFAULT 0",
                  "tags": "BLOB NOT NULL DEFAULT X''", "interface": "TEXT NOT NULL DEFAULT ''"}

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
    state      TEXT NOT NULL,     -- bound | offered | released | expired (kept: the address stays
                                  -- this client's "previous" one until someone else takes it)
    {", ".join(f"{name} {decl}" for name, decl in _ADDED_COLUMNS.items())}
);
CREATE TABLE IF NOT EXISTS declined (
    address INTEGER PRIMARY KEY,
    pool    TEXT NOT NULL,
    until   REAL NOT NULL
);
"""
LEASE_SELECT = f"SELECT {', '.join(LEASE_COLUMNS)} FROM leases"
_LEASE_ROW = f"({', '.join('?' * len(LEASE_COLUMNS))})"
# One statement's rows, in order: a later row replaces an earlier one of its address or
# identity, as a later put does.
_UPSERT = f"INSERT OR REPLACE INTO leases ({', '.join(LEASE_COLUMNS)}) VALUES {{}}"

Write = tuple[str, object]  # ("put", row), ("delete", address), ("decline", (address, pool,
# until)), ("undecline", address)


def open_db(path: Path) -> sqlite3.Connection:
    """The store at ``path``, made or brought up to date: WAL, every commit fsync'd."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
    db.executescript(SCHEMA)
    # the columns a store written by an older agent lacks (no ADD COLUMN IF NOT EXISTS)
    have = {row[1] for row in db.execute("PRAGMA table_info(leases)")}
    for name, decl in _ADDED_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE leases ADD COLUMN {name} {decl}")
    return db


class LeaseWriter:
    """Writes batches of writes to one store, each run of them one transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.rows = rows_per_statement(db, len(LEASE_COLUMNS))

    def write_retried(self, batch: list[Write]) -> Exception | None:
        """Write ``batch``, trying again a bounded number of times; the failure, if every
        try failed. Any failure, not only SQLite's, fails the batch and never the writer."""
        for attempt, pause in enumerate(WRITE_RETRIES):
            try:
                self.write(batch)
                return None
            except Exception as e:
                if attempt == len(WRITE_RETRIES) - 1:
                    return e
                time.sleep(pause)
        return None

    def write(self, batch: list[Write]) -> None:
        """One transaction, in few statements: a batch's leases are one INSERT of many rows,
        not one per lease. A batch that is one statement, the common case (leases only), is
        its own transaction."""
        if not batch:  # a commit asked for with nothing queued since the one before
            return
        statements: list[Statement] = []
        for op, items in _runs(batch):
            if op == "put":
                many_rows(statements, _UPSERT, _LEASE_ROW, items, self.rows)  # type: ignore[arg-type]
            elif op == "delete":
                many_rows(statements, "DELETE FROM leases WHERE address IN ({})", "?",
                          [(a,) for a in items], self.rows)
            elif op == "decline":
                for d in items:
                    assert isinstance(d, tuple)  # (address, pool, until)
                    statements.append(("INSERT OR REPLACE INTO declined VALUES (?, ?, ?)", d))
                    statements.append(("DELETE FROM leases WHERE address = ?", (d[0],)))
            elif op == "undecline":
                many_rows(statements, "DELETE FROM declined WHERE address IN ({})", "?",
                          [(a,) for a in items], self.rows)
            else:
                raise ValueError(f"unknown write {op!r}")
        if len(statements) == 1:  # its own transaction
            self.db.execute(*statements[0])
            return
        self.db.execute("BEGIN")
        try:
            for sql, args in statements:
                self.db.execute(sql, args)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise


def _runs(batch: Iterable[Write]) -> list[tuple[str, list[object]]]:
    """The batch's writes as runs of one kind, in order."""
    runs: list[tuple[str, list[object]]] = []
    for op, item in batch:
        if runs and runs[-1][0] == op:
            runs[-1][1].append(item)
        else:
            runs.append((op, [item]))
    return runs


# --- the process --------------------------------------------------------------------------


def _read_exact(sock: socket.socket, n: int, buf: bytearray) -> bool:
    """Read ``n`` bytes into ``buf`` (cleared first); False at the end of the stream."""
    buf.clear()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return False
        buf += chunk
    return True


def _waiting(sock: socket.socket) -> bool:
    """Whether a frame's first byte is already there (batches that came meanwhile)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def serve(sock: socket.socket, writer: LeaseWriter) -> None:
    """Write what the agent sends until it closes its end: each time, every batch that has
    arrived, in one transaction, then one answer for them. Whole batches read when the
    stream ends are written too (a batch cut short is not: nobody waits for its answer)."""
    head, body = bytearray(), bytearray()
    while True:
        batch: list[Write] = []
        last, ended = -1, False
        while last < 0 or _waiting(sock):
            if not _read_exact(sock, FRAME.size, head):
                ended = True
                break
            n, seq = FRAME.unpack(head)
            if not _read_exact(sock, n, body):
                ended = True
                break
            batch += marshal.loads(body)
            last = seq
        if last >= 0:
            err = writer.write_retried(batch)
            msg = b"" if err is None else f"{type(err).__name__}: {err}".encode()[:ERROR_MAX]
            try:
                sock.sendall(REPLY.pack(last, len(msg)) + msg)
            except OSError:
                if not ended:
                    raise
        if ended:
            return


def main(argv: list[str]) -> int:
    """``lease_writer FD AGENT_PID PATH``: serve the agent on the socket ``FD``, writing
    ``PATH``; die with the agent."""
    fd, agent, path = int(argv[0]), int(argv[1]), Path(argv[2])
    if not child.die_with(agent):
        return 0
    sock = socket.socket(fileno=fd)
    try:
        serve(sock, LeaseWriter(open_db(path)))
    except (ConnectionError, OSError) as e:  # the agent is gone
        print(f"lease writer: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

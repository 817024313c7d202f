"""The block log (RFC 6888 REQ-12) and the bindings it explains, in one SQLite file beside
the lease store.

One record per block allocation and one per release: who (the subscriber's identity, MAC,
circuit-id, remote-id, inside address), which public address and ports, when and why. Never
a record per flow, never a destination. In deterministic mode a record per change of the
formula's configuration instead. Every record is fsync'd (WAL, synchronous=FULL) in the same
transaction as the binding it explains, before the kernel is told of the binding, so no port
is ever used without its record on disk; each is also emitted as one JSON log line.

``lookup`` answers the abuse desk's question from this file alone.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

from bng_operator.agent.nat.blocks import Grant, Layout

log = logging.getLogger("bng.nat.blocks")

SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (   -- the blocks each NATed subscriber holds now
    inside     INTEGER PRIMARY KEY,
    pool       TEXT NOT NULL,
    public     INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    blocks     TEXT NOT NULL,           -- first port of each block, comma-separated
    identity   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pool_index (  -- a NATPool's slot in the kernel's pool table
    pool  TEXT PRIMARY KEY,
    slot  INTEGER NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS block_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    time       REAL NOT NULL,           -- unix seconds
    event      TEXT NOT NULL,           -- allocated | released
    pool       TEXT NOT NULL,
    public     INTEGER NOT NULL,
    first_port INTEGER NOT NULL,
    last_port  INTEGER NOT NULL,
    inside     INTEGER NOT NULL,
    subscriber TEXT NOT NULL,           -- the lease's identity: mac:.., circuit:.., cid:..
    mac        TEXT,
    circuit_id TEXT,
    remote_id  TEXT,
    reason     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS block_log_port ON block_log (public, first_port, time);
CREATE TABLE IF NOT EXISTS formula_log (  -- deterministic mode: the formula's configuration
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    time   REAL NOT NULL,
    pool   TEXT NOT NULL,
    config TEXT NOT NULL                  -- JSON (Layout.describe), or "" once it ends
);
"""


@dataclass(frozen=True)
class Holder:
    """Who a block record is about."""

    inside: IPv4Address
    identity: str
    mac: str | None = None
    circuit_id: str | None = None
    remote_id: str | None = None


@dataclass(frozen=True)
class Record:
    """One block allocation or release."""

    time: float
    event: Literal["allocated", "released"]
    pool: str
    public: IPv4Address
    first_port: int
    last_port: int
    holder: Holder
    reason: str

    def json(self) -> dict[str, Any]:
        h = self.holder
        return {"event": f"nat-block-{self.event}", "time": _iso(self.time), "pool": self.pool,
                "public": str(self.public), "ports": f"{self.first_port}-{self.last_port}",
                "inside": str(h.inside), "subscriber": h.identity, "mac": h.mac,
                "circuitId": h.circuit_id, "remoteId": h.remote_id, "reason": self.reason}


@dataclass(frozen=True)
class Bound:
    """A persisted binding: a subscriber's blocks now."""

    pool: str
    grant: Grant
    identity: str


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def records(event: Literal["allocated", "released"], pool: str, g: Grant, holder: Holder,
            reason: str, now: float) -> list[Record]:
    """One record per block of ``g``."""
    return [Record(now, event, pool, g.public, first, last, holder, reason)
            for first, last in g.ranges]


class BlockLog:
    """The NAT file: bindings, pool slots, the block log and the formula log. Used from one
    thread at a time (the NAT feature's worker)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- reads at start ------------------------------------------------------------------

    def bindings(self) -> dict[IPv4Address, Bound]:
        out = {}
        for inside, pool, public, size, blocks, identity in self._db.execute(
                "SELECT inside, pool, public, block_size, blocks, identity FROM bindings"):
            firsts = tuple(int(f) for f in blocks.split(",") if f)
            out[IPv4Address(inside)] = Bound(pool, Grant(IPv4Address(public), firsts, size),
                                             identity)
        return out

    def pool_slots(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT pool, slot FROM pool_index"))

    def formulas(self) -> dict[str, str]:
        """The last formula configuration logged for each pool ("" once it ended)."""
        out: dict[str, str] = {}
        for pool, config in self._db.execute("SELECT pool, config FROM formula_log ORDER BY id"):
            out[pool] = config
        return out

    # --- writes: each call one durable transaction ----------------------------------------

    def write(self, put: dict[IPv4Address, Bound], gone: list[IPv4Address],
              recs: list[Record], slots: dict[str, int] | None = None,
              formulas: dict[str, str] | None = None) -> None:
        """Bindings to put and to delete, with their records, all or nothing; then each
        record (and formula change) goes to the JSON log too."""
        now = time.time()
        db = self._db
        db.execute("BEGIN")
        try:
            for inside in gone:
                db.execute("DELETE FROM bindings WHERE inside = ?", (int(inside),))
            db.executemany("INSERT OR REPLACE INTO bindings VALUES (?, ?, ?, ?, ?, ?)",
                           [(int(i), b.pool, int(b.grant.public), b.grant.block_size,
                             ",".join(map(str, b.grant.blocks)), b.identity)
                            for i, b in put.items()])
            db.executemany(
                "INSERT INTO block_log (time, event, pool, public, first_port, last_port, "
                "inside, subscriber, mac, circuit_id, remote_id, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.time, r.event, r.pool, int(r.public), r.first_port, r.last_port,
                  int(r.holder.inside), r.holder.identity, r.holder.mac, r.holder.circuit_id,
                  r.holder.remote_id, r.reason) for r in recs])
            if slots:
                db.execute("DELETE FROM pool_index")
                db.executemany("INSERT INTO pool_index VALUES (?, ?)", sorted(slots.items()))
            for pool, config in (formulas or {}).items():
                db.execute("INSERT INTO formula_log (time, pool, config) VALUES (?, ?, ?)",
                           (now, pool, config))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        for r in recs:
            log.info("%s", json.dumps(r.json()))
        for pool, config in (formulas or {}).items():
            log.info("%s", json.dumps({"event": "nat-formula", "time": _iso(now), "pool": pool,
                                       "config": json.loads(config) if config else None}))

    def prune(self, before: float) -> int:
        """Forget block records older than ``before`` (unix time): the retention period.
        Formula records are kept, as they are few and a lookup needs the one in effect."""
        cur = self._db.execute("DELETE FROM block_log WHERE time < ?", (before,))
        return cur.rowcount


# --- the abuse desk's question ------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """Who had ``public``:``port`` at a time."""

    public: IPv4Address
    port: int
    at: float
    pool: str
    inside: IPv4Address
    mode: Literal["port-block", "deterministic"]
    since: float  # the allocation (port-block) or formula (deterministic) in effect
    until: float | None  # its release, if any (else still held)
    subscriber: str = ""  # the identity (port-block mode)
    mac: str | None = None
    circuit_id: str | None = None
    remote_id: str | None = None
    ports: str = ""  # the block's range


def lookup(path: Path, public: IPv4Address, port: int, at: float) -> list[Answer]:
    """Who had ``public``:``port`` at unix time ``at``, from the NAT file at ``path``: the
    block allocated at or before ``at`` and not released before it, or the deterministic
    formula in effect at ``at``. Empty: nobody (as far as this node's log knows)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = []
        row = db.execute(
            "SELECT id, time, pool, first_port, last_port, inside, subscriber, mac, circuit_id, "
            "remote_id FROM block_log WHERE event = 'allocated' AND public = ? AND "
            "first_port <= ? AND last_port >= ? AND time <= ? ORDER BY time DESC, id DESC "
            "LIMIT 1", (int(public), port, port, at)).fetchone()
        if row is not None:
            rid, since, pool, first, last, inside, who, mac, circuit, remote = row
            end = db.execute(
                "SELECT time FROM block_log WHERE event = 'released' AND public = ? AND "
                "first_port = ? AND inside = ? AND id > ? ORDER BY id LIMIT 1",
                (int(public), first, inside, rid)).fetchone()
            until = end[0] if end else None
            if until is None or until >= at:
                out.append(Answer(public, port, at, pool, IPv4Address(inside), "port-block",
                                  since, until, who, mac, circuit, remote, f"{first}-{last}"))
        for pool, since, config, until in _formulas_at(db, at):
            layout = Layout.from_description(json.loads(config))
            inside_addr = layout.owner(public, port)
            if inside_addr is not None:
                g = layout.formula(inside_addr)
                out.append(Answer(public, port, at, pool, inside_addr, "deterministic", since,
                                  until, ports=g.ports() if g else ""))
        return out
    finally:
        db.close()


def _formulas_at(db: sqlite3.Connection, at: float,
                 ) -> list[tuple[str, float, str, float | None]]:
    """(pool, since, config, until) of each pool's formula in effect at ``at``."""
    rows = db.execute("SELECT pool, time, config FROM formula_log ORDER BY id").fetchall()
    out = []
    by_pool: dict[str, list[tuple[float, str]]] = {}
    for pool, t, config in rows:
        by_pool.setdefault(pool, []).append((t, config))
    for pool, history in by_pool.items():
        current = [(t, c) for t, c in history if t <= at]
        if not current or not current[-1][1]:
            continue
        since, config = current[-1]
        later = [t for t, _ in history if t > at]
        out.append((pool, since, config, later[0] if later else None))
    return out

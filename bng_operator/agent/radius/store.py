"""What RADIUS said about each session, kept on disk so that it survives an agent
restart: the Acct-Session-Id, the granted address or pool, rates, timeouts and Class; and
the accounting queue: every Accounting-Request not yet acknowledged, in order.

Both are tables of one SQLite file in the state directory (``radius-<node>.sqlite``, beside
the lease store), so that a session's state ("its Start is queued") and the queue are
written by one worker thread, in order: a record is never queued twice across a restart.
Writes go to that thread; a kill -9 loses at most the writes of the last milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bng_operator.agent.config import ShapingRates
from bng_operator.agent.radius.wire import RandomBytes

log = logging.getLogger("bng.agent.radius")
# Seconds a write waits for others to share its transaction. Nothing waits for these writes
# (they keep RADIUS state across a restart; a lease is durable before its ACK by the lease
# store): this bounds how much later they reach the disk, against one wake-up of the
# writer thread (and its turns of the GIL against the event loop) per write under load.
FLUSH_AFTER = 0.005


_SESSION_IDS = RandomBytes()


def new_acct_session_id() -> str:
    """Unique per session, on every node and across restarts: 64 random bits (the event
    loop's: drawn from a pool)."""
    return _SESSION_IDS.take(8).hex().upper()


@dataclass
class RadiusSession:
    """One session's RADIUS state (Session.attached["radius"])."""

    acct_session_id: str
    user_name: str
    server: str = ""  # who accepted it; "" when the fallback admitted it
    authorised_at: float = field(default_factory=time.time)
    fallback: bool = False  # admitted with the class's defaults: no server answered
    address: int = 0  # Framed-IP-Address granted (0: from the pool)
    pool: str = ""  # Framed-Pool, or the pool of the granted address
    rates: ShapingRates | None = None  # over the class's policy
    filter_id: str = ""
    session_timeout: int | None = None  # seconds: stored; enforced with accounting (later)
    idle_timeout: int | None = None
    interim_interval: int | None = None
    classes: tuple[bytes, ...] = ()  # Class attributes, to echo in accounting
    # accounting: when it was bound (Acct-Session-Time), whether its Start is queued (never
    # queued twice, also across a restart), the traffic of the addresses it held before
    # (the counters are per address), and the last record queued (wall-clock)
    started_at: float = 0.0
    start_queued: bool = False
    carried: tuple[int, int, int, int] = (0, 0, 0, 0)
    last_accounting: float = 0.0
    session_timed_out: bool = False
    end_cause: str = ""  # the Acct-Terminate-Cause of an end it chose (Idle-Timeout, ...)
    last_usage: tuple[int, int, int, int] = (0, 0, 0, 0)  # of its last record
    bound_address: int = 0  # its address when last accounted
    subscriber_class: str = ""
    identity: dict[str, str] = field(default_factory=dict)  # for a Stop after a restart

    def to_json(self) -> str:
        # Field by field, not asdict(): asdict deep-copies every value (29 us a call
        # against 8 here), and every accounting record of a session writes its state.
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        d["classes"] = [c.hex() for c in self.classes]
        if self.rates is not None:
            d["rates"] = asdict(self.rates)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> RadiusSession:
        d: dict[str, Any] = json.loads(text)
        d["classes"] = tuple(bytes.fromhex(c) for c in d.get("classes", ()))
        d["carried"] = tuple(d.get("carried", (0, 0, 0, 0)))
        d["last_usage"] = tuple(d.get("last_usage", (0, 0, 0, 0)))
        if d.get("rates"):
            d["rates"] = ShapingRates(**d["rates"])
        return cls(**d)


@dataclass
class AcctRecord:
    """One queued Accounting-Request: its attributes (without NAS-IP-Address and
    Acct-Delay-Time, added when sent), the class whose servers it goes to, and when its
    event happened (for Acct-Delay-Time)."""

    seq: int
    status: str  # Start, Interim-Update, Stop
    subscriber_class: str
    event_time: float
    acct_session_id: str
    attributes: list[tuple[str, str | int | bytes]]
    sends: int = 0  # servers tried so far (in memory)

    def to_json(self) -> str:
        attrs = [[k, {"hex": v.hex()} if isinstance(v, bytes) else v]
                 for k, v in self.attributes]
        return json.dumps({"status": self.status, "class": self.subscriber_class,
                           "time": self.event_time, "id": self.acct_session_id,
                           "attributes": attrs})

    @classmethod
    def from_json(cls, seq: int, text: str) -> AcctRecord:
        d = json.loads(text)
        attrs: list[tuple[str, str | int | bytes]] = [
            (k, bytes.fromhex(v["hex"]) if isinstance(v, dict) else v)
            for k, v in d["attributes"]]
        return cls(seq, d["status"], d["class"], float(d["time"]), d["id"], attrs)


class RadiusStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._work = ThreadPoolExecutor(1, thread_name_prefix="bng-radius-store")
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, tuple[object, ...]]] = []
        self._drain_queued = False
        self._timer: asyncio.TimerHandle | None = None
        self._work.submit(self._open).result()

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS sessions "
                         "(identity TEXT PRIMARY KEY, data TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS acct_queue (seq INTEGER PRIMARY KEY, "
                         "data TEXT NOT NULL)")
        self._db.commit()

    def load(self) -> dict[str, RadiusSession]:
        def read() -> dict[str, RadiusSession]:
            assert self._db is not None
            out = {}
            for identity, data in self._db.execute("SELECT identity, data FROM sessions"):
                try:
                    out[identity] = RadiusSession.from_json(data)
                except (ValueError, TypeError) as e:
                    log.warning("RADIUS state of %s unreadable, dropped: %s", identity, e)
            return out

        return self._work.submit(read).result()

    def load_queue(self) -> list[AcctRecord]:
        """The accounting records not yet acknowledged, oldest first."""
        def read() -> list[AcctRecord]:
            assert self._db is not None
            out = []
            for seq, data in self._db.execute("SELECT seq, data FROM acct_queue ORDER BY seq"):
                try:
                    out.append(AcctRecord.from_json(seq, data))
                except (ValueError, TypeError, KeyError) as e:
                    log.error("RADIUS accounting record %d unreadable, dropped: %s", seq, e)
            return out

        return self._work.submit(read).result()

    def enqueue(self, r: AcctRecord, identity: str = "", s: RadiusSession | None = None,
                ) -> None:
        """Queue ``r``, and write ``identity``'s state ``s`` in the same transaction (a
        Start and "its Start is queued" are on disk together, or neither is)."""
        writes: list[tuple[str, tuple[object, ...]]] = [
            ("INSERT OR REPLACE INTO acct_queue VALUES (?, ?)", (r.seq, r.to_json()))]
        if s is not None:
            writes.append(("INSERT OR REPLACE INTO sessions VALUES (?, ?)",
                           (identity, s.to_json())))
        self._submit(writes)

    def _submit(self, writes: list[tuple[str, tuple[object, ...]]]) -> None:
        """Group commit: writes submitted within ``FLUSH_AFTER`` of each other, or while the
        writer is busy, go to disk together, in one transaction (one fsync), in the order
        they were submitted. A commit per write held new sessions to the disk's fsync
        rate."""
        with self._lock:
            self._pending.extend(writes)
            if self._drain_queued:
                return
            self._drain_queued = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: at once
            self._work.submit(self._drain)
            return
        self._timer = loop.call_later(FLUSH_AFTER, self._kick)

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._work.submit(self._drain)

    def _drain(self) -> None:
        with self._lock:
            writes, self._pending = self._pending, []
            self._drain_queued = False
        assert self._db is not None
        try:
            # runs of one statement go in one executemany: one C call, not a trip of the GIL
            # per row (the event loop waits for each)
            for sql, run in itertools.groupby(writes, key=lambda w: w[0]):
                self._db.executemany(sql, [args for _, args in run])
            self._db.commit()
        except sqlite3.Error as e:
            log.error("RADIUS state store %s: %d writes lost: %s", self.path, len(writes), e)
            with contextlib.suppress(sqlite3.Error):
                self._db.rollback()

    def dequeue(self, seq: int) -> None:
        self._submit([("DELETE FROM acct_queue WHERE seq = ?", (seq,))])

    def flush(self) -> None:
        """Wait for the writes submitted so far (tests)."""
        if self._timer is not None:
            self._kick()
        self._work.submit(lambda: None).result()

    def put(self, identity: str, s: RadiusSession) -> None:
        self._submit([("INSERT OR REPLACE INTO sessions VALUES (?, ?)",
                       (identity, s.to_json()))])

    def delete(self, identity: str) -> None:
        self._submit([("DELETE FROM sessions WHERE identity = ?", (identity,))])

    def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()

        if self._timer is not None:
            self._kick()
        self._work.submit(shut)
        self._work.shutdown(wait=True)

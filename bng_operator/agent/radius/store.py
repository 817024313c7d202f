"""What RADIUS said about each session, kept on disk so that it survives an agent
restart: the Acct-Session-Id, the granted address or pool, rates, timeouts and Class; and
the accounting queue: every Accounting-Request not yet acknowledged, in order.

Both are tables of one SQLite file in the state directory (``radius-<node>.sqlite``, beside
the lease store), so that a session's state ("its Start is queued") and the queue are
written by one worker thread, in order: a record is never queued twice across a restart.
Writes go to that thread; a kill -9 loses at most the writes of the last milliseconds.

A row is a pickle of plain values only (``to_row``; read back with an unpickler that builds
no object of any class, after checking its opcodes): JSON, with every field named, cost the
event loop 9 us a session state and 6 us a record, and new sessions with authentication
4-12% of their rate. Rows an older agent wrote in JSON are still read; an older agent
cannot read these (a downgrade drops the sessions' RADIUS state and the queued records).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import pickle
import pickletools
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bng_operator.agent.config import ShapingRates
from bng_operator.agent.radius.wire import RandomBytes
from bng_operator.agent.sqlrows import Statement, many_rows

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
    rate_down_bps: int = 0  # the WISPr rates RADIUS set (0: not set); with filter_id, what
    rate_up_bps: int = 0  # ``rates`` is made from again when a QoSPolicy changes
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
    # Idle-Timeout across a restart: since when its subscriber has sent nothing (wall-clock)
    # and its upload packet counter then (-1: not known quiet); written once a quiet spell,
    # by the first check that finds it
    quiet_since: float = 0.0
    quiet_packets: int = -1

    def to_row(self) -> bytes:
        """The stored form: ``ROW_FORMAT`` and the fields in ``STATE_FIELDS``' order."""
        d = self.__dict__
        values = [d[name] for name in STATE_FIELDS]
        if self.rates is not None:
            values[_RATES_AT] = {n: getattr(self.rates, n) for n in _RATE_FIELDS}
        return pickle.dumps((ROW_FORMAT, *values), 5)

    @classmethod
    def from_row(cls, data: bytes | str) -> RadiusSession:
        """A row as ``to_row`` writes it, or in an older agent's JSON."""
        if isinstance(data, str):
            return cls.from_json(data)
        values = _plain_values(data)
        d: dict[str, Any] = dict(zip(STATE_FIELDS, values, strict=False))  # older: fewer
        for name, v in d.items():
            if not isinstance(v, _STATE_TYPES[name]):
                raise ValueError(f"{name}: a {type(v).__name__} is not what it holds")
        try:
            if d.get("rates") is not None:
                d["rates"] = ShapingRates(**d["rates"])
            return cls(**d)
        except TypeError as e:  # rates without a field, or with one it does not have
            raise ValueError(f"not a session's state: {e}") from e

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

    def to_row(self) -> bytes:
        return pickle.dumps((ROW_FORMAT, self.status, self.subscriber_class, self.event_time,
                             self.acct_session_id, self.attributes), 5)

    @classmethod
    def from_row(cls, seq: int, data: bytes | str) -> AcctRecord:
        """A row as ``to_row`` writes it, or in an older agent's JSON."""
        if isinstance(data, str):
            return cls.from_json(seq, data)
        status, subscriber_class, event_time, acct_session_id, attrs = _plain_values(data)
        if not (isinstance(status, str) and isinstance(subscriber_class, str)
                and isinstance(event_time, float | int) and isinstance(acct_session_id, str)
                and isinstance(attrs, list)
                and all(isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str)
                        and isinstance(a[1], str | int | bytes) for a in attrs)):
            raise ValueError("a record's values are not what it holds")
        return cls(seq, status, subscriber_class, float(event_time), acct_session_id, attrs)

    @classmethod
    def from_json(cls, seq: int, text: str) -> AcctRecord:
        d = json.loads(text)
        attrs: list[tuple[str, str | int | bytes]] = [
            (k, bytes.fromhex(v["hex"]) if isinstance(v, dict) else v)
            for k, v in d["attributes"]]
        return cls(seq, d["status"], d["class"], float(d["time"]), d["id"], attrs)


ROW_FORMAT = 1  # the first value of a row; a later format gets another number
# RadiusSession's fields in the order rows hold them: a new field goes at the end (rows of
# an older agent, shorter, read with its default); none is ever removed or moved.
STATE_FIELDS = ("acct_session_id", "user_name", "server", "authorised_at", "fallback",
                "address", "pool", "rates", "filter_id", "rate_down_bps", "rate_up_bps",
                "session_timeout", "idle_timeout", "interim_interval", "classes",
                "started_at", "start_queued", "carried", "last_accounting",
                "session_timed_out", "end_cause", "last_usage", "bound_address",
                "subscriber_class", "identity", "quiet_since", "quiet_packets")
_RATES_AT = STATE_FIELDS.index("rates")
_RATE_FIELDS = tuple(f.name for f in fields(ShapingRates))
# What each field of a row may be (rates: a dict of ShapingRates' fields by name)
_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "acct_session_id": str, "user_name": str, "server": str, "authorised_at": (float, int),
    "fallback": bool, "address": int, "pool": str, "rates": (dict, type(None)),
    "filter_id": str, "rate_down_bps": int, "rate_up_bps": int,
    "session_timeout": (int, type(None)), "idle_timeout": (int, type(None)),
    "interim_interval": (int, type(None)), "classes": tuple, "started_at": (float, int),
    "start_queued": bool, "carried": tuple, "last_accounting": (float, int),
    "session_timed_out": bool, "end_cause": str, "last_usage": tuple, "bound_address": int,
    "subscriber_class": str, "identity": dict, "quiet_since": (float, int),
    "quiet_packets": int}
# The opcodes of rows as to_row writes them (plain values, protocol 5): a row with any
# other (a class, a function, an 8-byte length) is refused before it is loaded.
_ROW_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_DICT", "SETITEM", "SETITEMS", "DICT",
    "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT",
    "SHORT_BINUNICODE", "BINUNICODE", "SHORT_BINBYTES", "BINBYTES", "MEMOIZE", "BINGET",
    "LONG_BINGET", "POP", "POP_MARK"})


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain values only (tuples, lists, dicts, str, bytes, numbers): a row that
    names any class or function is refused, never run."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a row names {module}.{name}: only plain values are read")


def _plain_values(data: bytes) -> tuple[Any, ...]:
    """The values of a row after its format number; ValueError if it is not a row (a
    damaged one included: its opcodes are checked before it is loaded, so that no length or
    memo index it claims can make the loading allocate more than the row's own size)."""
    if not isinstance(data, bytes):
        raise ValueError(f"a row is bytes, not {type(data).__name__}")
    memo = 0
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name not in _ROW_OPCODES:
                raise ValueError(f"a row holds {op.name}")
            if op.name == "MEMOIZE":
                memo += 1
            elif op.name in ("BINGET", "LONG_BINGET") and not 0 <= int(arg) < memo:  # type: ignore[arg-type]
                raise ValueError(f"a row refers to memo {arg} of {memo}")
            elif op.name == "FRAME" and int(arg) > len(data):  # type: ignore[arg-type]
                raise ValueError("a row's frame is longer than the row")
        row = _PlainUnpickler(io.BytesIO(data)).load()
    except (EOFError, IndexError, AttributeError, OverflowError, pickle.UnpicklingError) as e:
        raise ValueError(f"not a row: {e}") from e
    if not isinstance(row, tuple) or not row or row[0] != ROW_FORMAT:
        raise ValueError(f"not a row of format {ROW_FORMAT}")
    return row[1:]


class RadiusStore:
    """The writes are group commits (``_kick``): what the loop asks within ``FLUSH_AFTER``
    of the first ask is gathered by key, so a session's state is written once however often
    it changed, and a record acknowledged before its turn came is never written at all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._work = ThreadPoolExecutor(1, thread_name_prefix="bng-radius-store")
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # gathered since the last kick: a session's state to write (None: delete it), a
        # record to queue (None: delete it, it was written before)
        self._sessions: dict[str, RadiusSession | None] = {}
        self._records: dict[int, AcctRecord | None] = {}
        # statements made by kicks, for the writer: one transaction takes all it finds
        self._statements: list[Statement] = []
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
                    out[identity] = RadiusSession.from_row(data)
                except Exception as e:  # a damaged row is that session's loss, not the node's
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
                    out.append(AcctRecord.from_row(seq, data))
                except Exception as e:  # a damaged row is that record's loss, not the node's
                    log.error("RADIUS accounting record %d unreadable, dropped: %s", seq, e)
            return out

        return self._work.submit(read).result()

    def enqueue(self, r: AcctRecord, identity: str = "", s: RadiusSession | None = None,
                ) -> None:
        """Queue ``r``, and write ``identity``'s state ``s`` in the same transaction (a
        Start and "its Start is queued" are on disk together, or neither is)."""
        with self._lock:
            self._records[r.seq] = r
            if s is not None:
                self._sessions[identity] = s
        self._soon()

    def dequeue(self, seq: int) -> None:
        with self._lock:
            if self._records.get(seq) is not None:  # not written yet: it never will be
                del self._records[seq]
                return
            self._records[seq] = None
        self._soon()

    def put(self, identity: str, s: RadiusSession) -> None:
        with self._lock:
            self._sessions[identity] = s
        self._soon()

    def delete(self, identity: str) -> None:
        with self._lock:
            self._sessions[identity] = None
        self._soon()

    def _soon(self) -> None:
        """Kick within ``FLUSH_AFTER`` (at once, outside an event loop). A transaction per
        write held new sessions to the disk's fsync rate, and each write's turn of the GIL
        in the writer thread held up the event loop."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread
            self._kick()
            return
        self._timer = loop.call_later(FLUSH_AFTER, self._kick)

    def _kick(self) -> None:
        """Turn what was gathered into statements (here, in the thread that changes the
        sessions: a state is never read half-changed), a few rows each, for the writer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            sessions, self._sessions = self._sessions, {}
            records, self._records = self._records, {}
        statements: list[Statement] = []
        per = ROWS_PER_STATEMENT
        many_rows(statements, "DELETE FROM sessions WHERE identity IN ({})", "?",
                  [(k,) for k, st in sessions.items() if st is None], per)
        many_rows(statements, "INSERT OR REPLACE INTO sessions VALUES {}", "(?,?)",
                  [(k, st.to_row()) for k, st in sessions.items() if st is not None], per)
        many_rows(statements, "DELETE FROM acct_queue WHERE seq IN ({})", "?",
                  [(k,) for k, r in records.items() if r is None], per)
        many_rows(statements, "INSERT OR REPLACE INTO acct_queue VALUES {}", "(?,?)",
                  [(k, r.to_row()) for k, r in records.items() if r is not None], per)
        self._submit(statements)

    def _submit(self, statements: list[Statement]) -> None:
        """Hand ``statements`` to the writer: with any others it has not begun, in order, in
        one transaction (one fsync)."""
        if not statements:
            return
        with self._lock:
            self._statements.extend(statements)
            if self._drain_queued:
                return
            self._drain_queued = True
        self._work.submit(self._drain)

    def _drain(self) -> None:
        with self._lock:
            statements, self._statements = self._statements, []
            self._drain_queued = False
        assert self._db is not None
        try:
            # a statement of many rows is one step of SQLite: one trip of the GIL, where a
            # row at a time gave it up and took it back per row (the event loop waits)
            for sql, args in statements:
                self._db.execute(sql, args)
            self._db.commit()
        except sqlite3.Error as e:
            log.error("RADIUS state store %s: %d writes lost: %s", self.path, len(statements),
                      e)
            with contextlib.suppress(sqlite3.Error):
                self._db.rollback()

    def flush(self) -> None:
        """Wait for the writes asked so far (tests)."""
        self._kick()
        self._work.submit(lambda: None).result()

    def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()

        self._kick()
        self._work.submit(shut)
        self._work.shutdown(wait=True)


ROWS_PER_STATEMENT = 400  # under SQLite's oldest limit of 999 variables a statement

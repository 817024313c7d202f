"""What RADIUS said about each session, kept on disk so that it survives an agent
restart: the Acct-Session-Id, the granted address or pool, rates, timeouts and Class.
Accounting (later) reads the same records.

Writes go to one worker thread, in order; the file is SQLite in the state directory.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bng_operator.agent.config import ShapingRates

log = logging.getLogger("bng.agent.radius")


def new_acct_session_id() -> str:
    """Unique per session, on every node and across restarts: 64 random bits."""
    return secrets.token_hex(8).upper()


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

    def to_json(self) -> str:
        d = asdict(self)
        d["classes"] = [c.hex() for c in self.classes]
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> RadiusSession:
        d: dict[str, Any] = json.loads(text)
        d["classes"] = tuple(bytes.fromhex(c) for c in d.get("classes", ()))
        if d.get("rates"):
            d["rates"] = ShapingRates(**d["rates"])
        return cls(**d)


class RadiusStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._work = ThreadPoolExecutor(1, thread_name_prefix="bng-radius-store")
        self._db: sqlite3.Connection | None = None
        self._work.submit(self._open).result()

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS sessions "
                         "(identity TEXT PRIMARY KEY, data TEXT NOT NULL)")
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

    def put(self, identity: str, s: RadiusSession) -> None:
        self._work.submit(self._write, "INSERT OR REPLACE INTO sessions VALUES (?, ?)",
                          (identity, s.to_json()))

    def delete(self, identity: str) -> None:
        self._work.submit(self._write, "DELETE FROM sessions WHERE identity = ?", (identity,))

    def _write(self, sql: str, args: tuple[str, ...]) -> None:
        assert self._db is not None
        try:
            self._db.execute(sql, args)
            self._db.commit()
        except sqlite3.Error as e:
            log.error("RADIUS state store %s: %s", self.path, e)

    def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()

        self._work.submit(shut)
        self._work.shutdown(wait=True)

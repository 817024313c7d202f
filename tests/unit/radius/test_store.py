"""The RADIUS state store's group commit: every write lands, in order, fewer commits than
writes under load, and a session's Start and state stay in one transaction."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from bng_operator.agent.radius.store import (
    FLUSH_AFTER,
    ROWS_PER_STATEMENT,
    AcctRecord,
    RadiusSession,
    RadiusStore,
)

pytestmark = pytest.mark.unit


def record(seq: int) -> AcctRecord:
    return AcctRecord(seq, "Start", "residential", 1.0, f"ID{seq:04d}", [("User-Name", "u")])


def test_every_write_lands_in_order(tmp_path: Path) -> None:
    store = RadiusStore(tmp_path / "r.sqlite")
    for seq in range(1, 501):
        store.enqueue(record(seq), f"s{seq}", RadiusSession(f"ID{seq:04d}", "u"))
    for seq in range(1, 501, 2):
        store.dequeue(seq)
    store.delete("s2")
    store.flush()
    assert [r.seq for r in store.load_queue()] == list(range(2, 501, 2))
    sessions = store.load()
    assert len(sessions) == 499 and "s2" not in sessions
    store.close()
    again = RadiusStore(tmp_path / "r.sqlite")  # on disk, not only in the connection
    assert [r.seq for r in again.load_queue()] == list(range(2, 501, 2))
    again.close()


def test_writes_behind_a_busy_writer_share_one_commit(tmp_path: Path) -> None:
    store = RadiusStore(tmp_path / "r.sqlite")
    gate = threading.Event()
    store._work.submit(gate.wait)  # the writer is busy (an fsync, say)
    commits = []
    store._work.submit(lambda: store._db.set_trace_callback(  # type: ignore[union-attr]
        lambda sql: commits.append(sql) if sql == "COMMIT" else None))
    for seq in range(1, 101):
        store.enqueue(record(seq))
    gate.set()
    store.flush()
    assert len(commits) == 1
    assert len(store.load_queue()) == 100
    store.close()


def test_a_window_writes_each_session_once_and_no_record_acknowledged_within_it(
        tmp_path: Path) -> None:
    store = RadiusStore(tmp_path / "r.sqlite")
    traced: list[str] = []
    store._work.submit(lambda: store._db.set_trace_callback(  # type: ignore[union-attr]
        traced.append)).result()
    n = ROWS_PER_STATEMENT * 2 + 7

    async def window() -> None:
        st = RadiusSession("ID0001", "u")
        for i in range(5):  # a session changed five times: its last state is written
            st.last_accounting = float(i)
            store.put("s1", st)
        store.enqueue(record(1), "s1", st)
        store.dequeue(1)  # acknowledged before it was written: never written
        store.delete("gone")
        for seq in range(2, n + 2):
            store.enqueue(record(seq), f"n{seq}", RadiusSession(f"ID{seq:04d}", "u"))
        await asyncio.sleep(FLUSH_AFTER * 4)

    asyncio.run(window())
    store.flush()
    writes = [t for t in traced if t.split()[0] in ("INSERT", "DELETE")]
    assert [w.split(" VALUES")[0].split(" WHERE")[0] for w in writes] == [
        "DELETE FROM sessions", *["INSERT OR REPLACE INTO sessions"] * 3,
        *["INSERT OR REPLACE INTO acct_queue"] * 3]  # 1 + n rows, and n, 400 a statement
    assert traced.count("COMMIT") == 1
    assert "ID0001" not in "".join(t for t in writes if "acct_queue" in t)
    assert [r.seq for r in store.load_queue()] == list(range(2, n + 2))
    sessions = store.load()
    assert len(sessions) == n + 1 and sessions["s1"].last_accounting == 4.0
    store.close()


def test_a_failed_batch_is_logged_and_the_store_goes_on(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    store = RadiusStore(tmp_path / "r.sqlite")
    store._submit([("INSERT INTO no_such_table VALUES (1)", ())])
    store.flush()
    assert "1 writes lost" in caplog.text
    store.enqueue(record(7))
    store.flush()
    assert [r.seq for r in store.load_queue()] == [7]
    store.close()
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        assert db.execute("SELECT count(*) FROM acct_queue").fetchone() == (1,)


def test_a_store_an_older_agent_wrote_in_json_is_read_and_goes_on(tmp_path: Path) -> None:
    # An upgrade: the rows of the agent before are JSON text; this one's are pickled plain
    # values. Both read, and what it writes over them replaces them.
    db = sqlite3.connect(tmp_path / "r.sqlite")
    db.execute("CREATE TABLE sessions (identity TEXT PRIMARY KEY, data TEXT NOT NULL)")
    db.execute("CREATE TABLE acct_queue (seq INTEGER PRIMARY KEY, data TEXT NOT NULL)")
    db.execute("INSERT INTO sessions VALUES ('s1', '{\"acct_session_id\": \"OLD1\", "
               "\"user_name\": \"u\", \"start_queued\": true}')")
    db.execute("INSERT INTO acct_queue VALUES (1, '{\"status\": \"Start\", \"class\": \"c\", "
               "\"time\": 1.0, \"id\": \"OLD1\", \"attributes\": [[\"User-Name\", \"u\"]]}')")
    db.commit()
    db.close()
    store = RadiusStore(tmp_path / "r.sqlite")
    assert store.load()["s1"].acct_session_id == "OLD1"
    assert [(r.seq, r.acct_session_id) for r in store.load_queue()] == [(1, "OLD1")]
    store.enqueue(record(2), "s1", RadiusSession("OLD1", "u", start_queued=True, started_at=2.0))
    store.flush()
    store.close()
    again = RadiusStore(tmp_path / "r.sqlite")
    assert again.load()["s1"].started_at == 2.0
    assert [r.seq for r in again.load_queue()] == [1, 2]
    again.close()

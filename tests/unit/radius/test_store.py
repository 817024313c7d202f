"""The RADIUS state store's group commit: every write lands, in order, fewer commits than
writes under load, and a session's Start and state stay in one transaction."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from bng_operator.agent.radius.store import AcctRecord, RadiusSession, RadiusStore

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

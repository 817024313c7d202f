"""The lease store's group commit: a batch's writes land in order, in few statements, written
by the writer process (``lease_writer``)."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest

from bng_lab.dhcp_env import bound_lease
from bng_operator import logs
from bng_operator.agent.child import Child
from bng_operator.agent.dhcp.lease_writer import LEASE_COLUMNS, LeaseWriter, open_db
from bng_operator.agent.dhcp.leases import Decline, Lease, LeaseStore, _row

BASE = int(bound_lease().address)


def _writer(tmp_path: Path) -> tuple[LeaseWriter, list[str]]:
    """The writer's work in process, and the SQL statements it runs, as SQLite saw them."""
    w = LeaseWriter(open_db(tmp_path / "l.sqlite"))
    seen: list[str] = []
    w.db.set_trace_callback(seen.append)
    return w, seen


def test_a_lease_row_is_in_the_order_of_the_store_columns() -> None:
    lease = bound_lease()
    names = [("class" if f == "subscriber_class" else f) for f in Lease.__slots__]  # type: ignore[attr-defined]
    assert tuple(names) == LEASE_COLUMNS
    assert _row(lease) == tuple(getattr(lease, f) for f in Lease.__slots__)  # type: ignore[attr-defined]


def _commit(store: LeaseStore) -> None:
    async def run() -> None:
        await asyncio.wait_for(store.commit(), 5)

    asyncio.run(run())


def test_a_batch_of_leases_is_one_statement(tmp_path: Path) -> None:
    # Each statement costs SQLite a step; one statement a lease made a commit of 64 take ~10
    # ms when the writer was a thread waiting for the GIL between steps.
    w, seen = _writer(tmp_path)
    w.write([("put", _row(bound_lease(address=BASE + i,
                                      identity=f"mac:02:00:00:00:{i >> 8:02x}:{i & 255:02x}")))
             for i in range(300)])
    assert len(seen) == 1 and seen[0].startswith("INSERT OR REPLACE INTO leases")
    store = LeaseStore(tmp_path / "l.sqlite")
    assert len(store.load()[0]) == 300
    store.close()


def test_a_batch_longer_than_one_statement_is_one_transaction(tmp_path: Path) -> None:
    w, seen = _writer(tmp_path)
    w.rows = 4
    w.write([("put", _row(bound_lease(address=BASE + i, identity=f"mac:02:00:00:00:01:{i:02x}")))
             for i in range(10)])
    assert [s.split()[0] for s in seen] == ["BEGIN", "INSERT", "INSERT", "INSERT", "COMMIT"]
    assert len(w.db.execute("SELECT address FROM leases").fetchall()) == 10


def test_a_mixed_batch_is_applied_in_order(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "l.sqlite")
    a, b, c = BASE, BASE + 1, BASE + 2
    store.put(bound_lease(address=a, identity="mac:a"))
    store.put(bound_lease(address=b, identity="mac:b"))
    store.put(bound_lease(address=c, identity="mac:c"))
    _commit(store)
    store.delete(a)
    store.put(bound_lease(address=a, identity="mac:a2"))  # put after delete: kept
    store.put(bound_lease(address=BASE + 9, identity="mac:b"))  # b moves: its old row goes
    store.put(bound_lease(address=BASE + 10, identity="mac:b"))  # and moves again
    store.put_decline(Decline(c, "residential", 2e9))  # c declined: its lease goes
    store.delete(BASE + 11)  # nothing there
    _commit(store)
    stored, declined = store.load()
    assert {(x.address, x.identity) for x in stored} == {(a, "mac:a2"), (BASE + 10, "mac:b")}
    assert [d.address for d in declined] == [c]
    store.delete_decline(c)
    store.delete(a)
    _commit(store)
    stored, declined = store.load()
    assert [x.address for x in stored] == [BASE + 10] and declined == []
    store.close()


def test_the_log_lines_of_a_turn_are_written_before_its_batch_goes_to_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An audit line gathered on the loop (logs.LineHandler) is written before the batch
    that holds its lease is handed to the writer, which finishes it even if the agent dies."""
    err = io.StringIO()
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers[:] = [logs.LineHandler(err)]
    store = LeaseStore(tmp_path / "l.sqlite")
    written_at_send: list[str] = []
    send = Child.send

    def spy(c: Child, data: bytes | bytearray) -> None:
        written_at_send.append(err.getvalue())
        send(c, data)

    monkeypatch.setattr(Child, "send", spy)

    async def run() -> None:
        store.put(bound_lease())
        fut = store.commit()  # its batch is sent at the next turn: due before the line's flush
        logging.getLogger("bng.audit").warning("allocate 100.64.0.20")
        await asyncio.wait_for(fut, 5)

    try:
        asyncio.run(run())
    finally:
        root.handlers[:] = handlers
        store.close()
    assert written_at_send == ["allocate 100.64.0.20\n"]


def test_each_answered_batch_is_timed(tmp_path: Path) -> None:
    """bng_lease_store_commit_duration_seconds: one observation a batch the writer answered."""
    store = LeaseStore(tmp_path / "l.sqlite")
    times: list[float] = []
    store.timed = times.append

    async def run() -> None:
        for i in range(2):
            store.put(bound_lease(address=BASE + i, identity=f"mac:{i}"))
            await asyncio.wait_for(store.commit(), 10)

    asyncio.run(run())
    store.close()
    assert len(times) == 2 and all(0 < t < 10 for t in times)


def test_what_waits_on_a_commit_runs_when_its_answer_is_read(tmp_path: Path) -> None:
    """when_settled: the replies waiting on a commit go out as the writer's answer is read,
    not a turn of the event loop later, after the future's own callbacks were scheduled."""
    store = LeaseStore(tmp_path / "l.sqlite")
    seen: list[str] = []

    async def run() -> None:
        store.put(bound_lease(address=BASE, identity="mac:0"))
        fut = store.commit()
        fut.add_done_callback(lambda f: seen.append("the future's callback"))

        def boom(f: asyncio.Future[None]) -> None:
            seen.append("a failing waiter")
            raise RuntimeError("boom")

        store.when_settled(fut, boom)  # does not keep the next waiter from running
        store.when_settled(fut, lambda f: seen.append(f"settled, ok={f.exception() is None}"))
        while not fut.done():  # the writer's answer, read as the loop reads it
            await asyncio.sleep(0)
        assert seen == ["a failing waiter", "settled, ok=True"]  # in the turn that read it
        await asyncio.sleep(0)
        assert seen[-1] == "the future's callback"

    asyncio.run(run())
    store.close()


def test_waiters_hear_of_a_commit_that_failed(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "l.sqlite")
    got: list[bool] = []

    async def run() -> None:
        store.put(bound_lease(address=BASE, identity="mac:0"))
        fut = store.commit()
        store.when_settled(fut, lambda f: got.append(f.exception() is not None))
        store.close()  # before the writer answered: the commit fails
        assert got == [True]
        done = store.commit()  # the store is closed: a failed future, its waiter a turn later
        store.when_settled(done, lambda f: got.append(f.exception() is not None))
        await asyncio.sleep(0)

    asyncio.run(run())
    assert got == [True, True]

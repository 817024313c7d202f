"""The lease store fails loudly, never silently (issue 14, point 5): any failure of a write
fails that commit and not the writer, is retried a bounded number of times, and makes the
agent not ready until a commit succeeds again. The writer is a process (``lease_writer``):
one that hangs or dies fails or holds only the commits it had."""

from __future__ import annotations

import asyncio
import marshal
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bng_lab.dhcp_env import bound_lease
from bng_operator.agent.dhcp import lease_writer
from bng_operator.agent.dhcp.lease_writer import FRAME, REPLY, SCHEMA, LeaseWriter, open_db
from bng_operator.agent.dhcp.leases import LeaseStore, LeaseStoreError, _row
from bng_operator.agent.health import Commits, Health
from bng_operator.metrics import AgentMetrics

BASE = int(bound_lease().address)


def _commits(store: LeaseStore) -> Commits:
    """The agent's view of the store's commits: readiness and metrics."""
    return Commits(store, AgentMetrics(), Health(problem=""))


def _commit(commits: Commits) -> asyncio.Future[None]:
    """A commit whose outcome reaches readiness and metrics, as the agent's do."""
    fut = commits.store.commit()
    fut.add_done_callback(commits.done)
    return fut


async def _started(store: LeaseStore) -> int:
    """Commit once, so that the writer runs; its pid."""
    store.put(bound_lease(address=BASE + 100, identity="mac:started"))
    await asyncio.wait_for(store.commit(), 10)
    assert store._writer is not None
    return store._writer.proc.pid


def test_a_failing_write_fails_its_commit_not_the_writer(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "l.sqlite")

    async def run() -> None:
        commits = _commits(store)
        metrics, health = commits.metrics, commits.health
        pid = await _started(store)
        store._db.execute("DROP TABLE leases")  # every try of the next batch fails
        store.put(bound_lease())
        fut = _commit(commits)
        with pytest.raises(LeaseStoreError, match="no such table: leases"):
            await asyncio.wait_for(fut, 10)
        await asyncio.sleep(0)
        assert health.ready() == (False, "lease store: OperationalError: no such table: leases")
        assert metrics.registry.get_sample_value("bng_lease_store_commit_failures_total") == 1
        store._db.executescript(SCHEMA)
        store.put(bound_lease(address=BASE + 1))
        fut = _commit(commits)
        await asyncio.wait_for(fut, 10)  # the writer lives on: the next commit goes through
        await asyncio.sleep(0)
        assert health.ready() == (True, "ready")
        assert store._writer is not None and store._writer.proc.pid == pid

    asyncio.run(run())
    stored, _ = store.load()
    store.close()
    assert [x.address for x in stored] == [BASE + 1]


def test_a_passing_failure_is_retried_and_commits(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease_writer, "WRITE_RETRIES", (0.0, 0.0, 0.0))
    w = LeaseWriter(open_db(tmp_path / "l.sqlite"))
    real, calls = w.write, []

    def write(batch):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        if len(calls) == 1:
            raise OSError("EIO")
        real(batch)

    monkeypatch.setattr(w, "write", write)
    assert w.write_retried([("put", _row(bound_lease()))]) is None
    assert calls == [1, 1]
    monkeypatch.setattr(w, "write", lambda batch: (_ for _ in ()).throw(OSError("EIO")))
    err = w.write_retried([("put", _row(bound_lease()))])
    assert isinstance(err, OSError)  # three tries, then the batch fails
    assert len(w.db.execute("SELECT * FROM leases").fetchall()) == 1


def test_a_commit_that_hangs_makes_the_agent_not_ready_until_it_ends(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "l.sqlite")

    async def run() -> None:
        commits = _commits(store)
        health = commits.health
        pid = await _started(store)
        os.kill(pid, signal.SIGSTOP)  # a disk that does not answer
        try:
            store.put(bound_lease())
            fut = _commit(commits)
            await asyncio.sleep(0.3)
            commits.watch(0.2)
            ready, why = health.ready()
            assert not ready and why.startswith("lease store: a commit has taken"), why
            assert not fut.done()  # its ACKs wait: nothing is sent for a lease not on disk
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(fut, 10)
        commits.watch(0.2)
        assert health.ready() == (True, "ready")

    asyncio.run(run())
    store.close()


def test_a_writer_that_dies_fails_its_commits_and_the_next_starts_another(
        tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "l.sqlite")

    async def run() -> None:
        commits = _commits(store)
        pid = await _started(store)
        os.kill(pid, signal.SIGSTOP)
        store.put(bound_lease())
        fut = _commit(commits)
        await asyncio.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(LeaseStoreError, match="the lease writer failed: it exited"):
            await asyncio.wait_for(fut, 10)
        await asyncio.sleep(0)
        assert commits.health.ready()[0] is False
        store.put(bound_lease(address=BASE + 1))
        await asyncio.wait_for(_commit(commits), 10)
        await asyncio.sleep(0)
        assert commits.health.ready() == (True, "ready")
        assert store._writer is not None and store._writer.proc.pid != pid

    asyncio.run(run())
    stored, _ = store.load()
    store.close()
    # the lease of the failed commit may or may not be on disk (its ACK was never sent)
    assert {BASE + 100, BASE + 1} <= {x.address for x in stored}


def test_batches_that_wait_go_in_one_transaction(tmp_path: Path) -> None:
    w = LeaseWriter(open_db(tmp_path / "l.sqlite"))
    seen: list[str] = []
    w.db.set_trace_callback(seen.append)
    ours, theirs = socket.socketpair()
    for n in range(1, 4):  # three batches sent before the writer reads any
        body = marshal.dumps([("put", _row(bound_lease(address=BASE + n,
                                                        identity=f"mac:{n}")))])
        ours.sendall(FRAME.pack(len(body), n) + body)
    ours.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=lease_writer.serve, args=(theirs, w))
    t.start()
    t.join(10)
    answer = ours.recv(100)
    assert answer == REPLY.pack(3, 0)  # one answer, for the last of them: all on disk
    assert len(seen) == 1 and seen[0].startswith("INSERT")  # their leases: one statement
    assert len(w.db.execute("SELECT address FROM leases").fetchall()) == 3
    ours.close()
    theirs.close()


def test_the_writer_dies_with_the_agent(tmp_path: Path) -> None:
    # An agent killed with -9 must not leave a writer behind (a restarted agent starts its own).
    script = f"""
import asyncio, os, sys
sys.path.insert(0, {str(Path(__file__).parents[3])!r})
from bng_lab.dhcp_env import bound_lease
from bng_operator.agent.dhcp.leases import LeaseStore
async def run():
    store = LeaseStore(__import__("pathlib").Path({str(tmp_path / "l.sqlite")!r}))
    store.put(bound_lease())
    await store.commit()
    print(store._writer.proc.pid, flush=True)
    os.kill(os.getpid(), 9)
asyncio.run(run())
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=30)
    pid = int(r.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return  # dead; its parent (gone) could not reap it
        time.sleep(0.05)
    raise AssertionError(f"lease writer {pid} outlived the agent")

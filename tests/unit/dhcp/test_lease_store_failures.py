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


def _children() -> set[int]:
    out: set[int] = set()
    for t in Path(f"/proc/{os.getpid()}/task").iterdir():
        out |= {int(x) for x in (t / "children").read_text().split()}
    return out


def _more_than_the_socket_takes(store: LeaseStore) -> int:
    """Leases (of ~300 bytes each, with a long hostname) more than the writer's socket pair
    holds both ways, so that a frame of them goes out in parts."""
    assert store._writer is not None
    sock = store._writer.sock
    held = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + \
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return 2 * held // 250


def test_close_fails_the_commits_not_answered_and_leaves_no_writer(tmp_path: Path) -> None:
    # Found by review: close() left a commit in flight pending for ever, and a commit asked
    # for just before close() started a writer after it that nothing stopped.
    store = LeaseStore(tmp_path / "l.sqlite")
    before = _children()

    async def run() -> tuple[asyncio.Future[None], asyncio.Future[None]]:
        await _started(store)
        store.put(bound_lease(address=BASE + 1, identity="mac:x"))
        flying = store.commit()
        await asyncio.sleep(0)  # its frame goes out
        store.put(bound_lease(address=BASE + 2, identity="mac:y"))
        gathered = store.commit()  # not sent yet
        store.close()
        await asyncio.sleep(0.3)
        return flying, gathered

    flying, gathered = asyncio.run(run())
    for fut in (flying, gathered):
        assert fut.done() and isinstance(fut.exception(), LeaseStoreError)
    assert _children() - before == set()


def test_a_store_used_from_another_loop_never_answers_for_the_old_one(tmp_path: Path) -> None:
    # Found by review: after a change of event loop, the old loop's batches stayed in
    # flight, and the new writer's first answer completed them, written or not; a frame
    # half sent went to the new writer, which read its middle as a header and hung.
    store = LeaseStore(tmp_path / "l.sqlite")
    old: list[asyncio.Future[None]] = []

    async def first() -> None:
        pid = await _started(store)
        os.kill(pid, signal.SIGSTOP)  # a hung disk: the frames below wait in the socket
        for i in range(_more_than_the_socket_takes(store)):
            store.put(bound_lease(address=BASE + 1000 + i, identity=f"mac:{i}",
                                  hostname="h" * 200))
        old.append(store.commit())
        await asyncio.sleep(0.2)
        assert store._writer is not None and store._writer.out  # part of the frame is not sent yet
        store.put(bound_lease(address=BASE + 7, identity="mac:seven"))
        old.append(store.commit())  # gathered, not sent: the loop ends first
        os.kill(pid, signal.SIGCONT)  # the frame cut short is never written

    asyncio.run(first())

    async def second() -> None:
        store.put(bound_lease(address=BASE + 1, identity="mac:b"))
        await asyncio.wait_for(store.commit(), 15)

    asyncio.run(second())
    stored = {x.address for x in store.load()[0]}
    store.close()
    assert BASE + 1 in stored
    for fut, address in zip(old, (BASE + 1000, BASE + 7), strict=True):
        assert fut.done()
        # failed (the old loop's end may still have sent it: on disk or not), or done and
        # then surely on disk: never done for a lease that is not
        assert isinstance(fut.exception(), LeaseStoreError) or address in stored


def test_a_batch_larger_than_the_socket_takes_goes_in_parts(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "l.sqlite")

    async def run() -> int:
        pid = await _started(store)
        os.kill(pid, signal.SIGSTOP)
        n = _more_than_the_socket_takes(store)
        for i in range(n):
            store.put(bound_lease(address=BASE + 1000 + i, identity=f"mac:{i}",
                                  hostname="h" * 200))
        big = store.commit()
        await asyncio.sleep(0.2)
        assert store._writer is not None and store._writer.out and store._writer.writing
        store.put(bound_lease(address=BASE + 1, identity="mac:last"))
        last = store.commit()
        os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(asyncio.gather(big, last), 60)
        return n

    n = asyncio.run(run())
    assert len(store.load()[0]) == n + 2
    store.close()


def test_a_writer_that_cannot_start_fails_each_commit_with_its_exit_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named bng_operator' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    store = LeaseStore(tmp_path / "l.sqlite")

    async def run() -> None:
        for i in range(2):
            store.put(bound_lease(address=BASE + i, identity=f"mac:{i}"))
            with pytest.raises(LeaseStoreError, match="it exited"):
                await asyncio.wait_for(store.commit(), 10)

    asyncio.run(run())
    store.close()
    said = [r.getMessage() for r in caplog.records if "lease writer" in r.getMessage()]
    assert len(said) == 2 and all("exit code 1" in m for m in said), said

"""The lease store fails loudly, never silently (issue 14, point 5): any failure of a write
fails that commit and not the writer, is retried a bounded number of times, and makes the
agent not ready until a commit succeeds again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bng_lab.dhcp_env import bound_lease
from bng_operator.agent.dhcp import leases
from bng_operator.agent.dhcp.leases import LeaseStore
from bng_operator.agent.health import Commits, Health
from bng_operator.metrics import AgentMetrics


def _failing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int,
                   error: Exception) -> tuple[LeaseStore, list[int]]:
    """A store whose first ``failures`` batch writes raise ``error`` (no pause between
    tries); ``calls`` gets each write's batch size."""
    monkeypatch.setattr(leases, "WRITE_RETRIES", (0.0, 0.0, 0.0))
    store = LeaseStore(tmp_path / "l.sqlite")
    real, calls = store._write, []

    def write(batch):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        if len(calls) <= failures:
            raise error
        real(batch)

    monkeypatch.setattr(store, "_write", write)
    return store, calls


def _commits(store: LeaseStore) -> Commits:
    """The agent's view of the store's commits: readiness and metrics."""
    return Commits(store, AgentMetrics(), Health(problem=""))


def _commit(commits: Commits) -> asyncio.Future[None]:
    """A commit whose outcome reaches readiness and metrics, as the agent's do."""
    fut = commits.store.commit()
    fut.add_done_callback(commits.done)
    return fut


def test_a_failing_write_fails_its_commit_not_the_writer(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store, calls = _failing_store(tmp_path, monkeypatch, 3, RuntimeError("disk on fire"))

    async def run() -> None:
        commits = _commits(store)
        metrics, health = commits.metrics, commits.health
        store.put(bound_lease())
        fut = _commit(commits)
        with pytest.raises(RuntimeError, match="disk on fire"):
            await asyncio.wait_for(fut, 5)
        await asyncio.sleep(0)
        assert calls == [1, 1, 1]  # tried three times, then failed
        assert health.ready() == (False, "lease store: disk on fire")
        assert metrics.registry.get_sample_value("bng_lease_store_commit_failures_total") == 1
        store.put(bound_lease(address=int(bound_lease().address) + 1))
        fut = _commit(commits)
        await asyncio.wait_for(fut, 5)  # the writer lives on: the next commit goes through
        await asyncio.sleep(0)
        assert health.ready() == (True, "ready")

    asyncio.run(run())
    stored, _ = store.load()
    store.close()
    assert len(stored) == 1


def test_a_passing_failure_is_retried_and_commits(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store, calls = _failing_store(tmp_path, monkeypatch, 1, OSError("EIO"))

    async def run() -> None:
        store.put(bound_lease())
        await asyncio.wait_for(store.commit(), 5)

    asyncio.run(run())
    assert len(store.load()[0]) == 1 and len(calls) == 2
    store.close()


def test_a_commit_that_hangs_makes_the_agent_not_ready_until_it_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    store = LeaseStore(tmp_path / "l.sqlite")
    real, release = store._write, threading.Event()

    def hanging(batch):  # type: ignore[no-untyped-def]
        release.wait(10)  # a disk that does not answer
        real(batch)

    monkeypatch.setattr(store, "_write", hanging)

    async def run() -> None:
        commits = _commits(store)
        health = commits.health
        store.put(bound_lease())
        fut = _commit(commits)
        await asyncio.sleep(0.3)
        commits.watch(0.2)
        ready, why = health.ready()
        assert not ready and why.startswith("lease store: a commit has taken"), why
        assert not fut.done()  # its ACKs wait: nothing is sent for a lease not on disk
        release.set()
        await asyncio.wait_for(fut, 5)
        commits.watch(0.2)
        assert health.ready() == (True, "ready")

    asyncio.run(run())
    store.close()


def test_a_write_taken_before_its_commit_fails_that_commit(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The writer thread may run between a request's put() and its commit(). If it took the
    # write then, with no commit to tell, a failure went unheard and the commit's future
    # completed for an empty batch: an ACK for a lease not on disk.
    store, calls = _failing_store(tmp_path, monkeypatch, 10, OSError("EIO"))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        store.put(bound_lease())
        await loop.run_in_executor(None, store._write_loop, loop)  # the writer, in between
        with pytest.raises(OSError, match="EIO"):
            await asyncio.wait_for(store.commit(), 5)

    asyncio.run(run())
    assert store.load()[0] == [] and calls == [1, 1, 1]
    store.close()

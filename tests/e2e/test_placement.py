"""BNGNode spec.eventLoopCPU on a running agent: its process on that CPU, its helper (the
lease store's writer) on the others; changed and undone live by a reload, refused with a
clear message when the CPU is not the agent's, and followed again after a restart."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.site import Site
from tests.cases import NODE, SAMPLES
from tests.e2e.conftest import wait

CPU_METRIC = "bng_event_loop_cpu"


def _cpus(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of ``pid``."""
    return {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")}


def _helpers(pid: int) -> list[int]:
    """The agent's child processes."""
    out: list[int] = []
    for t in os.listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    return out


def _writer(pid: int) -> int:
    (writer,) = [c for c in _helpers(pid)
                 if b"lease_writer" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return writer


def _node(cpu: int | None) -> str:
    text = (SAMPLES / NODE).read_text()
    return text + (f"  eventLoopCPU: {cpu}\n" if cpu is not None else "")


def test_the_agent_runs_on_its_cpu_and_its_helpers_on_the_others(
        make_site: Callable[..., Site], tmp_path: Path) -> None:
    allowed = frozenset(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one CPU: nothing to place apart")
    cpu, other = max(allowed), min(allowed)
    site = make_site(subscribers=1, replace={NODE: _node(cpu)})
    node_file = site.config[0] / NODE
    site.start_agent()
    assert site.agent is not None
    agent = site.agent.pid
    assert site.metrics()[CPU_METRIC] == cpu
    assert _cpus(agent) == {frozenset({cpu})}  # every thread: they share the loop's GIL
    assert _cpus(_writer(agent)) == {allowed - {cpu}}
    lease = clients.udhcpc(site.subscribers[0], "eth0", tmp_path)  # and it serves
    assert lease.address.startswith("100.64.")

    def reload(cpu_now: int | None, metric: int) -> None:
        reloads = site.log().count("configuration reloaded")
        node_file.write_text(_node(cpu_now))
        os.kill(agent, signal.SIGHUP)
        wait("the reload", lambda: site.log().count("configuration reloaded") > reloads,
             timeout=10)
        assert site.metrics()[CPU_METRIC] == metric

    reload(other, other)  # moved live
    assert _cpus(agent) == {frozenset({other})}
    assert _cpus(_writer(agent)) == {allowed - {other}}

    reload(None, -1)  # unset: everything back where the kernel may put it
    assert _cpus(agent) == {allowed} and _cpus(_writer(agent)) == {allowed}

    reload(4095, -1)  # not the agent's: said, and left to the kernel
    assert "spec.eventLoopCPU 4095 is not a CPU this agent may run on" in site.log()
    assert _cpus(agent) == {allowed}

    site.stop_agent()  # a restart follows the configuration again
    node_file.write_text(_node(cpu))
    site.start_agent()
    agent = site.agent.pid
    assert site.metrics()[CPU_METRIC] == cpu
    assert _cpus(agent) == {frozenset({cpu})} and _cpus(_writer(agent)) == {allowed - {cpu}}
    again = clients.udhcpc(site.subscribers[0], "eth0", tmp_path)
    assert again.address == lease.address

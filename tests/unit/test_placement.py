"""Where the agent's processes run (BNGNode spec.eventLoopCPU; agent/placement.py): the plan,
and its application to this process and to a real helper (the lease store's writer)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from bng_operator.agent.child import Child
from bng_operator.agent.dhcp.leases import LeaseStore
from bng_operator.agent.placement import CpuPlacement, Placement, cpu_list, place, plan, tasks
from bng_operator.agent.runtime import Agent, AgentSettings
from bng_operator.agent.sources import FileSource, load_node_config
from tests.cases import SAMPLES

pytestmark = pytest.mark.unit

F = frozenset


@pytest.mark.parametrize(("allowed", "cpu", "want"), [
    (F({0, 1}), None, Placement(F({0, 1}), F({0, 1}))),  # unset: the kernel's
    (F({0, 1}), 1, Placement(F({1}), F({0}))),
    (F({0, 1, 2, 3}), 0, Placement(F({0}), F({1, 2, 3}))),
    (F({2, 3, 6}), 3, Placement(F({3}), F({2, 6}))),  # a cpuset: its own CPUs only
    (F({5}), 5, Placement(F({5}), F({5}))),  # one CPU: the helpers share it
], ids=["unset", "two", "four", "cpuset", "one"])
def test_the_agent_gets_its_cpu_and_the_helpers_the_rest(
        allowed: frozenset[int], cpu: int | None, want: Placement) -> None:
    assert plan(allowed, cpu) == want


def test_a_cpu_the_agent_may_not_use_leaves_the_placement_to_the_kernel() -> None:
    p = plan(F({0, 1, 2, 3, 8}), 5)
    assert (p.agent, p.helpers) == (F({0, 1, 2, 3, 8}), F({0, 1, 2, 3, 8}))
    assert p.problem == ("spec.eventLoopCPU 5 is not a CPU this agent may run on (0-3,8); the "
                         "kernel places its processes")


@pytest.mark.parametrize(("cpus", "text"), [
    ([], ""), ([3], "3"), ([0, 1], "0-1"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([4, 2, 3], "2-4"),
])
def test_cpus_are_listed_as_the_kernel_lists_them(cpus: list[int], text: str) -> None:
    assert cpu_list(cpus) == text


async def _commit(store: LeaseStore) -> None:
    await store.commit()


def _affinity(pid: int | None = None) -> set[frozenset[int]]:
    """The CPU sets of every thread of ``pid`` (this process by default)."""
    return {F(os.sched_getaffinity(t)) for t in tasks(pid)}


def test_the_agent_and_its_helpers_are_placed_live_and_put_back(tmp_path: Path) -> None:
    allowed = F(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one CPU: nothing to place apart")
    cpu = max(allowed)
    saved = Child.cpus
    placer = CpuPlacement(lambda: list(Child.running), lambda c: setattr(Child, "cpus", c))
    stores = [LeaseStore(tmp_path / "a.sqlite"), LeaseStore(tmp_path / "b.sqlite")]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_commit(stores[0]))  # its writer runs
        first = stores[0]._writer
        assert first is not None

        p = placer.apply(cpu)
        assert p == Placement(F({cpu}), allowed - {cpu})
        assert _affinity() == {F({cpu})}  # every thread of the agent
        assert _affinity(first.proc.pid) == {allowed - {cpu}}
        assert Child.cpus == allowed - {cpu}

        loop.run_until_complete(_commit(stores[1]))  # a helper started afterwards
        second = stores[1]._writer
        assert second is not None
        assert _affinity(second.proc.pid) == {allowed - {cpu}}

        p = placer.apply(4095)  # not one of ours: back to the kernel, and said
        assert "4095 is not a CPU this agent may run on" in p.problem
        assert _affinity() == {allowed}
        assert _affinity(first.proc.pid) == _affinity(second.proc.pid) == {allowed}
        assert Child.cpus is None

        placer.apply(cpu)
        assert placer.apply(None) == Placement(allowed, allowed)  # unset again: put back
        assert _affinity() == {allowed} and _affinity(second.proc.pid) == {allowed}
        assert Child.cpus is None
    finally:
        place(None, allowed)
        Child.cpus = saved
        for s in stores:
            s.close()
        loop.close()


def test_unset_from_the_start_touches_nothing() -> None:
    placed: list[frozenset[int] | None] = []
    placer = CpuPlacement(lambda: pytest.fail("no helper is placed"), placed.append,
                          allowed=F({0, 1}))
    assert placer.apply(None) == Placement(F({0, 1}), F({0, 1}))
    assert placed == []


def test_a_cpu_not_the_agents_degrades_the_node_and_says_why() -> None:
    source = FileSource([SAMPLES])
    agent = Agent(AgentSettings("edge-1", fast_path=False), source)
    config = dataclasses.replace(load_node_config(source, "edge-1"), event_loop_cpu=4095)
    agent.config, agent.health.dirty = config, False
    agent._place(config)
    want = "spec.eventLoopCPU 4095 is not a CPU this agent may run on"
    assert agent.health.placement.startswith(want) and agent.health.dirty
    reason, message = agent._degraded()  # the BNGNode's Degraded condition
    assert reason == "CPUPlacementNotFollowed" and message.startswith(want)
    assert agent.metrics.event_loop_cpu._value.get() == -1
    assert _affinity() == {F(os.sched_getaffinity(0))}  # this process: left where it was


def test_cpus_changed_under_the_agent_are_followed() -> None:
    # A cpuset changed by the kubelet: the kernel gives every thread the new set.
    allowed = F(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one CPU: nothing to place apart")
    cpu = max(allowed)
    placer = CpuPlacement(lambda: [], lambda c: None)
    try:
        placer.apply(cpu)
        assert placer.check() is None  # as placed
        place(None, F({min(allowed)}))  # the cpuset now: one CPU, not the setting's
        p = placer.check()
        assert p is not None and "is not a CPU this agent may run on" in p.problem
        assert placer.allowed == F({min(allowed)}) and placer.check() is None
        place(None, allowed)  # and back: the setting is followed again
        p = placer.check()
        assert p == Placement(F({cpu}), allowed - {cpu}) and _affinity() == {F({cpu})}
    finally:
        place(None, allowed)

"""Where the agent's processes run (BNGNode spec.eventLoopCPU): the agent's own process (its
event loop and its threads) on one CPU, its helper processes (the lease store's writer, the
RADIUS transport) on the other CPUs it may use.

The event loop bounds the slow path. Left to the kernel, a helper woken by one of the loop's
frames often runs on the loop's CPU and preempts it in the middle of that send, with the GIL
held; with a CPU of their own the helpers are woken there instead. The agent's threads stay
on the loop's CPU: they share its interpreter lock, and on another CPU they take it in
parallel with the loop rather than in its pauses (measured: docs/tuning.md)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("bng.agent")


@dataclass(frozen=True)
class Placement:
    agent: frozenset[int]  # the agent's process: every thread of it
    helpers: frozenset[int]  # each helper process
    problem: str = ""  # why the setting could not be followed ("" when it is)


def cpu_list(cpus: Iterable[int]) -> str:
    """``0-3,6``: CPUs as the kernel lists them (cpuset, Cpus_allowed_list)."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c != run[-1] + 1:
            out.append(_span(run))
            run = []
        run.append(c)
    if run:
        out.append(_span(run))
    return ",".join(out)


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def plan(allowed: frozenset[int], cpu: int | None) -> Placement:
    """Where to run with ``cpu`` the setting and ``allowed`` the CPUs the agent was started
    with (its cpuset). Unset, or a CPU it may not use: everything on ``allowed``, as the
    kernel would. With one CPU the helpers share it."""
    if cpu is None:
        return Placement(allowed, allowed)
    if cpu not in allowed:
        return Placement(allowed, allowed, (
            f"spec.eventLoopCPU {cpu} is not a CPU this agent may run on "
            f"({cpu_list(allowed)}); the kernel places its processes"))
    return Placement(frozenset({cpu}), (allowed - {cpu}) or frozenset({cpu}))


def tasks(pid: int | None = None) -> list[int]:
    """The thread ids of process ``pid`` (this one by default); [] once it has ended."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid or 'self'}/task")]
    except FileNotFoundError:
        return []


def place(pid: int | None, cpus: frozenset[int]) -> None:
    """Every thread of process ``pid`` (this one by default) on ``cpus``; threads it starts
    later inherit their starter's. A thread or process that ended meanwhile is skipped."""
    for tid in tasks(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


@dataclass
class CpuPlacement:
    """Applies a ``Placement`` to the agent and to its running helpers (``helper_pids``),
    and tells the helpers' starter where new ones go (``on_helpers``)."""

    helper_pids: Callable[[], Iterable[int]]
    on_helpers: Callable[[frozenset[int] | None], None]
    allowed: frozenset[int] = frozenset()  # the agent's CPUs when it started
    current: Placement | None = None
    cpu: int | None = None  # the setting last applied

    def __post_init__(self) -> None:
        if not self.allowed:
            self.allowed = frozenset(os.sched_getaffinity(0))

    def apply(self, cpu: int | None) -> Placement:
        """Place the processes for the setting ``cpu``; the placement, with its problem."""
        p = plan(self.allowed, cpu)
        if p == self.current or (cpu is None and self.current is None):
            self.current = p  # nothing to undo: the kernel's placement stands
            return p
        try:
            place(None, p.agent)
            for pid in self.helper_pids():
                place(pid, p.helpers)
        except OSError as e:  # a CPU taken offline, or a cpuset changed under the agent
            p = Placement(p.agent, p.helpers, f"cannot place the agent on CPU {cpu}: {e}")
            log.error("%s", p.problem)
        else:
            if p.problem:
                log.error("%s", p.problem)
            elif cpu is not None:
                log.info("the agent's process runs on CPU %s, its helpers on %s", cpu,
                         cpu_list(p.helpers))
        self.on_helpers(None if cpu is None or p.problem else p.helpers)
        self.current, self.cpu = p, cpu
        return p

    def check(self) -> Placement | None:
        """Place again if the agent's CPUs were changed under it (a cpuset changed by the
        kubelet resets every thread's to the new set, which becomes the agent's); the new
        placement, or None if nothing changed."""
        if self.current is None or self.cpu is None:
            return None
        now = frozenset(os.sched_getaffinity(0))
        if now == self.current.agent:
            return None
        log.warning("the agent's CPUs changed under it (now %s); placing it again",
                    cpu_list(now))
        self.allowed, self.current = now, None
        return self.apply(self.cpu)

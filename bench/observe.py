#!/usr/bin/env python3
"""Flows per second the agent's Hubble API serves to Cilium's hubble CLI (issue 18).

    .venv/bin/python -m bench.observe --json

The agent's own server (bng_operator/agent/observe/hubble.py) on loopback, its FlowHub
filled with --flows flows of the kinds the node reports (fast-path ACKs, slow-path OFFERs,
anti-spoofing drops, NAT mappings), each naming a subscriber. Two measurements, each the
median of --rounds runs of the real CLI (hack/hubble/build.sh), its output written to a
file as a user's `> flows.json` would, and counted after:

  last:   `hubble observe --last N -o json`: the kept flows, converted, filtered (none),
          streamed and decoded, from the CLI's start to its exit;
  follow: `hubble observe --follow -o json` while a thread adds --offer flows/s (as the
          agent's kernel reader does; by default twice the goal, more than the server
          streams) for --seconds: the flows/s the CLI printed, from the first added to the
          last printed. What it could not keep up with the ring drops, oldest first.

The server runs as in the agent (any CPU, the agent's GIL switch interval). The CLI runs
on one CPU of its own (--cli-cpu, by default the last), as on the operator's own machine:
given every CPU, Go's runtime runs as many threads, and their spinning and cross-CPU
wake-ups take the server's CPU here (this VM has two). The same run measures that too, the
CLI on any CPU, as "shared_*" (--no-shared skips it).

The peer is no server: the goal is absolute (>= 10,000 flows/s, the issue's). One JSON line:
{"flows_per_s": <the lower of the two>, "last_flows_per_s", "follow_flows_per_s",
"shared_flows_per_s", ...}.

--server-cpu N runs the server (this process: its event loop and gRPC's threads) on CPU N
alone and the CLI on the others, as an agent given a CPU of its own: each streamed message
passes between gRPC's threads and the loop, and on a VM a wake-up on another CPU costs more
than the message's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

from bng_lab.controlplane import free_port
from bng_lab.hubble import hubble_binary
from bng_operator.agent import syscalls
from bng_operator.agent.observe.flow import Flow, Point, Source, Verdict
from bng_operator.agent.observe.hub import FlowHub
from bng_operator.agent.observe.hubble import Converter, serve

GOAL = 10_000


def sample(i: int) -> Flow:
    """The i-th flow: the four kinds the node reports, in turn."""
    sub = f"100.64.{(i >> 8) & 0x3f}.{i & 0xff}"
    t = time.time_ns()
    kind = i % 4
    if kind == 0:
        return Flow(t, Source.DHCP, Verdict.FORWARDED, Point.TO_NETWORK, "ack", 3, "access0",
                    "02:aa:00:00:00:01", "02:00:00:00:00:01", (100,), "100.64.0.1", sub, 17,
                    67, 68, 5, sub, i)
    if kind == 1:
        return Flow(t, Source.SLOW_PATH, Verdict.FORWARDED, Point.TO_NETWORK, "offer", 3,
                    "access0", "02:aa:00:00:00:01", "ff:ff:ff:ff:ff:ff", (100,), "100.64.0.1",
                    "255.255.255.255", 17, 67, 68, 2, sub, i)
    if kind == 2:
        return Flow(t, Source.ACCESS, Verdict.DROPPED, Point.NONE, "spoof_source", 3,
                    "access0", "02:00:00:00:00:01", "02:aa:00:00:00:01", (100,), sub,
                    "192.0.2.1", 6, 40000, 443)
    return Flow(t, Source.NAT, Verdict.TRANSLATED, Point.NONE, "new_mapping", 4, "uplink0",
                "02:bb:00:00:00:01", "02:cc:00:00:00:01", (), sub, "192.0.2.1", 6, 40000, 443,
                xlated_addr="203.0.113.1", xlated_port=1024 + i % 60000)


def _env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBLE_")}
    return {**env, "HOME": home, "XDG_CONFIG_HOME": f"{home}/.config"}


def printed(path: str) -> int:
    """The flows the CLI printed into ``path``: its JSON lines."""
    with open(path, "rb") as f:
        data = f.read()
    return data.count(b"\n{") + data.startswith(b"{")


async def cli(port: int, cpus: list[str], home: str, out: str,
              *args: str) -> asyncio.subprocess.Process:
    """The hubble CLI observing the server on ``port`` (``cpus``: a `taskset` prefix),
    printing JSON into ``out`` (and its errors into ``out``.err)."""
    with open(out, "wb") as sink, open(f"{out}.err", "wb") as errors:
        return await asyncio.create_subprocess_exec(
            *cpus, str(hubble_binary()), "observe", "--server", f"127.0.0.1:{port}",
            "-o", "json", *args, stdout=sink, stderr=errors, env=_env(home))


async def last_run(port: int, cpus: list[str], flows: int) -> float:
    """`hubble observe --last N`: flows/s from start to the CLI's exit."""
    with tempfile.TemporaryDirectory(prefix="bng-hubble-") as home:
        out = f"{home}/flows.json"
        t0 = time.perf_counter()
        p = await cli(port, cpus, home, out, "--last", str(flows))
        await p.wait()
        secs = time.perf_counter() - t0
        n = printed(out)
        if p.returncode != 0 or n != flows:
            with open(f"{out}.err") as f:
                err = f.read()[-500:]
            raise RuntimeError(f"hubble observe printed {n} of {flows} flows "
                               f"(exit {p.returncode}): {err}")
    return n / secs


def produce(hub: FlowHub, rate: float, seconds: float, t0: float) -> int:
    """Add ``rate`` flows/s for ``seconds`` from ``t0`` on, from this thread, in the small
    batches a reader of the kernel's flow log makes; the number added."""
    made = 0
    while (now := time.perf_counter()) - t0 < seconds:
        due = int((now - t0) * rate)
        while made < due:
            hub.add(sample(made))
            made += 1
        time.sleep(0.001)
    return made


async def follow_run(hub: FlowHub, port: int, cpus: list[str], seconds: float,
                     rate: float) -> float:
    """`hubble observe --follow` while a thread adds ``rate`` flows/s: the flows/s the CLI
    printed, from the first added to the last printed."""
    with tempfile.TemporaryDirectory(prefix="bng-hubble-") as home:
        out = f"{home}/flows.json"
        p = await cli(port, cpus, home, out, "--follow")
        await asyncio.sleep(1.5)  # connected and following
        t0 = time.perf_counter()
        producer = asyncio.get_running_loop().run_in_executor(
            None, produce, hub, rate, seconds, t0)
        # the file's growth, read by its size: counting lines as they come would take
        # the server's CPU
        size, last_at = 0, t0
        while not producer.done() or time.perf_counter() - last_at < 1.0:
            await asyncio.sleep(0.02)
            if (now := os.stat(out).st_size) != size:
                size, last_at = now, time.perf_counter()
        made = await producer
        p.terminate()
        await p.wait()
        n = printed(out)
        if n == 0:
            with open(f"{out}.err") as f:
                raise RuntimeError(f"hubble observe --follow printed no flow (exit "
                                   f"{p.returncode}): {f.read()[-500:]}")
    if n < made:
        print(f"follow: the CLI printed {n} of {made} flows offered at {rate:.0f}/s (the "
              "hub's ring went round: a slower consumer loses the oldest)", file=sys.stderr)
    return n / (last_at - t0)


async def bench(a: argparse.Namespace, setups: dict[str, list[str]]) -> dict[str, object]:
    """Each setup (a prefix for the results' keys -> the CLI's `taskset` prefix) measured
    --rounds times, the setups taking turns."""
    hub = FlowHub(capacity=a.flows)
    for i in range(a.flows):
        hub.add(sample(i))
    port = free_port()
    server = await serve(hub, Converter("bench-node", "bng-system", lambda f: "mac-02-00"),
                         f"127.0.0.1:{port}", "bench", f"127.0.0.1:{port}")
    last: dict[str, list[float]] = {name: [] for name in setups}
    follow: dict[str, list[float]] = {name: [] for name in setups}
    try:
        for _ in range(a.rounds):
            for name, cpus in setups.items():
                last[name].append(await last_run(port, cpus, a.flows))
                follow[name].append(await follow_run(hub, port, cpus, a.seconds, a.offer))
    finally:
        await server.stop(0)
    out: dict[str, object] = {}
    for name in setups:
        out[f"{name}last_flows_per_s"] = lo = round(statistics.median(last[name]))
        out[f"{name}follow_flows_per_s"] = hi = round(statistics.median(follow[name]))
        out[f"{name}flows_per_s"] = min(lo, hi)
    return out


def taskset(cpus: set[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--flows", type=int, default=50_000, help="flows kept and read with --last")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of a follow run")
    ap.add_argument("--offer", type=float, default=2 * GOAL,
                    help="flows/s added while --follow runs")
    ap.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    ap.add_argument("--cli-cpu", type=int, help="the one CPU the CLI runs on (default: the "
                    "last this process may use)")
    ap.add_argument("--no-shared", action="store_true",
                    help="skip the runs with the CLI on any CPU")
    ap.add_argument("--server-cpu", type=int, help="the one CPU the server runs on (the CLI "
                    "on the others)")
    a = ap.parse_args()
    cpus = os.sched_getaffinity(0)
    if a.server_cpu is not None:
        setups = {"": taskset(cpus - {a.server_cpu})}
        for tid in os.listdir("/proc/self/task"):  # the threads gRPC started at import too
            os.sched_setaffinity(int(tid), {a.server_cpu})
    else:
        a.cli_cpu = max(cpus) if a.cli_cpu is None else a.cli_cpu
        setups = {"": taskset({a.cli_cpu}) if len(cpus) > 1 else []}
        if not a.no_shared:
            setups["shared_"] = []
    sys.setswitchinterval(syscalls.GIL_SWITCH_INTERVAL)  # as run_agent does
    out = asyncio.run(bench(a, setups))
    out["goal_flows_per_s"] = GOAL
    out["goal_met"] = out["flows_per_s"] >= GOAL  # type: ignore[operator]
    out["flows"], out["rounds"], out["offered_flows_per_s"] = a.flows, a.rounds, a.offer
    out["server_cpu"], out["cli_cpu"] = a.server_cpu, a.cli_cpu
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

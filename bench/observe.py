#!/usr/bin/env python3
"""Flows per second the agent's Hubble API serves to Cilium's hubble CLI (issue 18).

    sudo .venv/bin/python bench/observe.py --json

The agent's own server (bng_operator/agent/observe/hubble.py) on loopback, its FlowHub
filled with --flows flows of the kinds the node reports (fast-path ACKs, slow-path OFFERs,
anti-spoofing drops, NAT mappings), each naming a subscriber. Two measurements, each the
median of --rounds runs of the real CLI (hack/hubble/build.sh), its output read and thrown
away as a user's pipe would:

  last:   `hubble observe --last N -o json`: the kept flows, converted, filtered (none),
          streamed and decoded;
  follow: `hubble observe --follow -o json` while flows are added as fast as the hub takes
          them, for --seconds: what a live observer keeps up with.

The peer is no server: the goal is absolute (>= 10,000 flows/s, the issue's). One JSON line:
{"flows_per_s": <the lower of the two>, "last_flows_per_s", "follow_flows_per_s", ...}.

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


CLI_CPUS: list[str] = []  # the CLI's `taskset` prefix, with --server-cpu


def _env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBLE_")}
    return {**env, "HOME": home, "XDG_CONFIG_HOME": f"{home}/.config"}


async def last_run(port: int, flows: int) -> float:
    """`hubble observe --last N`: flows/s from start to the CLI's exit."""
    with tempfile.TemporaryDirectory(prefix="bng-hubble-") as home:
        t0 = time.perf_counter()
        p = await asyncio.create_subprocess_exec(
            *CLI_CPUS, str(hubble_binary()), "observe", "--server", f"127.0.0.1:{port}",
            "-o", "json", "--last", str(flows), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_env(home))
        assert p.stdout is not None and p.stderr is not None
        n = sum([1 async for line in p.stdout if line.startswith(b"{")])
        await p.wait()
        secs = time.perf_counter() - t0
        if p.returncode != 0 or n != flows:
            err = (await p.stderr.read()).decode()[-500:]
            raise RuntimeError(f"hubble observe printed {n} of {flows} flows "
                               f"(exit {p.returncode}): {err}")
    return n / secs


async def follow_run(hub: FlowHub, port: int, seconds: float) -> float:
    """`hubble observe --follow` while flows are added as fast as the hub takes them:
    flows/s the CLI printed, from the first added to the last printed."""
    with tempfile.TemporaryDirectory(prefix="bng-hubble-") as home:
        p = await asyncio.create_subprocess_exec(
            *CLI_CPUS, str(hubble_binary()), "observe", "--server", f"127.0.0.1:{port}",
            "-o", "json", "--follow", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env=_env(home))
        printed, last_at = [0], [0.0]

        async def read() -> None:
            assert p.stdout is not None
            async for line in p.stdout:
                if line.startswith(b"{"):
                    printed[0] += 1
                    last_at[0] = time.perf_counter()

        reader = asyncio.create_task(read())
        await asyncio.sleep(1.5)  # connected and following
        made, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                hub.add(sample(made))
                made += 1
            await asyncio.sleep(0)  # the server's turn
        deadline = time.perf_counter() + 10
        while printed[0] < made and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        p.terminate()
        await p.wait()
        reader.cancel()
    if printed[0] < made:
        print(f"follow: the CLI printed {printed[0]} of {made} flows (the hub's ring went "
              "round: a slower consumer loses the oldest)", file=sys.stderr)
    return printed[0] / (last_at[0] - t0)


async def bench(a: argparse.Namespace) -> dict[str, object]:
    hub = FlowHub(capacity=a.flows)
    for i in range(a.flows):
        hub.add(sample(i))
    port = free_port()
    server = await serve(hub, Converter("bench-node", "bng-system", lambda f: "mac-02-00"),
                         f"127.0.0.1:{port}", "bench", f"127.0.0.1:{port}")
    last, follow = [], []
    try:
        for _ in range(a.rounds):
            last.append(await last_run(port, a.flows))
            follow.append(await follow_run(hub, port, a.seconds))
    finally:
        await server.stop(0)
    return {"last_flows_per_s": round(statistics.median(last)),
            "follow_flows_per_s": round(statistics.median(follow))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--flows", type=int, default=50_000, help="flows kept and read with --last")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of a follow run")
    ap.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    ap.add_argument("--server-cpu", type=int, help="the one CPU the server runs on")
    a = ap.parse_args()
    if a.server_cpu is not None:
        others = os.sched_getaffinity(0) - {a.server_cpu}
        CLI_CPUS[:] = ["taskset", "-c", ",".join(map(str, sorted(others)))]
        for tid in os.listdir("/proc/self/task"):  # the threads gRPC started at import too
            os.sched_setaffinity(int(tid), {a.server_cpu})
    out = asyncio.run(bench(a))
    out["flows_per_s"] = min(out["last_flows_per_s"], out["follow_flows_per_s"])  # type: ignore[type-var]
    out["goal_flows_per_s"] = GOAL
    out["goal_met"] = out["flows_per_s"] >= GOAL  # type: ignore[operator]
    out["flows"], out["rounds"], out["server_cpu"] = a.flows, a.rounds, a.server_cpu
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

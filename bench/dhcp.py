#!/usr/bin/env python3
"""DHCP throughput of bng against Kea in the same run, on the same namespaces.

    sudo .venv/bin/python bench/dhcp.py --scenario new --json

    sudo .venv/bin/python bench/dhcp.py --scenario known --json

For each server, perfdhcp (single-threaded, as a relay: giaddr set) runs DORA at increasing
rates; each trial starts the server afresh with an empty lease store.
  new:   every exchange is a new client (bng: the slow path, which commits each lease when
         it offers it, so that the XDP program ACKs the REQUEST: BNGNode
         spec.commitAtOffer, "bng_config" in the output; --commit-at-request measures the
         default, where the slow path answers both).
  known: KNOWN_CLIENTS MACs are bound first (preload, not timed), then the timed run draws
         its clients from the same MACs: the CPE an ISP already knows (bng: the XDP fast
         path; its counters are checked to say how many replies came from it).
A trial's rate counts only the ACKs that arrive within its timed period (perfdhcp's own
"Rate" also counts those of its exit wait); its drops count every reply up to 0.5 s later.
The highest rate with at most 2.5% drops (on DISCOVER-OFFER and REQUEST-ACK alike) is that
server's result; a rate fails only when two trials of it in a row drop more (one trial that a
stall of this noisy VM spoiled ended searches far below the rate served). One JSON line:
{"scenario", "bng", "peer", "ratio", "bng_config", "bng_delay_ms", ...}.
new then runs bng and Kea's best configuration past that result (the peak): three trials
at 80% of it with every exchange timed (perfdhcp -x t), for "p99_ms_at_80pct" and "at_80pct"
(each delay the median of the three trials', every trial's p99 in "p99_trials": one trial's
p99 moved 3x between runs); and once offered twice its rate, for "overload_2x" (the goodput
past saturation, as a fraction of the peak; "sent" says what perfdhcp managed to send).
"bng_cores" is the CPUs' worth bng kept busy in its best trial; "cores" says that and the
CPUs each server may use.
perfdhcp tops out near 30k DISCOVER/s here; "generator_limited" says when bng's best trial
still had no drops at the highest rate perfdhcp could send (bng is then faster than shown).
With perfdhcp, bng's XDP program runs in generic mode: on veth, native mode leaves too
little tailroom to grow perfdhcp's short requests into replies (see bpf/README.md).

Kea 2.2 (memfile, an equivalent pool) runs the same trials in each of KEA_CONFIGS:
single-threaded; multi-threaded; and single-threaded with its lease cache (cache-threshold:
a renewal of a recently written lease is answered without writing it again). "peer" is the
best of them, "peer_name" says which, and "peer_configs" has each one's result. Searches
after the first start at the doubling step below half the first's result (grid_start).
Note that Kea's memfile appends leases without fsync, while bng fsyncs each group commit
before its ACKs.

known also runs both servers against an in-kernel generator (bng_lab/dhcpgen.py), which
sends far faster than perfdhcp: KNOWN_CLIENTS_KERNEL clients are bound first, then DORA
trials run at paced rates (and unpaced: as fast as one core sends), counted as above (the
generator counts an ACK in the window when it arrives before its sending ends), with each
Kea configuration. Its results are the
top-level "bng", "peer" and "ratio" of the known scenario; perfdhcp's are under
"perfdhcp", and "ratio_vs_peer_best" divides by Kea's better result of the two (Kea does
worse with this generator: see KEA_RCVBUF_FACTOR). bng runs in native XDP mode there.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import marshal
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

from bng_lab import dhcpgen, perfdhcp, profiled
from bng_lab.dhcp_env import config_from
from bng_lab.messages import request
from bng_lab.netlab import NetLab, remove_leftovers
from bng_lab.site import Site
from bng_operator import netlink
from bng_operator.agent.dhcp.codec import MessageType, decode, encode
from bng_operator.agent.dhcp.lease_writer import LeaseWriter, open_db
from bng_operator.agent.dhcp.leases import LeaseStore
from bng_operator.agent.dhcp.server import Context, DhcpServer
from bng_operator.agent.dhcp.transport import build_frame, parse_frame, reply_destination

REPO = Path(__file__).resolve().parents[1]
# What the known scenario measures, said in its output: not like for like.
KNOWN_COMPARES = ("bng's XDP cache hit (a renewal answered in the kernel from the fast "
                  "path's maps) against Kea answering the same renewal in userspace")

T = TypeVar("T")
# one search with the in-kernel generator: the best trial, every trial, bng's replies by path
KernelRun = tuple[dhcpgen.Result | None, list[dhcpgen.Result], dict[str, float]]
MAX_DROPS = 2.5  # percent
KNOWN_CLIENTS = 500
KNOWN_CLIENTS_KERNEL = 4096
KEA_RCVBUF_FACTOR = 4  # see kernel_search
# perfdhcp's receive buffer (it has no setting; its socket takes net.core.rmem_default).
# At the default, 208 KiB, its one socket dropped the replies of bursts: 1,339 of 40,000 at
# 4,000 new sessions/s with RADIUS auth (3.3%, most of the 4.2% perfdhcp called drops), where
# bng had answered every request. A network of CPE has a socket each.
GENERATOR_RCVBUF = 4 << 20
CIDR = "100.64.0.0/14"
GATEWAY, RELAY = dhcpgen.GATEWAY, dhcpgen.RELAY


def event_loop_cpu(choice: str) -> int | None:
    """``--event-loop-cpu``: "auto" is the last CPU this process may use when it may use two
    or more (the agent's process there, its helpers on the others: BNGNode
    spec.eventLoopCPU, docs/tuning.md), "none" leaves both to the kernel."""
    if choice == "none":
        return None
    if choice == "auto":
        cpus = os.sched_getaffinity(0)
        return max(cpus) if len(cpus) > 1 else None
    return int(choice)


def bng_config(commit_at_offer: bool, cpu: int | None) -> str:
    """The benchmark's node; new: bng commits each offer and its XDP program ACKs the
    REQUEST (BNGNode spec.commitAtOffer); --commit-at-request measures the default, where
    the slow path answers both."""
    return dhcpgen.site_config(CIDR, 16, "1h", commit_at_offer=commit_at_offer,
                               event_loop_cpu=cpu)


# Kea 2.2 in each configuration it runs in, by the name the output gives it: what it adds to
# kea_config(), and how "peer_name" says it. This machine has two CPUs and the generator
# keeps one of them busy; ISC found 7 queued packets per thread best with memfile (Kea ARM
# 2.2, "Multi-Threading Settings With Different Database Backends").
KEA_THREADS = 2
KEA_CONFIGS: dict[str, tuple[dict[str, object], str]] = {
    "single-threaded": ({}, "single-threaded"),
    "multi-threaded": (
        {"multi-threading": {"enable-multi-threading": True, "thread-pool-size": KEA_THREADS,
                             "packet-queue-size": 7 * KEA_THREADS}},
        f"multi-threaded (thread-pool-size {KEA_THREADS}, packet-queue-size {7 * KEA_THREADS})"),
    # A renewal of a lease written less than a quarter of its lifetime (at most 15 minutes)
    # ago gets that lease as it is, without a write: Kea's answer to bng's fast path.
    "cache-threshold": ({"cache-threshold": 0.25, "cache-max-age": 900},
                        "single-threaded, lease cache (cache-threshold 0.25, cache-max-age 900)"),
}


def kea_config(workdir: Path, name: str = "single-threaded") -> dict[str, object]:
    return {"Dhcp4": {
        "interfaces-config": {"interfaces": ["access0"], "dhcp-socket-type": "raw"},
        "lease-database": {"type": "memfile", "persist": True,
                           "name": str(workdir / "kea-leases4.csv"), "lfc-interval": 0},
        "multi-threading": {"enable-multi-threading": False},
        "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 3150,
        **KEA_CONFIGS[name][0],
        "subnet4": [{"id": 1, "subnet": CIDR, "pools": [{"pool": "100.64.0.3-100.67.255.254"}],
                     "option-data": [{"name": "routers", "data": GATEWAY},
                                     {"name": "domain-name-servers", "data": "192.0.2.53"}]}],
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                     "output_options": [{"output": str(workdir / "kea.log")}]}],
    }}


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent not idle so far, all CPUs (/proc/stat: user to
    softirq; not idle, iowait, nor steal, the time the hypervisor ran others)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:7]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """A process's child processes (bng's lease writer is a process of the agent's)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def process_cpu_seconds(pid: int) -> float:
    """A process's CPU so far: user and system, all its threads, and its children's, from
    /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for child in _children(pid):
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += process_cpu_seconds(child)
    return total


def process_cpus(pid: int) -> set[int]:
    """The CPUs a process, any of its threads or any of its children may run on (bng's
    agent and its helpers may each have their own: spec.eventLoopCPU)."""
    cpus: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            cpus |= os.sched_getaffinity(int(task.name))
    for child in _children(pid):
        with contextlib.suppress(OSError):
            cpus |= process_cpus(child)
    return cpus


@dataclass
class Trial:
    rate: int
    seconds: int
    report: perfdhcp.Report
    by_path: dict[str, float] = field(default_factory=dict)  # bng, known: replies by path
    cpu_s: float = 0.0  # the server process's CPU (all threads, user and system) in the run
    wall_s: float = 0.0  # how long perfdhcp ran (its exit wait too): cpu_s's period
    cores_allowed: int = 0  # the CPUs the server may run on
    timers: dict[str, list[float]] = field(default_factory=dict)  # with -x t: delays in ms
    generator_lost: int = 0  # replies perfdhcp's socket dropped (its buffer full)
    machine_s: float = 0.0  # the whole machine's busy CPU in the run (server, perfdhcp, kernel)

    @property
    def cores_used(self) -> float:
        """The CPUs the server kept busy on average while perfdhcp ran."""
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def others_cores(self) -> float:
        """The CPUs kept busy by all but the server (perfdhcp, the kernel's network work
        outside the server's threads, anything else) while perfdhcp ran."""
        return max(0.0, self.machine_s - self.cpu_s) / self.wall_s if self.wall_s else 0.0

    @property
    def budget_us(self) -> float:
        """The CPU a DORA that this machine leaves a server at this trial's rate: its CPUs
        less what the others kept busy, over the DORAs done (us)."""
        if not self.done:
            return 0.0
        return max(0.0, (os.cpu_count() or 1) - self.others_cores) * 1e6 / self.done

    @property
    def cpu_us(self) -> float:
        """The server's CPU an exchange (a DORA), in us: over the perfdhcp run, all ACKs.
        CPU time, not wall time; the VM's speed still moves it (88-132 us for Kea, one quiet
        hour apart)."""
        return self.cpu_s * 1e6 / max(self.report.request.received, 1)

    @property
    def done(self) -> float:
        """DORAs completed per second: the ACKs that arrived within the timed period (not
        those of perfdhcp's exit wait, which its own rate counts), over that period."""
        assert self.report.acks_in_period is not None
        return self.report.acks_in_period / self.seconds

    @property
    def drops(self) -> float:
        return max(self.report.discover.drops_ratio, self.report.request.drops_ratio)

    @property
    def ok(self) -> bool:
        return self.drops <= MAX_DROPS and self.report.request.received > 0


class Servers:
    """Start and stop bng, or Kea in one of KEA_CONFIGS, in the site's bng namespace, each
    time from nothing. ``which`` is "bng" or the name of a Kea configuration."""

    def __init__(self, site: Site, workdir: Path) -> None:
        self.site, self.workdir = site, workdir
        self.kea: subprocess.Popen[bytes] | None = None

    def fast_counters(self, which: str) -> dict[str, float]:
        """bng's requests by path and result, and the fast path's passes."""
        if which != "bng":
            return {}
        return {k: v for k, v in self.site.metrics().items()
                if k.startswith(("bng_dhcp_requests_total{", "bng_fastpath_passes_total{"))}

    def _process(self, which: str) -> subprocess.Popen[bytes] | None:
        return self.site.agent if which == "bng" else self.kea

    def cpu_seconds(self, which: str) -> float:
        """The running server's CPU so far: user and system, all its threads."""
        proc = self._process(which)
        return process_cpu_seconds(proc.pid) if proc is not None else 0.0

    def cores_allowed(self, which: str) -> int:
        """The CPUs the running server may use (its processes' affinities)."""
        proc = self._process(which)
        return len(process_cpus(proc.pid)) if proc is not None else 0

    def settle(self, timeout: float = 60) -> None:
        """Wait for the agent's start-up work to end: DHCP is served (ready) before the fast
        path has compiled and attached, and that compile takes seconds of a CPU, which would
        count against the trial. A node serves a mass reconnect long after it started."""
        program = f'bng_ebpf_program_attached{{interface="{self.site.access}",program="xdp_dhcp"}}'
        deadline = time.monotonic() + timeout
        while self.site.metrics().get(program) != 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fast path did not attach within {timeout}s")
            time.sleep(0.2)
        while time.monotonic() < deadline:  # then its CPU goes quiet: < 5% of one for 0.5 s
            before = self.cpu_seconds("bng")
            time.sleep(0.5)
            if self.cpu_seconds("bng") - before < 0.025:
                return

    def start(self, which: str, xdp_mode: str = "generic") -> None:
        if which == "bng":
            shutil.rmtree(self.site.state_dir, ignore_errors=True)
            # veth gives native XDP ~32 bytes of tailroom; perfdhcp's 262-byte requests need
            # 38 more for a 300-byte reply. Generic XDP has room (a NIC driver gives a page,
            # as does the in-kernel generator).
            self.site.start_agent("--log-level", "warning", "--xdp-mode", xdp_mode)
            self.settle()
            return
        for f in self.workdir.glob("kea-leases4.csv*"):
            f.unlink()
        cfg = self.workdir / "kea.json"
        cfg.write_text(json.dumps(kea_config(self.workdir, which)))
        env = {**os.environ, "KEA_PIDFILE_DIR": str(self.workdir),
               "KEA_LOCKFILE_DIR": str(self.workdir)}
        self.kea = subprocess.Popen(["ip", "netns", "exec", self.site.bng, "kea-dhcp4", "-c",
                                     str(cfg)], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        if self.kea.poll() is not None:
            raise RuntimeError(f"kea-dhcp4 exited: {(self.workdir / 'kea.log').read_text()}")

    def stop(self, which: str) -> None:
        if which == "bng":
            self.site.stop_agent()
        elif self.kea is not None:
            self.kea.send_signal(signal.SIGTERM)
            self.kea.wait(timeout=15)
            self.kea = None


def perfdhcp_report(r: subprocess.CompletedProcess[str]) -> perfdhcp.Report:
    """perfdhcp's report of its timed period; RuntimeError with its output if it gave none."""
    try:
        report = perfdhcp.parse(r.stdout)
    except ValueError as e:
        raise RuntimeError(f"perfdhcp failed ({r.returncode}): {r.stderr[-1500:]}") from e
    if report.acks_in_period is None:
        raise RuntimeError(f"perfdhcp printed no report at the end of its period:\n"
                           f"{r.stdout[-1500:]}")
    return report


@contextlib.contextmanager
def default_rcvbuf(size: int) -> Iterator[None]:
    """net.core.rmem_default at ``size`` while the block runs: the receive buffer of the
    sockets made meanwhile that set none (global: not per namespace; put back after)."""
    rmem = Path("/proc/sys/net/core/rmem_default")
    before = rmem.read_text()
    rmem.write_text(str(size))
    try:
        yield
    finally:
        rmem.write_text(before)


def udp_rcvbuf_errors(site: Site) -> int:
    """Datagrams the kernel dropped so far in the generator's namespace because a socket's
    receive buffer was full (/proc/net/snmp, Udp: RcvbufErrors)."""
    lines = [ln.split() for ln in site.lab.run(site.subscribers[0], "cat", "/proc/net/snmp")
             .stdout.splitlines() if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def _perfdhcp(site: Site, rate: int, seconds: int, clients: list[str],
              extra: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], int]:
    """Replies are counted at the end of the period (the rate) and after 0.5 s more (drops).
    perfdhcp's one socket gets ``GENERATOR_RCVBUF``; the replies it still dropped for a full
    buffer come back too (they count as the server's drops in perfdhcp's report)."""
    before = udp_rcvbuf_errors(site)
    with default_rcvbuf(GENERATOR_RCVBUF):
        r = site.lab.run(site.subscribers[0], "perfdhcp", "-4", "-g", "single", "-l", RELAY,
                         "-r", str(rate), *perfdhcp.timed(seconds), *clients, "-W", "500000",
                         *extra, GATEWAY, check=False, timeout=seconds + 60)
    return r, udp_rcvbuf_errors(site) - before


def replies_by_path(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """bng's replies between two fast_counters() readings, by path (fast: by XDP)."""
    d = {k: v - before.get(k, 0) for k, v in after.items()}
    return {p: sum(v for k, v in d.items() if f'path="{p}"' in k) for p in ("fast", "slow")}


def step_search(run: Callable[[int], T], ok: Callable[[T], bool], top: int,
                stop: Callable[[], bool] = lambda: False, start: int = 1000,
                step: int = 250, tries: int = 2) -> T | None:
    """Double the rate from ``start`` until a rate is not ``ok`` (or ``stop()`` says there
    is no point going on); if the first is not, halve it until one is (down to 250). Then
    bisect three times between the last good and the failed rate, to within ``step`` (or a
    tenth of the good rate). A rate fails only when ``tries`` trials in a row fail: on a
    noisy machine one trial that a stall spoiled would otherwise end a search far below
    what the server serves (the same for every server searched). Returns the best good
    trial."""
    best: T | None = None

    def attempt(rate: int) -> T | None:
        for _ in range(tries):
            t = run(rate)
            if ok(t):
                return t
        return None

    good, rate, fail = 0, start, None
    while rate <= top:
        t = attempt(rate)
        if t is None:
            fail = rate
            break
        best, good, rate = t, rate, rate * 2
        if stop():
            return best
    while best is None and fail is not None and fail > 250:
        t = attempt(fail // 2)
        if t is not None:
            best, good = t, fail // 2
        else:
            fail //= 2
    hi = fail or rate
    for _ in range(3):
        if hi - good <= max(step, good // 10):
            break
        mid = (good + hi) // 2
        t = attempt(mid)
        if t is not None:
            best, good = t, mid
        else:
            hi = mid
    return best


def trial(site: Site, servers: Servers, which: str, rate: int, seconds: int,
          macs: Path | None, timed_exchanges: bool = False) -> Trial:
    """One perfdhcp run against a fresh server; with ``timed_exchanges``, every exchange's
    delay too (perfdhcp -x t)."""
    servers.start(which)
    try:
        clients = ["-R", str(rate * seconds * 2)]
        if macs is not None:  # bind every MAC first (drawn at random: ~7x covers them all)
            clients = ["-M", str(macs)]
            _perfdhcp(site, 1000, KNOWN_CLIENTS * 7 // 1000 + 1, clients)
        before = servers.fast_counters(which)
        cpu0, busy0, t0 = servers.cpu_seconds(which), machine_busy_seconds(), time.monotonic()
        r, lost = _perfdhcp(site, rate, seconds, clients,
                            ("-x", "t") if timed_exchanges else ())
        wall = time.monotonic() - t0
        cpu = servers.cpu_seconds(which) - cpu0
        busy = machine_busy_seconds() - busy0
        by_path = {}
        if macs is not None and which == "bng":
            by_path = replies_by_path(before, servers.fast_counters(which))
        return Trial(rate, seconds, perfdhcp_report(r), by_path, cpu, wall,
                     servers.cores_allowed(which),
                     perfdhcp.timers(r.stdout) if timed_exchanges else {}, lost, busy)
    finally:
        servers.stop(which)


LATENCY_LOAD = 0.8  # the seed's slow-path delay bound holds at 80% of the peak
# Timed trials at LATENCY_LOAD, their delays reported as the median trial's: one trial's
# p99 moved 3x between runs of the same code (23.9, 30.7, 82.6 ms DISCOVER-OFFER)
LATENCY_TRIALS = 3
OVERLOAD = 2
EXCHANGES = (("discover_offer", "DISCOVER-OFFER"), ("request_ack", "REQUEST-ACK"))


@dataclass
class Beyond:
    """A server's runs past its search, around its peak (its best trial): delays at
    LATENCY_LOAD of the peak (LATENCY_TRIALS trials), and goodput when offered OVERLOAD
    times it."""
    peak: Trial
    at_load: list[Trial]
    overloaded: Trial

    def delays_ms(self) -> dict[str, dict[str, Any]]:
        """By exchange: p50, p99 and max delay at LATENCY_LOAD, each the median of the
        trials' own; every trial's p99 (``p99_trials``), and the exchanges timed in all."""
        out: dict[str, dict[str, Any]] = {}
        for key, name in EXCHANGES:
            runs = [t.timers.get(name, []) for t in self.at_load]
            p99s = [perfdhcp.percentile(ms, 99) for ms in runs]
            out[key] = {"p50": _median([perfdhcp.percentile(ms, 50) for ms in runs]),
                        "p99": _median(p99s),
                        "max": _median([max(ms) if ms else math.nan for ms in runs]),
                        "p99_trials": [round(v, 3) for v in p99s],
                        "exchanges": sum(len(ms) for ms in runs)}
        return out

    def at_load_summary(self) -> dict[str, object]:
        ts = self.at_load
        return {"rate": ts[0].rate, "done": [round(t.done) for t in ts],
                "drops": [round(t.drops, 2) for t in ts], "delay_ms": self.delays_ms()}

    def overload_summary(self) -> dict[str, object]:
        o = self.overloaded
        return {"offered": o.rate, "sent": round(o.report.discover.sent / o.seconds),
                "served": round(o.done), "peak": round(self.peak.done),
                "of_peak": round(o.done / self.peak.done, 3), "drops": round(o.drops, 2)}


def _median(values: list[float]) -> float | None:
    """The middle value (of an even count, the lower middle), rounded; None if every value
    is NaN (a trial that timed nothing)."""
    kept = sorted(v for v in values if not math.isnan(v))
    return round(kept[(len(kept) - 1) // 2], 3) if kept else None


def beyond(site: Site, servers: Servers, which: str, peak: Trial, seconds: int,
           log: bool) -> Beyond:
    """Delays at LATENCY_LOAD of ``peak`` (LATENCY_TRIALS trials, every exchange timed),
    then OVERLOAD times its rate offered, new clients each time."""
    rate = round(LATENCY_LOAD * peak.done)
    at_load = [trial(site, servers, which, rate, seconds, None, timed_exchanges=True)
               for _ in range(LATENCY_TRIALS)]
    over = trial(site, servers, which, OVERLOAD * peak.rate, seconds, None)
    b = Beyond(peak, at_load, over)
    if log:
        d = b.delays_ms()
        print(f"  {which:15} at {rate}/s: p99 DISCOVER-OFFER {d['discover_offer']['p99']} ms "
              f"(trials {d['discover_offer']['p99_trials']}), REQUEST-ACK "
              f"{d['request_ack']['p99']} ms ({d['request_ack']['p99_trials']}); "
              f"offered {over.rate}/s: {over.done:.0f}/s served "
              f"({over.done / peak.done:.0%} of its peak)", file=sys.stderr)
    return b


def generator_limited(trials: list[Trial]) -> bool:
    """perfdhcp fell short of its asked rate by far more than at the lowest rate (where it
    always completes nearly all of it) without the server dropping anything."""
    if not trials:
        return False
    usual = trials[0].done / trials[0].rate
    return any(t.ok and t.done < 0.8 * usual * t.rate for t in trials)


def search(site: Site, servers: Servers, which: str, seconds: int, log: bool,
           macs: Path | None, start: int = 1000) -> tuple[Trial | None, list[Trial]]:
    """Double the rate from ``start`` until drops exceed the limit, then bisect between the
    last two."""
    trials: list[Trial] = []

    def run(rate: int) -> Trial:
        t = trial(site, servers, which, rate, seconds, macs)
        trials.append(t)
        if log:
            fast = ""
            if t.by_path:
                fast = " (replies by path: " + ", ".join(
                    f"{p} {n:.0f}" for p, n in t.by_path.items()) + ")"
            print(f"  {which:15} {rate:6}/s -> {t.done:8.0f}/s done, drops {t.drops:5.2f}% "
                  f"{'ok' if t.ok else 'too many'}, {t.cpu_us:5.0f} us CPU a DORA{fast}"
                  f"{f', perfdhcp lost {t.generator_lost}' if t.generator_lost else ''}",
                  file=sys.stderr)
        return t

    # perfdhcp cannot send faster: nothing to bisect
    best = step_search(run, lambda t: t.ok, 64000, stop=lambda: generator_limited(trials),
                       start=start)
    return best, trials


def kernel_search(site: Site, servers: Servers, which: str, seconds: float,
                  start: int = 1000) -> KernelRun:
    """The known scenario with the in-kernel generator: bind KNOWN_CLIENTS_KERNEL clients,
    then try unpaced; if that drops too much, double a paced rate from ``start``
    exchanges/s until it does, and bisect. Returns the best trial, all trials, and bng's
    replies by path over the trials."""
    access_mac = bytes.fromhex(site.access_mac().replace(":", ""))
    relay_mac = bytes.fromhex(
        netlink.interface_info("eth0", site.subscribers[0])[1].replace(":", ""))
    rmem = Path("/proc/sys/net/core/rmem_default")  # global: not per namespace
    rmem_before = rmem.read_text()
    kea = which != "bng"
    if kea:
        # Frames from the generator reach Kea's socket as skbs on whole pages (4 KiB of
        # truesize where perfdhcp's take ~1 KiB), so its default buffer would hold a
        # quarter of the packets. Kea has no setting for it; its socket takes the default.
        rmem.write_text(str(int(rmem_before) * KEA_RCVBUF_FACTOR))
    try:
        servers.start(which, xdp_mode="native")
    finally:
        rmem.write_text(rmem_before)
    gen = dhcpgen.Generator(site.switch, "up0", KNOWN_CLIENTS_KERNEL, GATEWAY, access_mac,
                            RELAY, relay_mac,
                            into_stack=(site.bng, site.access) if kea else None)
    trials: list[dhcpgen.Result] = []
    server = servers.kea if kea else site.agent
    assert server is not None
    others = os.sched_getaffinity(0) - {gen.cpu}
    if others:  # the generator spins on its CPU for the whole trial; every thread moves
        for tid in os.listdir(f"/proc/{server.pid}/task"):
            os.sched_setaffinity(int(tid), others)
    try:
        gen.preload()
        before = servers.fast_counters(which)

        def run(rate: int | None) -> dhcpgen.Result:
            r = gen.run(rate, seconds)
            trials.append(r)
            print(f"  {which:15} {rate or 'unpaced':>8} -> {r.leases_rate:9.0f} leases/s "
                  f"(sent {r.sent_rate:.0f}/s), drops {r.drops:5.2f}% "
                  f"{'ok' if r.drops <= MAX_DROPS else 'too many'}", file=sys.stderr)
            if r.drops > MAX_DROPS:
                time.sleep(2)  # the server's backlog drains before the next trial
            return r

        def ok(r: dhcpgen.Result) -> bool:
            return r.drops <= MAX_DROPS

        unpaced = run(None)
        best = unpaced if ok(unpaced) else step_search(run, ok, 1_000_000, start=start)
        by_path = {} if kea else replies_by_path(before, servers.fast_counters(which))
        return best, trials, by_path
    finally:
        gen.close()
        servers.stop(which)


def _kernel_trial(r: dhcpgen.Result) -> tuple[int | str, float, float]:
    return (r.rate or "unpaced", round(r.leases_rate), round(r.drops, 2))


def profile(site: Site, servers: Servers, rate: int, seconds: int, macs: Path | None,
            top: int = 30) -> None:
    """One trial of bng at ``rate`` under cProfile (bng_lab/profiled.py); its own time per
    exchange by function, on stderr: where a DORA's CPU goes."""
    out = servers.workdir / "agent.prof"
    site.wrap = (sys.executable, "-m", "bng_lab.profiled", str(out))
    try:
        t = trial(site, servers, "bng", rate, seconds, macs)
    finally:
        site.wrap = ()
    text, st = profiled.summary(str(out), top, "bng_operator|sqlite")
    exchanges = max(t.done * seconds, 1)
    # The loop's work for requests (start-up excluded): frames read and decided, and the
    # replies sent (with their session events) once their commit is on disk.
    per = {f[2]: v[3] * 1e6 / exchanges for f, v in st.stats.items()  # type: ignore[attr-defined]
           if f[2] in ("_on_readable", "_step", "_send_committed")}
    print(f"--- bng: {rate}/s for {seconds} s, {t.done:.0f}/s done, drops {t.drops:.2f}%; "
          f"us of the loop's CPU an exchange (DORA), profiler overhead included: "
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items()))
          + f", together {sum(per.values()):.1f}\n{text}", file=sys.stderr)


FLOOR_CLIENTS = 4000


def slow_path_floor_us(config_text: str, n: int = FLOOR_CLIENTS) -> dict[str, float]:
    """What bng's slow path costs a new client's DISCOVER in Python, in process (us of CPU
    each; the collector off): ``parse`` (the frame and the message), ``decide`` (the state
    machine with ``config_text``: classification, allocation, the offer, committed at offer
    when the config says so), ``reply`` (encoding the OFFER and its frame), ``bind`` (with
    commitAtOffer: the session bound once XDP has ACKed, as the refresh log makes the agent
    do), ``store`` (the lease writer's SQLite rows in batches of 32, each fsync'd). No socket, no feature, no
    event loop: a floor under the real cost, not an estimate of it."""
    with tempfile.TemporaryDirectory(prefix="bng-floor-") as tmp:
        (Path(tmp) / "bench.yaml").write_text(config_text)
        store = LeaseStore(Path(tmp) / "leases.sqlite")  # its queue only: no commit
        server = DhcpServer(config_from([Path(tmp)]), store)
        ctx = Context("access0", (IPv4Address(GATEWAY),))
        mac = bytes.fromhex("020000000001")
        frames = []
        for i in range(n):
            m = request(MessageType.DISCOVER, f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:"
                        f"{i >> 8 & 255:02x}:{i & 255:02x}", xid=i, giaddr=RELAY,
                        prl=bytes([1, 3, 6, 15, 51, 54]))
            frames.append(build_frame(mac, mac, b"", IPv4Address(RELAY), IPv4Address(GATEWAY),
                                      67, encode(m, list(m.options)), src_port=67))
        gc.collect()
        gc.disable()
        try:
            t = time.process_time()
            parsed = [(f, decode(f.payload)) for f in map(parse_frame, frames)]
            t_parse = time.process_time() - t
            t = time.process_time()
            outs = [server.handle(msg, ctx) for _, msg in parsed]
            t_decide = time.process_time() - t
            t = time.process_time()
            for (f, msg), o in zip(parsed, outs, strict=True):
                assert o.reply is not None, o.drop
                dst_mac, dst_ip, dst_port = reply_destination(msg, o.reply, f)
                build_frame(dst_mac, mac, f.tags, o.server_id, dst_ip, dst_port,
                            encode(o.reply, o.reply_order))
            t_reply = time.process_time() - t
            t = time.process_time()
            if server.config.commit_at_offer:  # the ACK is XDP's; the session is bound here
                until = time.time() + 3600
                for o in outs:
                    assert o.reply is not None
                    server.extend(int(o.reply.yiaddr), until)
            t_bind = time.process_time() - t
            writer = LeaseWriter(open_db(store.path))
            rows = store._pending  # what commit() would seal for the writer
            batches = [marshal.dumps(rows[i:i + 32]) for i in range(0, len(rows), 32)]
            t = time.process_time()
            for b in batches:  # as the writer process gets them: marshalled frames
                writer.write(marshal.loads(b))
            t_store = time.process_time() - t
        finally:
            gc.enable()
            store.close()
    per = {"parse": t_parse, "decide": t_decide, "reply": t_reply, "bind": t_bind,
           "store": t_store}
    out = {k: round(v * 1e6 / n, 1) for k, v in per.items()}
    out["total"] = round(sum(per.values()) * 1e6 / n, 1)
    return out


def relay_site(workdir: Path, configs: dict[str, str]) -> Site:
    """A site with one subscriber namespace, where perfdhcp plays a relay, and a bng
    namespace for the server. ``configs``: directory name (under ``workdir``) -> its
    configuration; the agent starts with the first (``Site.config`` chooses another)."""
    dirs = []
    for name, text in configs.items():
        (workdir / name).mkdir()
        (workdir / name / "bench.yaml").write_text(text)
        dirs.append(workdir / name)
    site = Site(NetLab(), workdir, dirs[:1]).build(subscribers=1)
    # perfdhcp (v4) plays a relay: it binds this address and puts it in giaddr.
    netlink.add_address("eth0", f"{RELAY}/20", site.subscribers[0])
    return site


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", choices=["new", "known"], default="new")
    ap.add_argument("--seconds", type=int, default=5, help="length of each trial")
    ap.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    ap.add_argument("--skip-perfdhcp", action="store_true",
                    help="known: only the in-kernel generator")
    ap.add_argument("--commit-at-request", action="store_true",
                    help="new: bng with BNGNode spec.commitAtOffer off (its default): the slow "
                         "path answers both DISCOVER and REQUEST")
    ap.add_argument("--event-loop-cpu", default="auto", metavar="auto|none|CPU",
                    help="bng's BNGNode spec.eventLoopCPU (default: %(default)s: the last "
                         "CPU, if there are two or more)")
    ap.add_argument("--bng-only", action="store_true",
                    help="search bng's rate alone (no Kea, so no ratio): to compare two "
                         "versions of bng, run one after the other")
    ap.add_argument("--no-beyond", action="store_true",
                    help="new: skip the runs past the search (delays at 80%% of each "
                         "server's peak, goodput at twice it)")
    ap.add_argument("--profile", type=int, metavar="RATE",
                    help="only: one trial at RATE with the agent under cProfile (its event "
                         "loop's thread), the functions with the most own time on stderr")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/dhcp.py needs root (network namespaces)", file=sys.stderr)
        return 2
    remove_leftovers()
    workdir = Path(tempfile.mkdtemp(prefix="bng-bench-"))
    commit_at_offer = args.scenario == "new" and not args.commit_at_request
    cpu = event_loop_cpu(args.event_loop_cpu)
    config = bng_config(commit_at_offer, cpu)
    site = relay_site(workdir, {"config": config})
    servers = Servers(site, workdir)
    macs = None
    if args.scenario == "known":
        macs = workdir / "macs.txt"
        macs.write_text("".join(f"02:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01\n"
                                for i in range(KNOWN_CLIENTS)))
    perf: dict[str, tuple[Trial | None, list[Trial]]] = {}
    kernel: dict[str, KernelRun] = {}
    past: dict[str, Beyond] = {}  # by role: "bng", "peer" (Kea's best configuration)
    first = next(iter(KEA_CONFIGS))
    try:
        if args.profile:
            profile(site, servers, args.profile, args.seconds, macs)
            return 0
        if not (args.skip_perfdhcp and args.scenario == "known"):
            perf["bng"] = search(site, servers, "bng", args.seconds, True, macs)
            for name in () if args.bng_only else KEA_CONFIGS:
                b0 = perf[first][0] if name != first else None
                perf[name] = search(site, servers, name, args.seconds, True, macs,
                                    start=grid_start(b0.rate if b0 else None))
        if args.scenario == "new" and not args.no_beyond:
            kea_best = best_config({n: t.done if t else 0.0 for n, (t, _) in perf.items()
                                    if n != "bng"})
            sides: list[tuple[str, str | None]] = [("bng", "bng"), ("peer", kea_best)]
            for role, server in sides:
                peak = perf[server][0] if server else None
                if server and peak:
                    past[role] = beyond(site, servers, server, peak, args.seconds, True)
        if args.scenario == "known" and not args.bng_only:
            kernel["bng"] = kernel_search(site, servers, "bng", min(args.seconds, 3))
            for name in KEA_CONFIGS:
                k0 = kernel[first][0] if name != first else None
                kernel[name] = kernel_search(site, servers, name, min(args.seconds, 3),
                                             start=grid_start(k0.rate if k0 else None))
    finally:
        site.close()
        shutil.rmtree(workdir, ignore_errors=True)
    bng, bng_trials = perf.get("bng", (None, []))
    peer_rates = {n: t.done if t else 0.0 for n, (t, _) in perf.items() if n != "bng"}
    peer = best_config(peer_rates)
    kea, kea_trials = perf[peer] if peer else (None, [])
    b = bng.done if bng else 0.0
    k = kea.done if kea else 0.0
    out: dict[str, object] = {
        "scenario": args.scenario,
        "bng": round(b), "peer": round(k), "peer_name": peer_name(peer),
        "ratio": round(b / k, 3) if k else None,
        "bng_config": {"commitAtOffer": commit_at_offer, "eventLoopCPU": cpu},
        # Kea's result in each configuration; "peer" is the best of them
        "peer_configs": {n: round(r) for n, r in peer_rates.items()},
        "unit": "DORA/s (ACKs received within the timed period)",
        # Each server's CPU (all threads, user + system; network softirqs that land on its
        # threads too) a DORA in its best trial: what its rate is made of.
        "cpu_us_per_dora": {"bng": round(bng.cpu_us, 1) if bng else None,
                            "peer": round(kea.cpu_us, 1) if kea else None,
                            "peer_configs": {n: round(t.cpu_us, 1) if t else None
                                             for n, (t, _) in perf.items() if n != "bng"}},
        "bng_delay_ms": {
            "discover_offer": _delays(bng.report.discover) if bng else None,
            "request_ack": _delays(bng.report.request) if bng else None,
        },
        "peer_delay_ms": {
            "discover_offer": _delays(kea.report.discover) if kea else None,
            "request_ack": _delays(kea.report.request) if kea else None,
        },
        "max_drops_percent": MAX_DROPS,
        # replies perfdhcp's own socket dropped (buffer full) in each best trial: counted by
        # perfdhcp as the server's drops
        "perfdhcp_lost": {n: t.generator_lost for n, t in (("bng", bng), ("peer", kea)) if t},
        # What each server ran on in its best trial: the CPUs it may use and the CPUs' worth
        # it kept busy (perfdhcp, on the same machine, takes most of one).
        "bng_cores": round(bng.cores_used, 2) if bng else None,
        "cores": {n: {"allowed": t.cores_allowed, "used": round(t.cores_used, 2),
                      "others": round(t.others_cores, 2)}
                  for n, t in (("bng", bng), ("peer", kea)) if t},
        # The CPU a DORA the machine leaves a server at Kea's best rate (its CPUs less what
        # perfdhcp and the rest kept busy then), against bng's floor: the Python a new
        # client's DISCOVER costs in process alone (slow_path_floor_us).
        "budget_us_per_dora_at_peer_rate": round(kea.budget_us, 1) if kea else None,
        "bng_floor_us": slow_path_floor_us(config),
        # bng had no drops at the top rate and perfdhcp sent less than was asked of it.
        "generator_limited": generator_limited(bng_trials),
        "bng_replies_by_path": bng.by_path if bng else None,
        "trials": {"bng": [(t.rate, round(t.drops, 2)) for t in bng_trials],
                   "peer": [(t.rate, round(t.drops, 2)) for t in kea_trials],
                   "peer_configs": {n: [(t.rate, round(t.drops, 2)) for t in ts]
                                    for n, (_, ts) in perf.items() if n != "bng"}},
    }
    if past:
        out["p99_ms_at_80pct"] = {r: {k: d["p99"] for k, d in b.delays_ms().items()}
                                  for r, b in past.items()}
        out["at_80pct"] = {r: b.at_load_summary() for r, b in past.items()}
        out["overload_2x"] = {r: b.overload_summary() for r, b in past.items()}
    if kernel:
        kb, kb_trials, by_path = kernel["bng"]
        kpeer_rates = {n: r.leases_rate if r else 0.0 for n, (r, _, _) in kernel.items()
                       if n != "bng"}
        kpeer = best_config(kpeer_rates)
        kk, kk_trials, _ = kernel[kpeer] if kpeer else (None, [], {})
        kb_rate = kb.leases_rate if kb else 0.0
        kk_rate = kk.leases_rate if kk else 0.0
        out = {
            "scenario": "known", "generator": "in-kernel (bng_lab/dhcpgen.py)",
            "compares": KNOWN_COMPARES,
            "clients": KNOWN_CLIENTS_KERNEL,
            "bng": round(kb_rate), "peer": round(kk_rate), "peer_name": peer_name(kpeer),
            "ratio": round(kb_rate / kk_rate, 1) if kk_rate else None,
            "peer_configs": {n: round(r) for n, r in kpeer_rates.items()},
            "unit": "leases/s (DISCOVER-OFFER + REQUEST-ACK, right address, ACK received "
                    "within the timed period)",
            "bng_delay_ms": dhcpgen.summary(kb)["delay_ms"] if kb else None,
            "peer_delay_ms": dhcpgen.summary(kk)["delay_ms"] if kk else None,
            "max_drops_percent": MAX_DROPS,
            # bng kept up with everything one core could send it: it is faster than shown.
            "generator_limited": bool(kb and kb.rate is None),
            "bng_replies_by_path": by_path,
            "trials": {"bng": [_kernel_trial(t) for t in kb_trials],
                       "peer": [_kernel_trial(t) for t in kk_trials],
                       "peer_configs": {n: [_kernel_trial(t) for t in ts]
                                        for n, (_, ts, _) in kernel.items() if n != "bng"}},
            "perfdhcp": {k: v for k, v in out.items() if k != "scenario"},
        }
        if k:  # Kea did better with perfdhcp than with this generator: the lower ratio
            out["ratio_vs_peer_best"] = round(kb_rate / max(kk_rate, k), 1)
    print(json.dumps(out))
    return 0


def grid_start(first_best: int | None) -> int:
    """Where the search of a Kea configuration after the first starts: the rate of the
    doubling from 1000 at or below half the first configuration's best (asked) rate. From
    there it runs the first's trials; the ones below, which any configuration near the
    first passes, are skipped. With no such rate (no good trial, or unpaced): 1000."""
    start = 1000
    while first_best and start * 4 <= first_best:
        start *= 2
    return start


def best_config(rates: dict[str, float]) -> str | None:
    """The Kea configuration with the best result (the first of equals), if any did."""
    return max(rates, key=lambda n: rates[n]) if any(rates.values()) else None


def peer_name(config: str | None) -> str | None:
    return f"kea-dhcp4 2.2 memfile, {KEA_CONFIGS[config][1]}" if config else None


def _delays(e: perfdhcp.Exchange) -> dict[str, float]:
    return {"min": e.min_ms, "avg": e.avg_ms, "max": e.max_ms, "std": e.std_ms}


if __name__ == "__main__":
    sys.exit(main())

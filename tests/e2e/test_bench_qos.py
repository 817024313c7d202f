"""bench/qos.py --quick runs end to end and prints the JSON bench/README.md describes. No
number is checked against a goal: performance is the benchmark's to say, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEYS = ("accuracy_max_error_pct", "pps_ratio", "install_ratio", "subscribers", "ns_per_packet",
        "accuracy", "pps", "install", "goals")
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def test_the_qos_bench_runs_and_reports_both_sides(_netlab_leftovers: None) -> None:
    stats_before = BPF_STATS.read_text()
    p = subprocess.Popen([sys.executable, str(REPO / "bench" / "qos.py"), "--quick", "--json"],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert all(k in out for k in KEYS), sorted(out)
    sizes = [str(n) for n in out["subscribers"]]
    assert sorted(out["pps"]) == sorted(out["install"]) == sorted(sizes)
    for n in sizes:
        pps = out["pps"][n]
        # Every frame sent reached the subscribers, through a class on both sides.
        assert all(v > 0.99 for v in pps["delivered_min"].values()), pps
        assert all(v < 10 for v in pps["unclassified"].values()), pps
        assert pps["qos_down_ns"] > 0 and pps["qos_down_runs"] > 0, pps
        assert set(out["install"][n]["ms_per_subscriber"]) == \
            {"ours", "peer_batch", "peer_commands"}
    for rate in out["accuracy"].values():
        assert rate["ours"]["goodput_mbit"] > 0 and rate["peer"]["goodput_mbit"] > 0
    assert out["pps_ratio"] > 0 and out["install_ratio"] > 0
    # It leaves nothing behind: its namespaces, the sysctl it turned on for a while.
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(f"bngt{p.pid}-")]
    assert BPF_STATS.read_text() == stats_before

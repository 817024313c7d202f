"""bench/nat.py --quick runs end to end and prints the JSON bench/README.md describes, and
each variant did what it says: ours and both nftables NATs translated (the internet saw
their public addresses, never a subscriber's), plain routing did not, and conntrack ran only
where nftables NATs. No number is checked against a goal: performance is the benchmark's to
say, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from bng_operator.agent.dataplane.nat import DROPS

REPO = Path(__file__).resolve().parents[2]
KEYS = ("nat_overhead_ratio", "pps_ratio", "log_records_per_1000_flows", "bytes_per_mapping",
        "bytes_per_mapping_peer", "tcp", "pps", "bpf", "memory", "log", "conntrack", "goals",
        "counted", "compares", "settings")
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
POOL, INSIDE = IPv4Network("192.0.2.0/24"), IPv4Network("100.64.0.0/16")
MASQUERADED = "203.0.113.1"  # the node's uplink address


def _in(address: str, net: IPv4Network) -> bool:
    return IPv4Address(address) in net


def test_the_nat_bench_runs_and_every_variant_does_what_it_says(_netlab_leftovers: None) -> None:
    stats_before = BPF_STATS.read_text()
    p = subprocess.Popen([sys.executable, str(REPO / "bench" / "nat.py"), "--quick", "--json"],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert all(k in out for k in KEYS), sorted(out)

    # TCP: the server saw the subscriber through each NAT as that NAT's address.
    saw = out["tcp"]["server_saw"]
    assert saw["plain"] == ["100.64.0.1"], saw
    assert saw["masq"] == [MASQUERADED], saw
    assert all(_in(a, POOL) for v in ("ours", "snat") for a in saw[v]) and saw["ours"], saw
    assert all(g > 0 for v in out["tcp"]["gbit"].values() for g in v.values()), out["tcp"]

    # UDP: every frame arrived; translated by the three NATs, not by plain routing.
    flows, rounds = out["pps"]["flows"], out["settings"]["rounds"]
    for phase in ("steady", "new"):
        pps = out["pps"][phase]
        assert all(v > 0.99 for v in pps["delivered_min"].values()), pps
        assert pps["untranslated"]["plain"] == pps["received"]["plain"] > 0, pps
        assert all(pps["untranslated"][v] == 0 and pps["received"][v] > 0
                   for v in ("ours", "masq", "snat")), pps
        seen = pps["seen_source"]
        assert seen["masq"] == [MASQUERADED] and all(_in(a, INSIDE) for a in seen["plain"])
        assert all(_in(a, POOL) for v in ("ours", "snat") for a in seen[v]), seen
        assert all(pps["ns_per_packet"][v] > 0 for v in pps["ns_per_packet"]), pps
    # Ours made one mapping per new flow, then translated with them, and dropped nothing.
    new, steady = out["pps"]["new"]["ours_nat_stats"], out["pps"]["steady"]["ours_nat_stats"]
    assert new["new_mapping"] == new["out_translated"] == flows * rounds, new
    assert steady["out_translated"] == out["pps"]["steady"]["received"]["ours"], steady
    assert "new_mapping" not in steady and not set(new) & set(DROPS) and \
        not set(steady) & set(DROPS), (new, steady)
    assert out["nat_overhead_ratio"] > 0 and out["pps_ratio"] > 0

    # Conntrack ran in the nftables copies only.
    ct = out["conntrack"]
    assert not ct["plain"]["active"] and not ct["ours"]["active"], ct
    assert ct["masq"]["active"] and ct["snat"]["active"], ct

    b = out["bpf"]
    assert b["nat_out_ns_steady"] > 0 and b["nat_out_ns_new"] > b["nat_out_ns_steady_2_flows"] > 0
    assert b["nat_in_skbs_tcp_download"] > 0, b

    # Memory: a mapping is bytes, not kilobytes, on both sides; all mappings were made.
    mem = out["memory"]
    assert mem["ours"]["mappings_made"] == mem["flows"] == mem["ours"]["tables"]["outbound"]
    assert 64 <= out["bytes_per_mapping"] <= 1024, mem
    assert mem["peer"]["snat"]["conntrack_entries_made"] == mem["flows"], mem
    assert mem["peer"]["masq"]["conntrack_entries_made"] > 0, mem
    assert all(64 <= v <= 4096 for v in out["bytes_per_mapping_peer"].values()), mem

    # Log: a record per block, each mapping in its subscriber's block, none added by more flows.
    log = out["log"]["ours"]
    assert log["mappings_outside_their_block"] == 0 and log["exhausted_subscribers"] == 0, log
    assert log["records"] == log["records_after_half"] == out["settings"]["mem_subscribers"]
    assert log["records_per_flow_beyond_half"] == 0 and out["goals"]["log_records_per_flow"]
    assert out["log_records_per_1000_flows"] == round(log["records"] / log["flows"] * 1000, 3)

    # It leaves nothing behind: its namespaces, the sysctl it turned on for a while.
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(f"bngt{p.pid}-")]
    assert BPF_STATS.read_text() == stats_before
    assert not (Path("/run/bng-bench/bpf-stats") / str(p.pid)).exists()

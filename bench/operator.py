#!/usr/bin/env python3
"""How fast an IPPool edit reaches every agent's maps, and what renewals cost the apiserver.

    sudo .venv/bin/python bench/operator.py --json [--agents 3] [--edits 30]

A real control plane, the operator, and ``--agents`` agents, each in its own network
namespace with one dhclient subscriber. Each trial edits the residential pool's DNS servers
through the apiserver and polls every agent's pinned ``subnet_options`` map (from outside the
agent, with bpf syscalls) until all of them carry the new servers: the time from the edit
request to the last agent's map, p50 and p99 over the trials.

Then 1,000 RENEWING requests go through one node's fast path, and the apiserver's audit log
counts the writes to bng objects meanwhile. One JSON line:
{"convergence_p50_s", "convergence_p99_s", "writes_per_1000_renewals", "agents", "edits"}.
There is no peer program to run beside it: the goal (p99 < 2 s with 3 agents) is absolute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

from bng_lab import clients
from bng_lab.controlplane import ControlPlane
from bng_lab.k8s_site import K8sSite, wait_for
from bng_lab.netlab import remove_leftovers, unmount_bpffs
from bng_lab.site import requests, subscriber_mac
from bng_operator.agent.dataplane.loader import pinned_map_items

REPO = Path(__file__).resolve().parents[1]


def carries(site_bpf_dir: Path, dns: bytes) -> bool:
    """Whether any generation's subnet_options map under ``site_bpf_dir`` holds ``dns``."""
    return any(dns in value for path in site_bpf_dir.glob("*/subnet_options")
               for _k, value in pinned_map_items(path))


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--edits", type=int, default=30)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/operator.py needs root (namespaces, BPF)", file=sys.stderr)
        return 2
    remove_leftovers()
    say = (lambda *_: None) if a.json else (lambda *x: print(*x, file=sys.stderr))
    cp = ControlPlane().start()
    work = Path(tempfile.mkdtemp(prefix="bng-bench-operator-"))
    s = K8sSite(cp, work)
    try:
        s.kubectl("apply", "-f", str(REPO / "crds"))
        s.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        s.prepare()
        names = [f"edge-{i}" for i in range(a.agents)]
        for i, name in enumerate(names):
            s.add_node(name, 1, {0: (f"olt-{i}", f"res-{100 + i}")})
        s.apply_samples()
        s.start_operator()
        s.start_agents()
        for site in s.nodes.values():
            clients.dhclient(site.subscribers[0], "eth0", site.workdir)
        say(f"{a.agents} agents serving; {a.edits} edits")

        from kubernetes import client, config

        custom = client.CustomObjectsApi(config.new_client_from_config(str(s.kubeconfig)))
        times = []
        for n in range(a.edits):
            dns = f"192.0.2.{100 + n % 150}"
            t0 = time.monotonic()
            custom.patch_cluster_custom_object("bng.dev", "v1alpha1", "ippools", "residential",
                                               {"spec": {"dns": [dns]}})
            packed = IPv4Address(dns).packed
            pending = {name: site.lab.bpf_dir for name, site in s.nodes.items()}
            while pending:
                pending = {k: d for k, d in pending.items() if not carries(d, packed)}
                if time.monotonic() - t0 > 30:
                    raise TimeoutError(f"edit {n}: {sorted(pending)} never carried {dns}")
                time.sleep(0.005)
            times.append(time.monotonic() - t0)
            say(f"edit {n}: {times[-1] * 1000:.0f} ms")

        node = s.nodes[names[0]]
        lease = clients.lease_history(node.subscribers[0], node.workdir)[-1]
        frames = clients.renewal_frames(lease, subscriber_mac(0), node.access_mac(), 10)

        time.sleep(2)  # the last edit's status writes are done
        base, before = requests(node.metrics(), "fast"), len(cp.writes())
        clients.send_frames(node.subscribers[0], "eth0", frames, repeat=100, interval=0.001)
        wait_for("1000 fast-path renewals",
                 lambda: requests(node.metrics(), "fast") - base >= 1000, 30, 0.2)
        renewals = requests(node.metrics(), "fast") - base
        time.sleep(2)
        writes = len(cp.writes()) - before
        result = {
            "convergence_p50_s": round(statistics.median(times), 3),
            "convergence_p99_s": round(percentile(times, 99), 3),
            "writes_per_1000_renewals": round(writes * 1000 / renewals, 2),
            "agents": a.agents, "edits": a.edits,
        }
        print(json.dumps(result))
        return 0
    finally:
        s.close()
        cp.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
        unmount_bpffs()


if __name__ == "__main__":
    sys.exit(main())

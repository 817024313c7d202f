#!/usr/bin/env python3
"""DHCP throughput of bng against Kea in the same run, on the same namespaces.

    sudo .venv/bin/python bench/dhcp.py --scenario new --json

For each server, perfdhcp (single-threaded, as a relay: giaddr set) runs DORA with new
clients at increasing rates; each trial starts the server afresh with an empty lease store.
The highest rate with at most 2.5% drops (on DISCOVER-OFFER and REQUEST-ACK alike) is that
server's result. One JSON line: {"scenario", "bng", "peer", "ratio", "bng_delay_ms", ...}.

Kea 2.2 runs memfile, single-threaded, with an equivalent pool. Note that Kea's memfile
appends leases without fsync, while bng fsyncs each group commit before its ACKs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bng_operator import netlink  # noqa: E402
from bng_operator.testing import perfdhcp  # noqa: E402
from bng_operator.testing.netlab import NetLab, remove_leftovers  # noqa: E402
from bng_operator.testing.site import Site  # noqa: E402

MAX_DROPS = 2.5  # percent
CIDR, GATEWAY, RELAY = "100.64.0.0/14", "100.64.0.1", "100.64.0.2"
POOL = f"""apiVersion: bng.dev/v1alpha1
kind: IPPool
metadata: {{name: residential}}
spec:
  subnets: [{{cidr: {CIDR}, gateway: {GATEWAY}, exclude: [{{start: {RELAY}}}]}}]
  blockSize: 16
  leaseTime: 1h
  dns: [192.0.2.53]
---
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {{name: everyone}}
spec: {{pool: residential}}
---
apiVersion: bng.dev/v1alpha1
kind: BNGNode
metadata: {{name: edge-1}}
spec:
  nodeName: edge-1
  interfaces: {{access: [access0]}}
"""


def kea_config(workdir: Path) -> dict[str, object]:
    return {"Dhcp4": {
        "interfaces-config": {"interfaces": ["access0"], "dhcp-socket-type": "raw"},
        "lease-database": {"type": "memfile", "persist": True,
                           "name": str(workdir / "kea-leases4.csv"), "lfc-interval": 0},
        "multi-threading": {"enable-multi-threading": False},
        "valid-lifetime": 3600, "renew-timer": 1800, "rebind-timer": 3150,
        "subnet4": [{"id": 1, "subnet": CIDR, "pools": [{"pool": "100.64.0.3-100.67.255.254"}],
                     "option-data": [{"name": "routers", "data": GATEWAY},
                                     {"name": "domain-name-servers", "data": "192.0.2.53"}]}],
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                     "output_options": [{"output": str(workdir / "kea.log")}]}],
    }}


@dataclass
class Trial:
    rate: int
    report: perfdhcp.Report

    @property
    def drops(self) -> float:
        return max(self.report.discover.drops_ratio, self.report.request.drops_ratio)

    @property
    def ok(self) -> bool:
        return self.drops <= MAX_DROPS and self.report.request.received > 0


class Servers:
    """Start and stop bng or Kea in the site's bng namespace, each time from nothing."""

    def __init__(self, site: Site, workdir: Path) -> None:
        self.site, self.workdir = site, workdir
        self.kea: subprocess.Popen[bytes] | None = None

    def start(self, which: str) -> None:
        if which == "bng":
            shutil.rmtree(self.site.state_dir, ignore_errors=True)
            self.site.start_agent("--log-level", "warning")
            return
        for f in self.workdir.glob("kea-leases4.csv*"):
            f.unlink()
        cfg = self.workdir / "kea.json"
        cfg.write_text(json.dumps(kea_config(self.workdir)))
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


def trial(site: Site, servers: Servers, which: str, rate: int, seconds: int) -> Trial:
    servers.start(which)
    try:
        r = site.lab.run(site.subscribers[0], "perfdhcp", "-4", "-g", "single", "-l", RELAY,
                         "-r", str(rate), "-p", str(seconds), "-R", str(rate * seconds * 2),
                         "-W", "500000", GATEWAY, check=False, timeout=seconds + 60)
        try:
            return Trial(rate, perfdhcp.parse(r.stdout))
        except ValueError as e:
            raise RuntimeError(f"perfdhcp failed ({r.returncode}): {r.stderr[-1500:]}") from e
    finally:
        servers.stop(which)


def search(site: Site, servers: Servers, which: str, seconds: int, log: bool,
           ) -> tuple[Trial | None, list[Trial]]:
    """Double the rate until drops exceed the limit, then bisect between the last two."""
    trials: list[Trial] = []

    def run(rate: int) -> Trial:
        t = trial(site, servers, which, rate, seconds)
        trials.append(t)
        if log:
            print(f"  {which:4} {rate:6}/s -> {t.report.rate:8.0f}/s done, drops {t.drops:5.2f}% "
                  f"{'ok' if t.ok else 'too many'}", file=sys.stderr)
        return t

    best: Trial | None = None
    rate, fail = 1000, None
    while rate <= 64000:
        t = run(rate)
        if not t.ok:
            fail = rate
            break
        best, rate = t, rate * 2
    lo = best.rate if best else 0
    hi = fail or rate
    for _ in range(3):
        if hi - lo <= max(250, lo // 10):
            break
        mid = (lo + hi) // 2
        t = run(mid)
        if t.ok:
            best, lo = t, mid
        else:
            hi = mid
    return best, trials


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", choices=["new"], default="new")
    ap.add_argument("--seconds", type=int, default=5, help="length of each trial")
    ap.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/dhcp.py needs root (network namespaces)", file=sys.stderr)
        return 2
    remove_leftovers()
    workdir = Path(tempfile.mkdtemp(prefix="bng-bench-"))
    (workdir / "config").mkdir()
    (workdir / "config" / "bench.yaml").write_text(POOL)
    site = Site(NetLab(), workdir, [workdir / "config"]).build(subscribers=1)
    # perfdhcp (v4) plays a relay: it binds this address and puts it in giaddr.
    netlink.add_address("eth0", f"{RELAY}/20", site.subscribers[0])
    servers = Servers(site, workdir)
    try:
        bng, bng_trials = search(site, servers, "bng", args.seconds, True)
        kea, kea_trials = search(site, servers, "kea", args.seconds, True)
    finally:
        site.close()
        shutil.rmtree(workdir, ignore_errors=True)
    b = bng.report.rate if bng else 0.0
    k = kea.report.rate if kea else 0.0
    out = {
        "scenario": args.scenario,
        "bng": round(b), "peer": round(k), "peer_name": "kea-dhcp4 2.2 memfile single-threaded",
        "ratio": round(b / k, 3) if k else None,
        "bng_delay_ms": {
            "discover_offer": _delays(bng.report.discover) if bng else None,
            "request_ack": _delays(bng.report.request) if bng else None,
        },
        "peer_delay_ms": {
            "discover_offer": _delays(kea.report.discover) if kea else None,
            "request_ack": _delays(kea.report.request) if kea else None,
        },
        "max_drops_percent": MAX_DROPS,
        "trials": {"bng": [(t.rate, round(t.drops, 2)) for t in bng_trials],
                   "peer": [(t.rate, round(t.drops, 2)) for t in kea_trials]},
    }
    print(json.dumps(out))
    return 0


def _delays(e: perfdhcp.Exchange) -> dict[str, float]:
    return {"min": e.min_ms, "avg": e.avg_ms, "max": e.max_ms, "std": e.std_ms}


if __name__ == "__main__":
    sys.exit(main())

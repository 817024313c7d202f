"""bench/radius.py --quick runs end to end and prints the JSON bench/README.md describes, and
each side did what it says: the auth run's sessions were each authorised by FreeRADIUS (bng
sent an Access-Request per new session and FreeRADIUS logged an accept for each), and the
accounting run bound its sessions and had their records acknowledged. No number is checked
against a goal: performance is the benchmark's to say, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEYS = ("auth_ratio", "offer_p99_ms", "accounting_backlog_growth", "auth_overhead_us",
        "sessions_per_s", "rounds", "access_requests", "freeradius_accepts", "accounting",
        "where_time_goes", "goals", "settings")


def test_the_radius_bench_runs_and_asks_freeradius(_netlab_leftovers: None) -> None:
    p = subprocess.Popen([sys.executable, str(REPO / "bench" / "radius.py"), "--quick", "--json"],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=180)
    finally:
        p.kill()
    assert p.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert all(k in out for k in KEYS), sorted(out)
    (r,) = out["rounds"]
    # both sides completed sessions at the quick run's modest rate, and timed their OFFERs
    assert r["plain"] > 0 and r["auth"] > 0, r
    assert 0 < out["auth_ratio"] < 2, out
    assert all(v is not None and v > 0 for v in out["offer_p99_ms"].values()), out
    # The auth run really asked FreeRADIUS: an Access-Request for (nearly) every new session
    # it completed, each answered (FreeRADIUS's log also holds the accounting run's).
    done = r["auth"] * out["settings"]["seconds"]
    assert out["access_requests"] >= 0.9 * done, out
    assert out["freeradius_accepts"] >= out["access_requests"], out
    assert r["radius_rtt_avg_ms"] and r["radius_rtt_avg_ms"] > 0, r
    acct = out["accounting"]
    assert acct["sessions"] >= 0.9 * out["settings"]["sessions"], acct
    assert acct["records_per_s_acked"] > 0 and acct["dropped"] == 0, acct
    assert isinstance(out["accounting_backlog_growth"], (int, float))
    where = out["where_time_goes"]
    assert where["freeradius_alone"]["ok"] and where["freeradius_alone"]["per_s"] > 0, where
    assert where["in_process"]["client"]["encode_sign_us"] > 0, where
    assert where["in_process"]["pyrad"]["encode_sign_us"] > 0, where
    # It leaves nothing behind: its namespaces, FreeRADIUS and their directories.
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(f"bngt{p.pid}-")]
    assert out["settings"]["dirs"] and not any(Path(d).exists() for d in out["settings"]["dirs"])

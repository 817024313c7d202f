#!/usr/bin/env python3
"""What one call out of an XDP program costs here: helpers and map lookups, each made
--calls times per run (the ring buffer output once) under BPF_PROG_TEST_RUN, minus a program
that makes none.

    sudo .venv/bin/python bench/bpf_calls.py --json

Why it matters: the fast path's cost per reply (bench/xdp_cost.py) is mostly its calls on a
machine whose kernel returns through a return thunk (SRSO safe-RET, retpolines), and an
array lookup, which the verifier inlines, costs next to nothing beside a hash lookup. The
ring buffer is drained between rounds, so every output is a real one.
One JSON line: {"ns_per_call": {name: ns}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bng_operator.agent.dataplane.loader import BPFObject, test_run

REPO = Path(__file__).resolve().parents[1]

KINDS = ("array_lookup", "hash_lookup_4", "hash_lookup_16", "ktime_get_coarse_ns", "jiffies64",
         "csum_diff_64", "xdp_load_bytes_64", "ringbuf_output_16")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=8, help="calls per run")
    ap.add_argument("--repeat", type=int, default=200_000, help="runs per round (at most "
                    "200,000: the ring holds one round's events)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    args = ap.parse_args()
    if not 1 <= args.repeat <= 200_000:
        print("--repeat must be 1..200000", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench/bpf_calls.py needs root (BPF)", file=sys.stderr)
        return 2
    obj = BPFObject(REPO / "bench" / "bpf_calls.c", cflags={"CALLS": args.calls})
    try:
        hash4, hash16 = obj.map("hash4"), obj.map("hash16")
        for k in (0, 1):  # hits, as the fast path's lookups are
            hash4[hash4.Key(k)] = hash4.Leaf(1)
            key = hash16.Key()
            key.a = k
            hash16[key] = hash16.Leaf(1)
        drained = []
        obj.map("ring").open_ring_buffer(lambda *_: drained.append(1))
        fds = {"empty": obj.load_xdp("empty")} | {k: obj.load_xdp(f"p_{k}") for k in KINDS}
        frame = bytes(400)
        best: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, fd in fds.items():
                ns = test_run(fd, frame, args.repeat).ns_per_run
                best[name] = min(best.get(name, ns), ns)
                obj.bpf.ring_buffer_consume()
    finally:
        obj.close()
    calls = {k: 1 if k == "ringbuf_output_16" else args.calls for k in KINDS}
    per_call = {k: round((best[k] - best["empty"]) / calls[k], 1) for k in KINDS}
    out = {"ns_per_call": per_call, "empty_program_ns": best["empty"], "calls": args.calls,
           "repeat": args.repeat, "rounds": args.rounds,
           "note": "(best run of the program - best run of the empty one) / calls"}
    if not args.json:
        for k, v in per_call.items():
            print(f"{k:22s} {v:6.1f} ns", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

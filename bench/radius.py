#!/usr/bin/env python3
"""New sessions/s with RADIUS authentication (FreeRADIUS 3.2 on the node's loopback) against
the same run without, and whether accounting keeps up with its load (issue 17).

    sudo .venv/bin/python -m bench.radius --json     # from the repository: it imports bench.dhcp

One site (bench/dhcp.py's: perfdhcp as a relay in front of the bng namespace), one
FreeRADIUS in the bng namespace (bng_lab/radius.py, as the e2e tests run it; it accepts
everyone). Two configurations differ in one thing, the class's ``auth``; both commit each
offer so that the XDP program ACKs the REQUEST (BNGNode spec.commitAtOffer, bng's faster
configuration; ``--commit-at-request`` runs both with its default):

  plain: the class has no auth;
  auth:  ``auth: radius`` against that FreeRADIUS (its Access-Request, then the session's
         accounting Start, are part of each new session's cost).

Each round searches each configuration's best rate of new sessions (bench/dhcp.py's search:
the highest DORA rate with at most 2.5% drops; every trial starts the agent afresh, every
exchange is a new client: the MACs come from a range 50x the exchanges; bisected to 50/s
or a tenth), the two in
alternating order. ``auth_ratio`` is the median over rounds of auth / plain.
``auth_overhead_us`` is what authorisation adds per session at those rates (1/auth - 1/plain).
Each round's ``agent_cpu_us_per_session``: the agent's CPU (all threads, user and system, and
its processes': the lease writer, the RADIUS transport) over
its best trial, per ACK; steadier than the rates on a noisy machine, it shows where the cost
moved (FreeRADIUS's own CPU is not in it). The progress lines add the machine's CPU (all
processes and the kernel, from /proc/stat) and FreeRADIUS's, per ACK, and how many CPUs were
busy: whether a configuration is bound by the agent's one thread or by the machine.
Each trial starts once the agent has settled (its fast path compiled and attached), as
bench/dhcp.py's do: that compile takes seconds of a CPU, which would count against the trial.
``offer_p99_ms``: DISCOVER to OFFER, p99 over the exchanges of each configuration's best
trial (perfdhcp's timers, ``-x t``), for the worst round.

Accounting: SESSIONS sessions (``--sessions``) bound in the auth configuration with the
class's interimInterval set to ``--interim`` seconds (60 s at 2,000 subscribers is ~33
records/s; the run states its own load in ``records_per_s_offered``). Once their Starts
are acknowledged, the queue depth (``bng_radius_acct_queue_depth``) is sampled every 0.5 s
over a steady period of ``--steady`` seconds, rounded up to whole interims. The Interims come
in bursts (the sessions were bound within seconds of each other), so one reading depends on
where in a burst it falls: ``accounting_backlog_growth`` is the queue's floor over the last
interim less its floor over the first (0 when each burst is drained before the next); the
raw start and end readings are in ``accounting.queue_depth``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.dhcp import (
    CIDR,
    Servers,
    Trial,
    _perfdhcp,
    event_loop_cpu,
    machine_busy_seconds,
    perfdhcp_report,
    process_cpu_seconds,
    relay_site,
    step_search,
)
from bng_lab import dhcpgen, perfdhcp, profiled
from bng_lab.benchrun import progress, unwind_on_sigterm
from bng_lab.netlab import remove_leftovers
from bng_lab.radius import SECRET, FreeRadius
from bng_lab.site import Site

PORT = 18140  # FreeRADIUS auth; PORT + 1 accounting
USERS = "DEFAULT Auth-Type := Accept\n"
CLIENTS_FACTOR = 50  # MAC range per exchange sent: nearly every exchange a new client


def radius_spec(interim: int = 0) -> str:
    return (f"{{pool: residential, auth: radius, radius: {{servers: [{{address: 127.0.0.1, "
            f"authPort: {PORT}, acctPort: {PORT + 1}, timeout: 2s, retries: 1, "
            f"secret: {{name: radius}}}}], interimInterval: {interim}s}}}}")


def configs(interim: int, commit_at_offer: bool = True,
            event_loop_cpu: int | None = None) -> dict[str, str]:
    """Each mode's node; every one commits offers (XDP ACKs the REQUEST: bng's faster
    configuration, bench/dhcp.py's too) unless ``commit_at_offer`` is False, and runs the
    agent's process on ``event_loop_cpu`` (spec.eventLoopCPU) if given."""
    return {mode: dhcpgen.site_config(CIDR, 16, "1h", spec, commit_at_offer, event_loop_cpu)
            for mode, spec in (
        ("plain", "{pool: residential}"), ("auth", radius_spec()),
        ("acct", radius_spec(interim)))}


class Modes(Servers):
    """The agent afresh in one of the configurations ("plain", "auth", "acct"). Its metrics
    are kept as the agent stops (``last_metrics``)."""

    def __init__(self, site: Site, workdir: Path, secrets: Path, radius_pid: int) -> None:
        super().__init__(site, workdir)
        self.secrets = secrets
        self.radius_pid = radius_pid
        self.last_metrics: dict[str, float] = {}

    def start(self, which: str, xdp_mode: str = "generic") -> None:
        shutil.rmtree(self.site.state_dir, ignore_errors=True)
        self.site.config = [self.workdir / which]
        self.site.start_agent("--log-level", "warning", "--xdp-mode", xdp_mode,
                              "--secrets-dir", str(self.secrets))
        self.settle()

    def stop(self, which: str) -> None:
        try:
            self.last_metrics = self.site.metrics()
        finally:
            self.site.stop_agent()


def p99(values: list[float]) -> float | None:
    return round(perfdhcp.percentile(values, 99), 3) if values else None


def _kept(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


def trial(site: Site, modes: Modes, which: str, rate: int, seconds: int) -> dict[str, Any]:
    modes.start(which)
    try:
        cpu0, t0 = modes.cpu_seconds("bng"), time.monotonic()
        busy0, fr0 = machine_busy_seconds(), process_cpu_seconds(modes.radius_pid)
        r, lost = _perfdhcp(site, rate, seconds, ["-R", str(rate * seconds * CLIENTS_FACTOR)],
                            extra=("-x", "t"))
        cpu, wall = modes.cpu_seconds("bng") - cpu0, time.monotonic() - t0
        busy = machine_busy_seconds() - busy0
        fr_cpu = process_cpu_seconds(modes.radius_pid) - fr0
    finally:
        modes.stop(which)
    report = perfdhcp_report(r)
    m = modes.last_metrics
    acks = max(report.request.received, 1)
    return {"trial": Trial(rate, seconds, report, cpu_s=cpu, wall_s=wall, generator_lost=lost),
            "machine_cores_busy": busy / wall if wall else 0.0,
            "machine_cpu_us": busy * 1e6 / acks, "freeradius_cpu_us": fr_cpu * 1e6 / acks,
            "offer_ms": perfdhcp.timers(r.stdout).get("DISCOVER-OFFER", []),
            "access_requests": _kept(m, "bng_radius_requests_total{"),
            "radius_rtt_s": (_kept(m, "bng_radius_rtt_seconds_sum{"),
                             _kept(m, "bng_radius_rtt_seconds_count{"))}


def search(site: Site, modes: Modes, which: str, seconds: int, start: int,
           say: Any, fixed: int | None = None) -> tuple[dict[str, Any] | None, int]:
    """The best trial of ``which`` (as bench/dhcp.py searches), and the Access-Requests its
    trials sent. With ``fixed``, one trial at that rate instead of a search."""
    asked = 0

    def run(rate: int) -> dict[str, Any]:
        nonlocal asked
        t = trial(site, modes, which, rate, seconds)
        asked += int(t["access_requests"])
        tr = t["trial"]
        say(f"  {which:5} {rate:6}/s -> {tr.done:7.0f}/s done, drops {tr.drops:5.2f}% "
            f"{'ok' if tr.ok else 'too many'}, offer p99 {p99(t['offer_ms'])} ms, "
            f"agent {tr.cpu_us:4.0f} us CPU a session, machine {t['machine_cpu_us']:4.0f} us "
            f"({t['machine_cores_busy']:.2f} CPUs busy), FreeRADIUS {t['freeradius_cpu_us']:3.0f} us"
            f"{f', perfdhcp lost {tr.generator_lost}' if tr.generator_lost else ''}")
        return t

    if fixed:
        return run(fixed), asked
    best = step_search(run, lambda t: t["trial"].ok, 64000, start=start, step=50)
    return best, asked


def accounting(site: Site, modes: Modes, sessions: int, interim: int, steady: int,
               say: Any) -> dict[str, Any]:
    """Bind ``sessions`` sessions, wait for their Starts, then watch the queue for
    ``steady`` seconds of Interim-Updates."""
    modes.start("acct")
    try:
        rate = min(1000, max(200, sessions // 4))
        seconds = max(2, -(-sessions * 5 // rate))  # ~5 draws per MAC: ~99% of them bound
        _perfdhcp(site, rate, seconds, ["-R", str(sessions)])

        def depth() -> float:
            return site.metrics().get("bng_radius_acct_queue_depth", 0.0)

        deadline = time.monotonic() + 60
        while depth() > 0 and time.monotonic() < deadline:  # the Starts drain
            time.sleep(0.5)
        m0 = site.metrics()
        bound = _kept(m0, 'bng_radius_acct_records_total{type="Start"')
        say(f"  accounting: {bound:.0f} sessions bound, interim {interim} s, "
            f"steady for {steady} s")
        steady = max(1, -(-steady // interim)) * interim  # whole interims: same phase
        t0 = time.monotonic()
        samples = [(0.0, m0.get("bng_radius_acct_queue_depth", 0.0))]
        while (now := time.monotonic() - t0) < steady:
            time.sleep(0.5)
            samples.append((now, depth()))
        m1 = site.metrics()
        elapsed = time.monotonic() - t0
        samples.append((elapsed, m1.get("bng_radius_acct_queue_depth", 0.0)))
    finally:
        modes.stop("acct")

    def delta(prefix: str) -> float:
        return _kept(m1, prefix) - _kept(m0, prefix)

    first = min(d for t, d in samples if t <= interim)
    last = min(d for t, d in samples if t >= elapsed - interim)
    interims = delta('bng_radius_acct_records_total{type="Interim-Update"')
    acked = delta("bng_radius_acct_responses_total{")
    return {
        "sessions": round(bound), "interim_s": interim, "steady_s": round(elapsed, 1),
        "records_per_s_offered": round(bound / interim, 1),
        "records_per_s_queued": round(interims / elapsed, 1),
        "records_per_s_acked": round(acked / elapsed, 1),
        "equivalent_subscribers_at_60s": round(60 * acked / elapsed),
        "queue_depth": {"start": samples[0][1], "end": samples[-1][1],
                        "max": max(d for _, d in samples),
                        "floor_first_interim": first, "floor_last_interim": last},
        # the queue's floor (what is left between bursts of Interims) over the last interim
        # less over the first: a queue that keeps up drains to the same floor every interim
        "backlog_growth": last - first,
        "dropped": _kept(m1, "bng_radius_acct_dropped_total{"),
        "timeouts": delta("bng_radius_acct_timeouts_total{"),
    }


def in_process_cost_us(n: int = 2000) -> dict[str, dict[str, float]]:
    """Per Access-Request in Python, timed in this process (µs, best of 3): ``pyrad``, build
    and sign a request with pyrad's packets (with its Message-Authenticator HMAC) as
    client.py did before wire.py, and decode and verify an Accept that carries one;
    ``client``, the same with wire.py as client.py does now (pyrad still decodes)."""
    from pyrad.dictionary import Dictionary
    from pyrad.packet import AccessAccept, AccessRequest, AuthPacket, Packet

    from bng_operator.agent.radius.client import DICTIONARY
    from bng_operator.agent.radius.wire import ACCESS_REQUEST, Encoder, verify_reply

    d, secret = Dictionary(str(DICTIONARY)), SECRET.encode()
    attrs: list[tuple[str, str | int]] = [
        ("User-Name", "02:00:00:00:00:01"), ("Service-Type", "Framed-User"),
        ("NAS-Identifier", "edge-1"), ("NAS-IP-Address", "127.0.0.1"),
        ("NAS-Port-Type", "Ethernet"), ("Calling-Station-Id", "02:00:00:00:00:01")]

    def request(i: int) -> AuthPacket:
        pkt = AuthPacket(code=AccessRequest, id=i & 255, secret=secret, dict=d)
        for name, value in attrs:
            pkt[name] = value
        pkt.add_message_authenticator()
        return pkt

    req = request(1)
    raw_req = req.RequestPacket()
    rep = req.CreateReply()
    rep.code = AccessAccept
    rep.add_message_authenticator()
    raw_rep = rep.ReplyPacket()

    def timed(f: Any) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(n):
                f(i)
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        return round(best, 1)

    def decode(_: int) -> None:
        reply = req.CreateReply(packet=raw_rep)
        assert req.VerifyReply(reply, raw_rep, enforce_ma=True)

    assert raw_req
    pyrad = {"encode_sign_us": timed(lambda i: request(i).RequestPacket()),
             "decode_verify_us": timed(decode)}
    encoder, authenticator = Encoder(d), req.authenticator
    assert encoder.access_request(1, authenticator, secret, attrs) == raw_req

    def client_decode(_: int) -> None:
        raw = verify_reply(raw_rep, ACCESS_REQUEST, authenticator, secret, True)
        assert raw is not None
        Packet(secret=secret, authenticator=authenticator, dict=d, packet=raw)

    return {"pyrad": pyrad, "client": {
        "encode_sign_us": timed(lambda i: encoder.access_request(i & 255, authenticator,
                                                                 secret, attrs)),
        "verify_decode_us": timed(client_decode)}}


def freeradius_rate(fr: FreeRadius, n: int = 2000, parallel: int = 64) -> dict[str, float]:
    """FreeRADIUS alone: ``n`` Access-Requests from radclient (C, ``parallel`` in flight),
    on the same loopback; requests/s by wall time."""
    text = "\n".join(f'User-Name = "02:00:00:99:{i >> 8 & 255:02x}:{i & 255:02x}"\n'
                     f"Message-Authenticator = 0x00\n" for i in range(n))
    t0 = time.monotonic()
    r = subprocess.run(fr._ns("radclient", "-q", "-p", str(parallel), "-r", "1", "-t", "5",
                              f"{fr.address}:{fr.port}", "auth", fr.secret),
                       input=text, capture_output=True, text=True, check=False, timeout=120)
    elapsed = time.monotonic() - t0
    return {"requests": n, "parallel": parallel, "ok": r.returncode == 0,
            "per_s": round(n / elapsed)}


def profile(site: Site, modes: Modes, rate: int, seconds: int, top: int = 25) -> None:
    """One trial of each configuration at ``rate`` with the agent under cProfile
    (bng_lab/profiled.py: its event loop's thread); the functions with the most own time, on
    stderr."""
    for which in ("plain", "auth"):
        out = modes.workdir / f"{which}.prof"
        site.wrap = (sys.executable, "-m", "bng_lab.profiled", str(out))
        try:
            t = trial(site, modes, which, rate, seconds)
        finally:
            site.wrap = ()
        text, _ = profiled.summary(str(out), top, "bng_operator|pyrad|sqlite")
        print(f"--- {which}: {rate}/s for {seconds} s, {t['trial'].done:.0f}/s done, drops "
              f"{t['trial'].drops:.2f}%, {t['access_requests']:.0f} Access-Requests\n"
              f"{text}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="searches of each configuration")
    ap.add_argument("--seconds", type=int, default=3, help="length of each trial")
    ap.add_argument("--sessions", type=int, default=2000, help="accounting: sessions bound")
    ap.add_argument("--interim", type=int, default=10, help="accounting: interim interval, s")
    ap.add_argument("--steady", type=int, default=30, help="accounting: steady period, s")
    ap.add_argument("--rate", type=int, help="one trial per round at this rate, no search")
    ap.add_argument("--quick", action="store_true",
                    help="the smoke run: one round, one 2 s trial at 200/s each (no search: "
                         "its ratio means nothing); 200 sessions at a 2 s interim for 4 s")
    ap.add_argument("--profile", type=int, metavar="RATE",
                    help="only: one trial each at RATE with the agent under cProfile, the top "
                         "functions on stderr")
    ap.add_argument("--commit-at-request", action="store_true",
                    help="both configurations with BNGNode spec.commitAtOffer off (its "
                         "default): the slow path answers DISCOVER and REQUEST")
    ap.add_argument("--event-loop-cpu", default="auto", metavar="auto|none|CPU",
                    help="both configurations' BNGNode spec.eventLoopCPU (default: "
                         "%(default)s: the last CPU, if there are two or more)")
    ap.add_argument("--json", action="store_true", help="progress on stderr, JSON last")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.seconds, a.rate, a.sessions, a.interim, a.steady = 1, 2, 200, 200, 2, 4
    if os.geteuid() != 0:
        print("bench/radius.py needs root (network namespaces)", file=sys.stderr)
        return 2
    a.event_loop_cpu = cpu = event_loop_cpu(a.event_loop_cpu)  # the JSON says it as resolved
    say = progress()
    unwind_on_sigterm()
    remove_leftovers()
    workdir = Path(tempfile.mkdtemp(prefix="bng-bench-radius-"))
    secrets = workdir / "secrets"
    (secrets / "radius").mkdir(parents=True)
    (secrets / "radius" / "secret").write_text(SECRET + "\n")
    site: Site | None = None
    fr: FreeRadius | None = None
    rounds: list[dict[str, Any]] = []
    asked = 0
    try:
        site = relay_site(workdir, configs(a.interim, not a.commit_at_request, cpu))
        fr = FreeRadius(PORT, USERS, namespace=site.bng, acct_port=PORT + 1).start()
        assert fr.proc is not None
        modes = Modes(site, workdir, secrets, fr.proc.pid)
        if a.profile:
            profile(site, modes, a.profile, a.seconds)
            return 0
        start = {"plain": 1000, "auth": 1000}
        for r in range(a.rounds):
            order = ("plain", "auth") if r % 2 == 0 else ("auth", "plain")
            got: dict[str, Any] = {}
            for which in order:
                best, n = search(site, modes, which, a.seconds, start[which], say, a.rate)
                asked += n if which == "auth" else 0
                got[which] = best
                if best is not None:  # the next round starts near this one's result
                    start[which] = _grid_start(best["trial"].rate)
            rounds.append(got)
        acct = accounting(site, modes, a.sessions, a.interim, a.steady, say)
        answered = len(fr.log_lines("Login OK"))
        where = {"freeradius_alone": freeradius_rate(fr), "in_process": in_process_cost_us()}
        say(f"  where the time goes: {where}")
    finally:
        if fr is not None:
            fr.close()
        if site is not None:
            site.close()
        shutil.rmtree(workdir, ignore_errors=True)
    out = result(rounds, acct, asked, answered, where, a)
    out["settings"]["dirs"] = [str(workdir), str(fr.dir)]  # removed: tests check
    print(json.dumps(out))
    return 0


def _grid_start(rate: int) -> int:
    start = 250
    while start * 4 <= rate:
        start *= 2
    return start


def result(rounds: list[dict[str, Any]], acct: dict[str, Any], asked: int, answered: int,
           where: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    def rate(t: dict[str, Any] | None) -> float:
        return t["trial"].done if t else 0.0

    per_round: list[dict[str, Any]] = []
    for got in rounds:
        p, q = rate(got.get("plain")), rate(got.get("auth"))
        per_round.append({
            "plain": round(p), "auth": round(q), "ratio": round(q / p, 3) if p else None,
            "overhead_us": round(1e6 / q - 1e6 / p, 1) if p and q else None,
            "offer_p99_ms": {w: p99(got[w]["offer_ms"]) if got.get(w) else None
                             for w in ("plain", "auth")},
            "offer_avg_ms": {w: got[w]["trial"].report.discover.avg_ms if got.get(w) else None
                             for w in ("plain", "auth")},
            "radius_rtt_avg_ms": _rtt(got.get("auth")),
            "agent_cpu_us_per_session": {
                w: round(got[w]["trial"].cpu_us, 1) if got.get(w) else None
                for w in ("plain", "auth")},
            "perfdhcp_lost": {w: got[w]["trial"].generator_lost if got.get(w) else None
                              for w in ("plain", "auth")},
        })
    ratios = [r["ratio"] for r in per_round if r["ratio"] is not None]
    overheads = [r["overhead_us"] for r in per_round if r["overhead_us"] is not None]

    def worst(w: str) -> float | None:
        v = [r["offer_p99_ms"][w] for r in per_round if r["offer_p99_ms"][w] is not None]
        return max(v) if v else None

    ratio = round(statistics.median(ratios), 3) if ratios else None
    return {
        "auth_ratio": ratio,
        "offer_p99_ms": {"auth": worst("auth"), "plain": worst("plain")},
        "accounting_backlog_growth": acct["backlog_growth"],
        "auth_overhead_us": round(statistics.median(overheads), 1) if overheads else None,
        "sessions_per_s": {w: round(statistics.median([r[w] for r in per_round]))
                           for w in ("plain", "auth")},
        "unit": "new sessions/s: DORAs of new clients completed (ACKs within the timed "
                "period), the best rate with at most 2.5% drops",
        "rounds": per_round,
        # Access-Requests bng sent in the auth trials, and FreeRADIUS's "Login OK" lines
        "access_requests": asked, "freeradius_accepts": answered,
        "accounting": acct,
        "where_time_goes": where,
        "goals": {"auth_ratio_min": 0.8, "auth_ratio_met": bool(ratio and ratio >= 0.8),
                  "no_backlog_growth": acct["backlog_growth"] <= 0},
        "bng_config": {"commitAtOffer": not a.commit_at_request, "eventLoopCPU": a.event_loop_cpu},
        "settings": {"rounds": a.rounds, "seconds": a.seconds, "rate": a.rate,
                     "quick": a.quick, "sessions": a.sessions, "interim": a.interim},
    }


def _rtt(t: dict[str, Any] | None) -> float | None:
    if not t or not t["radius_rtt_s"][1]:
        return None
    total, n = t["radius_rtt_s"]
    return round(1000 * float(total) / float(n), 3)


if __name__ == "__main__":
    sys.exit(main())

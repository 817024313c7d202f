"""Shaping with real traffic (issue 15): dhclient subscribers run iperf3 TCP through the bng
node to an internet namespace, a dozen at once, each at its class's QoSPolicy rates, down
and up. Goodput must land within 5% of the L2-overhead ideal: HTB counts a frame's bytes
without FCS, so a 1448-byte TCP payload (timestamps on) costs 1514 bytes of rate."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bng_lab import clients
from bng_lab.netlab import NetLab
from bng_lab.site import INTERNET_ADDRESS, Site
from bng_operator.agent.qos.feature import ifb_name
from tests.e2e.conftest import SAMPLES, wait, wait_natted

IDEAL = 1448 / 1514  # TCP payload over what HTB counts, per full-size frame
TOLERANCE = 0.05
SECONDS = 10  # measured, after a second of slow start left out

QOS = """
apiVersion: bng.dev/v1alpha1
kind: QoSPolicy
metadata: {{name: test-{name}}}
spec:
  download: {{rate: {down}}}
  upload: {{rate: {up}}}
"""
SHAPED_CLASS = """
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {{name: default}}
spec: {{priority: 10000, pool: residential, qosPolicy: test-{name}}}
"""


def _bps(rate: str) -> int:
    n, unit = float(rate[:-4]), rate[-4]
    return int(n * {"k": 1e3, "M": 1e6, "G": 1e9}[unit])


def _classes(site: Site) -> tuple[int, int]:
    """HTB classes on the access interface (download) and on its IFB (upload)."""
    return tuple(  # type: ignore[return-value]
        site.lab.run(site.bng, "tc", "class", "show", "dev", dev, check=False).stdout.count("class htb")
        for dev in (site.access, ifb_name(site.access)))


def _wait_shaped(site: Site, sessions: int) -> None:
    """Until ``sessions`` sessions are shaped: in the classifier's map (the metric) and with
    their classes on the access interface and its IFB. The metric alone is not enough:
    sessions bound before the shaper attached to the interface (at the agent's next tick)
    are counted with no class yet, and their first second of traffic goes unshaped."""
    wait(f"{sessions} sessions shaped",
         lambda: site.metrics().get("bng_qos_subscribers_shaped") == sessions and
         _classes(site) == (sessions, sessions))


@pytest.fixture
def shaped(make_site: Callable[..., Site], tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """A site shaped by its classes' policies, its subscribers bound by dhclient, with an
    internet namespace behind the node running an iperf3 server for each subscriber.
    ``make(n, down, up)``: n subscribers all in one class shaped at ``down``/``up``; or
    ``make(n, extra=..., replace=..., option82=...)``: configured as ``make_site`` is."""
    procs: list[subprocess.Popen[bytes]] = []

    def make(subscribers: int, down: str = "", up: str = "", **site_args: Any) -> Site:
        if down:
            site_args["extra"] = QOS.format(name="a", down=down, up=up) + "---" + \
                SHAPED_CLASS.format(name="a")
        site = make_site(subscribers=subscribers, **site_args)
        site.inet = site.add_internet()  # type: ignore[attr-defined]
        site.start_agent()
        for i in range(subscribers):
            procs.append(site.lab.popen(site.inet, "iperf3", "-s", "-p", str(5201 + i),  # type: ignore[attr-defined]
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with ThreadPoolExecutor(8) as pool:  # a dhclient takes ~1 s, mostly waiting
            list(pool.map(lambda ns: clients.dhclient(ns, "eth0", tmp_path), site.subscribers))
        _wait_shaped(site, subscribers)
        natted = [r for _, r in site_args.get("option82", {}).values() if r.startswith("res-")]
        if natted:  # the samples NAT residential lines
            wait_natted(site, len(natted))
        return site

    yield make
    for p in procs:
        p.kill()
        p.wait()


def _cpu() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle, iowait
    return sum(f) - idle, sum(f)


def iperf_each(lab: NetLab, namespaces: list[str], seconds: int, reverse: bool) -> list[float]:
    """iperf3 TCP from each namespace at once to the internet namespace's server 5201 + its
    index (``reverse``: download), a first second left out (slow start); the goodput of each
    in bits/s, as its receiver counted it."""
    runs = []
    for i, ns in enumerate(namespaces):
        argv = ["iperf3", "-c", INTERNET_ADDRESS, "-p", str(5201 + i), "-t", str(seconds),
                "-O", "1", "-J", *(["-R"] if reverse else [])]
        runs.append(lab.popen(ns, *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for p in runs:
        stdout, stderr = p.communicate(timeout=seconds + 30)
        assert p.returncode == 0, stderr.decode()[-2000:]
        out.append(float(json.loads(stdout)["end"]["sum_received"]["bits_per_second"]))
    return out


def _iperf(site: Site, reverse: bool, seconds: int = SECONDS) -> tuple[list[float], float]:
    """iperf3 TCP from every subscriber at once (``reverse``: download) for ``seconds``
    after a second left out (slow start); the goodput of each in bits/s, as the receiver
    counted it, and the share of the machine's CPU time busy meanwhile."""
    before = _cpu()
    out = iperf_each(site.lab, site.subscribers, seconds, reverse)
    after = _cpu()
    return out, (after[0] - before[0]) / max(1, after[1] - before[1])


# The samples' classes pick subscribers by the option 82 the access node inserts: residential
# lines by remote-id (res-N), business ports by circuit-id (biz-...); a line with neither
# falls to the default class. Each class gets a policy of its own here, so that 5, 20 and
# 100 Mbit/s each appear down and up.
RATES = {  # class: (download, upload), its number of subscribers
    "residential": (("20Mbit", "5Mbit"), 5),
    "business": (("100Mbit", "100Mbit"), 2),
    "default": (("5Mbit", "20Mbit"), 5),
}


def _line(cls: str, i: int) -> tuple[str, str]:
    """The option 82 (circuit-id, remote-id) of port ``i`` of a line of class ``cls``."""
    return {"residential": (f"olt1/1/{i}", f"res-{1000 + i}"),
            "business": (f"biz-olt1-1/1/{i}", ""),
            "default": (f"olt1/1/{i}", "")}[cls]


def _classes_config() -> tuple[dict[str, Any], list[str]]:
    """``make_site`` arguments (the samples' classes pointed at test policies, a default
    class, and each port's option 82), and the class of each subscriber."""
    extra = [QOS.format(name=cls, down=down, up=up) for cls, ((down, up), _) in RATES.items()]
    extra.append(SHAPED_CLASS.format(name="default"))
    replace = {}
    for cls, old in (("residential", "residential-100m"), ("business", "business-1g")):
        name = f"subscriberclass-{cls}.yaml"
        text = (SAMPLES / name).read_text()
        assert f"qosPolicy: {old}" in text, f"{name} changed: update this test"
        replace[name] = text.replace(f"qosPolicy: {old}", f"qosPolicy: test-{cls}")
    classes = [cls for cls, (_, n) in RATES.items() for _ in range(n)]
    return {"extra": "---".join(extra), "replace": replace,
            "option82": {i: _line(cls, i) for i, cls in enumerate(classes)}}, classes


def test_each_class_gets_its_policys_rates_down_and_up(shaped: Callable[..., Site]) -> None:
    """12 subscribers of three classes at once, 10 s each way: 5, 20 and 100 Mbit/s both
    ways, 325 Mbit/s in all each way. Each must get its own class's rate: a subscriber in
    the wrong class, or unshaped, is off by 4x or more."""
    config, classes = _classes_config()
    site = shaped(len(classes), **config)
    failed = []
    for reverse in (True, False):
        way = "down" if reverse else "up"
        got, cpu = _iperf(site, reverse)
        rows = []
        for cls, g in zip(classes, got, strict=True):
            rate = RATES[cls][0][0 if reverse else 1]
            ideal = _bps(rate) * IDEAL
            rows.append(f"{way} {cls:<11} {rate:>7}: {g / 1e6:6.2f} Mbit/s, "
                        f"{100 * (g / ideal - 1):+5.1f}% of {ideal / 1e6:.2f}")
            if abs(g / ideal - 1) > TOLERANCE:
                failed.append(rows[-1])
        total = sum(got) / 1e6
        print("\n".join(rows), f"\n{way}: {total:.0f} Mbit/s in all, CPU {100 * cpu:.0f}% busy")
        if failed:
            break
    assert not failed, f"off the ideal by more than {TOLERANCE:.0%} (CPU {100 * cpu:.0f}% " \
        f"busy while the {way}loads ran):\n" + "\n".join(failed)


# --- the counters against iperf3 -------------------------------------------------------------

MSS = 1448  # TCP payload of a full-size segment: MTU 1500 less IPv4 (20) and TCP (20 + 12
HEADERS = 52  # of timestamps) headers, which every segment on the wire carries
COUNTED = 0.01

_GRO = """
import sys
from pyroute2.ethtool import Ethtool
e = Ethtool()
features = e.get_features(sys.argv[1])
features.features["rx-gro"].enable = True
e.set_features(sys.argv[1], features)
"""


def _transfer(site: Site, reverse: bool) -> dict[str, Any]:
    """One iperf3 TCP transfer of 10 s from the first subscriber (``reverse``: to it); its
    JSON's "end". The window (-w 64K, both ends) bounds what is in flight when iperf3 stops
    counting, so that its two ends differ by less than 0.6%: what was sent but not yet read
    either crossed the shaper or did not."""
    r = site.lab.run(site.subscribers[0], "iperf3", "-c", INTERNET_ADDRESS, "-p", "5201",
                     "-t", "10", "-w", "64K", "-J", *(["-R"] if reverse else []), timeout=60)
    out = json.loads(r.stdout)
    assert out["start"]["tcp_mss_default"] == MSS, out["start"]
    return out["end"]  # type: ignore[no-any-return]


def _htb(site: Site, dev: str, classid: int) -> tuple[int, int]:
    """Packets HTB sent from class ``classid`` of ``dev`` (a GSO packet as its segments),
    and those it dropped (a GSO packet as one)."""
    out = site.lab.run(site.bng, "tc", "-s", "class", "show", "dev", dev,
                       "classid", f"{classid >> 16:x}:{classid & 0xFFFF:x}").stdout
    m = re.search(r"Sent \d+ bytes (\d+) pkt \(dropped (\d+)", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_the_counters_match_iperf3s_bytes_both_ways(shaped: Callable[..., Site]) -> None:
    """A session's counters, as its Subscriber status and RADIUS accounting take them, are
    packets and IP bytes as on the wire: every segment with its own headers, however the
    kernel batched them (a TSO send downstream; GRO upstream, on here as a real NIC has it).
    For a 10 s iperf3 transfer each way the bytes are its payload at either end, plus 52
    bytes of headers per 1448 (and the retransmissions it counted), within 1%; the packets
    are the segments HTB passed for the session's class, within 1%. What else the counters
    see meanwhile (SYN and FIN, iperf3's control connection: ~10 kB) is lost in the 25 MB."""
    from bng_operator.agent.dataplane.qos import QosPath
    from bng_operator.api.bngnode import MAX_LEASES_PER_NODE

    site = shaped(1, "20Mbit", "20Mbit")
    site.lab.run(site.bng, sys.executable, "-c", _GRO, site.access)
    path = QosPath(MAX_LEASES_PER_NODE, site.lab.bpf_dir)  # the agent's maps, adopted
    try:
        assert path.adopted
        ((address, classid),) = path.installed().items()
        off = []
        for reverse in (True, False):
            way, dev = ("down", site.access) if reverse else ("up", ifb_name(site.access))
            before, htb_before = path.counters(address), _htb(site, dev, classid)
            end = _transfer(site, reverse)
            after, htb_after = path.counters(address), _htb(site, dev, classid)
            if reverse:
                got = after.bytes_down - before.bytes_down
                packets = after.packets_down - before.packets_down
            else:
                got = after.bytes_up - before.bytes_up
                packets = after.packets_up - before.packets_up
            # counted before HTB: what it drops too (with -w 64K it has room for it all)
            segments = htb_after[0] - htb_before[0] + htb_after[1] - htb_before[1]
            retransmitted = end["sum_sent"].get("retransmits", 0) * MSS
            rows = [f"{way}: counted {got} B, {packets} packets; HTB passed {segments} "
                    f"segments ({100 * (packets / segments - 1):+.2f}%)"]
            if abs(packets / segments - 1) > COUNTED:
                off.append(rows[0])
            for side in ("sum_sent", "sum_received"):
                payload = end[side]["bytes"] + retransmitted
                want = payload * (MSS + HEADERS) / MSS
                rows.append(f"  iperf3 {side}: {payload} B of payload, {want:.0f} B with "
                            f"headers ({100 * (got / want - 1):+.2f}%)")
                if abs(got / want - 1) > COUNTED:
                    off.append(f"{way}: counted {got} B;{rows[-1]}")
            print("\n".join(rows))
        assert not off, "\n".join(off)
    finally:
        path.close()


def _intervals(stdout: bytes) -> list[float]:
    """Bits/s of each 1 s interval of an iperf3 JSON run."""
    return [float(i["sum"]["bits_per_second"]) for i in json.loads(stdout)["intervals"]]


def _download(site: Site, seconds: int) -> subprocess.Popen[bytes]:
    return site.lab.popen(site.subscribers[0], "iperf3", "-c", INTERNET_ADDRESS, "-p", "5201",
                          "-t", str(seconds), "-R", "-J", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)


def _near(bps: float, rate: str) -> bool:
    return abs(bps / (_bps(rate) * IDEAL) - 1) <= TOLERANCE


def test_an_edited_policy_takes_effect_mid_transfer(shaped: Callable[..., Site]) -> None:
    site = shaped(1, "20Mbit", "5Mbit")
    run = _download(site, 10)
    time.sleep(4)
    policy = site.config[0] / "zz-test-extra.yaml"
    policy.write_text(policy.read_text().replace("rate: 20Mbit", "rate: 8Mbit"))
    assert site.agent is not None
    edited = time.monotonic()
    site.agent.send_signal(signal.SIGHUP)
    stdout, stderr = run.communicate(timeout=40)
    assert run.returncode == 0, stderr.decode()[-2000:]
    rates = _intervals(stdout)
    # iperf3's intervals: 0-1 s is slow start; 1-4 s before the edit; from 6 s on, after it
    # (edited at ~4 s, applied within 2 s)
    assert all(_near(r, "20Mbit") for r in rates[1:4]), rates
    assert all(_near(r, "8Mbit") for r in rates[7:]), rates
    assert time.monotonic() - edited < 30


def test_shaping_holds_while_the_agent_is_killed_and_the_restart_adopts_it(
        shaped: Callable[..., Site]) -> None:
    site = shaped(1, "10Mbit", "5Mbit")
    run = _download(site, 12)
    time.sleep(3)
    site.stop_agent(signal.SIGKILL)
    time.sleep(4)  # 3-7 s with no agent
    site.start_agent()
    stdout, stderr = run.communicate(timeout=40)
    assert run.returncode == 0, stderr.decode()[-2000:]
    rates = _intervals(stdout)
    # Through the kill and the restart: on the whole at the policy's rate, and no second
    # unshaped (an unshaped second runs at hundreds of Mbit/s here). Single seconds around
    # the restart wobble by a few percent (its re-rate replaces the class).
    later = rates[1:]
    assert _near(sum(later) / len(later), "10Mbit"), rates
    assert all(abs(r / (_bps("10Mbit") * IDEAL) - 1) <= 0.15 for r in later), rates
    # the restarted agent loads shaping once it serves DHCP, adopting what is there
    wait("shaping adopted", lambda: any("shaping: adopted generation" in str(e.get("msg"))
                                         for e in site.log_events()))
    wait("the session shaped again",
         lambda: site.metrics().get("bng_qos_subscribers_shaped") == 1)

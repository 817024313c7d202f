"""Shaping with real traffic (issue 15): dhclient subscribers run iperf3 TCP through the bng
node to an internet namespace, several at once, each at its class's QoSPolicy rates, down
and up. Goodput must land within 5% of the L2-overhead ideal: HTB counts a frame's bytes
without FCS, so a 1448-byte TCP payload (timestamps on) costs 1514 bytes of rate."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.site import INTERNET_ADDRESS, Site

IDEAL = 1448 / 1514  # TCP payload over what HTB counts, per full-size frame
TOLERANCE = 0.05
SECONDS = 6

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


@pytest.fixture
def shaped(make_site: Callable[..., Site], tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """A site whose subscribers are all in one class shaped at ``down``/``up``, bound by
    dhclient, with an internet namespace behind the node running iperf3 servers."""
    procs: list[subprocess.Popen[bytes]] = []

    def make(subscribers: int, down: str, up: str) -> Site:
        extra = QOS.format(name="a", down=down, up=up) + "---" + \
            SHAPED_CLASS.format(name="a")
        site = make_site(subscribers=subscribers, extra=extra)
        site.inet = site.add_internet()  # type: ignore[attr-defined]
        site.start_agent()
        for i in range(subscribers):
            procs.append(site.lab.popen(site.inet, "iperf3", "-s", "-p", str(5201 + i),  # type: ignore[attr-defined]
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for ns in site.subscribers:
            clients.dhclient(ns, "eth0", tmp_path)
        return site

    yield make
    for p in procs:
        p.kill()
        p.wait()


def _iperf(site: Site, reverse: bool) -> list[float]:
    """iperf3 TCP from every subscriber at once (``reverse``: download); goodput of each
    in bits/s, as the receiver counted it."""
    runs = []
    for i, ns in enumerate(site.subscribers):
        argv = ["iperf3", "-c", INTERNET_ADDRESS, "-p", str(5201 + i), "-t", str(SECONDS),
                "-O", "1", "-J", *(["-R"] if reverse else [])]
        runs.append(site.lab.popen(ns, *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for p in runs:
        stdout, stderr = p.communicate(timeout=SECONDS + 30)
        assert p.returncode == 0, stderr.decode()[-2000:]
        out.append(float(json.loads(stdout)["end"]["sum_received"]["bits_per_second"]))
    return out


@pytest.mark.parametrize(("down", "up"), [("20Mbit", "5Mbit"), ("5Mbit", "20Mbit")])
def test_each_subscriber_gets_its_policys_rates_down_and_up(
        shaped: Callable[..., Site], down: str, up: str) -> None:
    site = shaped(3, down, up)
    time.sleep(1)  # the worker installed their classes
    assert site.metrics()["bng_qos_subscribers_shaped"] == 3
    for reverse, rate in ((True, down), (False, up)):
        ideal = _bps(rate) * IDEAL
        got = _iperf(site, reverse)
        print(rate, "down" if reverse else "up", [round(x / 1e6, 2) for x in got])
        for g in got:
            assert abs(g / ideal - 1) <= TOLERANCE, \
                f"{'down' if reverse else 'up'} {rate}: {[round(x / 1e6, 2) for x in got]} " \
                f"Mbit/s against an ideal of {ideal / 1e6:.2f}"

"""RADIUS accounting (issue 17) against a real FreeRADIUS 3.2, whose accounting section
writes every acknowledged record to its detail file, with a real dhclient subscriber and
iperf3 traffic through the node.

One session, one test, in this order: Start; iperf3 up and down; Interim-Updates every 5 s
(the Accept's Acct-Interim-Interval); FreeRADIUS stopped (an outage of ~30 s) during which
the agent is killed with -9 and started again, and the subscriber releases its lease; then
FreeRADIUS back. The detail file must hold exactly one Start, the Interims and the Stop, in
order, with one Acct-Session-Id, and byte counts that match the traffic within 1%.

What is compared: the QoS counters count IP bytes (headers included, no Ethernet). Each
direction (Acct-Input-Octets: upload, Acct-Output-Octets: download) is compared, within 1%,
with the iperf3 UDP transfer (the datagrams that arrived, plus 28 bytes of IP and UDP
headers each) and with the subscriber's interface counters less 14 bytes of Ethernet header
per frame. Both also hold the DHCP and iperf3 control traffic: a few kB against megabytes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.radius import FreeRadius
from bng_lab.site import INTERNET_ADDRESS, Site, subscriber_mac
from bng_operator.agent.qos.feature import ifb_name
from tests.e2e.conftest import DEFAULT_CLASS, radius_served, wait

PORT, ACCT_PORT = 18130, 18131
INTERIM = 5
USERS = f"""\
"{subscriber_mac(0)}" Auth-Type := Accept
\tAcct-Interim-Interval = {INTERIM},
\tClass = "acct-gold"

DEFAULT Auth-Type := Reject
"""
CLASS = f"""
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {{name: rad-acct}}
spec:
  priority: 10
  match: {{circuitId: "^rad-acct-"}}
  identity: mac
  pool: residential
  qosPolicy: residential-100m
  auth: radius
  radius:
    servers: [{{address: 127.0.0.1, authPort: {PORT}, acctPort: {ACCT_PORT}, timeout: 1s,
                retries: 1, secret: {{name: radius}}}}]
    deadAfter: 2
    deadTime: 2s
"""


@pytest.fixture
def acct_site(make_site: Callable[..., Site], tmp_path: Path) -> Iterator[
        tuple[Site, FreeRadius, str]]:
    site = make_site(subscribers=1, extra="---".join([DEFAULT_CLASS, CLASS]),
                     option82={0: ("rad-acct-0", "line-0")})
    inet = site.add_internet()
    iperf = site.lab.popen(inet, "iperf3", "-s", "-p", "5201", stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        with radius_served(site, tmp_path, PORT, USERS, acct_port=ACCT_PORT) as fr:
            yield site, fr, inet
    finally:
        iperf.kill()
        iperf.wait()


def _iperf(site: Site, ns: str, *argv: str) -> dict:  # type: ignore[type-arg]
    r = site.lab.run(ns, "iperf3", "-c", INTERNET_ADDRESS, "-p", "5201", "-J", *argv,
                     check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _ip_bytes(site: Site, ns: str) -> tuple[int, int]:
    """(sent, received) IP bytes of the subscriber's eth0: its counters less the Ethernet
    headers."""
    out = json.loads(site.lab.run(ns, "ip", "-s", "-j", "link", "show", "eth0").stdout)[0]
    st = out["stats64"]
    return (st["tx"]["bytes"] - 14 * st["tx"]["packets"],
            st["rx"]["bytes"] - 14 * st["rx"]["packets"])


def _octets(rec: dict[str, str], way: str) -> int:
    return (int(rec.get(f"Acct-{way}-Gigawords", "0")) << 32) + \
        int(rec.get(f"Acct-{way}-Octets", "0"))


def _near(a: int, b: int, within: float = 0.01) -> bool:
    return abs(a - b) <= within * max(a, b)


def test_accounting_start_interims_stop_through_an_outage_and_a_kill(
        acct_site: tuple[Site, FreeRadius, str], tmp_path: Path) -> None:
    site, fr, _ = acct_site
    sub = site.subscribers[0]
    mine = lambda: [r for r in fr.detail()  # noqa: E731
                    if r.get("Calling-Station-Id") == subscriber_mac(0)]
    lease = clients.dhclient(sub, "eth0", tmp_path)
    wait("the Start in the detail file", lambda: len(mine()) >= 1)
    start = mine()[0]
    assert start["Acct-Status-Type"] == "Start"
    assert start["Framed-IP-Address"] == lease.address
    assert start["Class"] == "0x" + b"acct-gold".hex()
    assert start["NAS-Identifier"] == site.node and start["NAS-Port-Id"] == "rad-acct-0"
    acct_id = start["Acct-Session-Id"]

    # traffic both ways, over UDP at rates the class's policy (100/20 Mbit) lets through,
    # once the session is shaped (its classes on the access interface and its IFB: until
    # then its upload passes uncounted)
    wait("the session shaped", lambda: site.metrics().get("bng_qos_subscribers_shaped") == 1
         and all("class htb" in site.lab.run(site.bng, "tc", "class", "show", "dev", dev,
                                              check=False).stdout
                 for dev in (site.access, ifb_name(site.access))))
    up = _iperf(site, sub, "-u", "-b", "10M", "-t", "3", "-l", "1200")["end"]["sum"]
    down = _iperf(site, sub, "-u", "-b", "15M", "-t", "3", "-l", "1200", "-R")["end"]["sum"]
    # the datagrams that arrived, with their IP and UDP headers
    sent_udp = (int(up["packets"]) - int(up["lost_packets"])) * (1200 + 28)
    received_udp = (int(down["packets"]) - int(down["lost_packets"])) * (1200 + 28)
    assert sent_udp > 3_000_000 and received_udp > 5_000_000, (up, down)

    # an Interim that saw the transfer
    interims_before = len([r for r in mine() if r["Acct-Status-Type"] == "Interim-Update"])
    wait("an Interim-Update after the transfer", lambda: len(
        [r for r in mine() if r["Acct-Status-Type"] == "Interim-Update"]) > interims_before,
        timeout=INTERIM * 3)

    # the outage: nothing acknowledges; the agent is killed and started again meanwhile
    fr.stop()
    t0 = time.monotonic()
    time.sleep(INTERIM + 1)  # an Interim queued
    site.stop_agent(signal.SIGKILL)
    site.start_agent("--secrets-dir", str(tmp_path / "secrets"))
    assert "RADIUS: 1 sessions' state restored" in site.log()
    time.sleep(INTERIM + 1)  # another, from the restarted agent
    sent_ip, received_ip = _ip_bytes(site, sub)
    clients.dhclient_release(sub, "eth0", tmp_path)
    wait("the Stop queued", lambda: site.metrics().get(
        'bng_radius_acct_records_total{type="Stop"}', 0) >= 1)
    depth = site.metrics().get("bng_radius_acct_queue_depth", 0)
    assert depth >= 2, site.metrics()  # at least an Interim and the Stop wait
    held = len(mine())
    time.sleep(max(0.0, 30 - (time.monotonic() - t0)))
    assert len(mine()) == held  # nothing was acknowledged during the outage
    fr.start()

    wait("the queue drained", lambda: site.metrics().get("bng_radius_acct_queue_depth", 1) == 0
         and any(r["Acct-Status-Type"] == "Stop" for r in mine()), timeout=30)
    recs = mine()
    kinds = [r["Acct-Status-Type"] for r in recs]
    assert kinds.count("Start") == 1 and kinds[0] == "Start", kinds  # no duplicate Start
    assert kinds.count("Stop") == 1 and kinds[-1] == "Stop", kinds
    assert len(recs) - held >= 3, kinds  # two Interims and the Stop survived the outage
    assert {r["Acct-Session-Id"] for r in recs} == {acct_id}  # the same across the kill
    times = [int(r["Acct-Session-Time"]) for r in recs[1:]]
    assert times == sorted(times), times  # in order
    ins = [_octets(r, "Input") for r in recs[1:]]
    assert ins == sorted(ins), ins
    assert all(int(r.get("Acct-Delay-Time", "0")) > 0 for r in recs[held:]), recs[held:]

    stop = recs[-1]
    assert stop["Acct-Terminate-Cause"] == "User-Request"
    assert stop["Framed-IP-Address"] == lease.address
    assert stop["Class"] == "0x" + b"acct-gold".hex()
    got_in, got_out = _octets(stop, "Input"), _octets(stop, "Output")
    assert _near(got_in, sent_ip), (got_in, sent_ip)
    assert _near(got_in, sent_udp), (got_in, sent_udp)
    assert _near(got_out, received_ip), (got_out, received_ip)
    assert _near(got_out, received_udp), (got_out, received_udp)
    m = site.metrics()
    assert m.get(f'bng_radius_acct_timeouts_total{{server="127.0.0.1:{ACCT_PORT}"}}', 0) >= 1
    assert m.get(f'bng_radius_acct_responses_total{{server="127.0.0.1:{ACCT_PORT}"}}', 0) >= 3

"""RADIUS authentication (issue 17) against a real FreeRADIUS 3.2, with real dhclient
subscribers behind an access node that inserts option 82.

One site, one agent, one FreeRADIUS in the node's namespace; each subscriber's circuit-id
picks a class, and each class shows one behaviour:

    s0 rad-ok-0        Accept: a static Framed-IP-Address and WISPr rates; the request's
                       attributes are checked by the users file (no match: reject)
    s1 rad-ok-1        Access-Reject: no lease; the hold-down keeps it from asking again
    s2 rad-failover-2  the first server never answers: the second accepts (Filter-Id)
    s3 rad-admit-3     no server answers, fallback admit: a lease from the class's pool
    s4 rad-refuse-4    no server answers, fallback refuse: no lease
    s5 rad-slow-5      its server never answers, slowly: while it waits, s0 renews through
                       the fast path
    s6 rad-ok-6        Session-Timeout 4: the session ends (its accounting Stop says
                       Session-Timeout), and its next request is authorised anew
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.radius import FreeRadius
from bng_lab.site import Site, requests, subscriber_mac
from bng_operator.agent.qos.feature import ifb_name
from tests.e2e.conftest import DEFAULT_CLASS, radius_served, wait

PORT, SILENT, SLOW = 18120, 18199, 18198  # FreeRADIUS; ports nobody answers on
STATIC = "100.64.9.9"

USERS = f"""\
"{subscriber_mac(0)}" Auth-Type := Accept, NAS-Identifier == "edge-1", \
NAS-Port-Type == Ethernet, NAS-Port-Id == "rad-ok-0", Calling-Station-Id == "{subscriber_mac(0)}", \
ADSL-Agent-Circuit-Id == 0x{b"rad-ok-0".hex()}, ADSL-Agent-Remote-Id == 0x{b"line-0".hex()}, \
Service-Type == Framed-User, NAS-IP-Address == 127.0.0.1
\tFramed-IP-Address = {STATIC},
\tWISPr-Bandwidth-Max-Down = 3000000,
\tWISPr-Bandwidth-Max-Up = 1000000,
\tSession-Timeout = 86400,
\tAcct-Interim-Interval = 300,
\tClass = "gold-0"

"{subscriber_mac(1)}" Auth-Type := Reject

"{subscriber_mac(2)}" Auth-Type := Accept
\tFilter-Id = "business-1g"

"{subscriber_mac(6)}" Auth-Type := Accept
\tSession-Timeout = 4

DEFAULT Auth-Type := Reject
"""


def _class(name: str, priority: int, servers: list[int], fallback: str = "refuse",
           timeout: str = "1s") -> str:
    listed = ", ".join(f"{{address: 127.0.0.1, authPort: {p}, acctPort: {p + 1}, "
                       f"timeout: {timeout}, retries: 0, secret: {{name: radius}}}}"
                       for p in servers)
    return f"""
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {{name: {name}}}
spec:
  priority: {priority}
  match: {{circuitId: "^{name}-"}}
  identity: mac
  pool: residential
  qosPolicy: residential-100m
  auth: radius
  radius:
    servers: [{listed}]
    rejectHoldDown: 60s
    fallback: {fallback}
    deadAfter: 5
"""


CLASSES = "---".join([
    DEFAULT_CLASS,
    _class("rad-ok", 10, [PORT]),
    _class("rad-failover", 11, [SILENT, PORT]),
    _class("rad-admit", 12, [SILENT], "admit"),
    _class("rad-refuse", 13, [SILENT]),
    _class("rad-slow", 14, [SLOW], timeout="6s"),
])
OPTION82 = {0: ("rad-ok-0", "line-0"), 1: ("rad-ok-1", "line-1"),
            2: ("rad-failover-2", "line-2"), 3: ("rad-admit-3", "line-3"),
            4: ("rad-refuse-4", "line-4"), 5: ("rad-slow-5", "line-5"),
            6: ("rad-ok-6", "line-6")}


@pytest.fixture
def radius_site(make_site: Callable[..., Site], tmp_path: Path) -> Iterator[
        tuple[Site, FreeRadius]]:
    site = make_site(subscribers=len(OPTION82), extra=CLASSES, option82=OPTION82)
    with radius_served(site, tmp_path, PORT, USERS, acct_port=PORT + 1) as fr:
        yield site, fr


def _tc_rates(site: Site, dev: str) -> list[str]:
    out = site.lab.run(site.bng, "tc", "class", "show", "dev", dev, check=False).stdout
    return re.findall(r"class htb \S+ .*?rate (\S+)", out)


def test_radius_accept_reject_failover_and_fallback(radius_site: tuple[Site, FreeRadius],
                                                     tmp_path: Path) -> None:
    site, fr = radius_site
    short = tmp_path / "dhclient-short.conf"
    short.write_text("timeout 12;\n")

    def lease(i: int) -> clients.ClientLease | None:
        extra = ("-cf", str(short)) if i in (1, 4) else ()
        try:
            return clients.dhclient(site.subscribers[i], "eth0", tmp_path, timeout=20,
                                    extra=extra)
        except clients.ClientFailed:
            return None

    with ThreadPoolExecutor(5) as pool:
        got = list(pool.map(lease, range(5)))
    m = site.metrics()

    # Accept: the static address, and shaping at the rates RADIUS gave.
    assert got[0] is not None and got[0].address == STATIC, got[0]
    wait("the session shaped at RADIUS's rates",
         lambda: "3Mbit" in _tc_rates(site, site.access) and
         "1Mbit" in _tc_rates(site, ifb_name(site.access)))
    assert len(fr.log_lines("Login OK", subscriber_mac(0))) == 1

    # Reject: no lease, and RADIUS asked once in the hold-down, however often it retried.
    assert got[1] is None
    assert len(fr.log_lines("Login incorrect", subscriber_mac(1))) == 1, fr.log()
    assert m.get('bng_radius_decisions_total{result="held_down",subscriber_class="rad-ok"}',
                 0) >= 1, {k: v for k, v in m.items() if "radius" in k}

    # Failover: the silent server timed out, the second accepted (Filter-Id: business-1g).
    assert got[2] is not None
    silent, real = f'server="127.0.0.1:{SILENT}"', f'server="127.0.0.1:{PORT}"'
    assert m.get(f"bng_radius_timeouts_total{{{silent}}}", 0) >= 1
    assert m.get(f'bng_radius_replies_total{{result="accept",{real}}}', 0) >= 2
    wait("Filter-Id's policy", lambda: "1Gbit" in _tc_rates(site, site.access))

    # No server answers: admit with the class's defaults, or refuse.
    assert got[3] is not None and got[3].address.startswith("100.64.")
    assert got[4] is None
    m = site.metrics()
    assert m.get('bng_radius_decisions_total{result="fallback_admit",'
                 'subscriber_class="rad-admit"}', 0) >= 1
    assert m.get('bng_radius_decisions_total{result="fallback_refuse",'
                 'subscriber_class="rad-refuse"}', 0) >= 1
    assert m.get(f"bng_radius_rtt_seconds_count{{{real}}}", 0) >= 2

    # A renewal is no new authentication: the session stays authorised until it ends. It is
    # answered in XDP, while another session waits on a server that does not answer.
    slow = tmp_path / "dhclient-slow.conf"
    slow.write_text("timeout 8;\n")
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(clients.dhclient, site.subscribers[5], "eth0", tmp_path, 10,
                              ("-cf", str(slow)))
        wait("s5's Access-Request in flight", lambda: site.metrics().get(
            f'bng_radius_requests_total{{server="127.0.0.1:{SLOW}"}}', 0) >= 1)
        fast = requests(site.metrics(), "fast")
        t0 = time.monotonic()
        again = clients.dhclient(site.subscribers[0], "eth0", tmp_path)
        assert time.monotonic() - t0 < 3 and again.address == STATIC
        assert requests(site.metrics(), "fast") > fast
        assert site.metrics().get(f'bng_radius_timeouts_total{{server="127.0.0.1:{SLOW}"}}',
                                  0) == 0, "s5's server timed out already: nothing overlapped"
        with pytest.raises(clients.ClientFailed):
            waiting.result()
    assert len(fr.log_lines("Login OK", subscriber_mac(0))) == 1

    # kill -9: what RADIUS granted survives (address, pool, rates), and nobody is asked
    # again; the slow path answers this time (restarted without the fast path).
    site.stop_agent(signal.SIGKILL)
    site.start_agent("--secrets-dir", str(tmp_path / "secrets"), "--no-fast-path")
    again = clients.dhclient(site.subscribers[0], "eth0", tmp_path)
    assert again.address == STATIC
    assert len(fr.log_lines("Login OK", subscriber_mac(0))) == 1
    assert "RADIUS: 3 sessions' state restored" in site.log()


def test_a_session_timeout_ends_the_session_and_the_next_request_asks_again(
        radius_site: tuple[Site, FreeRadius], tmp_path: Path) -> None:
    site, fr = radius_site
    first = clients.dhclient(site.subscribers[6], "eth0", tmp_path)
    wait("the session's end at its Session-Timeout", lambda: site.metrics().get(
        "bng_radius_session_timeouts_total", 0) >= 1, timeout=15)
    assert site.metrics().get('bng_sessions_ended_total{reason="disconnected"}', 0) >= 1
    assert len(fr.log_lines("Login OK", subscriber_mac(6))) == 1
    # its accounting: a Start, and a Stop that says why it ended
    def records() -> list[dict[str, str]]:
        return [r for r in fr.detail() if r.get("Calling-Station-Id") == subscriber_mac(6)]

    wait("the session's Stop", lambda: [r["Acct-Status-Type"] for r in records()] ==
         ["Start", "Stop"])
    start, stop = records()
    assert stop["Acct-Terminate-Cause"] == "Session-Timeout"
    assert stop["Acct-Session-Id"] == start["Acct-Session-Id"]
    assert 3 <= int(stop["Acct-Session-Time"]) <= 8
    again = clients.dhclient(site.subscribers[6], "eth0", tmp_path)
    assert again.address == first.address
    assert len(fr.log_lines("Login OK", subscriber_mac(6))) == 2
    wait("the new session's Start", lambda: len(records()) == 3)
    assert records()[2]["Acct-Status-Type"] == "Start"
    assert records()[2]["Acct-Session-Id"] != start["Acct-Session-Id"]  # a new session

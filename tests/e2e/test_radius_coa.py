"""Change of Authorization, Disconnect (RFC 5176) and Idle-Timeout (issue 17) against a real
FreeRADIUS 3.2 (authentication, and accounting into its detail file), with requests sent by
``radclient`` from the node's namespace (127.0.0.1: the class's server, hence a client with
its secret) to the agent's listener on 3799, and real dhclient subscribers.

    s0 rad-coa-0   a CoA halves its download rate (the HTB class within 1 s); a CoA with
                   the wrong secret is dropped, no reply, no effect; one for an unknown
                   session gets a NAK with Error-Cause 503; a CoA's Filter-Id names a
                   QoSPolicy, and an edit of that policy reaches it; a Disconnect ends it (Stop with
                   Admin-Reset, shaping gone); its next DISCOVER is a new session, which a
                   CoA's Session-Timeout ends 2 s later (Stop: Session-Timeout)
    s1 rad-coa-1   Idle-Timeout 4: it sends nothing, and ends on time (Stop: Idle-Timeout)
    s2 rad-coa-2   Idle-Timeout 8: quiet past it while the agent was killed, it ends at the
                   first check after the restart
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.radius import FreeRadius
from bng_lab.site import Site, subscriber_mac
from tests.e2e.conftest import DEFAULT_CLASS, radius_served, wait

PORT, COA_PORT = 18140, 3799
IDLE = 4
IDLE_LONG = 8
USERS = f"""\
"{subscriber_mac(0)}" Auth-Type := Accept
\tAcct-Interim-Interval = 300

"{subscriber_mac(1)}" Auth-Type := Accept
\tIdle-Timeout = {IDLE}

"{subscriber_mac(2)}" Auth-Type := Accept
\tIdle-Timeout = {IDLE_LONG}

DEFAULT Auth-Type := Reject
"""
CLASS = f"""
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {{name: rad-coa}}
spec:
  priority: 10
  match: {{circuitId: "^rad-coa-"}}
  identity: mac
  pool: residential
  qosPolicy: residential-100m
  auth: radius
  radius:
    servers: [{{address: 127.0.0.1, authPort: {PORT}, acctPort: {PORT + 1}, timeout: 1s,
                retries: 1, secret: {{name: radius}}}}]
"""
GOLD = """
apiVersion: bng.dev/v1alpha1
kind: QoSPolicy
metadata: {name: rad-gold}
spec:
  download: {rate: 30Mbit}
  upload: {rate: 10Mbit}
"""
OPTION82 = {0: ("rad-coa-0", "line-0"), 1: ("rad-coa-1", "line-1"), 2: ("rad-coa-2", "line-2")}


@pytest.fixture
def coa_site(make_site: Callable[..., Site], tmp_path: Path) -> Iterator[
        tuple[Site, FreeRadius]]:
    site = make_site(subscribers=3, extra="---".join([DEFAULT_CLASS, CLASS, GOLD]),
                     option82=OPTION82)
    with radius_served(site, tmp_path, PORT, USERS, acct_port=PORT + 1) as fr:
        yield site, fr


def _download_rate(site: Site) -> list[str]:
    """The HTB rates of the classes on the access interface (downloads)."""
    out = site.lab.run(site.bng, "tc", "class", "show", "dev", site.access, check=False).stdout
    return re.findall(r"class htb \S+ .*?rate (\S+)", out)


def _records(fr: FreeRadius, i: int) -> list[dict[str, str]]:
    return [r for r in fr.detail() if r.get("Calling-Station-Id") == subscriber_mac(i)]


def _reply(r: Callable[[], object] | object) -> str:
    out = str(getattr(r, "stdout", "")) + str(getattr(r, "stderr", ""))
    m = re.search(r"Received (\S+)", out)
    return m.group(1) if m else ""


def test_coa_disconnect_and_their_refusals(coa_site: tuple[Site, FreeRadius],
                                           tmp_path: Path) -> None:
    site, fr = coa_site
    first = clients.dhclient(site.subscribers[0], "eth0", tmp_path)
    wait("the Start", lambda: len(_records(fr, 0)) == 1)
    acct_id = _records(fr, 0)[0]["Acct-Session-Id"]
    wait("the session shaped at its class's rate", lambda: "100Mbit" in _download_rate(site))

    # a CoA halves the download rate: the HTB class follows within 1 s, no reconnect
    r = fr.radclient(COA_PORT, "coa", {"User-Name": subscriber_mac(0),
                                       "WISPr-Bandwidth-Max-Down": 50_000_000})
    t0 = time.monotonic()
    assert _reply(r) == "CoA-ACK", r.stdout + r.stderr
    while "50Mbit" not in _download_rate(site):
        assert time.monotonic() - t0 < 1.0, _download_rate(site)
        time.sleep(0.05)
    assert "100Mbit" not in _download_rate(site)

    # the wrong secret: no reply, no effect, counted
    r = fr.radclient(COA_PORT, "coa", {"Acct-Session-Id": acct_id,
                                       "WISPr-Bandwidth-Max-Down": 25_000_000},
                     secret="not-the-secret", timeout=0.5, retries=1)
    assert _reply(r) == "", r.stdout
    time.sleep(0.3)
    assert "50Mbit" in _download_rate(site) and "25Mbit" not in _download_rate(site)
    m = site.metrics()
    assert m.get('bng_radius_dynauth_requests_total{result="bad_authenticator",type="coa"}',
                 0) >= 1, {k: v for k, v in m.items() if "dynauth" in k}

    # an unknown session: CoA-NAK, Error-Cause 503
    r = fr.radclient(COA_PORT, "coa", {"Acct-Session-Id": "NO-SUCH-SESSION",
                                       "Filter-Id": "business-1g"})
    assert _reply(r) == "CoA-NAK", r.stdout
    assert "Session-Context-Not-Found" in r.stdout, r.stdout

    # a CoA naming a QoSPolicy; then an edit of that policy reaches the session live
    r = fr.radclient(COA_PORT, "coa", {"Acct-Session-Id": acct_id, "Filter-Id": "rad-gold"})
    assert _reply(r) == "CoA-ACK", r.stdout + r.stderr
    wait("the session at rad-gold's rate", lambda: "30Mbit" in _download_rate(site))
    extra = site.config[0] / "zz-test-extra.yaml"
    extra.write_text(extra.read_text().replace("rate: 30Mbit", "rate: 12Mbit"))
    assert site.agent is not None
    site.agent.send_signal(signal.SIGHUP)
    wait("the edited rate", lambda: "12Mbit" in _download_rate(site)
         and "30Mbit" not in _download_rate(site), timeout=10)

    # Disconnect: the session ends as at a Session-Timeout, its Stop says Admin-Reset
    r = fr.radclient(COA_PORT, "disconnect", {"Acct-Session-Id": acct_id,
                                              "Event-Timestamp": int(time.time())})
    assert _reply(r) == "Disconnect-ACK", r.stdout
    wait("the Stop", lambda: [x["Acct-Status-Type"] for x in _records(fr, 0)] ==
         ["Start", "Stop"])
    stop = _records(fr, 0)[1]
    assert stop["Acct-Terminate-Cause"] == "Admin-Reset"
    assert stop["Acct-Session-Id"] == acct_id
    wait("its shaping gone", lambda: site.metrics().get("bng_qos_subscribers_shaped") == 0
         and "12Mbit" not in _download_rate(site))
    m = site.metrics()
    assert m.get('bng_radius_dynauth_requests_total{result="ack",type="disconnect"}') == 1
    assert m.get('bng_radius_dynauth_requests_total{result="ack",type="coa"}') == 2
    assert m.get('bng_radius_dynauth_requests_total{result="session_not_found",type="coa"}') == 1
    assert m.get('bng_sessions_ended_total{reason="disconnected"}', 0) >= 1
    # a second Disconnect for it: the session is gone
    r = fr.radclient(COA_PORT, "disconnect", {"Acct-Session-Id": acct_id})
    assert _reply(r) == "Disconnect-NAK", r.stdout

    # its next DISCOVER: a new session, authorised anew, its class's rate again
    again = clients.dhclient(site.subscribers[0], "eth0", tmp_path)
    assert again.address == first.address  # the address is kept for it
    assert len(fr.log_lines("Login OK", subscriber_mac(0))) == 2
    wait("the new session's Start", lambda: len(_records(fr, 0)) == 3)
    assert _records(fr, 0)[2]["Acct-Session-Id"] != acct_id
    wait("shaped at its class's rate", lambda: "100Mbit" in _download_rate(site))

    # a CoA's Session-Timeout, counted from the CoA: the session ends 2 s later
    second = _records(fr, 0)[2]["Acct-Session-Id"]
    r = fr.radclient(COA_PORT, "coa", {"Acct-Session-Id": second, "Session-Timeout": 2})
    t0 = time.monotonic()
    assert _reply(r) == "CoA-ACK", r.stdout + r.stderr
    wait("its Stop", lambda: len(_records(fr, 0)) == 4, timeout=15)
    assert time.monotonic() - t0 >= 1.5
    stop = _records(fr, 0)[3]
    assert stop["Acct-Status-Type"] == "Stop" and stop["Acct-Session-Id"] == second
    assert stop["Acct-Terminate-Cause"] == "Session-Timeout"


def test_an_idle_session_ends_at_its_idle_timeout(coa_site: tuple[Site, FreeRadius],
                                                  tmp_path: Path) -> None:
    site, fr = coa_site
    clients.dhclient(site.subscribers[1], "eth0", tmp_path)
    t0 = time.monotonic()
    try:
        wait("the idle session's end", lambda: site.metrics().get(
            "bng_radius_idle_timeouts_total", 0) >= 1, timeout=IDLE + 6)
    except AssertionError:
            raise
    took = time.monotonic() - t0
    assert IDLE - 0.5 <= took <= IDLE + 3, took
    wait("the Stop", lambda: [x["Acct-Status-Type"] for x in _records(fr, 1)] ==
         ["Start", "Stop"])
    stop = _records(fr, 1)[1]
    assert stop["Acct-Terminate-Cause"] == "Idle-Timeout"
    assert IDLE <= int(stop["Acct-Session-Time"]) <= IDLE + 3


def test_an_idle_spell_outlives_a_kill_of_the_agent(coa_site: tuple[Site, FreeRadius],
                                                    tmp_path: Path) -> None:
    # Quiet past its Idle-Timeout while the agent was down (kill -9 once it has been quiet
    # for half of it, which writes so; restarted 4 s later): it ends at the first check
    # after the restart that reads its upload counter (pinned: unmoved), not a whole
    # Idle-Timeout after the restart.
    site, fr = coa_site
    clients.dhclient(site.subscribers[2], "eth0", tmp_path)
    wait("the Start", lambda: len(_records(fr, 2)) == 1)
    time.sleep(IDLE_LONG / 2 + 1.2)  # quiet for half its Idle-Timeout, and written so
    site.stop_agent(signal.SIGKILL)
    time.sleep(4)
    site.start_agent("--secrets-dir", str(tmp_path / "secrets"))
    ready = time.monotonic()
    wait("the idle session's end", lambda: site.metrics().get(
        "bng_radius_idle_timeouts_total", 0) >= 1, timeout=IDLE_LONG + 4)
    took = time.monotonic() - ready
    assert took < IDLE_LONG - 3, f"ended {took:.1f} s after the restart: its clock began anew"
    wait("the Stop", lambda: [x["Acct-Status-Type"] for x in _records(fr, 2)] ==
         ["Start", "Stop"])
    stop = _records(fr, 2)[1]
    assert stop["Acct-Terminate-Cause"] == "Idle-Timeout"
    assert int(stop["Acct-Session-Time"]) >= IDLE_LONG

"""Status-Server probes of a dead RADIUS server (issue 17, RFC 5997), against a real
FreeRADIUS 3.2 (which answers Status-Server unsigned: its Response Authenticator is
checked) and real dhclient subscribers.

    s0 rad-probe-0  asks while FreeRADIUS is stopped: refused, the server is dead
    s1 rad-probe-1  asks once a probe was answered, well within deadTime: accepted
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.radius import FreeRadius
from bng_lab.site import Site, subscriber_mac
from tests.e2e.conftest import DEFAULT_CLASS, radius_served, wait

PORT = 18150
DEAD_TIME = 40  # s: far longer than a probe's period (10 s), so a revival before it is theirs
USERS = f"""\
"{subscriber_mac(0)}" Auth-Type := Accept

"{subscriber_mac(1)}" Auth-Type := Accept

DEFAULT Auth-Type := Reject
"""
CLASS = f"""
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {{name: rad-probe}}
spec:
  priority: 10
  match: {{circuitId: "^rad-probe-"}}
  identity: mac
  pool: residential
  auth: radius
  radius:
    servers: [{{address: 127.0.0.1, authPort: {PORT}, acctPort: {PORT + 1}, timeout: 1s,
                retries: 0, secret: {{name: radius}}}}]
    deadAfter: 1
    deadTime: {DEAD_TIME}s
    statusServer: true
"""
OPTION82 = {0: ("rad-probe-0", "line-0"), 1: ("rad-probe-1", "line-1")}
SERVER = f'server="127.0.0.1:{PORT}"'


@pytest.fixture
def probe_site(make_site: Callable[..., Site], tmp_path: Path) -> Iterator[
        tuple[Site, FreeRadius]]:
    site = make_site(subscribers=2, extra="---".join([DEFAULT_CLASS, CLASS]),
                     option82=OPTION82)
    with radius_served(site, tmp_path, PORT, USERS, acct_port=PORT + 1) as fr:
        yield site, fr


def test_a_dead_server_is_used_again_once_it_answers_a_status_server(
        probe_site: tuple[Site, FreeRadius], tmp_path: Path) -> None:
    site, fr = probe_site
    fr.stop()
    short = tmp_path / "dhclient-short.conf"
    short.write_text("timeout 5;\n")
    with pytest.raises(clients.ClientFailed):
        clients.dhclient(site.subscribers[0], "eth0", tmp_path, timeout=5,
                         extra=("-cf", str(short)))
    dead = time.monotonic()
    assert site.metrics().get(f"bng_radius_server_up{{{SERVER}}}") == 0
    wait("a probe unanswered", lambda: site.metrics().get(
        f'bng_radius_status_server_total{{result="timeout",{SERVER}}}', 0) >= 1, timeout=20)
    assert site.metrics().get(f"bng_radius_server_up{{{SERVER}}}") == 0
    fr.start()
    wait("a probe answered", lambda: site.metrics().get(
        f'bng_radius_status_server_total{{result="answered",{SERVER}}}', 0) == 1, timeout=20)
    assert site.metrics().get(f"bng_radius_server_up{{{SERVER}}}") == 1
    assert time.monotonic() - dead < DEAD_TIME - 5, "revived by its dead time, not a probe"
    lease = clients.dhclient(site.subscribers[1], "eth0", tmp_path)
    assert lease.address.startswith("100.64.")
    assert len(fr.log_lines("Login OK", subscriber_mac(1))) == 1
    assert not fr.log_lines("Login OK", subscriber_mac(0))

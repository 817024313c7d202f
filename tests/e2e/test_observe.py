"""`hubble observe` against the agent, with Cilium's own hubble CLI: real dhclient
subscribers, the fast path on. The CLI sends its filters; the agent evaluates them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from bng_lab import clients
from bng_lab.hubble import hubble_binary
from bng_lab.port import Port
from bng_lab.site import INTERNET_ADDRESS, Site, subscriber_mac
from bng_operator.agent.dhcp.transport import build_frame
from tests.e2e.conftest import wait

RENEW_EVERY = 2


def _env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBLE_")}
    return {**env, "HOME": home, "XDG_CONFIG_HOME": f"{home}/.config"}


def _hubble(site: Site, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI in the agent's namespace, against its Hubble port."""
    with tempfile.TemporaryDirectory(prefix="bng-hubble-") as home:
        r = subprocess.run(["ip", "netns", "exec", site.bng, str(hubble_binary()), *args,
                            "--server", f"127.0.0.1:{site.hubble_port}"],
                           capture_output=True, text=True, env=_env(home), timeout=60)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def _flows(out: str) -> list[dict[str, Any]]:
    return [json.loads(line)["flow"] for line in out.splitlines()
            if line.strip().startswith("{") and '"flow"' in line]


def _get(d: dict[str, Any], *names: str) -> Any:
    """A field by its proto name or its JSON (camelCase) name."""
    for n in names:
        if n in d:
            return d[n]
    return None


@pytest.fixture
def renewing(make_site: Callable[..., Site], tmp_path: Path) -> Iterator[tuple[Site, list[str]]]:
    site = make_site(subscribers=2)
    site.start_agent()
    procs = [clients.dhclient_renewing(ns, "eth0", tmp_path, RENEW_EVERY)
             for ns in site.subscribers]
    try:
        wait("every client bound", lambda: all(clients.lease_history(ns, tmp_path)
                                               for ns in site.subscribers))
        yield site, [clients.lease_history(ns, tmp_path)[-1]["fixed-address"]
                     for ns in site.subscribers]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_hubble_observe_shows_the_fast_path_acks_the_slow_path_offers_and_a_spoofed_drop(
        renewing: tuple[Site, list[str]]) -> None:
    site, addresses = renewing
    # status and nodes first: the CLI checks the server before anything
    status = _hubble(site, "status")
    assert "Healthcheck (via 127.0.0.1" in status.stdout and "Ok" in status.stdout, status.stdout
    nodes = _hubble(site, "list", "nodes")
    assert site.node in nodes.stdout and "Connected" in nodes.stdout, nodes.stdout

    # Follow: the programs report while someone watches; renewals are answered in XDP.
    with tempfile.TemporaryDirectory(prefix="bng-hubble-") as home:
        follow = subprocess.Popen(
            ["ip", "netns", "exec", site.bng, str(hubble_binary()), "observe", "--server",
             f"127.0.0.1:{site.hubble_port}", "--follow", "--port", "67", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(home))
        try:
            time.sleep(3 * RENEW_EVERY + 1)
        finally:
            follow.terminate()
            out, err = follow.communicate(timeout=10)
    followed = _flows(out)
    fast = [f for f in followed if "(fast path)" in f.get("Summary", "")]
    assert fast, (out[-2000:], err[-2000:])
    for f in fast:
        assert f["verdict"] == "FORWARDED"
        assert _get(f, "trace_observation_point", "traceObservationPoint") == "TO_NETWORK"
        assert _get(f, "is_reply", "isReply") is True
        assert f["Summary"].startswith("DHCP ACK ")
        address = f["Summary"].split()[2]
        assert address in addresses and f["IP"]["destination"] == address
        assert f["l4"]["UDP"]["destination_port" if "destination_port" in f["l4"]["UDP"]
                              else "destinationPort"] == 68
        assert f["destination"]["pod_name" if "pod_name" in f["destination"]
                                else "podName"].startswith("mac-")

    # The past: the slow path's OFFERs from the first binding are kept too.
    past = _flows(_hubble(site, "observe", "--port", "67", "-o", "json", "--last", "1000").stdout)
    offers = [f for f in past if f.get("Summary", "").startswith("DHCP OFFER ")
              and "(slow path)" in f["Summary"]]
    assert {f["Summary"].split()[2] for f in offers} >= set(addresses), past[:5]
    assert any("(fast path)" in f.get("Summary", "") for f in past)

    # A spoofed source: dropped by the access data path (attached once it compiled, after
    # DHCP is served), with its reason.
    wait("the access data path attached", lambda: any(
        "access data path on access0" in str(e.get("msg")) for e in site.log_events()),
        timeout=120)
    gw_mac = bytes.fromhex(site.access_mac().replace(":", ""))
    mine = bytes.fromhex(subscriber_mac(0).replace(":", ""))
    unassigned = IPv4Address(addresses[0]) + 201
    port = Port(site.subscribers[0])
    try:
        for _ in range(3):
            port.send(build_frame(gw_mac, mine, b"", unassigned, IPv4Address(INTERNET_ADDRESS),
                                  9999, b"spoofed", src_port=9999))
    finally:
        port.close()

    def dropped() -> list[dict[str, Any]]:
        r = _hubble(site, "observe", "--verdict", "DROPPED", "-o", "json", "--last", "100")
        return [f for f in _flows(r.stdout) if f["IP"]["source"] == str(unassigned)]

    wait("the spoofed packets' drops", lambda: len(dropped()) >= 3, timeout=10)
    d = dropped()[0]
    assert _get(d, "drop_reason_desc", "dropReasonDesc") == "INVALID_SOURCE_IP"
    assert d["Summary"] == "dropped: spoof_source"
    assert _get(d["event_type"] if "event_type" in d else d["eventType"], "type") == 1

    # bng's own client, for several agents at once (one here), and `bng status`.
    bng = [sys.executable, "-m", "bng_operator"]
    merged = site.lab.run(site.bng, *bng, "observe", "--server",
                          f"127.0.0.1:{site.hubble_port}", "--verdict", "DROPPED", "--last", "3")
    lines = merged.stdout.splitlines()
    # the spoofed source is nobody's, but its frames came from subscriber 0's MAC: the drop
    # names the Subscriber that sent it
    sender = "mac-" + subscriber_mac(0).replace(":", "-")
    assert len(lines) == 3 and all(f"{site.node}: {sender} -> {INTERNET_ADDRESS} DROPPED "
                                   "dropped: spoof_source" in line for line in lines), \
        merged.stdout
    status = site.lab.run(site.bng, *bng, "status", "--metrics",
                          f"http://127.0.0.1:{site.metrics_port}")
    assert "agent:      ready" in status.stdout, status.stdout
    assert "program xdp_dhcp on access0: attached" in status.stdout, status.stdout
    assert "flow observers: 0" in status.stdout, status.stdout

    # The server evaluates filters; one it does not know is refused, clearly.
    bad = _hubble(site, "observe", "--fqdn", "example.com", "--last", "1", check=False)
    assert bad.returncode != 0
    assert "InvalidArgument" in bad.stderr or "INVALID_ARGUMENT" in bad.stderr, bad.stderr
    assert "not supported by bng's Hubble server" in bad.stderr, bad.stderr

"""Option 82, classes, reservations, exhaustion and bad input, against the running agent."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.capture import capture, dhcp_payloads
from bng_lab.messages import relay82
from bng_lab.site import Site, subscriber_mac
from bng_operator.agent.dhcp.codec import HEADER_LEN, MAGIC, MessageType, Opt, walk_options
from tests.e2e.conftest import TINY_POOL

BUSINESS = ipaddress.ip_network("198.51.100.0/24")
RESIDENTIAL = ipaddress.ip_network("100.64.0.0/20")


def _replies(path: Path) -> list[dict[int, bytes]]:
    out = []
    for p in dhcp_payloads(path):
        if p[0] == 2 and p[HEADER_LEN:HEADER_LEN + 4] == MAGIC:
            opts: dict[int, bytes] = {}
            walk_options(p[HEADER_LEN + 4:], "options", opts, allow_overload=True)
            out.append(opts)
    return out


def test_option_82_is_echoed_in_the_reply_bytes(make_site: Callable[..., Site],
                                                tmp_path: Path) -> None:
    site = make_site(subscribers=1)
    site.start_agent()
    sent = relay82("olt1 xpon 0/1/2:3", "res-4711") + b"\x09\x06\x00\x00\x0d\xe9\x01\x00"
    with capture(site.subscribers[0], "eth0", tmp_path / "c.pcap") as pcap:
        lease = clients.udhcpc(site.subscribers[0], "eth0", tmp_path, {Opt.RELAY_AGENT: sent})
    assert ipaddress.ip_address(lease.address) in RESIDENTIAL
    replies = _replies(pcap)
    kinds = [r[Opt.MESSAGE_TYPE][0] for r in replies]
    assert kinds == [MessageType.OFFER, MessageType.ACK]
    for r in replies:
        assert r[Opt.RELAY_AGENT] == sent


def test_two_classes_pick_two_pools_and_a_reservation_holds(make_site: Callable[..., Site],
                                                           tmp_path: Path) -> None:
    site = make_site(subscribers=3)
    site.start_agent()
    res = clients.udhcpc(site.subscribers[0], "eth0", tmp_path,
                         {Opt.RELAY_AGENT: relay82("olt1/1/1", "res-1001")})
    biz = clients.udhcpc(site.subscribers[1], "eth0", tmp_path,
                         {Opt.RELAY_AGENT: relay82("biz-olt1-1/1/3")})
    acme = clients.udhcpc(site.subscribers[2], "eth0", tmp_path,
                          {Opt.RELAY_AGENT: relay82("biz-olt1-1/1/7")})
    assert ipaddress.ip_address(res.address) in RESIDENTIAL and res.lease_time == 4 * 3600
    assert ipaddress.ip_address(biz.address) in BUSINESS and biz.lease_time == 12 * 3600
    assert biz.address != "198.51.100.10"
    assert acme.address == "198.51.100.10"  # the Subscriber acme-hq's reservation
    assert biz.routers == ("198.51.100.1",) and biz.server_id == "198.51.100.1"
    assert biz.domain == "biz.example.net"


def test_exhaustion_sends_no_offer_and_says_so(make_site: Callable[..., Site],
                                               tmp_path: Path) -> None:
    site = make_site(subscribers=7, replace={"ippool-residential.yaml": TINY_POOL})
    site.start_agent()
    got, failed = [], 0
    for ns in site.subscribers:  # a /29 holds 5 clients besides network, gateway, broadcast
        try:
            got.append(clients.udhcpc(ns, "eth0", tmp_path, timeout=4).address)
        except clients.ClientFailed:
            failed += 1
    assert len(set(got)) == 5 and failed == 2
    m = site.metrics()
    assert m['bng_dhcp_drops_total{reason="pool_exhausted"}'] >= 2
    assert m['bng_pool_addresses{pool="residential",state="free"}'] == 0
    assert m['bng_pool_addresses{pool="residential",state="used"}'] == 5
    warnings = [e for e in site.log_events()
                if e["level"] == "warning" and "exhausted" in str(e.get("msg"))]
    assert len(warnings) == 1  # once a minute, not once per DISCOVER


def _frame(payload: bytes, src_mac: str = "02:00:00:00:00:00") -> str:
    """A broadcast Ethernet/IPv4/UDP frame to port 67 around ``payload`` (any bytes)."""
    from ipaddress import IPv4Address

    from bng_operator.agent.dhcp.transport import BROADCAST_IP, BROADCAST_MAC, build_frame

    return build_frame(BROADCAST_MAC, bytes.fromhex(src_mac.replace(":", "")), b"",
                       IPv4Address(0), BROADCAST_IP, 67, payload).hex()


def test_malformed_frames_are_counted_and_the_agent_keeps_serving(
        make_site: Callable[..., Site], tmp_path: Path) -> None:
    from bng_lab.messages import request
    from bng_operator import netlink
    from bng_operator.agent.dhcp.codec import encode

    site = make_site(subscribers=2)
    # Jumbo frames from s0 to the agent, so that an oversized request can arrive at all.
    for ns, ifname in ((site.subscribers[0], "eth0"), (site.switch, "p0"),
                       (site.switch, "up0"), (site.bng, "access0")):
        netlink.set_mtu(ifname, 2000, ns)
    site.start_agent()
    good = encode(request(MessageType.DISCOVER, subscriber_mac(0)), [Opt.MESSAGE_TYPE])
    frames = [
        _frame(good[:100]),  # truncated
        _frame(good + bytes(1300)),  # oversized: 1600 bytes
        _frame(b"\x02" + good[1:]),  # BOOTREPLY sent to a server
        _frame(good[:236] + bytes(4) + good[240:]),  # no magic cookie
        _frame(good[:240] + b"\x35\x01\x01\x0c\x40ab"),  # option runs past the end
        _frame(good[:108] + b"\x34\x01\x01\xff" + good[112:240] + b"\x34\x01\x01\x35\x01\x01\xff"),
        bytes(60).hex(),  # not even IPv4
        _frame(bytes(range(256)) * 2),  # noise
    ]
    # A REQUEST naming another server.
    frames.append(_frame(encode(request(MessageType.REQUEST, subscriber_mac(0),
                                        requested="100.64.0.20", server_id="10.0.0.9"),
                                [Opt.MESSAGE_TYPE, Opt.REQUESTED_IP, Opt.SERVER_ID])))
    site.lab.run(site.subscribers[0], "python3", "-m", "bng_lab.probe", "raw",
                 "eth0", *frames)
    reasons = ("truncated", "oversized", "wrong_op", "no_magic_cookie", "option_overrun",
               "overload_loop", "other_server")

    def missing() -> list[str]:
        m = site.metrics()
        return [r for r in reasons if m.get(f'bng_dhcp_drops_total{{reason="{r}"}}', 0) < 1]

    deadline = time.monotonic() + 10  # a slow machine may still be reading its socket
    while missing() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not missing(), site.metrics()
    assert site.agent is not None and site.agent.poll() is None
    lease = clients.udhcpc(site.subscribers[1], "eth0", tmp_path)
    assert ipaddress.ip_address(lease.address) in RESIDENTIAL


def test_probe_discover_sees_the_offer(make_site: Callable[..., Site]) -> None:
    site = make_site(subscribers=1)
    site.start_agent()
    r = site.lab.run(site.subscribers[0], "python3", "-m", "bng_lab.probe",
                     "discover", "eth0", "--mac", "02:00:00:00:77:01")
    offer = json.loads(r.stdout)
    assert ipaddress.ip_address(offer["yiaddr"]) in RESIDENTIAL
    assert offer["options"][str(Opt.MESSAGE_TYPE)] == "02"


@pytest.fixture(autouse=True)
def _python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Namespaced helpers run the project's python (the venv's), found through PATH."""
    import os
    import sys

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def test_sighup_reloads_the_config_without_dropping_leases(make_site: Callable[..., Site],
                                                           tmp_path: Path) -> None:
    import signal

    site = make_site(subscribers=2)
    site.start_agent()
    before = clients.udhcpc(site.subscribers[0], "eth0", tmp_path)
    pool = site.config[0] / "ippool-residential.yaml"
    pool.write_text(pool.read_text().replace("dns: [192.0.2.53, 192.0.2.54]", "dns: [192.0.2.99]")
                    .replace("leaseTime: 4h", "leaseTime: 2h"))
    assert site.agent is not None
    site.agent.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "configuration reloaded" not in site.log():
        time.sleep(0.1)
    after = clients.udhcpc(site.subscribers[1], "eth0", tmp_path)
    assert after.dns == ("192.0.2.99",) and after.lease_time == 2 * 3600
    assert site.metrics()["bng_leases_active"] >= 1
    again = clients.udhcpc(site.subscribers[0], "eth0", tmp_path)  # the first client returns
    assert again.address == before.address


def test_a_broken_reload_keeps_serving_the_old_config(make_site: Callable[..., Site],
                                                      tmp_path: Path) -> None:
    import signal

    site = make_site(subscribers=1)
    site.start_agent()
    pool = site.config[0] / "ippool-residential.yaml"
    pool.write_text(pool.read_text().replace("gateway: 100.64.0.1", "gateway: 10.0.0.1"))
    assert site.agent is not None
    site.agent.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "reload failed" not in site.log():
        time.sleep(0.1)
    assert "spec.subnets[0].gateway: gateway must be inside the subnet's cidr" in site.log()
    assert site.metrics()["bng_config_loaded"] == 0
    lease = clients.udhcpc(site.subscribers[0], "eth0", tmp_path)
    assert lease.routers == ("100.64.0.1",)

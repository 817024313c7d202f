"""NAT44 with real traffic (issue 16): dhclient subscribers of the residential class (option
82 remote-id res-N, NATPool cgnat) reach an "internet" namespace over TCP, UDP and ICMP
through the bng node's uplink; the internet sees only public addresses, with ports inside
the subscriber's block, and ``bng nat lookup`` names the subscriber of every flow it saw.
Endpoint-independent mapping and filtering, hairpinning, a full block, ICMP errors
(traceroute, port unreachable), a kill -9 of the agent mid-transfer, and deterministic
mode."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from bng_lab import clients
from bng_lab.site import INTERNET_ADDRESS, Site
from tests.e2e.conftest import SAMPLES, wait, wait_natted

SECOND_ADDRESS, STRANGER = "192.0.2.3", "192.0.2.4"  # more of the internet, on its eth0
POOL = IPv4Network("203.0.113.0/28")
ECHO_PORTS = (5000, 5001)
TCP_PORT = 7000

# In the internet: on every address, UDP echo ports that answer "<source ip> <source port>"
# (what a STUN server tells its client), and a TCP port that says the same and closes.
ECHO = r"""
import select, socket, sys
socks = []
for a in sys.argv[1].split(","):
    for p in sys.argv[2].split(","):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((a, int(p))); socks.append(s)
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", int(sys.argv[3]))); t.listen(64); socks.append(t)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        if s is t:
            c, peer = t.accept(); c.sendall(f"{peer[0]} {peer[1]}".encode()); c.close()
        else:
            data, peer = s.recvfrom(2048)
            s.sendto(f"{peer[0]} {peer[1]}".encode(), peer)
"""

# In a subscriber: one UDP socket (port argv[1]) asks each destination how it sees it (one
# JSON line); with argv[2] "listen", then prints each datagram it receives unasked
# ("<source ip> <source port> <payload>").
STUN = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(5)
seen = []
for d in sys.argv[3:]:
    a, p = d.rsplit(":", 1)
    s.sendto(b"?", (a, int(p))); seen.append(s.recvfrom(100)[0].decode())
print(json.dumps(seen), flush=True)
s.settimeout(15)
while sys.argv[2] == "listen":
    data, peer = s.recvfrom(2048)
    print(f"{peer[0]} {peer[1]} {data.decode()}", flush=True)
"""

# In a subscriber: N connected UDP sockets, one flow each; per flow "ok <ip> <port>" or the
# error (an ICMP 3/13 from the NAT arrives as EHOSTUNREACH).
FLOWS = r"""
import json, socket, sys
out, keep = [], []
for i in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.connect((sys.argv[2], int(sys.argv[3])))
    try:
        s.send(b"?"); out.append("ok " + s.recv(100).decode())
    except OSError as e:
        out.append(type(e).__name__ + " " + str(e.errno))
    keep.append(s)  # every socket stays open, and its mapping in use
print(json.dumps(out), flush=True)
"""


def residential(i: int) -> tuple[str, str]:
    return f"olt1/1/{i}", f"res-{i}"


def natpool(**fields: str) -> dict[str, str]:
    """The samples' NATPool with ``fields`` (YAML values) replaced or added."""
    lines = (SAMPLES / "natpool-cgnat.yaml").read_text().splitlines()
    for key, value in fields.items():
        kept, inside = [], False
        for line in lines:  # the key's line and the lines indented under it go
            if line.startswith(f"  {key}:"):
                inside = True
            elif inside and not line.startswith("    "):
                inside = False
            if not inside:
                kept.append(line)
        lines = [*kept, f"  {key}: {value}"]
    return {"natpool-cgnat.yaml": "\n".join(lines) + "\n"}


@pytest.fixture
def natted(make_site: Callable[..., Site], tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """A site whose subscribers are all residential (NATed behind cgnat), bound by dhclient,
    with the internet's echo servers running; waits until NAT translates on uplink0 and
    every subscriber has its block."""
    procs: list[subprocess.Popen[bytes]] = []

    def make(subscribers: int = 2, replace: dict[str, str] | None = None) -> Site:
        site = make_site(subscribers=subscribers, replace=replace,
                         option82={i: residential(i) for i in range(subscribers)})
        inet = site.inet = site.add_internet()  # type: ignore[attr-defined]
        for a in (SECOND_ADDRESS, STRANGER):
            site.lab.run(inet, "ip", "addr", "add", f"{a}/24", "dev", "eth0")
        echo = site.lab.popen(inet, sys.executable, "-c", ECHO,
                              ",".join((INTERNET_ADDRESS, SECOND_ADDRESS)),
                              ",".join(map(str, ECHO_PORTS)), str(TCP_PORT),
                              stdout=subprocess.PIPE)
        procs.append(echo)
        assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
        iperf = site.lab.popen(inet, "iperf3", "-s", "-p", "5201", stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        procs.append(iperf)
        site.start_agent()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda ns: clients.dhclient(ns, "eth0", tmp_path), site.subscribers))
        wait_natted(site, subscribers if "deterministic" not in str(replace) else 0)
        return site

    yield make
    for p in procs:
        p.kill()
        p.wait()


def py(site: Site, i: int, script: str, *args: str, timeout: float = 30) -> Any:
    """Run ``script`` in subscriber ``i``; its JSON output."""
    r = site.lab.run(site.subscribers[i], sys.executable, "-c", script, *args, timeout=timeout)
    return json.loads(r.stdout)


def tcp_seen(site: Site, i: int) -> tuple[str, str]:
    """A TCP connection from subscriber ``i``: its source as the internet saw it."""
    r = site.lab.run(site.subscribers[i], sys.executable, "-c",
                     "import socket; s = socket.create_connection"
                     f"(('{INTERNET_ADDRESS}', {TCP_PORT}), 5); print(s.recv(100).decode())")
    ip, port = r.stdout.split()
    return ip, port


def lookup(site: Site, public: str, port: int, *extra: str) -> list[dict[str, Any]]:
    r = subprocess.run([sys.executable, "-m", "bng_operator", "nat", "lookup", public,
                        str(port), "--state-dir", str(site.state_dir), "--json", *extra],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def in_block(answer: dict[str, Any], port: int) -> bool:
    return any(int(a) <= port <= int(b)
               for a, b in (r.split("-") for r in answer["ports"].split(",")))


def test_tcp_udp_and_icmp_leave_from_the_subscribers_block_and_lookup_names_it(
        natted: Callable[..., Site]) -> None:
    site = natted(2)
    seen: list[tuple[int, str, int]] = []  # (subscriber, public address, port) as the internet saw
    for i in range(2):
        # TCP
        ip, port = tcp_seen(site, i)
        seen.append((i, ip, int(port)))
        # UDP
        [udp] = py(site, i, STUN, str(41000 + i), "once", f"{INTERNET_ADDRESS}:{ECHO_PORTS[0]}")
        ip, port = udp.split()
        seen.append((i, ip, int(port)))
        # ICMP echo
        site.lab.run(site.subscribers[i], "ping", "-c", "2", "-W", "2", INTERNET_ADDRESS)
    for i, ip, port in seen:
        assert IPv4Address(ip) in POOL, f"the internet saw {ip}: not NATed"
        [answer] = lookup(site, ip, port)
        assert answer["subscriber"] == f"remote:res-{i}" and in_block(answer, port), answer
        assert answer["mode"] == "port-block" and answer["remoteId"] == f"res-{i}"
    # paired: all of a subscriber's flows on one public address; its ports in its block
    for i in range(2):
        assert len({ip for j, ip, _ in seen if j == i}) == 1
    # the block log: one record per block, none per flow
    recs = [e for e in site.log_events() if str(e.get("msg", "")).startswith('{"event": "nat-')]
    assert len(recs) == 2, recs


def test_icmp_errors_come_back_through_the_nat(natted: Callable[..., Site]) -> None:
    site = natted(1)
    # traceroute: hop 1 the node, hop 2 the internet's port unreachable (a translated ICMP
    # error quoting the NATed probe); untranslated, the trace would never end there
    r = site.lab.run(site.subscribers[0], "traceroute", "-n", "-q", "1", "-w", "2", "-m", "4",
                     INTERNET_ADDRESS, timeout=60)
    hops = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [h[1] for h in hops][:2] == ["100.64.0.1", INTERNET_ADDRESS], r.stdout
    # a closed port: the connected socket hears ECONNREFUSED (111) from the ICMP error
    [res] = py(site, 0, FLOWS, "1", INTERNET_ADDRESS, "9")
    assert res == "ConnectionRefusedError 111", res


def test_endpoint_independent_mapping_and_filtering_and_hairpinning(
        natted: Callable[..., Site]) -> None:
    site = natted(2)
    dests = [f"{INTERNET_ADDRESS}:{ECHO_PORTS[0]}", f"{SECOND_ADDRESS}:{ECHO_PORTS[1]}"]
    runs = [site.lab.popen(site.subscribers[i], sys.executable, "-c", STUN, str(42000 + i),
                           "listen", *dests, stdout=subprocess.PIPE, text=True) for i in range(2)]
    try:
        mapped = []
        for p in runs:
            assert p.stdout is not None
            seen = json.loads(p.stdout.readline())
            assert seen[0] == seen[1], f"mapping depends on the destination: {seen}"  # EIM
            mapped.append(seen[0].split())
        (a_ip, a_port), (b_ip, b_port) = mapped
        # EIF: a stranger reaches subscriber 0's mapping
        site.lab.run(site.inet, sys.executable, "-c",  # type: ignore[attr-defined]
                     "import socket; s = socket.socket(2, 2); "
                     f"s.bind(('{STRANGER}', 6000)); s.sendto(b'hello', ('{a_ip}', {a_port}))")
        assert runs[0].stdout is not None
        assert runs[0].stdout.readline().split() == [STRANGER, "6000", "hello"]
        # hairpinning: subscriber 1 sends to subscriber 0's public endpoint; 0 hears it
        # from 1's public address (paired: the one its other flow has) and a port of 1's
        site.lab.run(site.subscribers[1], sys.executable, "-c",
                     "import socket; s = socket.socket(2, 2); "
                     f"s.sendto(b'neighbour', ('{a_ip}', {a_port}))")
        src_ip, src_port, payload = runs[0].stdout.readline().split()
        assert (src_ip, payload) == (b_ip, "neighbour"), (src_ip, payload, b_ip, b_port)
        [answer] = lookup(site, src_ip, int(src_port))
        assert answer["subscriber"] == "remote:res-1" and in_block(answer, int(src_port))
    finally:
        for p in runs:
            p.kill()
            p.wait()


def test_a_full_block_refuses_the_extra_flows_with_icmp_and_spares_the_others(
        natted: Callable[..., Site]) -> None:
    site = natted(2, natpool(portsPerBlock="8", blocksPerSubscriber="1"))
    before = site.metrics()
    res = py(site, 0, FLOWS, "12", INTERNET_ADDRESS, str(ECHO_PORTS[0]))
    ok = [r for r in res if r.startswith("ok")]
    assert len(ok) == 8 and all(r.startswith("ok") for r in res[:8]), res
    # EHOSTUNREACH: the NAT's ICMP 3/13, at most one every 100 ms a subscriber (the others
    # time out)
    assert res[8] == "OSError 113", res
    assert all(r in ("OSError 113", "TimeoutError None") for r in res[9:]), res
    after = site.metrics()
    key = 'bng_nat_translation_failures_total{reason="block_full"}'
    assert after.get(key, 0) - before.get(key, 0) >= 4
    # the neighbour is unaffected
    other = py(site, 1, FLOWS, "3", INTERNET_ADDRESS, str(ECHO_PORTS[0]))
    assert all(r.startswith("ok") for r in other), other
    wait("exhaustion counted", lambda: site.metrics().get(
        'bng_nat_port_exhaustion_total{pool="cgnat"}', 0) >= 4)


def test_a_transfer_goes_on_through_a_kill_9_of_the_agent(natted: Callable[..., Site]) -> None:
    site = natted(1)
    run = site.lab.popen(site.subscribers[0], "iperf3", "-c", INTERNET_ADDRESS, "-p", "5201",
                         "-t", "12", "-J", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3)
    site.stop_agent(signal.SIGKILL)
    time.sleep(4)
    site.start_agent()
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr.decode()[-2000:]
    intervals = [i["sum"]["bits_per_second"] for i in json.loads(stdout)["intervals"]]
    assert len(intervals) >= 11 and min(intervals) > 1e6, intervals  # never stalled
    wait("NAT adopted", lambda: any("NAT: adopted generation" in str(e.get("msg"))
                                    for e in site.log_events()), timeout=90)


def test_deterministic_mode_needs_no_log_and_lookup_uses_the_formula(
        natted: Callable[..., Site]) -> None:
    # 64 slots of 1,008 ports an address: the 4,096 addresses of 100.64.0.0/20 need 64
    site = natted(1, natpool(mode="deterministic", insidePrefixes="[100.64.0.0/20]",
                             portsPerBlock="1008", addresses="[203.0.113.0/24]"))
    ip, port = tcp_seen(site, 0)
    [answer] = lookup(site, ip, int(port))
    assert answer["mode"] == "deterministic" and in_block(answer, int(port))
    inside = IPv4Address(answer["inside"])
    leases = clients.lease_history(site.subscribers[0], site.workdir)
    assert str(inside) == leases[-1]["fixed-address"]
    n = int(inside) - int(IPv4Address("100.64.0.0"))
    assert IPv4Address(ip) == IPv4Address("203.0.113.0") + n // 64  # the documented formula
    assert not [e for e in site.log_events()
                if str(e.get("msg", "")).startswith('{"event": "nat-block')]


def test_an_idle_udp_mapping_ends_and_its_port_is_held_before_reuse(
        natted: Callable[..., Site]) -> None:
    """Four ports, four UDP flows; idle past the UDP timeout (the API's minimum, RFC 4787's
    2 min), they end; their ports are held: a new flow is refused until the hold passes."""
    site = natted(1, natpool(portsPerBlock="4", blocksPerSubscriber="1",
                             timeouts="{udp: 2m, hold: 20s}"))
    first = py(site, 0, FLOWS.replace("keep.append(s)", "s.close()"), "4", INTERNET_ADDRESS,
               str(ECHO_PORTS[0]))
    assert all(r.startswith("ok") for r in first), first

    def outbound() -> float:
        return site.metrics().get('bng_nat_mappings{table="outbound"}', -1)

    wait("the four mappings counted", lambda: outbound() == 4)  # by the collector's pass
    t0 = time.monotonic()
    wait("the idle mappings ended", lambda: outbound() == 0, timeout=160)
    ended = time.monotonic() - t0
    assert ended >= 110, f"UDP mappings ended after {ended:.0f} s, before the 2 min timeout"
    held = py(site, 0, FLOWS, "1", INTERNET_ADDRESS, str(ECHO_PORTS[0]))
    assert not held[0].startswith("ok"), held  # every port is held
    time.sleep(26)  # the hold, and a collector pass
    again = py(site, 0, FLOWS, "1", INTERNET_ADDRESS, str(ECHO_PORTS[0]))
    assert again[0].startswith("ok"), again

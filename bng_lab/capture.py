"""Packet capture with tcpdump inside a namespace, read back with dpkt."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt


@contextlib.contextmanager
def capture(ns: str, iface: str, path: Path, bpf_filter: str = "udp port 67 or udp port 68",
            ) -> Iterator[Path]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-U", "-n",
                             "--immediate-mode", "-w", str(path), bpf_filter],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # tcpdump says "listening on" once its filter is in place.
    assert proc.stderr is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and b"listening" not in proc.stderr.readline():
        pass
    try:
        yield path
    finally:
        time.sleep(0.3)
        proc.terminate()
        proc.wait(timeout=10)


def dhcp_payloads(path: Path) -> list[bytes]:
    """The UDP payloads of every DHCP packet in a capture, VLAN tags skipped."""
    out = []
    with path.open("rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                out.append(bytes(ip.data.data))
    return out


def checksums_ok(path: Path) -> list[bool]:
    """For every DHCP packet in a capture: whether its IPv4 header and UDP checksums are
    right (dpkt recomputes them over the packet as it is)."""
    out = []
    with path.open("rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not (isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP)):
                continue
            sums = (ip.sum, ip.data.sum)
            ip.sum = ip.data.sum = 0
            again = dpkt.ip.IP(bytes(ip))
            out.append((again.sum, again.data.sum) == sums)
    return out

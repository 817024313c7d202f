"""Packets/s through a node's network stack: bng_lab/udp_gen.c driven from here, for the
benchmarks (bench/qos.py: download through the shaper; bench/nat.py: upload through a NAT).

The generator hands 60-byte UDP frames (64 with the FCS) to the node's stack with
BPF_PROG_RUN in live-frame mode, as if received on one of its interfaces: each is routed
and sent on in the sending call, on the sending CPU, and an XDP counter at the far end of
the path drops it. The whole path runs on that CPU, so the sender is never the limit and
the rate is frames per second of that thread's CPU time (on this kernel that includes the
softirq work it runs; time the scheduler gives other processes does not count).

    gen = UdpGen()
    gen.attach_counter("eth0", far_ns)
    frame = template(node_mac, sender_mac, source, destination)
    rate = gen.run(node_ns, ifindex, frame, subscribers=1000, base=IPv4Address("100.64.0.0"),
                   frames=1_000_000, vary=GEN_DST)
    gen.close()

Subscriber i is ``base`` + (i // 254) * 256 + i % 254 + 1 (``subscriber``): frame k goes to
(GEN_DST) or comes from (GEN_SRC) subscriber k % subscribers, and with GEN_SRC and
``ports`` from source port first_port + (k // subscribers) % ports, so ``subscribers`` x
``ports`` flows take turns.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from bng_lab.netlab import in_netns
from bng_operator import netlink
from bng_operator.agent.dataplane.loader import BPFObject, send_live

SOURCE = Path(__file__).resolve().parent / "udp_gen.c"
FRAME_LEN = 60  # udp_gen.c
PER_24 = 254  # subscribers per /24 (udp_gen.c)
DISCARD_PORT = 9
GEN_DST, GEN_SRC = 0, 1  # what the subscriber is: the destination, the source
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def subscriber(base: IPv4Address, i: int) -> IPv4Address:
    """Subscriber i's address in the /16 at ``base``, as the generator makes it."""
    return base + ((i // PER_24) << 8) + i % PER_24 + 1


def template(dst_mac: bytes, src_mac: bytes, src: IPv4Address, dst: IPv4Address,
             sport: int = DISCARD_PORT) -> bytes:
    """A 60-byte frame to the discard port, without a UDP checksum (the generator rewrites
    its ports). The address the generator varies may be 0.0.0.0 here."""
    payload = bytes(FRAME_LEN - 14 - 20 - 8)
    udp = sport.to_bytes(2, "big") + DISCARD_PORT.to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + bytes(2)
    ip = bytes([0x45, 0]) + (20 + len(udp) + len(payload)).to_bytes(2, "big") + bytes(4) + \
        bytes([64, 17]) + bytes(2) + src.packed + dst.packed
    frame = dst_mac + src_mac + b"\x08\x00" + ip + udp + payload
    assert len(frame) == FRAME_LEN
    return frame


def _partial_sum(frame: bytes, vary: int) -> int:
    """The IP header summed as the generator sums it (16-bit words as loaded on this
    little-endian CPU), with the address it varies and the checksum taken as 0."""
    ip = bytearray(frame[14:34])
    ip[10:12] = bytes(2)
    ip[12:16] = bytes(4) if vary == GEN_SRC else ip[12:16]
    ip[16:20] = bytes(4) if vary == GEN_DST else ip[16:20]
    return sum(int.from_bytes(ip[k:k + 2], "little") for k in range(0, 20, 2))


@dataclass
class Rate:
    pps: float  # frames received per second of the sending thread's CPU time
    pps_wall: float  # frames received per second between the first and the last (kernel)
    sent: int
    received: int
    seconds: float  # wall time of the sending call
    cpu_seconds: float  # CPU time of the sending thread
    from_subscribers: int  # frames that arrived with a subscriber's address as the source
    last_source: tuple[IPv4Address, int] | None  # (address, port) of the last frame received


class UdpGen:
    """The generator, and the counter at the far end of the path."""

    def __init__(self) -> None:
        self.obj = BPFObject(SOURCE)
        self.gen_fd = self.obj.load_xdp("generate")
        self.recv_fd = self.obj.load_xdp("receive")
        # The CPU it sends from (one, so a run's frames and its softirq work share it).
        self.cpu = max(os.sched_getaffinity(0))

    def attach_counter(self, ifname: str, ns: str) -> None:
        netlink.attach_xdp(ifname, self.recv_fd, ns, "native")

    def detach_counter(self, ifname: str, ns: str) -> None:
        netlink.detach_xdp(ifname, ns, "native")

    def run(self, ns: str, ifindex: int, frame: bytes, subscribers: int, base: IPv4Address,
            frames: int, vary: int = GEN_DST, ports: int = 0, first_port: int = 0) -> Rate:
        """Send ``frames`` frames into ``ns``'s stack as if received on ``ifindex``, from
        ``frame`` (``template``), to or from the subscribers in turn; what the counter saw."""
        tpl = self.obj.map("template")
        leaf = tpl.Leaf()
        leaf.data[:] = list(frame)
        tpl[tpl.Key(0)] = leaf
        cfg = self.obj.map("config")
        c = cfg.Leaf()
        c.subscribers, c.base, c.csum_partial = subscribers, int(base), _partial_sum(frame, vary)
        c.vary, c.ports, c.first_port = vary, ports, first_port
        cfg[cfg.Key(0)] = c
        self.obj.map("sent").clear()
        self.obj.map("received").clear()
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.cpu})
        try:
            with in_netns(ns):
                t0, c0 = time.perf_counter(), time.thread_time_ns()
                send_live(self.gen_fd, frame, frames, ifindex)
                cpu_ns = time.thread_time_ns() - c0
                wall = time.perf_counter() - t0
        finally:
            os.sched_setaffinity(0, affinity)
        sent_map = self.obj.map("sent")
        sent = int(sum(sent_map[sent_map.Key(0)]))
        rx = self.obj.map("received")
        per_cpu = [r for r in rx[rx.Key(0)] if r.packets]
        received = sum(int(r.packets) for r in per_cpu)
        if not per_cpu:
            return Rate(0.0, 0.0, sent, 0, wall, cpu_ns / 1e9, 0, None)
        window = max(int(r.stamped_ns) for r in per_cpu) - min(int(r.first_ns) for r in per_cpu)
        counted = sum(int(r.stamped) - 1 for r in per_cpu)
        last = max(per_cpu, key=lambda r: int(r.stamped_ns))
        source = (IPv4Address(int(last.last_saddr).to_bytes(4, "little")),
                  int.from_bytes(int(last.last_sport).to_bytes(2, "little"), "big"))
        return Rate(received / cpu_ns * 1e9, counted / window * 1e9 if window > 0 else 0.0,
                    sent, received, wall, cpu_ns / 1e9,
                    sum(int(r.from_subscribers) for r in per_cpu), source)

    def close(self) -> None:
        self.obj.close()


# Runs that hold kernel.bpf_stats_enabled on: a file each, named by pid, holding the value
# to restore when the last of them ends (or, after a crash, when the next run starts).
STATS_HOLDERS = Path("/run/bng-bench/bpf-stats")


def _holders() -> tuple[list[Path], list[Path]]:
    """(live, dead) holder files."""
    live: list[Path] = []
    dead: list[Path] = []
    for f in sorted(STATS_HOLDERS.glob("*")) if STATS_HOLDERS.is_dir() else []:
        (live if f.name.isdigit() and os.path.exists(f"/proc/{f.name}") else dead).append(f)
    return live, dead


def restore_bpf_stats() -> bool:
    """Put kernel.bpf_stats_enabled back as it was before a run that crashed while holding it
    on, unless a live run holds it still. Returns whether it did."""
    live, dead = _holders()
    if not dead:
        return False
    if not live:
        BPF_STATS.write_text(dead[0].read_text().strip() + "\n")
    for f in dead:
        f.unlink(missing_ok=True)
    return not live


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the block, then as it was before the first of the runs
    holding it (this one, or another bench running alongside). The stats add two clock reads
    to every BPF program run on the machine: keep them out of the measured rounds."""
    restore_bpf_stats()
    STATS_HOLDERS.mkdir(parents=True, exist_ok=True)
    live, _ = _holders()
    original = live[0].read_text().strip() if live else BPF_STATS.read_text().strip()
    me = STATS_HOLDERS / str(os.getpid())
    me.write_text(original)
    BPF_STATS.write_text("1\n")
    try:
        yield
    finally:
        me.unlink(missing_ok=True)
        if not _holders()[0]:
            BPF_STATS.write_text(original + "\n")

#!/usr/bin/env python3
"""NAT44: bng's BPF NAT against nftables masquerade and nftables SNAT to the pool, in the same run.

    sudo .venv/bin/python bench/nat.py --json [--quick]

Four copies of one topology, namespaces only: subscribers <-> node <-> internet, the node
routing 100.64.0.0/16 to the subscribers and the internet host 203.0.113.2 out of its
uplink. They differ only in what the node does on the way out:

- plain: routing, no NAT (the baseline every NAT's own cost is taken from);
- ours: bng's NAT (bpf/nat44.c through NatPath, as the agent drives it): nat_out on the
  uplink's tc egress (a tcx link), nat_in on its ingress; a pool of public addresses 192.0.2.x with
  the NATPool defaults (ports 1024-65535, blocks of 512), one block per subscriber, placed
  by the deterministic formula (docs/nat.md), endpoint-independent filtering;
- masq: nftables, `oifname "uplink0" masquerade` in a nat postrouting chain (to the
  uplink's address);
- snat: nftables, `snat to <the same public addresses>:1024-65535`.

Every copy stays installed, so the rounds interleave (the machine is shared and noisy: only
ratios in the same run count). The nftables tables exist only in the masq and snat copies'
node namespaces: conntrack registers its hooks per network namespace, when a ruleset needs
it, so the plain and ours copies never run it. The run checks that (no table there, and
no conntrack entry after their traffic) and says so in "conntrack".

1. TCP: one iperf3 flow, subscriber 100.64.0.1 <-> the internet host, upload and download
   (-R), --seconds after 1 s omitted, per round and copy; the server's JSON says which
   address it saw.
2. 64-byte UDP, packets per CPU-second: bng_lab/udpgen sends 60-byte UDP frames (64 with
   the FCS) with BPF_PROG_RUN live frames into the node's stack as if received on its
   access interface, from --subscribers subscribers x --ports source ports each, to the
   internet host's discard port; they are routed, NATed, sent out of the uplink, and
   counted and dropped by XDP on the internet side, which also counts frames whose source
   is still a subscriber's (not translated). The whole path runs on one CPU in the sending
   call, so the rate is frames per second of that thread's CPU time; its inverse is the
   CPU time per packet. Each round, in every copy: the NAT state is emptied (ours: the
   mapping tables; nftables: conntrack flushed), one frame per flow, each a new flow
   ("new": mapping or conntrack entry made), then --pps-seconds of the same flows over
   and over ("steady": mappings exist). "nat_ns" is each NAT's CPU time per packet minus
   plain routing's in the same round; nat_overhead_ratio is the median over rounds of
   ours / masq of it, steady state.
3. Where ours goes: kernel.bpf_stats_enabled=1 (restored after) for a new-flow and a
   steady run of ours, and a TCP download: nat_out's run_time_ns / run_cnt (tail calls to
   nat_new included), nat_in's per skb; and nat_out with two flows only, all in cache: the
   difference is what memory stalls cost with many flows. Not during the rounds: the stats
   add two clock reads to every BPF program run (the output counts the rounds' runs during
   which another process had them on: ours, one BPF program more, paid for them).
   --max-mappings sizes ours' tables otherwise than the agent does.
4. Memory per 100k mappings: --mem-subscribers x --mem-ports new flows, from an empty
   state. Ours: the mapping tables' memlock (the kernel's own accounting of a map, in
   /proc/<pid>/fdinfo) before and after, per mapping made; the bucket arrays, allocated
   when the tables are made whatever their use, apart. nftables (snat: masquerade's entries
   are the same objects, but one address has too few ports for 100k flows to one
   destination): conntrack entries made, the nf_conntrack slab's object size, and slab
   growth (/proc/slabinfo, all kmalloc caches and nf_conntrack, the entries' extensions
   included) per entry, the median of --mem-repeats runs; the same slab growth for ours,
   once (elements a reset frees stay in BPF's allocator, and a second fill takes them back
   unseen). Slab growth counts what other processes allocate and free meanwhile: the
   kernel's accounting is the number to trust.
5. Log records per 1,000 flows. Ours logs one record per port block allocated to a
   subscriber (the agent's block log; the data path needs nothing more to tell who had a
   port), never one per flow: counted from the data path after the memory run, as the
   blocks its mappings lie in (every one checked to lie in its subscriber's block) plus one
   per subscriber that ran out (nat_exhausted: it would get another block); and again after
   half of the flows, to show more flows of the same subscribers add none. nftables logs
   nothing by default (0); logging flows through conntrack events (conntrack -E, ulogd)
   gives a NEW and a DESTROY record per entry made.

One JSON line (last on stdout with --json): {"nat_overhead_ratio", "pps_ratio",
"log_records_per_1000_flows", "bytes_per_mapping", "tcp", "pps", "bpf", "memory", "log",
"conntrack", "goals", "counted", ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TextIO

from pyroute2 import NFCTSocket

from bng_lab import udpgen
from bng_lab.benchrun import progress, unwind_on_sigterm
from bng_lab.netlab import NetLab, in_netns, remove_leftovers
from bng_lab.udpgen import GEN_SRC, Rate, UdpGen, bpf_stats
from bng_operator import netlink
from bng_operator.agent.dataplane import nat
from bng_operator.agent.dataplane.loader import run_stats
from bng_operator.agent.dataplane.nat import Binding, NatPath, Pool, mapping_capacity

ACCESS, UPLINK = "access0", "uplink0"
SUB_BASE = IPv4Address("100.64.0.0")  # the subscribers' /16
INSIDE = IPv4Network("100.64.0.0/16")
ACCESS_LINK = ("10.255.0.1/30", "10.255.0.2/30")  # the node's access0, the subscribers' eth0
UPLINK_LINK = ("203.0.113.1/24", "203.0.113.2/24")  # the node's uplink0, the internet's eth0
NODE_UPLINK = IPv4Address("203.0.113.1")  # what masquerade translates to
REMOTE = IPv4Address("203.0.113.2")  # the internet host: every flow's destination
PUBLIC_NET = IPv4Network("192.0.2.0/24")
PUBLIC_FIRST = IPv4Address("192.0.2.1")
PORT_START, PORT_END = 1024, 65535  # NATPool portRange default
BLOCK = 512  # NATPool portsPerBlock default
PER_ADDRESS = (PORT_END - PORT_START + 1) // BLOCK  # subscribers sharing one public address
FLOW_PORT = 10000  # the first source port of the rounds' flows
MEM_PORT = 20000  # ... of the memory run's
MASQ_MEM_FLOWS = 40_000  # masquerade's memory run: what one address holds comfortably
MAX_SUBSCRIBERS = 253 * 254  # subscriber addresses the /16 holds below .253.x
VARIANTS = ("plain", "ours", "masq", "snat")
NATS = ("ours", "masq", "snat")
NFT_TABLE = "bngbench"
CONNTRACK_COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"
SLABINFO = "/proc/slabinfo"


def subscriber(i: int) -> IPv4Address:
    return udpgen.subscriber(SUB_BASE, i)


def deterministic(i: int, publics: list[IPv4Address]) -> Binding:
    """Subscriber i's binding by RFC 7422's formula (docs/nat.md): one block of BLOCK ports."""
    return Binding(publics[i // PER_ADDRESS], 0, BLOCK,
                   (PORT_START + (i % PER_ADDRESS) * BLOCK,))


def _ip(cidr: str) -> str:
    return cidr.split("/")[0]


def _mac(ifname: str, ns: str) -> bytes:
    return bytes.fromhex(netlink.interface_info(ifname, ns)[1].replace(":", ""))


# --- topology ---------------------------------------------------------------------------------


@dataclass
class Stack:
    """One copy of the topology: subscribers <-> node <-> internet."""

    role: str
    subs: str
    bng: str
    inet: str
    access_index: int = 0
    frame: bytes = b""  # the generator's template: subscriber -> the internet host


def build_stack(lab: NetLab, role: str) -> Stack:
    s = Stack(role, lab.namespace(f"{role}-subs"), lab.namespace(f"{role}-node"),
              lab.namespace(f"{role}-inet"))
    lab.link(s.bng, ACCESS, s.subs, "eth0", *ACCESS_LINK)
    lab.link(s.bng, UPLINK, s.inet, "eth0", *UPLINK_LINK)
    netlink.add_address("eth0", f"{subscriber(0)}/32", s.subs)  # the iperf3 subscriber
    sub_side, node_side = _ip(ACCESS_LINK[1]), _ip(ACCESS_LINK[0])
    subs_mac, inet_mac = _mac("eth0", s.subs), _mac("eth0", s.inet)
    node_access, node_up = _mac(ACCESS, s.bng), _mac(UPLINK, s.bng)
    lab.run(s.bng, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.run(s.bng, "ip", "route", "add", str(INSIDE), "via", sub_side)
    # No ARP in the measured path: the next hops are known from the start.
    for ns, ip, mac, dev in ((s.bng, sub_side, subs_mac, ACCESS),
                             (s.bng, str(REMOTE), inet_mac, UPLINK),
                             (s.inet, str(NODE_UPLINK), node_up, "eth0"),
                             (s.subs, node_side, node_access, "eth0")):
        lab.run(ns, "ip", "neigh", "replace", ip, "lladdr", mac.hex(":"), "dev", dev, "nud",
                "permanent")
    lab.run(s.subs, "ip", "route", "add", "default", "via", node_side, "src", str(subscriber(0)))
    # The internet routes the inside (plain routing's replies) and the pool back to the node.
    for net in (INSIDE, PUBLIC_NET):
        lab.run(s.inet, "ip", "route", "add", str(net), "via", str(NODE_UPLINK))
    s.access_index = netlink.interface_info(ACCESS, s.bng)[0]
    s.frame = udpgen.template(node_access, subs_mac, IPv4Address(0), REMOTE)
    return s


# --- the NATs ----------------------------------------------------------------------------------


class Plain:
    name = "plain"

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def reset(self) -> None:
        """Empty the NAT's state (mappings, conntrack entries): the next packets are new."""

    def close(self) -> None:
        pass


class Ours(Plain):
    """bng's NAT on one copy's uplink, configured as the agent would."""

    name = "ours"

    def __init__(self, stack: Stack, subscribers: int, publics: list[IPv4Address],
                 max_mappings: int | None = None) -> None:
        super().__init__(stack)
        self.publics = publics
        # As the agent sizes the tables: every public port once per protocol, never full.
        self.max_mappings = max_mappings or mapping_capacity(
            len(publics) * (PORT_END - PORT_START + 1))
        self.path = NatPath(max_subscribers=subscribers, max_mappings=self.max_mappings)
        self.path.set_pool(0, Pool())
        for a in publics:
            self.path.put_address(a, 0)
        self.path.put_inside(INSIDE)
        for i in range(subscribers):
            self.path.put_binding(subscriber(i), deterministic(i, publics))
        self.path.attach(UPLINK, ns=stack.bng)

    def reset(self) -> None:
        for table in (self.path.outbound, self.path.inbound, self.path.filters,
                      self.path.recent, self.path.fragments, self.path.exhausted_map):
            with contextlib.suppress(Exception):  # BCC's bare Exception: cannot batch
                table.items_delete_batch()  # (deletes everything before it returns)
            if next(iter(table), None) is not None:
                table.clear()

    def memlock(self) -> int:
        """Bytes the kernel accounts to the two mapping tables now (fdinfo memlock)."""
        total = 0
        for table in (self.path.outbound, self.path.inbound):
            with open(f"/proc/self/fdinfo/{table.map_fd}") as f:
                m = re.search(r"^memlock:\s+(\d+)", f.read(), re.M)
            total += int(m.group(1)) if m else 0
        return total

    def close(self) -> None:
        self.path.close()  # its tcx links go with it
        with contextlib.suppress(Exception):
            netlink.remove_clsact(UPLINK, self.stack.bng)  # a kernel without tcx


class Nft(Plain):
    """An nftables NAT on one copy's node: masquerade, or SNAT to the pool."""

    def __init__(self, stack: Stack, name: str, publics: list[IPv4Address]) -> None:
        super().__init__(stack)
        self.name = name
        pool = f"{publics[0]}-{publics[-1]}"
        # A port range needs a transport protocol match; ICMP gets the addresses alone.
        rules = [f'oifname "{UPLINK}" masquerade'] if name == "masq" else [
            f'oifname "{UPLINK}" meta l4proto {{ tcp, udp }} snat to {pool}:{PORT_START}-'
            f"{PORT_END}", f'oifname "{UPLINK}" snat to {pool}']
        self.ruleset = (f"table ip {NFT_TABLE} {{\n"
                        "  chain postrouting {\n"
                        "    type nat hook postrouting priority srcnat; policy accept;\n"
                        + "".join(f"    {r}\n" for r in rules) + "  }\n}\n")
        r = subprocess.run(["ip", "netns", "exec", stack.bng, "nft", "-f", "-"],
                           input=self.ruleset, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"nft ({name}): {r.stderr.strip()}")

    def reset(self) -> None:
        with in_netns(self.stack.bng):
            s = NFCTSocket()
            try:
                s.flush()
            finally:
                s.close()

    def close(self) -> None:
        subprocess.run(["ip", "netns", "exec", self.stack.bng, "nft", "delete", "table", "ip",
                        NFT_TABLE], capture_output=True, check=False)


def conntrack_entries(lab: NetLab, ns: str) -> int:
    return int(lab.run(ns, "cat", CONNTRACK_COUNT).stdout)


def nft_tables(lab: NetLab, ns: str) -> list[str]:
    return [line.strip() for line in lab.run(ns, "nft", "list", "tables").stdout.splitlines()
            if line.strip()]


# --- 1. TCP ------------------------------------------------------------------------------------


def iperf(lab: NetLab, stack: Stack, seconds: int, reverse: bool) -> tuple[float, str]:
    """One TCP flow between subscriber 0 and the internet host (upload, or download with
    ``reverse``) for ``seconds`` after 1 s omitted: the receiver's goodput in bit/s, and the
    client address the server saw."""
    server = lab.popen(stack.inet, "iperf3", "-s", "-1", "-J", "-B", str(REMOTE),
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while f"{REMOTE}:5201" not in lab.run(stack.inet, "ss", "-ltnH").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server ({stack.role}) did not listen")
            time.sleep(0.05)
        r = lab.run(stack.subs, "iperf3", "-c", str(REMOTE), "-B", str(subscriber(0)), "-t",
                    str(seconds), "-O", "1", "-J", *(["-R"] if reverse else []), check=False,
                    timeout=seconds + 60)
        if r.returncode != 0:
            raise RuntimeError(f"iperf3 ({stack.role}): {r.stdout[-1500:]} {r.stderr[-1500:]}")
        out, _ = server.communicate(timeout=30)
    finally:
        server.kill()
        server.wait()
    seen = json.loads(out)["start"]["connected"][0]["remote_host"]
    return float(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]), seen


def tcp(lab: NetLab, stacks: dict[str, Stack], rounds: int, seconds: int,
        say: Callable[..., None]) -> dict[str, Any]:
    runs: dict[str, dict[str, list[float]]] = {v: {"up": [], "down": []} for v in VARIANTS}
    seen: dict[str, set[str]] = {v: set() for v in VARIANTS}
    for r in range(rounds):
        for direction in ("up", "down"):
            for v in VARIANTS[r % 4:] + VARIANTS[:r % 4]:
                bps, addr = iperf(lab, stacks[v], seconds, direction == "down")
                runs[v][direction].append(bps)
                seen[v].add(addr)
        say(f"  tcp round {r + 1}: " + ", ".join(
            f"{v} {runs[v]['up'][-1] / 1e9:.2f}/{runs[v]['down'][-1] / 1e9:.2f}" for v in VARIANTS)
            + " Gbit/s up/down")
    gbit = {v: {d: round(statistics.median(x) / 1e9, 3) for d, x in runs[v].items()}
            for v in VARIANTS}
    return {
        "gbit": gbit,
        "runs_gbit": {v: {d: [round(b / 1e9, 3) for b in x] for d, x in runs[v].items()}
                      for v in VARIANTS},
        "ratio": {d: round(gbit["ours"][d] / gbit["masq"][d], 3) for d in ("up", "down")},
        "server_saw": {v: sorted(s) for v, s in seen.items()},
    }


# --- 2. packets/s ------------------------------------------------------------------------------


@dataclass
class Load:
    gen: UdpGen
    subscribers: int
    ports: int
    frames: int = 0  # of a steady run
    nat_stats: list[dict[str, int]] = field(default_factory=list)

    def run(self, stack: Stack, frames: int, first_port: int = FLOW_PORT,
            subscribers: int | None = None, ports: int | None = None) -> Rate:
        return self.gen.run(stack.bng, stack.access_index, stack.frame,
                            subscribers or self.subscribers, SUB_BASE, frames, GEN_SRC,
                            ports or self.ports, first_port)

    @property
    def flows(self) -> int:
        return self.subscribers * self.ports


def bpf_stats_enabled() -> bool:
    return udpgen.BPF_STATS.read_text().strip() != "0"


def _stat_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in after.items() if v != before[k]}


def packet_rates(load: Load, stacks: dict[str, Stack], nats: dict[str, Plain], rounds: int,
                 say: Callable[..., None]) -> dict[str, Any]:
    ours = nats["ours"]
    assert isinstance(ours, Ours)
    runs: dict[str, dict[str, list[Rate]]] = {v: {"new": [], "steady": []} for v in VARIANTS}
    ours_stats: dict[str, list[dict[str, int]]] = {"new": [], "steady": []}
    stats_on = 0  # runs during which another process had kernel.bpf_stats_enabled on
    for r in range(rounds):
        for v in VARIANTS[r % 4:] + VARIANTS[:r % 4]:
            stats_on += bpf_stats_enabled()
            nats[v].reset()
            before = ours.path.stats() if v == "ours" else {}
            runs[v]["new"].append(load.run(stacks[v], load.flows))
            mid = ours.path.stats() if v == "ours" else {}
            runs[v]["steady"].append(load.run(stacks[v], load.frames))
            if v == "ours":
                ours_stats["new"].append(_stat_delta(mid, before))
                ours_stats["steady"].append(_stat_delta(ours.path.stats(), mid))
        say(f"  pps round {r + 1}: " + ", ".join(
            f"{v} {runs[v]['steady'][-1].pps / 1e3:.0f}k ({runs[v]['new'][-1].pps / 1e3:.0f}k new)"
            for v in VARIANTS))

    def med(xs: list[float]) -> float:
        return float(statistics.median(xs))

    out: dict[str, Any] = {"flows": load.flows, "subscribers": load.subscribers,
                           "ports_per_subscriber": load.ports, "frames_steady": load.frames,
                           # The stats add two clock reads to each BPF program run: ours
                           # runs one more program than the others.
                           "runs_with_bpf_stats_on": stats_on, "runs": rounds * len(VARIANTS)}
    for phase in ("steady", "new"):
        ns = {v: [1e9 / x.pps for x in runs[v][phase]] for v in VARIANTS}
        nat_ns = {v: [n - p for n, p in zip(ns[v], ns["plain"], strict=True)] for v in NATS}
        ratios = {peer: [o / p for o, p in zip(nat_ns["ours"], nat_ns[peer], strict=True)
                         if p > 0] for peer in ("masq", "snat")}
        pps_ratios = {peer: [o.pps / p.pps for o, p in zip(runs["ours"][phase],
                                                           runs[peer][phase], strict=True)]
                      for peer in ("masq", "snat")}
        out[phase] = {
            "pps": {v: round(med([x.pps for x in runs[v][phase]])) for v in VARIANTS},
            "pps_wall": {v: round(med([x.pps_wall for x in runs[v][phase]])) for v in VARIANTS},
            "ns_per_packet": {v: round(med(ns[v]), 1) for v in VARIANTS},
            # Each NAT's CPU time per packet above plain routing's, paired by round.
            "nat_ns": {v: round(med(nat_ns[v]), 1) for v in NATS},
            "nat_ns_runs": {v: [round(x, 1) for x in nat_ns[v]] for v in NATS},
            "overhead_ratio": {p: round(med(x), 3) if x else None for p, x in ratios.items()},
            "overhead_ratio_runs": {p: [round(y, 3) for y in x] for p, x in ratios.items()},
            "pps_ratio": {p: round(med(x), 3) for p, x in pps_ratios.items()},
            "delivered_min": {v: round(min(x.received / x.sent for x in runs[v][phase]), 4)
                              for v in VARIANTS},
            # Frames that reached the internet with a subscriber's address as their source.
            "untranslated": {v: sum(x.from_subscribers for x in runs[v][phase])
                             for v in VARIANTS},
            "received": {v: sum(x.received for x in runs[v][phase]) for v in VARIANTS},
            "seen_source": {v: sorted({str(x.last_source[0]) for x in runs[v][phase]
                                       if x.last_source}) for v in VARIANTS},
            "ours_nat_stats": {k: sum(d.get(k, 0) for d in ours_stats[phase])
                               for k in sorted({k for d in ours_stats[phase] for k in d})},
        }
    return out


# --- 3. where ours goes ------------------------------------------------------------------------


def ours_costs(lab: NetLab, load: Load, stack: Stack, ours: Ours,
               tcp_seconds: int) -> dict[str, Any]:
    """nat_out's and nat_in's own run time per packet, kernel.bpf_stats_enabled=1."""
    out_fd, in_fd = ours.path.fds["nat_out"], ours.path.fds["nat_in"]
    res: dict[str, Any] = {}
    with bpf_stats():
        ours.reset()
        # The rounds' flows, new then steady; then two flows over and over (all in cache:
        # the difference is what memory stalls cost with many flows).
        for phase, frames, subs, ports in (("new", load.flows, None, None),
                                           ("steady", load.frames, None, None),
                                           ("steady_2_flows", load.frames, 1, 2)):
            t0, c0 = run_stats(out_fd)
            rate = load.run(stack, frames, subscribers=subs, ports=ports)
            t1, c1 = run_stats(out_fd)
            res[f"nat_out_ns_{phase}"] = round((t1 - t0) / (c1 - c0), 1) if c1 > c0 else None
            res[f"nat_out_runs_{phase}"] = c1 - c0
            res[f"ns_per_packet_{phase}_with_stats"] = round(1e9 / rate.pps, 1)
        load.gen.detach_counter("eth0", stack.inet)  # TCP without XDP on the receiver
        try:
            t0, c0 = run_stats(in_fd)
            o0, oc0 = run_stats(out_fd)
            iperf(lab, stack, tcp_seconds, reverse=True)
            t1, c1 = run_stats(in_fd)
            o1, oc1 = run_stats(out_fd)
        finally:
            load.gen.attach_counter("eth0", stack.inet)
    res["nat_in_ns_per_skb_tcp_download"] = round((t1 - t0) / (c1 - c0), 1) if c1 > c0 else None
    res["nat_in_skbs_tcp_download"] = c1 - c0
    res["nat_out_ns_per_skb_tcp_acks"] = round((o1 - o0) / (oc1 - oc0), 1) if oc1 > oc0 else None
    return res


# --- 4. memory, 5. log records -----------------------------------------------------------------


def slab_bytes() -> dict[str, int]:
    """Bytes in use (active objects x object size) of the kmalloc caches and nf_conntrack."""
    out: dict[str, int] = {}
    with open(SLABINFO) as f:
        for line in f:
            p = line.split()
            if p and (p[0].startswith("kmalloc") or p[0].startswith("nf_conntrack")):
                out[p[0]] = int(p[1]) * int(p[3])
    return out


def settle(timeout: float = 15.0) -> None:
    """Wait for what a reset or flush freed to leave the slab caches (RCU, and BPF's memory
    allocator, free it later): until two reads 0.5 s apart differ by less than 256 KiB."""
    deadline = time.monotonic() + timeout
    before = sum(slab_bytes().values())
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(slab_bytes().values())
        if abs(now - before) < 256 << 10:
            return
        before = now


def slab_object_size(cache: str) -> int | None:
    with open(SLABINFO) as f:
        for line in f:
            p = line.split()
            if p and p[0] == cache:
                return int(p[3])
    return None


def per_100k(x: float | None) -> float | None:
    """Bytes each -> MB per 100,000."""
    return round(x * 100_000 / 1e6, 2) if x is not None else None


def conntrack_memory(lab: NetLab, load: Load, stack: Stack, nft: Nft, subscribers: int,
                     ports: int, repeats: int) -> dict[str, Any]:
    """Slab growth per conntrack entry, subscribers x ports new flows from a flushed table;
    the median of ``repeats`` (other processes allocate and free meanwhile)."""
    each, ct, made, delivered = [], [], [], []
    for _ in range(repeats):
        nft.reset()
        settle()
        c0, n0 = slab_bytes(), conntrack_entries(lab, stack.bng)
        rate = load.run(stack, subscribers * ports, MEM_PORT, subscribers, ports)
        c1, n1 = slab_bytes(), conntrack_entries(lab, stack.bng)
        nft.reset()
        made.append(n1 - n0)
        delivered.append(rate.received / rate.sent if rate.sent else 0)
        if n1 > n0:
            each.append((sum(c1.values()) - sum(c0.values())) / (n1 - n0))
            ct.append((c1.get("nf_conntrack", 0) - c0.get("nf_conntrack", 0)) / (n1 - n0))
    median = round(statistics.median(each), 1) if each else None
    return {
        "conntrack_entries_made": min(made),
        "nf_conntrack_object_bytes": slab_object_size("nf_conntrack"),
        "bytes_per_entry_nf_conntrack_slab": round(statistics.median(ct), 1) if ct else None,
        # nf_conntrack and kmalloc (the entry's extensions: masquerade's NAT extension).
        "bytes_per_entry_slab": median,
        "bytes_per_entry_slab_runs": [round(x, 1) for x in each],
        "mb_per_100k_slab": per_100k(median),
        "delivered": min(delivered),
    }


def memory_and_log(lab: NetLab, load: Load, stacks: dict[str, Stack], ours: Ours, snat: Nft,
                   masq: Nft, subscribers: int, ports: int, repeats: int,
                   say: Callable[..., None]) -> tuple[
                       dict[str, Any], dict[str, Any]]:
    half = ports // 2

    # Ours: the mapping tables from empty, in two halves of new flows.
    ours.reset()
    settle()
    m0, s0, st0 = ours.memlock(), slab_bytes(), ours.path.stats()
    a = load.run(stacks["ours"], subscribers * half, MEM_PORT, subscribers, half)
    mid_mappings = ours.path.mappings()
    mid_exhausted = ours.path.exhausted(clear=False)
    b = load.run(stacks["ours"], subscribers * (ports - half), MEM_PORT + half, subscribers,
                 ports - half)
    m1, s1, st1 = ours.memlock(), slab_bytes(), ours.path.stats()
    made = _stat_delta(st1, st0)
    mappings = ours.path.mappings()
    exhausted = ours.path.exhausted(clear=False)
    # (NatPath.counts() takes len() of BCC's key iterators, which have none: counted here.)
    counts = {k: sum(1 for _ in t) for k, t in (("outbound", ours.path.outbound),
                                                ("inbound", ours.path.inbound))}
    say(f"  memory: ours made {made.get('new_mapping', 0):,} mappings")
    ours.reset()

    # Every mapping lies in its subscriber's one block; the blocks that hold them.
    bindings = {subscriber(i): ours.path.binding(subscriber(i)) for i in range(subscribers)}

    def blocks(ms: list[nat.Mapping]) -> tuple[set[tuple[str, int]], int]:
        used, outside = set(), 0
        for m in ms:
            bnd = bindings.get(m.inside)
            if bnd is None or bnd.public != m.public or not bnd.holds(m.public_port):
                outside += 1
                continue
            used.add((str(m.public), (m.public_port - PORT_START) // BLOCK))
        return used, outside

    used_half, outside_half = blocks(mid_mappings)
    used_all, outside_all = blocks(mappings)
    records_half = len(used_half) + len(mid_exhausted)
    records_all = len(used_all) + len(exhausted)
    flows_half, flows_all = len(mid_mappings), len(mappings)

    # nftables: conntrack entries for the same flows (masquerade: as many as its one address
    # holds to one destination), from a flushed table.
    peers = {"snat": conntrack_memory(lab, load, stacks["snat"], snat, subscribers, ports,
                                      repeats),
             "masq": conntrack_memory(lab, load, stacks["masq"], masq, subscribers,
                                      min(ports, MASQ_MEM_FLOWS // subscribers), repeats)}
    for v, x in peers.items():
        say(f"  memory: {v} made {x['conntrack_entries_made']:,} conntrack entries")

    mapped = made.get("new_mapping", 0)
    ours_memlock = (m1 - m0) / mapped if mapped else None
    # Once: the elements a reset frees stay in BPF's allocator, and a second fill takes them
    # back without the slab caches seeing it.
    ours_slab = (sum(s1.values()) - sum(s0.values())) / mapped if mapped else None
    memory = {
        "flows": subscribers * ports,
        "ours": {
            "mappings_made": mapped, "tables": counts,
            "bytes_per_mapping_memlock": round(ours_memlock, 1) if ours_memlock else None,
            "bytes_per_mapping_slab": round(ours_slab, 1) if ours_slab else None,
            "mb_per_100k_memlock": per_100k(ours_memlock),
            "mb_per_100k_slab": per_100k(ours_slab),
            # Allocated when the tables are made, used or not: 2 x 16 B x max_entries (a
            # power of two), for tables sized for every public port of the pool.
            "bucket_arrays_mb": round(m0 / 1e6, 2),
            "max_mappings": ours.max_mappings,
            "delivered": [a.received / a.sent if a.sent else 0, b.received / b.sent
                          if b.sent else 0],
        },
        "peer": peers,
        # The conntrack hash, shared by every namespace: 8 B a bucket.
        "peer_hash_mb": round(int(Path("/proc/sys/net/netfilter/nf_conntrack_buckets")
                                  .read_text()) * 8 / 1e6, 2),
    }
    log = {
        "ours": {
            "flows": flows_all,
            "records": records_all,
            "per_1000_flows": round(records_all / flows_all * 1000, 3) if flows_all else None,
            "blocks_used": len(used_all),
            "exhausted_subscribers": len(exhausted),
            "mappings_outside_their_block": outside_all,
            # After half of the flows: more flows of the same subscribers add no record.
            "flows_after_half": flows_half,
            "records_after_half": records_half,
            "records_per_flow_beyond_half": round((records_all - records_half) /
                                                  (flows_all - flows_half), 6)
            if flows_all > flows_half else None,
            "mappings_outside_their_block_after_half": outside_half,
        },
        "peer": {
            "default": 0,
            "conntrack_events_per_1000_flows": round(
                2 * peers["snat"]["conntrack_entries_made"] / (subscribers * ports) * 1000),
        },
    }
    return memory, log


# --- the run -----------------------------------------------------------------------------------


def table(out: TextIO, title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}", file=out)
    for r in [header, *rows]:
        print("  " + "  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)),
              file=out)


def report(out: TextIO, result: dict[str, Any]) -> None:
    t, p, b = result.get("tcp"), result.get("pps"), result.get("bpf")
    mem, log = result.get("memory"), result.get("log")
    if t:
        table(out, "1. TCP, one iperf3 flow (Gbit/s, median of rounds; the address the "
                   "server saw)",
              ["variant", "upload", "download", "server saw"],
              [[v, f"{t['gbit'][v]['up']:.2f}", f"{t['gbit'][v]['down']:.2f}",
                ",".join(t["server_saw"][v])] for v in VARIANTS])
    if p:
        s, n = p["steady"], p["new"]
        table(out, f"2. 64-byte UDP, {p['flows']:,} flows ({p['subscribers']} subscribers x "
                   f"{p['ports_per_subscriber']} ports): packets per CPU-second, CPU ns per "
                   "packet, the NAT's own ns (minus plain routing), medians of rounds",
              ["variant", "steady pps", "ns/packet", "NAT ns", "new-flow pps", "ns/packet",
               "NAT ns", "source seen"],
              [[v, f"{s['pps'][v]:,}", f"{s['ns_per_packet'][v]:.0f}",
                f"{s['nat_ns'][v]:.0f}" if v in s["nat_ns"] else "-", f"{n['pps'][v]:,}",
                f"{n['ns_per_packet'][v]:.0f}",
                f"{n['nat_ns'][v]:.0f}" if v in n["nat_ns"] else "-",
                ",".join(s["seen_source"][v])] for v in VARIANTS])
        if p["runs_with_bpf_stats_on"]:
            print(f"  ({p['runs_with_bpf_stats_on']} of {p['runs']} runs had "
                  "kernel.bpf_stats_enabled on, by another process: ours paid for it)",
                  file=out)
        print(f"  ours/masq NAT ns: steady {s['overhead_ratio']['masq']}, new flows "
              f"{n['overhead_ratio']['masq']}; ours/snat: steady {s['overhead_ratio']['snat']}, "
              f"new flows {n['overhead_ratio']['snat']}; pps ours/masq {s['pps_ratio']['masq']}",
              file=out)
    if b:
        table(out, "3. bng's programs, own run time (kernel.bpf_stats_enabled, runs of their own)",
              ["what", "ns"],
              [["nat_out, steady (per packet)", f"{b['nat_out_ns_steady']}"],
               ["nat_out, steady, 2 flows in cache (per packet)",
                f"{b['nat_out_ns_steady_2_flows']}"],
               ["nat_out + nat_new, new flow (per packet)", f"{b['nat_out_ns_new']}"],
               ["nat_in, TCP download (per skb)", f"{b['nat_in_ns_per_skb_tcp_download']}"],
               ["nat_out, TCP download's ACKs (per skb)", f"{b['nat_out_ns_per_skb_tcp_acks']}"]])
    if mem:
        o, q = mem["ours"], mem["peer"]
        table(out, f"4. Memory per 100k mappings (MB, and bytes each; made from empty: "
                   f"{o['mappings_made']:,} mappings; conntrack entries: snat "
                   f"{q['snat']['conntrack_entries_made']:,}, masq "
                   f"{q['masq']['conntrack_entries_made']:,})",
              ["", "MB per 100k", "B each", "fixed, whatever the use"],
              [["ours, map memlock (both directions)", f"{o['mb_per_100k_memlock']}",
                f"{o['bytes_per_mapping_memlock']}", f"{o['bucket_arrays_mb']} MB buckets"],
               ["ours, slab growth", f"{o['mb_per_100k_slab']}", f"{o['bytes_per_mapping_slab']}",
                ""],
               *[[f"nftables {v}, slab growth", f"{q[v]['mb_per_100k_slab']}",
                  f"{q[v]['bytes_per_entry_slab']}",
                  f"{mem['peer_hash_mb']} MB hash (shared)"] for v in ("masq", "snat")],
               ["nftables, nf_conntrack object", "", f"{q['snat']['nf_conntrack_object_bytes']}",
                ""]])
    if log:
        o = log["ours"]
        print(f"\n5. Log records: ours {o['records']} block records for {o['flows']:,} flows "
              f"({o['per_1000_flows']} per 1,000; {o['records_after_half']} after the first "
              f"{o['flows_after_half']:,}); nftables 0 by default, "
              f"{log['peer']['conntrack_events_per_1000_flows']} per 1,000 flows with "
              "conntrack events", file=out)
    ct = result.get("conntrack")
    if ct:
        print("\n6. Conntrack: " + "; ".join(
            f"{v}: tables {c['nft_tables'] or 'none'}, entries {c['entries_after_rounds']}"
            for v, c in ct.items()), file=out)
    g = result["goals"]
    print(f"\nGoals: NAT's own cost <= 0.5 x masquerade's: {g['nat_overhead_ratio']} "
          f"(ratio {result['nat_overhead_ratio']}); no log record per flow: "
          f"{g['log_records_per_flow']}", file=out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="fewer flows and rounds, shorter runs (a smoke run)")
    ap.add_argument("--subscribers", type=int, help="subscribers sending in the rounds "
                    "(default 256; quick: 64)")
    ap.add_argument("--ports", type=int, help="source ports each (default 100; quick: 64): "
                    "the flows, which masquerade's one address must hold")
    ap.add_argument("--rounds", type=int, help="packet-rate rounds (default 7; quick: 2)")
    ap.add_argument("--pps-seconds", type=float,
                    help="each steady packet-rate run (default 1; quick: 0.2)")
    ap.add_argument("--tcp-rounds", type=int, help="TCP rounds (default 3; quick: 1)")
    ap.add_argument("--seconds", type=int, help="each iperf3 flow (default 5; quick: 2)")
    ap.add_argument("--mem-subscribers", type=int,
                    help="subscribers of the memory run (default 1000; quick: 200)")
    ap.add_argument("--mem-ports", type=int,
                    help="new flows each in the memory run (default 100: 100k flows)")
    ap.add_argument("--mem-repeats", type=int, help="memory runs of each nftables NAT "
                    "(median of their slab growth; default 3; quick: 1)")
    ap.add_argument("--max-mappings", type=int,
                    help="entries of ours' mapping tables (default: as the agent sizes them, "
                    "every public port of the pool once per protocol)")
    ap.add_argument("--skip", nargs="+", default=[], choices=("tcp", "pps", "bpf", "memory"))
    ap.add_argument("--json", action="store_true",
                    help="the tables on stderr, one JSON line on stdout")
    a = ap.parse_args()
    q = a.quick
    subs = a.subscribers or (64 if q else 256)
    ports = a.ports or (64 if q else 100)
    rounds = a.rounds or (2 if q else 7)
    pps_seconds = a.pps_seconds or (0.2 if q else 1.0)
    tcp_rounds = a.tcp_rounds or (1 if q else 3)
    seconds = a.seconds or (2 if q else 5)
    mem_subs = a.mem_subscribers or (200 if q else 1000)
    mem_ports = a.mem_ports or 100
    mem_repeats = a.mem_repeats or (1 if q else 3)
    total = max(subs, mem_subs)
    if os.geteuid() != 0:
        print("bench/nat.py needs root (namespaces, BPF, nftables)", file=sys.stderr)
        return 2
    if not 1 <= total <= MAX_SUBSCRIBERS or not 2 <= ports <= BLOCK // 2 or \
            not 2 <= mem_ports <= BLOCK // 2:
        print(f"--subscribers: 1 to {MAX_SUBSCRIBERS}; --ports, --mem-ports: 2 to {BLOCK // 2} "
              "(a subscriber's flows fill at most half its block)", file=sys.stderr)
        return 2
    if subs * ports > (PORT_END - PORT_START + 1) * 3 // 4:
        print("--subscribers x --ports: at most 3/4 of one address's ports (masquerade)",
              file=sys.stderr)
        return 2
    for tool in ("iperf3", "nft", "ss"):
        if shutil.which(tool) is None:
            print(f"bench/nat.py needs {tool}", file=sys.stderr)
            return 2
    out = sys.stderr if a.json else sys.stdout
    say = progress()
    unwind_on_sigterm()
    remove_leftovers()
    udpgen.restore_bpf_stats()
    publics = [PUBLIC_FIRST + k for k in range(math.ceil(total / PER_ADDRESS))]
    lab = NetLab()
    nats: dict[str, Plain] = {}
    gen: UdpGen | None = None
    result: dict[str, Any] = {}
    try:
        stacks = {v: build_stack(lab, v) for v in VARIANTS}
        nats["plain"] = Plain(stacks["plain"])
        nats["ours"] = Ours(stacks["ours"], total, publics, a.max_mappings)
        nats["masq"] = Nft(stacks["masq"], "masq", publics)
        nats["snat"] = Nft(stacks["snat"], "snat", publics)
        ours, snat, masq = nats["ours"], nats["snat"], nats["masq"]
        assert isinstance(ours, Ours) and isinstance(snat, Nft) and isinstance(masq, Nft)
        say(f"topology: {', '.join(lab.namespaces)}; public addresses {publics[0]}-{publics[-1]}")

        if "tcp" not in a.skip:
            result["tcp"] = tcp(lab, stacks, tcp_rounds, seconds, say)
        gen = UdpGen()
        for s in stacks.values():
            gen.attach_counter("eth0", s.inet)
        load = Load(gen, subs, ports)
        nats["plain"].reset()
        probe = load.run(stacks["plain"], 200_000)
        load.frames = max(load.flows * 4, int(probe.pps * pps_seconds))
        if "pps" not in a.skip:
            result["pps"] = packet_rates(load, stacks, nats, rounds, say)
        # Conntrack ran where nftables NATs, and nowhere else.
        result["conntrack"] = {v: {"nft_tables": nft_tables(lab, stacks[v].bng),
                                   "entries_after_rounds": conntrack_entries(lab, stacks[v].bng)}
                               for v in VARIANTS}
        for c in result["conntrack"].values():
            c["active"] = bool(c["nft_tables"] or c["entries_after_rounds"])
        if "bpf" not in a.skip:
            result["bpf"] = ours_costs(lab, load, stacks["ours"], ours, seconds)
            say(f"  bpf stats: {result['bpf']}")
        if "memory" not in a.skip:
            result["memory"], result["log"] = memory_and_log(
                lab, load, stacks, ours, snat, masq, mem_subs, mem_ports, mem_repeats, say)
    finally:
        for n in nats.values():
            with contextlib.suppress(Exception):
                n.close()
        if gen is not None:
            gen.close()
        lab.close()

    pps, mem, log = result.get("pps"), result.get("memory"), result.get("log")
    result["nat_overhead_ratio"] = pps["steady"]["overhead_ratio"]["masq"] if pps else None
    result["nat_overhead_ratio_snat"] = pps["steady"]["overhead_ratio"]["snat"] if pps else None
    result["nat_overhead_ratio_new_flows"] = pps["new"]["overhead_ratio"]["masq"] if pps else None
    result["pps_ratio"] = pps["steady"]["pps_ratio"]["masq"] if pps else None
    result["log_records_per_1000_flows"] = log["ours"]["per_1000_flows"] if log else None
    result["log_records_per_1000_flows_peer"] = log["peer"] if log else None
    result["bytes_per_mapping"] = mem["ours"]["bytes_per_mapping_memlock"] if mem else None
    result["bytes_per_mapping_peer"] = {v: x["bytes_per_entry_slab"] for v, x in
                                        mem["peer"].items()} if mem else None
    result["goals"] = {
        "nat_overhead_ratio": None if result["nat_overhead_ratio"] is None
        else result["nat_overhead_ratio"] <= 0.5,
        "log_records_per_flow": None if not log
        else log["ours"]["records_per_flow_beyond_half"] == 0,
    }
    result["counted"] = {
        "ns_per_packet": "CPU time of the thread sending BPF_PROG_RUN live frames (the whole "
                         "path runs in it: generator, routing, NAT, veth, the receiving XDP) "
                         "over frames received; nat_ns: minus plain routing's in the same round",
        "nat_overhead_ratio": "median over rounds of ours' nat_ns / masquerade's, steady state "
                              "(mappings or conntrack entries exist)",
        "pps_ratio": "median over rounds of ours / masquerade's packets per CPU-second, steady",
        "bytes_per_mapping": "ours: memlock of nat_outbound + nat_inbound (the kernel's "
                             "accounting) grown per mapping made, both directions; peer: slab "
                             "growth (nf_conntrack and kmalloc caches) per conntrack entry made",
        "log_records_per_1000_flows": "ours: one record per port block allocated (the blocks "
                                      "the memory run's mappings lie in, plus one per subscriber "
                                      "that ran out), over the mappings made; never per flow",
        "log_records_per_1000_flows_peer": "nftables logs nothing by default; conntrack events "
                                           "(NEW + DESTROY) per entry made, for per-flow logging",
        "conntrack": "no nftables table and no conntrack entry in the plain and ours copies: "
                     "conntrack never ran there (its hooks are per namespace)",
    }
    result["compares"] = (
        "ours: bpf/nat44.c on the uplink's tcx hooks (NatPath), endpoint-independent, one "
        f"{BLOCK}-port block per subscriber on {len(publics)} public addresses; masq: nftables "
        f"masquerade to {NODE_UPLINK}; snat: nftables snat to {publics[0]}-{publics[-1]}:"
        f"{PORT_START}-{PORT_END}; plain: routing only; the same namespaces for each")
    result["settings"] = {"subscribers": subs, "ports": ports, "rounds": rounds,
                          "max_mappings": nats["ours"].max_mappings if "ours" in nats and
                          isinstance(nats["ours"], Ours) else None,
                          "pps_seconds": pps_seconds, "tcp_rounds": tcp_rounds,
                          "seconds": seconds, "mem_subscribers": mem_subs,
                          "mem_ports": mem_ports, "mem_repeats": mem_repeats,
                          "frame_bytes": udpgen.FRAME_LEN + 4,
                          "public_addresses": len(publics), "quick": q}
    report(out, result)
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A DHCP load generator in the kernel, for known clients: bng_lab/dhcp_gen.c driven from here.

One process of perfdhcp tops out near 30k DISCOVER/s on this machine, below what either
server can answer for known clients. This generator sends from the switch side of the
server's access link with BPF_PROG_RUN in live-frame mode (XDP_TX out of up0), at a paced
rate or as fast as one core can, and counts the replies with an XDP program on up0 that
drops them. Clients play a relay (giaddr set, as perfdhcp does); each is one MAC.

    gen = Generator(site.switch, "up0", clients=4096, ...)
    gen.preload()                  # DISCOVER then REQUEST for every client: all bound
    result = gen.run(rate=50_000, seconds=2)
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bng_lab.netlab import in_netns
from bng_operator import netlink
from bng_operator.agent.dataplane.fastpath import XDP_PASS, XDP_TX
from bng_operator.agent.dataplane.loader import BPFObject, attach_xdp_pass, send_live
from bng_operator.agent.dhcp.transport import build_frame

SOURCE = Path(__file__).resolve().parent / "dhcp_gen.c"
MODE_DORA, MODE_DISCOVER, MODE_REQUEST = 0, 1, 2
COUNTERS = ("sent_discover", "sent_request", "offer", "ack", "nak", "wrong_address", "other",
            "ack_in_window")
REPEAT = 1 << 20  # repetitions of the generator per BPF_PROG_RUN call (see dhcp_gen.c)
DRAIN_S = 0.5  # replies later than this after the last request count as drops


@dataclass(frozen=True)
class Result:
    rate: int | None  # asked for; None = as fast as the generator can
    seconds: float
    counts: dict[str, int]
    delay_offer: list[int]  # histogram, quarter octaves of ns (see bucket_bounds_ms)
    delay_ack: list[int]

    @property
    def sent_rate(self) -> float:
        return (self.counts["sent_discover"] + self.counts["sent_request"]) / 2 / self.seconds

    @property
    def leases_rate(self) -> float:
        """Completed exchanges (ACKs with the right address) per second of sending, counting
        only the ACKs that arrived while the generator was sending. One that arrives later
        (from the server's backlog) is not lost, if within DRAIN_S, but is not in the rate."""
        return self.counts["ack_in_window"] / self.seconds

    @property
    def drops(self) -> float:
        """Percent of requests without their reply, the worse of DISCOVER and REQUEST."""
        c = self.counts
        lost = [1 - c[got] / c[sent] for sent, got in (("sent_discover", "offer"),
                                                      ("sent_request", "ack")) if c[sent]]
        return 100 * max(lost, default=1.0)


def bucket_bounds_ms(b: int) -> float:
    """Upper bound, in ms, of histogram bucket ``b`` (bng_lab/dhcp_gen.c: bucket())."""
    msb, frac = divmod(b, 4)
    return float(2 ** msb * (1 + (frac + 1) / 4) / 1e6)


def percentiles(hist: list[int], ps: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float]:
    total = sum(hist)
    out: dict[str, float] = {}
    if not total:
        return out
    for p in ps:
        want, acc = total * p / 100, 0
        for b, n in enumerate(hist):
            acc += n
            if acc >= want:
                out[f"p{p:g}"] = round(bucket_bounds_ms(b), 4)
                break
    return out


def request_template(dst_mac: bytes, src_mac: bytes, relay: IPv4Address,
                     server: IPv4Address) -> bytes:
    """The frame the generator rewrites: a relayed BOOTREQUEST of 300 bytes, with 15 bytes
    for options 53, 50 and 54 at the start of the options, and no UDP checksum (RFC 768:
    zero means none), since the generator changes the payload."""
    bootp = struct.pack("!BBBBIHHIIII16s64s128sI", 1, 1, 6, 1, 0, 0, 0, 0, 0, 0,
                        int(relay), bytes.fromhex("020000000001"), b"", b"", 0x63825363)
    options = bytes([53, 1, 1]) + bytes(12) + bytes([55, 5, 1, 3, 6, 15, 28, 255])
    payload = (bootp + options).ljust(300, b"\0")
    frame = build_frame(dst_mac, src_mac, b"", relay, server, 67, payload, 67)
    return frame[:40] + b"\0\0" + frame[42:]  # UDP checksum at 14 + 20 + 6


class Generator:
    """The generator and counter for one access link, seen from its switch side.

    Requests leave the switch side (``ifname`` in ``switch_ns``) towards the server, as a
    NIC would deliver them to an XDP program there. With ``into_stack`` = (namespace,
    interface) they are instead handed to that interface's network stack directly, in the
    sending call (XDP_PASS): the shortest path to a server behind sockets (Kea), without
    the veth hop that bng's XDP program needs.
    """

    def __init__(self, switch_ns: str, ifname: str, clients: int, server_id: str,
                 server_mac: bytes, relay: str, relay_mac: bytes,
                 into_stack: tuple[str, str] | None = None) -> None:
        self.ns, self.ifname, self.clients = switch_ns, ifname, clients
        self.send_ns, send_if = into_stack or (switch_ns, ifname)
        # The CPU it sends from, busy for the whole trial: keep the server off it.
        self.cpu = min(os.sched_getaffinity(0))
        self.frame = request_template(server_mac, relay_mac, IPv4Address(relay),
                                      IPv4Address(server_id))
        self.obj = BPFObject(SOURCE, cflags={"MAX_CLIENTS": max(clients, 1),
                                             "FRAME_LEN": len(self.frame)})
        tpl = self.obj.map("template")
        leaf = tpl.Leaf()
        leaf.data[:] = list(self.frame)
        tpl[tpl.Key(0)] = leaf
        self.gen_fd = self.obj.load_xdp("generate")
        self.ifindex = netlink.interface_info(send_if, self.send_ns)[0]
        # The counter takes the place of the pass-through program the site keeps there.
        netlink.detach_xdp(ifname, switch_ns)
        self.obj.attach_xdp(ifname, "count", switch_ns)
        self._configure(clients=clients, mode=MODE_DORA,
                        server_id=int.from_bytes(IPv4Address(server_id).packed, "little"),
                        action=XDP_PASS if into_stack else XDP_TX)

    def close(self) -> None:
        self.obj.close()  # detaches the counter
        attach_xdp_pass(self.ifname, self.ns)

    def _configure(self, **fields: int) -> None:
        """Set fields of the generator's struct gen_config, keeping the others."""
        cfg = self.obj.map("config")
        leaf = cfg[cfg.Key(0)]
        for name, value in fields.items():
            setattr(leaf, name, value)
        cfg[cfg.Key(0)] = leaf

    def _sum(self, name: str, n: int) -> list[int]:
        t = self.obj.map(name)
        return [int(sum(t[t.Key(i)])) for i in range(n)]

    def _histogram(self, name: str) -> list[int]:
        return self._sum(name, len(self.obj.map(name)))  # HIST_BUCKETS in dhcp_gen.c

    def reset(self) -> None:
        for name in ("counters", "delay_offer", "delay_ack"):
            self.obj.map(name).clear()

    def counts(self) -> dict[str, int]:
        return dict(zip(COUNTERS, self._sum("counters", len(COUNTERS)), strict=True))

    def _clients(self) -> list[Any]:
        return [leaf for _, leaf in self.obj.map("clients").items()]

    def forget(self) -> None:
        """Forget the addresses learned (another server's clients are new to it)."""
        self.obj.map("clients").clear()

    def _send(self, rate: int | None, seconds: float, limit: int | None = None) -> float:
        """Send for ``seconds`` at ``rate`` frames/s, or unpaced; at most ``limit`` frames.
        Returns the seconds it sent for."""
        start = time.monotonic_ns()
        until = start + int(seconds * 1e9)
        self._configure(interval_ns=int(1e9 / rate) if rate else 0,
                        limit=limit if limit is not None else 2**63, until_ns=until)
        pace = self.obj.map("pace")
        pace.clear()
        # One CPU: the pacing state and the sequence of clients are per CPU.
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.cpu})
        try:
            with in_netns(self.send_ns):  # where the ifindex is
                while time.monotonic_ns() < until:
                    send_live(self.gen_fd, self.frame, REPEAT, self.ifindex)
                    if limit is not None and self._sent() >= limit:
                        break
        finally:
            os.sched_setaffinity(0, affinity)
        end = min(time.monotonic_ns(), until)
        if end < until:  # stopped at the limit: the window ends here (the counter's until_ns)
            self._configure(until_ns=end)
        return (end - start) / 1e9

    def _sent(self) -> int:
        """Frames sent by the current _send."""
        pace = self.obj.map("pace")
        return sum(int(p.seq) for p in pace[pace.Key(0)])

    def preload(self, rate: int = 2000, passes: int = 4) -> None:
        """Bind every client: a DISCOVER each (the counter learns the offered address), then
        a REQUEST each; each step again while a client is left without its reply (the first
        replies can be lost while the server resolves the relay's MAC). Raises if one still
        is after ``passes``."""
        self.forget()
        for mode, field in ((MODE_DISCOVER, "address"), (MODE_REQUEST, "acked")):
            self._configure(mode=mode)
            for _ in range(passes):
                self._send(rate, 60, limit=self.clients)
                time.sleep(DRAIN_S)
                left = sum(1 for c in self._clients() if not getattr(c, field))
                if not left:
                    break
            else:
                raise RuntimeError(f"preload: {left} of {self.clients} clients without their "
                                   f"reply after {passes} passes: {self.counts()}")
        self.reset()
        self._configure(mode=MODE_DORA)

    def run(self, rate: int | None, seconds: float, exchanges: int | None = None) -> Result:
        """DORA for known clients at ``rate`` exchanges/s (None: as fast as it can), for
        ``seconds`` or until ``exchanges`` DORAs are sent, whichever comes first."""
        self.reset()
        self._configure(mode=MODE_DORA)
        elapsed = self._send(rate * 2 if rate else None, seconds,
                             limit=2 * exchanges if exchanges is not None else None)
        time.sleep(DRAIN_S)
        return Result(rate, elapsed, self.counts(), self._histogram("delay_offer"),
                      self._histogram("delay_ack"))

    def renew(self, rate: int | None, seconds: float, focus: int = 0) -> Result:
        """REQUESTs of bound clients (renewals) at ``rate`` frames/s (None: as fast as it
        can) for ``seconds``. With ``focus``, one frame in ``focus`` goes round the clients
        and every other one is client 0's: one subscriber flooding its own lease while the
        others renew at their pace."""
        self.reset()
        self._configure(mode=MODE_REQUEST, focus=focus)
        try:
            elapsed = self._send(rate, seconds)
        finally:
            self._configure(mode=MODE_DORA, focus=0)
        time.sleep(DRAIN_S)
        return Result(rate, elapsed, self.counts(), self._histogram("delay_offer"),
                      self._histogram("delay_ack"))


GATEWAY, RELAY = "100.64.0.1", "100.64.0.2"


def site_config(cidr: str, block_size: int, lease_time: str,
                class_spec: str = "{pool: residential}", commit_at_offer: bool = False,
                event_loop_cpu: int | None = None) -> str:
    """A node's whole configuration for the generator's clients: one pool on ``cidr``
    (gateway GATEWAY, the relay's RELAY excluded) and one class for everyone, whose spec is
    ``class_spec`` (flow-style YAML); ``commit_at_offer``: BNGNode spec.commitAtOffer,
    ``event_loop_cpu``: spec.eventLoopCPU."""
    return f"""apiVersion: bng.dev/v1alpha1
kind: IPPool
metadata: {{name: residential}}
spec:
  subnets: [{{cidr: {cidr}, gateway: {GATEWAY}, exclude: [{{start: {RELAY}}}]}}]
  blockSize: {block_size}
  leaseTime: {lease_time}
  dns: [192.0.2.53]
---
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {{name: everyone}}
spec: {class_spec}
---
apiVersion: bng.dev/v1alpha1
kind: BNGNode
metadata: {{name: edge-1}}
spec:
  nodeName: edge-1
  interfaces: {{access: [access0]}}
  commitAtOffer: {str(commit_at_offer).lower()}
""" + (f"  eventLoopCPU: {event_loop_cpu}\n" if event_loop_cpu is not None else "")


def summary(r: Result) -> dict[str, Any]:
    return {"asked": r.rate, "sent_per_s": round(r.sent_rate), "leases_per_s": round(r.leases_rate),
            "drops_percent": round(r.drops, 2), "counts": r.counts,
            "delay_ms": {"discover_offer": percentiles(r.delay_offer),
                         "request_ack": percentiles(r.delay_ack)}}

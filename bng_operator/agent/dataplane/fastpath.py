"""The XDP DHCP fast path (bpf/access_ingress.c): load or adopt it, fill its maps, run it on frames.

Pinned (``pin_root`` given), the maps of one program generation live in
``<pin_root>/<generation>/`` next to the pinned program; the generation is a hash of the C
sources and build flags. A restarted agent with the same generation adopts both and the
interface never sees a change; a new generation gets fresh maps, which the agent fills from
its lease store before the program is swapped atomically. The log of expiry refreshes lives
in ``<pin_root>/refresh_heads`` and ``<pin_root>/refresh_log`` and outlasts generations.

Map entries are built with BCC's generated ``Key``/``Leaf`` types; the C header
bpf/lib/dhcp.h owns every layout. The constants below mirror that header, and
tests/bpf/test_fastpath.py checks they agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bng_operator import netlink
from bng_operator.agent.dataplane import DEFAULT_PIN_ROOT
from bng_operator.agent.dataplane.cpulog import CpuLog, possible_cpus
from bng_operator.agent.dataplane.flows import FLOW_MAPS
from bng_operator.agent.dataplane.loader import (
    BPF_DIR,
    BPFObject,
    DataplaneError,
    RunResult,
    bpf_mount_of,
    pin_fd,
    pinned_fd,
    program_id,
    test_run,
    update_elem,
)
from bng_operator.agent.dataplane.names import DHCP_COUNTERS
from bng_operator.agent.fastpath.entries import FastEntry, SubnetOptions, circuit_hash
from bng_operator.api.bngnode import FAST_PATH_AUTHORITY, MAX_LEASES_PER_NODE
from bng_operator.netlink import XDPMode

SOURCE = Path(BPF_DIR) / "access_ingress.c"
PROGRAM = "xdp_dhcp"
MIN_REPLY_DHCP_LEN = 300
MAX_SUBNETS = 1024
INTERFACE_SLOTS, INTERFACE_PROBES = 256, 4
NO_SLOT = 0xFFFF  # a lease whose subnet has no slot: the program's lookup finds nothing
COUNTERS = DHCP_COUNTERS  # enum fastpath_counter, in order
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3
REFRESH_CLOCK_MONOTONIC_NS, REFRESH_CLOCK_JIFFIES = 0, 1  # enum refresh_clock
Attached = Literal["adopted", "attached", "replaced"]


def _u32(raw: bytes | int) -> int:
    """An address (4 wire bytes or a host int) as the u32 the kernel stores: network byte
    order in memory."""
    b = raw if isinstance(raw, bytes) else raw.to_bytes(4, "big")
    return int.from_bytes(b, "little")


def _host(u32: int) -> int:
    """The inverse of _u32: a u32 read from a map as a host-order address."""
    return int.from_bytes(int(u32).to_bytes(4, "little"), "big")


def wall_time(mono: int) -> float:
    """CLOCK_MONOTONIC nanoseconds as wall-clock time."""
    return time.time() + (mono - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9


REFRESH_LOG_LEN = 16384  # entries a CPU (struct refresh_log)


def refresh_log(heads: Any, entries: Any, cpus: int) -> CpuLog[tuple[int, int, int]]:
    """The program's refresh log (refresh_heads, refresh_log): (address as the map holds it,
    clock, expiry) of each refresh."""
    def row(raw: bytes) -> tuple[int, int, int]:
        e = entries.Leaf.from_buffer_copy(raw)
        return int(e.address), int(e.clock), int(e.expires)

    return CpuLog(heads, entries, cpus, REFRESH_LOG_LEN, row)


KERNEL_HZ_CHOICES = (100, 250, 300, 1000)  # CONFIG_HZ's choices
_hz: int | None = None  # the running kernel's, once measured: it does not change


@dataclass(frozen=True)
class KernelClock:
    """The program's clock, jiffies (bpf_jiffies64), against CLOCK_MONOTONIC, both read in
    the kernel at one instant. Jiffies count the monotonic clock's ticks, so one sample
    converts for as long as the machine runs, within a tick. Monotonic time stops while a
    machine is suspended; a BNG node is not, and a reboot empties the maps anyway."""

    hz: int
    jiffies: int
    monotonic_ns: int

    def at(self, wall: float) -> int:
        """A wall-clock time in jiffies."""
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + (wall - time.time()) * 1e9
        return self.jiffies + round((mono - self.monotonic_ns) * self.hz / 1e9)

    def wall(self, jiffies: int) -> float:
        """Jiffies in wall-clock time."""
        return wall_time(self.monotonic_ns + round((jiffies - self.jiffies) * 1e9 / self.hz))

    def ticks(self, seconds: int) -> int:
        return seconds * self.hz


def kernel_hz(sample: Callable[[], tuple[int, int]]) -> int:
    """The running kernel's HZ, from two (jiffies, monotonic ns) samples 0.1 s apart: the
    kernel headers BCC compiles with may be another build's, so their CONFIG_HZ is no
    answer."""
    global _hz
    if _hz is None:
        j0, m0 = sample()
        time.sleep(0.1)
        j1, m1 = sample()
        rate = (j1 - j0) * 1e9 / (m1 - m0)
        best = min(KERNEL_HZ_CHOICES, key=lambda hz: abs(rate - hz))
        if abs(rate - best) > 0.2 * best:
            raise DataplaneError(f"jiffies advance {rate:.0f} times a second, which is no "
                                 f"CONFIG_HZ ({', '.join(map(str, KERNEL_HZ_CHOICES))})")
        _hz = best
    return _hz


def generation(source: Path, cflags: dict[str, int | str]) -> str:
    """A name for this build of the program: its sources and flags, hashed."""
    h = hashlib.sha256()
    for path in sorted([source, *(Path(BPF_DIR) / "lib").glob("*.h")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(repr(sorted(cflags.items())).encode())
    return h.hexdigest()[:12]


def is_generation(name: str) -> bool:
    """Whether a directory under the pin root is a generation's (others: qos/, ...)."""
    return re.fullmatch(r"[0-9a-f]{12}", name) is not None


def sweep_generations(pin_dir: Path | None) -> list[str]:
    """Unpin the generations beside ``pin_dir`` (the one in use), once its programs have
    replaced theirs; the names of those removed."""
    if pin_dir is None:
        return []
    gone = []
    for d in pin_dir.parent.iterdir():
        if d.is_dir() and d != pin_dir and is_generation(d.name):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d.name)
    return gone


# The maps that outlive the agent: per generation, but the refresh log above them all.
GENERATION_MAPS = ("subscribers", "circuits", "subnet_options", "interfaces", "counters",
                   "heartbeat")
LASTING_MAPS = ("refresh_heads", "refresh_log", "access_next", *FLOW_MAPS)


def pinned_maps(pin_root: Path, generation: str) -> dict[str, Path]:
    """Where each lasting map is pinned."""
    return {**{m: pin_root / generation / m for m in GENERATION_MAPS},
            **{m: pin_root / m for m in LASTING_MAPS}}


class FastPath:
    def __init__(self, max_subscribers: int = MAX_LEASES_PER_NODE,
                 pin_root: Path | None = None, source: Path = SOURCE,
                 authority: float = FAST_PATH_AUTHORITY) -> None:
        """``source`` is the program's C file, or a file that includes it (the benchmark).
        ``authority``: seconds a heartbeat lets the program answer (see ``beat``); whoever
        loads or adopts the program beats once."""
        if not 1 <= max_subscribers <= MAX_LEASES_PER_NODE:
            raise DataplaneError(f"fast-path maps of {max_subscribers} subscribers: the design "
                                 f"limit is 1..{MAX_LEASES_PER_NODE} leases per node")
        cpus = possible_cpus()
        cflags: dict[str, int | str] = {"MAX_SUBSCRIBERS": max_subscribers,
                                        "MAX_SUBNETS": MAX_SUBNETS, "MAX_CPUS": cpus}
        self.generation = generation(source, cflags)
        self.pin_root = pin_root
        self.pin_dir: Path | None = None
        self.adopted_maps = False
        if pin_root is not None:
            if bpf_mount_of(pin_root) is None:
                raise DataplaneError(f"{pin_root} is not on a bpf filesystem; mount one: "
                                     f"mount -t bpf bpf {DEFAULT_PIN_ROOT.parent}")
            self.pin_dir = pin_root / self.generation
            # The refresh ring of agents before the refresh log: nothing reads it any more.
            with contextlib.suppress(FileNotFoundError):
                (pin_root / "refreshes").unlink()
            self.pin_dir.mkdir(parents=True, exist_ok=True)
        self.obj = BPFObject(source, cflags=cflags, pins=pinned_maps(pin_root, self.generation)
                             if pin_root is not None else None)
        self.adopted_maps = "subscribers" in self.obj.adopted
        self.subscribers = self.obj.map("subscribers")
        self.circuits = self.obj.map("circuits")
        self.subnets = self.obj.map("subnet_options")
        self.interfaces = self.obj.map("interfaces")
        # network -> its slot in the subnet_options array, as the maps hold it (adopted maps
        # keep their slots, so entries already in them stay right)
        self._slots = {_host(leaf.network): int(k.value) for k, leaf in self.subnets.items()
                       if leaf.network}
        self.counters_map = self.obj.map("counters")
        self._clock_map = self.obj.map("clock_sample")
        self._clock_fd = self.obj.load_xdp("clock_now")
        self.clock = KernelClock(kernel_hz(self._sample_clock), *self._sample_clock())
        self._heartbeat = self.obj.map("heartbeat")
        self.authority = authority
        self.beat()
        self._log = refresh_log(self.obj.map("refresh_heads"), self.obj.map("refresh_log"), cpus)
        self._fd: int | None = None
        self._own_fd = False

    def _sample_clock(self) -> tuple[int, int]:
        test_run(self._clock_fd, bytes(64))
        c = self._clock_map[self._clock_map.Key(0)]
        return int(c.jiffies), int(c.monotonic_ns)

    # --- the program -------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The program: the pinned one of this generation if there is one, else loaded now
        (and pinned, when pinning)."""
        if self._fd is None:
            pinned = pinned_fd(self.pin_dir / PROGRAM, required=True) if self.pin_dir else None
            if pinned is not None:
                self._fd, self._own_fd = pinned, True
            else:
                self._fd = self.obj.load_xdp(PROGRAM)
                if self.pin_dir is not None:
                    pin_fd(self._fd, self.pin_dir / PROGRAM)
        return self._fd

    def attach(self, ifname: str, ns: str | None = None, mode: XDPMode = "native") -> Attached:
        """Make this program the one on ``ifname`` in ``mode``: kept if it already is (an
        agent restart), else swapped in atomically over whatever program is there. A program
        attached in the other mode is detached first (the kernel runs only one mode at a
        time), so the interface is briefly without a fast path when the mode changes."""
        mine = program_id(self.fd)
        attached = netlink.xdp_program(ifname, ns)
        if attached is not None and attached[1] != mode:
            netlink.detach_xdp(ifname, ns, attached[1])
            attached = None
        current = attached[0] if attached else None
        if current == mine:
            return "adopted"
        old = self._pinned_program(current) if current else None
        try:
            netlink.attach_xdp(ifname, self.fd, ns, mode, replace_fd=old if old else None)
        finally:
            if old is not None:
                os.close(old)
        return "replaced" if current else "attached"

    def _pinned_program(self, prog_id: int) -> int | None:
        """An fd for the program ``prog_id`` if an earlier generation pinned it (by path: by
        id would take CAP_SYS_ADMIN), so the swap can name what it replaces."""
        for path in self.pin_root.glob(f"*/{PROGRAM}") if self.pin_root else ():
            fd = pinned_fd(path)
            if fd is not None:
                if program_id(fd) == prog_id:
                    return fd
                os.close(fd)
        return None

    def is_attached(self, ifname: str, ns: str | None = None) -> bool:
        return netlink.xdp_program_id(ifname, ns) == program_id(self.fd)

    def remove_other_generations(self) -> list[str]:
        """Unpin older generations once nothing needs them (the program swapped out)."""
        if self.pin_root is None:
            return []
        gone = []
        for d in self.pin_root.iterdir():
            if d.is_dir() and d.name != self.generation and is_generation(d.name):
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
        return gone

    def beat(self) -> None:
        """The agent is alive: the program may answer for ``authority`` seconds more."""
        hb = self._heartbeat.Leaf()
        hb.beat = self._sample_clock()[0]  # the kernel's jiffies now, not a conversion
        hb.window = round(self.authority * self.clock.hz)
        self._heartbeat[self._heartbeat.Key(0)] = hb

    def last_beat(self) -> tuple[float, float]:
        """(when the program was last told the agent is alive, as unix time; the window)."""
        hb = self._heartbeat[self._heartbeat.Key(0)]
        return self.clock.wall(int(hb.beat)), int(hb.window) / self.clock.hz

    # --- maps --------------------------------------------------------------------------------

    def put_interface(self, ifindex: int, mac: bytes, trust_option82: bool = True) -> None:
        """Give the program this interface's MAC and whether option 82 is believed on it, in
        the first of its probe slots that is free or already its own."""
        slots = [(ifindex + i) % INTERFACE_SLOTS for i in range(INTERFACE_PROBES)]
        held = {s: int(self.interfaces[self.interfaces.Key(s)].ifindex) for s in slots}
        slot = next((s for s in slots if held[s] == ifindex),
                    next((s for s in slots if held[s] == 0), None))
        if slot is None:
            raise DataplaneError(f"interface {ifindex}: its {INTERFACE_PROBES} fast-path slots "
                                 f"are taken by interfaces {sorted(held.values())}")
        leaf = self.interfaces.Leaf()
        leaf.ifindex = ifindex
        leaf.mac[:] = list(mac)
        leaf.trust82 = 1 if trust_option82 else 0
        self.interfaces[self.interfaces.Key(slot)] = leaf

    def put_subnet(self, so: SubnetOptions) -> None:
        slot = self._slots.get(so.network)
        if slot is None:
            used = set(self._slots.values())
            slot = next((s for s in range(MAX_SUBNETS) if s not in used), None)
            if slot is None:
                raise DataplaneError(f"more than {MAX_SUBNETS} subnets for the fast path")
            self._slots[so.network] = slot
        leaf = self.subnets.Leaf()
        leaf.network = _u32(so.network)
        leaf.subnet_mask, leaf.router, leaf.broadcast = (_u32(so.mask), _u32(so.router),
                                                         _u32(so.broadcast))
        for i, d in enumerate(so.dns):
            leaf.dns[i] = _u32(d)
        leaf.dns_count = len(so.dns)
        leaf.domain_len = len(so.domain)
        leaf.domain[: len(so.domain)] = list(so.domain)
        self.subnets[self.subnets.Key(slot)] = leaf

    def subnet_keys(self) -> set[int]:
        return set(self._slots)

    def delete_subnet(self, network: int) -> None:
        slot = self._slots.pop(network, None)
        if slot is not None:
            self.subnets[self.subnets.Key(slot)] = self.subnets.Leaf()

    def _table(self, by_circuit: bool) -> Any:
        return self.circuits if by_circuit else self.subscribers

    def _key(self, by_circuit: bool, vlan: int, ident: bytes) -> Any:
        k = self._table(by_circuit).Key()
        k.vlan = vlan
        if by_circuit:
            k.hash = circuit_hash(ident)
        else:
            k.mac[:] = list(ident)
        return k

    def _leaf(self, e: FastEntry) -> Any:
        leaf = self._table(e.by_circuit).Leaf()
        leaf.address, leaf.server_id, leaf.giaddr = (_u32(e.address), _u32(e.server_id),
                                                     _u32(e.giaddr))
        leaf.subnet = _u32(e.subnet)
        leaf.subnet_slot = self._slots.get(e.subnet, NO_SLOT)
        leaf.expires = self.clock.at(e.expires)
        leaf.lease_seconds = e.lease_seconds
        leaf.lease_jiffies = self.clock.ticks(e.lease_seconds)
        leaf.relay[: len(e.relay)] = list(e.relay)
        if not e.by_circuit:
            leaf.client_id_len = len(e.client_id)
            leaf.client_id[: len(e.client_id)] = list(e.client_id)
        return leaf

    def put(self, e: FastEntry) -> None:
        update_elem(self._table(e.by_circuit), self._key(*e.key), self._leaf(e))

    def put_many(self, entries: list[FastEntry]) -> None:
        """Write many entries with one batch syscall per map (the start-up warm)."""
        for by_circuit in (False, True):
            chosen = [e for e in entries if e.by_circuit == by_circuit]
            if chosen:
                table = self._table(by_circuit)
                keys = (table.Key * len(chosen))(*(self._key(*e.key) for e in chosen))
                leaves = (table.Leaf * len(chosen))(*(self._leaf(e) for e in chosen))
                table.items_update_batch(keys, leaves)

    def delete(self, key: tuple[bool, int, bytes]) -> None:
        with contextlib.suppress(KeyError):
            del self._table(key[0])[self._key(*key)]

    def keys(self) -> set[tuple[bool, int, bytes]]:
        """Every entry's key (a full walk of both maps: for start-up, not the packet path)."""
        out: set[tuple[bool, int, bytes]] = set()
        for k in self.subscribers:
            out.add((False, int(k.vlan), bytes(k.mac)))
        for k, leaf in self.circuits.items():  # the key is a hash: the lease has the bytes
            raw = bytes(leaf.relay)
            out.add((True, int(k.vlan), raw[: 2 + raw[1]] if raw[0] else b""))
        return out

    def expiries(self) -> dict[int, float]:
        """Address -> expiry (unix time) of every entry, as the program last refreshed it."""
        out = {}
        for table in (self.subscribers, self.circuits):
            for _, leaf in table.items():
                out[_host(leaf.address)] = self.clock.wall(int(leaf.expires))
        return out

    def expiry(self, key: tuple[bool, int, bytes]) -> int:
        """An entry's expiry as the program keeps it, in jiffies."""
        return int(self._table(key[0])[self._key(*key)].expires)

    def refreshes(self) -> list[tuple[int, float]]:
        """(address, new expiry as unix time) of every ACK the program sent since last time."""
        return [(_host(a), self.clock.wall(t) if clock == REFRESH_CLOCK_JIFFIES else wall_time(t))
                for a, clock, t in self._log.drain()]

    def counters(self) -> dict[str, int]:
        """Per-CPU counters summed over CPUs."""
        out = {name: int(sum(self.counters_map[self.counters_map.Key(i)]))
               for i, name in enumerate(COUNTERS)}
        out["refresh_lost"] += self._log.lost  # overwritten in the log before it was read
        return out

    # --- running ---------------------------------------------------------------------------

    def run(self, frame: bytes, repeat: int = 1, fd: int | None = None) -> RunResult:
        """BPF_PROG_TEST_RUN on one frame (of this program, or of ``fd``). The kernel reuses
        the buffer between repeats, so with ``repeat`` > 1 only the first run sees ``frame``
        as given."""
        return test_run(self.fd if fd is None else fd, frame, repeat)

    def close(self) -> None:
        """Free this process's handles. Pinned maps and the attached program stay."""
        if self._own_fd and self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._log.close()
        self.obj.close(keep=True)


def remove(pin_root: Path, interfaces: Iterable[tuple[str, str | None]] = (),
           mode: XDPMode = "native") -> None:
    """Take the fast path away: detach it from ``interfaces`` and unpin everything. The
    agent never does this on exit (the fast path outlives it); uninstall and tests do."""
    for ifname, ns in interfaces:
        with contextlib.suppress(netlink.InterfaceMissing, OSError):
            netlink.detach_xdp(ifname, ns, mode)
    shutil.rmtree(pin_root, ignore_errors=True)

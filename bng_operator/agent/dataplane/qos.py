"""The access data path (bpf/access_qos.c): load or adopt it, attach it to the access
interfaces, and keep its maps: each bound session's L2 (MAC, VLAN tags), its HTB class and
its counters.

Pinned (``pin_root`` given), the maps of one program generation live in
``<pin_root>/qos/<generation>/`` with the programs and the tcx links, so a restarted agent
adopts them: the programs stay attached, the HTB classes stay in the kernel, and the
counters go on.

The classifiers are tcx links, or clsact filters without tcx (``classifiers``). The HTB
classes themselves are tc objects (``netlink``); the caller makes them. The ARP program is
reached by a tail call from the DHCP fast path, through ``<pin_root>/access_next``.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcc import BPF

from bng_operator import netlink
from bng_operator.agent.dataplane import classifiers
from bng_operator.agent.dataplane.classifiers import Classifiers, Programs
from bng_operator.agent.dataplane.fastpath import generation, sweep_generations
from bng_operator.agent.dataplane.flows import flow_pins
from bng_operator.agent.dataplane.loader import (
    BPF_DIR,
    BPFObject,
    DataplaneError,
    bpf_mount_of,
    pinned_program,
)
from bng_operator.agent.dataplane.names import QOS_STATS
from bng_operator.agent.jiffies import clock, to_monotonic_ns
from bng_operator.agent.qos.plan import Access

SOURCE = Path(BPF_DIR) / "access_qos.c"
PROGRAMS = {"egress": "qos_down", "ingress": "qos_up"}
GROUP_FILTER = "qos_group"  # on each HTB root: classic cls_bpf, returns the class id
ARP_PROGRAM = "access_arp"  # XDP, in slot ACCESS_NEXT_ARP of access_next
ACCESS_NEXT_ARP = 0
MAPS = ("qos_sessions", "qos_slots", "qos_counters", "access_interfaces", "qos_stats")
STATS = QOS_STATS  # enum qos_stat, in order
QOS_INTERFACES = 64


class Slots:
    """Free slots of the counters array (and of qos_slots): the one asked for if free,
    else the lowest."""

    def __init__(self, size: int, taken: set[int]) -> None:
        self._free = set(range(size)) - taken
        self._heap = sorted(self._free)  # a heap; entries no longer free are skipped

    def take(self, wanted: int | None = None) -> int | None:
        if wanted is not None and wanted in self._free:
            self._free.discard(wanted)
            return wanted
        while self._heap:
            slot = heapq.heappop(self._heap)
            if slot in self._free:
                self._free.discard(slot)
                return slot
        return None

    def release(self, slot: int) -> None:
        if slot not in self._free:
            self._free.add(slot)
            heapq.heappush(self._heap, slot)


@dataclass(frozen=True)
class Counters:
    """A session's traffic as the shaper saw it, summed over CPUs: packets and IP bytes
    as on the wire (a GSO packet as its segments, each with its headers; no Ethernet
    header), counted before HTB."""

    packets_down: int = 0
    bytes_down: int = 0
    packets_up: int = 0
    bytes_up: int = 0
    last_seen_ns: int = 0  # CLOCK_MONOTONIC (from the programs' jiffies); 0: never


def _u32(address: int) -> int:
    """A host-order address as the u32 the program compares (network order in memory)."""
    return int.from_bytes(address.to_bytes(4, "big"), "little")


class QosPath:
    def __init__(self, max_subscribers: int, pin_root: Path | None = None) -> None:
        cflags: dict[str, int | str] = {"MAX_SUBSCRIBERS": max_subscribers}
        self.generation = generation(SOURCE, cflags)
        self.pin_dir = pin_root / "qos" / self.generation if pin_root is not None else None
        pins = None
        if self.pin_dir is not None:
            if bpf_mount_of(self.pin_dir) is None:
                raise DataplaneError(f"{self.pin_dir} is not on a bpf filesystem")
            self.pin_dir.mkdir(parents=True, exist_ok=True)
            pins = {m: self.pin_dir / m for m in MAPS}
            pins["access_next"] = pin_root / "access_next"  # type: ignore[operator]
            pins.update(flow_pins(pin_root))  # type: ignore[arg-type]
        self.obj = BPFObject(SOURCE, cflags=cflags, pins=pins)
        self.adopted = "qos_sessions" in self.obj.adopted
        self.sessions = self.obj.map("qos_sessions")
        self.slots_map = self.obj.map("qos_slots")
        self.counters_map = self.obj.map("qos_counters")
        self.interfaces = self.obj.map("access_interfaces")
        self.stats_map = self.obj.map("qos_stats")
        self.next_map = self.obj.map("access_next")
        self.max_subscribers = max_subscribers
        # each session's counters: a slot of the per-CPU array, named in its entry
        self._slot_of = {address: int(v.slot) for address, v in self._entries()}
        self._slots = Slots(max_subscribers, set(self._slot_of.values()))
        self._fds: dict[str, int] = {}
        self._own: list[int] = []
        self.hooks = Classifiers(self.pin_dir)
        for fn in (*PROGRAMS.values(), GROUP_FILTER):
            self._fds[fn] = self._program(fn, xdp=False)
        self._fds[ARP_PROGRAM] = self._program(ARP_PROGRAM, xdp=True)

    def _program(self, fn: str, xdp: bool) -> int:
        """The pinned program of this generation, else loaded now (and pinned)."""
        return pinned_program(self.obj, fn, BPF.XDP if xdp else BPF.SCHED_CLS, self.pin_dir,
                              self._own)

    # --- interfaces ----------------------------------------------------------------------------

    def attach(self, ifname: str, ifb: str, subnets: list[tuple[str, str]] | None = None,
               ns: str | None = None) -> list[str]:
        """Terminate and shape ``ifname``: an HTB root on it (download) and on its IFB
        ``ifb`` (upload), the classifiers on its clsact hooks, ARP in the DHCP fast path's
        slot, and each (network, gateway) of ``subnets`` whose gateway is ``ifname``'s
        routed without a neighbour per subscriber. Kept as they are if already there.
        Returns the networks routed."""
        netlink.add_ifb(ifb, ns)
        netlink.ensure_htb(ifname, ns)
        netlink.ensure_htb(ifb, ns)
        index, mac, _ = netlink.interface_info(ifname, ns)
        ifb_index = netlink.interface_info(ifb, ns)[0]
        leaf = self.interfaces.Leaf()
        leaf.ifb = ifb_index
        for i, b in enumerate(bytes.fromhex(mac.replace(":", ""))):
            leaf.mac[i] = b
        self.interfaces[self.interfaces.Key(index)] = leaf
        self.next_map[self.next_map.Key(ACCESS_NEXT_ARP)] = \
            self.next_map.Leaf(self._fds[ARP_PROGRAM])
        for dev in (ifname, ifb):
            netlink.attach_class_filter(dev, self._fds[GROUP_FILTER], GROUP_FILTER, ns)
        routed = netlink.route_access_subnets(ifname, subnets or [], ns)
        self.hooks.attach(ifname, self._programs(), ns)
        return routed

    def attached(self, ifname: str, ns: str | None = None) -> bool:
        """Whether this generation's classifiers classify ``ifname``."""
        return self.hooks.attached(ifname, self._programs(), ns)

    def _programs(self) -> Programs:
        return {direction: (fn, self._fds[fn]) for direction, fn in PROGRAMS.items()}

    # --- sessions ------------------------------------------------------------------------------

    def put(self, address: int, classid: int, access: Access | None = None) -> None:
        """Carry ``address``'s traffic as ``access`` says (None: routed, checked by address
        only), shaped in HTB class ``classid`` each way (major << 16 | minor; a minor
        alone: the root's, 1:minor; 0: unshaped); its counters start at zero unless it has
        some (a re-rate keeps them)."""
        key = self.sessions.Key(_u32(address))
        leaf = self.sessions.Leaf()
        if classid and not classid >> 16:
            classid |= netlink.TC_ROOT
        leaf.down_class = leaf.up_class = classid
        a = access or Access(routed=True)
        for i, b in enumerate(a.mac[:6]):
            leaf.mac[i] = b
        tpid, outer, inner = a.vlans
        leaf.outer_tpid = int.from_bytes(tpid.to_bytes(2, "big"), "little")
        leaf.outer_vid, leaf.inner_vid = outer, inner
        leaf.gateway = _u32(a.gateway)
        leaf.routed = int(a.routed)
        slot = self._slot_of.get(address)
        if slot is None:
            # its own slot (the programs look there first), else any: then found by the hash
            slot = self._slots.take(address % self.max_subscribers)
            if slot is None:
                raise DataplaneError(f"no counter slot left for {address} (the maps hold "
                                     f"{self.max_subscribers} sessions)")
            self.counters_map[self.counters_map.Key(slot)] = self.counters_map.Leaf()
            self._slot_of[address] = slot
        leaf.slot = slot
        leaf.address = key.value
        self.sessions[key] = leaf
        # The hash first: a packet that meets the slot mid-write (an array entry is written
        # in place) at worst misses it, and finds the hash's whole entry.
        leaf.used = 1
        self.slots_map[self.slots_map.Key(slot)] = leaf

    def delete(self, address: int) -> Counters:
        """Forget ``address``; returns its last counters."""
        last = self.counters(address)
        slot = self._slot_of.pop(address, None)
        if slot is not None:  # the slot first: the programs must not find it there alone
            self.slots_map[self.slots_map.Key(slot)] = self.slots_map.Leaf()
        with contextlib.suppress(KeyError):
            del self.sessions[self.sessions.Key(_u32(address))]
        if slot is not None:
            self._slots.release(slot)
        return last

    def clear(self) -> None:
        """Forget every session (the slots before the hash, as delete does)."""
        self.slots_map.clear()
        self.sessions.clear()
        self.counters_map.clear()
        self._slot_of.clear()
        self._slots = Slots(self.max_subscribers, set())

    def installed(self) -> dict[int, int]:
        """address -> HTB class id of every session in the maps (adopted ones too; 0:
        unshaped)."""
        return {address: int(v.down_class) for address, v in self._entries()}

    def _entries(self) -> list[tuple[int, Any]]:
        return [(int.from_bytes(int(k.value).to_bytes(4, "little"), "big"), v)
                for k, v in self.sessions.items()]

    def _counters_at(self, slot: int) -> Counters:
        per_cpu = self.counters_map[self.counters_map.Key(slot)]
        return Counters(sum(int(c.packets_down) for c in per_cpu),
                        sum(int(c.bytes_down) for c in per_cpu),
                        sum(int(c.packets_up) for c in per_cpu),
                        sum(int(c.bytes_up) for c in per_cpu),
                        to_monotonic_ns(max(int(c.last_seen) for c in per_cpu), clock()))

    def counters(self, address: int) -> Counters:
        """``address``'s counters (zero without a session), by the slot its entry names:
        right in any process that opened the pins."""
        try:
            slot = int(self.sessions[self.sessions.Key(_u32(address))].slot)
        except KeyError:
            return Counters()
        return self._counters_at(slot)

    def all_counters(self) -> dict[int, Counters]:
        """Every session's counters, summed over CPUs."""
        return {address: self._counters_at(int(v.slot)) for address, v in self._entries()}

    def stats(self) -> dict[str, int]:
        return {name: int(sum(self.stats_map[self.stats_map.Key(i)]))
                for i, name in enumerate(STATS)}

    def remove_other_generations(self) -> list[str]:
        """Unpin older generations, once this one's programs have replaced theirs on
        every access interface."""
        return sweep_generations(self.pin_dir)

    def close(self) -> None:
        """Free this process's handles. Pins, pinned (or clsact) classifiers and classes
        stay; unpinned tcx links go."""
        for fd in self._own:
            os.close(fd)
        self._own.clear()
        self.hooks.close()
        self.obj.close(keep=True)


def remove(pin_root: Path, interfaces: list[tuple[str, str]], ns: str | None = None) -> None:
    """Take the access data path away: the HTB roots and classifiers (tcx links, clsact)
    from each (interface, IFB), the IFBs, the access routes, and the pins."""
    for ifname, ifb in interfaces:
        classifiers.detach(pin_root / "qos", ifname, ns)
        netlink.remove_shaping(ifname, ns)
        netlink.unroute_access_subnets(ifname, ns)
        netlink.remove_link(ifb, ns)
    shutil.rmtree(pin_root / "qos", ignore_errors=True)

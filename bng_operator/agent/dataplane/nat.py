"""NAT44 / CGNAT on the uplink (bpf/nat44.c): load or adopt it, attach it to the uplink, and
keep its maps: the pools' behaviour, the public addresses, the inside prefixes, each NATed
subscriber's binding (public address and port blocks), and the mappings the programs make.

    nat = NatPath(max_subscribers=2000, max_mappings=mapping_capacity(16 * 64512),
                  pin_root=Path("/sys/fs/bpf/bng"))
    nat.set_pool(0, Pool(filtering="endpoint-independent", timeouts=Timeouts(udp=300)))
    nat.put_address(IPv4Address("192.0.2.1"), pool=0)
    nat.put_inside(IPv4Network("100.64.0.0/10"))
    nat.attach("uplink0")
    nat.put_binding(IPv4Address("100.64.0.20"),
                    Binding(IPv4Address("192.0.2.1"), pool=0, block_size=512, blocks=(1024,)))
    ...
    nat.collect()  # every few seconds: ends idle mappings, frees held ports
    nat.delete_binding(IPv4Address("100.64.0.20"))  # the session ended: its mappings go too

The programs make mappings themselves (the first packet of an inside endpoint takes a random
free port of its subscriber's blocks); the agent only writes bindings and configuration,
and runs the collector. Pinned (``pin_root`` given), the maps and programs of one program
generation live in ``<pin_root>/nat/<generation>/``, so a restarted agent adopts them and no
mapping is lost; without a pin the tail-call table empties when this process exits, and new
flows are then dropped (``internal``).

Addresses are ``IPv4Address``es, ports host-order ints; the maps hold both in network order.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from bcc import BPF, libbcc

from bng_operator.agent.dataplane import classifiers
from bng_operator.agent.dataplane.classifiers import Classifiers, Programs
from bng_operator.agent.dataplane.fastpath import generation, is_generation, sweep_generations
from bng_operator.agent.dataplane.flows import flow_pins
from bng_operator.agent.dataplane.loader import (
    BPF_DIR,
    BPFObject,
    DataplaneError,
    bpf_mount_of,
    pinned_map_items,
    pinned_program,
)
from bng_operator.agent.dataplane.names import NAT_STATS

SOURCE = Path(BPF_DIR) / "nat44.c"
PROGRAMS = {"egress": "nat_out", "ingress": "nat_in"}
# Slots of nat_progs (NAT_PROG_*): nat_out tail-calls the port search, which calls it back.
TAIL_CALLS = {0: "nat_out", 1: "nat_new"}
MAPS = ("nat_bindings", "nat_pools", "nat_addresses", "nat_node", "nat_inside",
        "nat_outbound", "nat_inbound", "nat_filters", "nat_recent", "nat_fragments",
        "nat_exhausted", "nat_stats", "nat_progs", "nat_layout")
# The tables whose entries only the programs make: a new generation carries them over.
CARRIED = ("nat_outbound", "nat_inbound", "nat_filters")
_CARRIED_LAYOUT = re.compile(r"^struct nat_(?:endpoint|mapping|filter_key) \{.*?^\};$|"
                             r"^#define NAT_(?:F|TCP)_\w+ .*?$", re.M | re.S)


def carried_layout(header: Path = Path(BPF_DIR) / "lib" / "nat.h") -> int:
    """A hash of what the carried tables' entries mean: the structs of their keys and values
    (comments included) and the flags in them. Two generations with the same hash can
    share entries byte for byte, whatever else differs."""
    parts = _CARRIED_LAYOUT.findall(header.read_text())
    return int.from_bytes(hashlib.sha256("\n".join(parts).encode()).digest()[:8], "little")
STATS = NAT_STATS  # enum nat_stat, in order
_BPF_NOEXIST = 1
# Packets dropped, by reason: the stats above that are drops (the rest are verdicts that
# pass, and events).
DROPS = ("no_binding", "no_mapping", "filtered", "block_full", "map_full",
         "fragment_unknown", "icmp_error_unknown", "malformed", "unsupported", "write_error",
         "internal")
# enum nat_filtering, in order, named as NATPool filteringBehavior.
FILTERING = ("endpoint-independent", "address-dependent", "address-and-port-dependent")
TCP_SYN, TCP_FIN, TCP_RST = 0x01, 0x02, 0x04  # NAT_TCP_*
F_HELD = 0x01  # NAT_F_HELD
FRAG_OUT, FRAG_IN = 0, 1  # NAT_FRAG_*
MAX_POOLS = 64
MAX_INSIDE = 256
MAX_EXHAUSTED = 4096
ICMP_INTERVAL_NS = 100_000_000
PROBES, TAKEOVER_PROBES = 128, 8  # NAT_PROBES, NAT_TAKEOVER_PROBES
DEFAULT_MAX_BLOCKS = 4
DEFAULT_MAX_RECENT = 65536  # NAT_MAX_RECENT: 1 MB of buckets, within the TLB's reach
RECHECK_NS = 1_000_000_000  # NAT_RECHECK_NS
TCP, UDP, ICMP = 6, 17, 1
PROTOCOLS = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}
# A fragment's entry outlives its datagram's reassembly time (Linux ipfrag_time) no longer.
FRAGMENT_TIMEOUT_NS = 30 * 1_000_000_000
_NS = 1_000_000_000


def mapping_capacity(public_ports: int) -> int:
    """Entries each mapping table needs so that it is never full: every public port of the
    node, once per protocol (TCP, UDP, ICMP echo identifiers)."""
    return 3 * public_ports


@dataclass(frozen=True)
class Timeouts:
    """A pool's mapping lifetimes, in seconds (NATPool timeouts; RFC 4787, 5382, 5508), and
    how long a port whose mapping ended is held before another flow may take it."""

    udp: int = 300
    tcp_established: int = 7440
    tcp_transitory: int = 240
    icmp: int = 60
    hold: int = 120


@dataclass(frozen=True)
class Pool:
    filtering: str = "endpoint-independent"  # one of FILTERING
    timeouts: Timeouts = Timeouts()


@dataclass(frozen=True)
class Binding:
    """A NATed subscriber's public address and port blocks: block j is ports
    blocks[j] .. blocks[j] + block_size - 1 on ``public``."""

    public: IPv4Address
    pool: int
    block_size: int
    blocks: tuple[int, ...]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """(first, last) port of each block."""
        return [(f, f + self.block_size - 1) for f in self.blocks]

    def holds(self, port: int) -> bool:
        return any(f <= port < f + self.block_size for f in self.blocks)


@dataclass(frozen=True)
class Mapping:
    """One mapping, both directions: ``inside``:``inside_port`` is ``public``:``public_port``
    (for ICMP the ports are echo identifiers)."""

    protocol: int  # TCP, UDP or ICMP
    inside: IPv4Address
    inside_port: int
    public: IPv4Address
    public_port: int
    last_seen_ns: int  # CLOCK_MONOTONIC (time.monotonic_ns), either way
    tcp_established: bool  # a SYN each way, no FIN or RST


@dataclass(frozen=True)
class Exhaustion:
    """A subscriber whose blocks were full: new flows refused since the last read."""

    refused: int
    last_ns: int  # CLOCK_MONOTONIC


@dataclass(frozen=True)
class Collected:
    """What one collector pass did."""

    ended: int = 0  # mappings past their timeout: ended, their ports held
    released: int = 0  # held ports past the hold: free again
    filters: int = 0  # remotes no longer allowed in
    fragments: int = 0
    orphans: int = 0  # half mappings left by a race or a crash


def _be32(address: IPv4Address) -> int:
    """An address as the u32 the maps hold (network order in memory)."""
    return int.from_bytes(address.packed, "little")


def _address(value: int) -> IPv4Address:
    return IPv4Address(int(value).to_bytes(4, "little"))


def _be16(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def _port(value: int) -> int:
    return int.from_bytes(int(value).to_bytes(2, "little"), "big")


def _items(table: Any) -> list[tuple[Any, Any]]:
    """Every (key, value) of a hash map: one BPF_MAP_LOOKUP_BATCH pass where the kernel has
    it (most of the time goes to building the Python objects either way: ~15 us an entry)."""
    try:
        return list(table.items_lookup_batch())
    except Exception:  # BCC raises bare Exception when the map or kernel cannot batch
        return list(table.items())


def _established(tcp_out: int, tcp_in: int) -> bool:
    return bool(tcp_out & TCP_SYN and tcp_in & TCP_SYN and
                not (tcp_out | tcp_in) & (TCP_FIN | TCP_RST))


def timeout_s(timeouts: Timeouts, protocol: int, established: bool) -> int:
    """The timeout of a mapping, as the programs pick it (nat44.c timeout_ns)."""
    if protocol == TCP:
        return timeouts.tcp_established if established else timeouts.tcp_transitory
    return timeouts.udp if protocol == UDP else timeouts.icmp


class NatPath:
    def __init__(self, max_subscribers: int, max_mappings: int,
                 max_filters: int | None = None, max_fragments: int = 8192,
                 max_recent: int | None = None,
                 max_blocks: int = DEFAULT_MAX_BLOCKS, max_addresses: int = 4096,
                 pin_root: Path | None = None) -> None:
        """``max_mappings``: entries of each mapping table (``mapping_capacity`` of the node's
        public ports: plain hashes, allocated as used, so a large size costs only its
        buckets). ``max_filters``: remotes allowed in by address(-and-port)-dependent
        filtering (default ``max_mappings``). ``max_recent``: steady flows whose mapping
        nat_out copies for a faster lookup (``nat_recent``; default the smaller of 65,536
        and ``max_mappings``). ``max_blocks``: blocks a binding can hold, a power of two up
        to 64 (NATPool blocksPerSubscriber)."""
        if max_blocks < 1 or max_blocks > 64 or max_blocks & (max_blocks - 1):
            raise DataplaneError(f"max_blocks {max_blocks}: a power of two from 1 to 64")
        self.max_blocks = max_blocks
        cflags: dict[str, int | str] = {
            "MAX_SUBSCRIBERS": max_subscribers, "NAT_MAX_MAPPINGS": max_mappings,
            "NAT_MAX_FILTERS": max_filters or max_mappings,
            "NAT_MAX_FRAGMENTS": max_fragments, "NAT_MAX_BLOCKS": max_blocks,
            "NAT_MAX_RECENT": max_recent or min(DEFAULT_MAX_RECENT, max_mappings),
            "NAT_MAX_ADDRESSES": max_addresses}
        self.generation = generation(SOURCE, cflags)
        self.pin_dir = pin_root / "nat" / self.generation if pin_root is not None else None
        pins = None
        if self.pin_dir is not None:
            if bpf_mount_of(self.pin_dir) is None:
                raise DataplaneError(f"{self.pin_dir} is not on a bpf filesystem")
            self.pin_dir.mkdir(parents=True, exist_ok=True)
            pins = {m: self.pin_dir / m for m in MAPS}
            pins.update(flow_pins(self.pin_dir.parent.parent))
        self.obj = BPFObject(SOURCE, cflags=cflags, pins=pins)
        self.adopted = "nat_outbound" in self.obj.adopted
        self.bindings_map = self.obj.map("nat_bindings")
        self.pools_map = self.obj.map("nat_pools")
        self.addresses_map = self.obj.map("nat_addresses")
        self.node_map = self.obj.map("nat_node")
        self.inside_map = self.obj.map("nat_inside")
        self.outbound = self.obj.map("nat_outbound")
        self.inbound = self.obj.map("nat_inbound")
        self.filters = self.obj.map("nat_filters")
        self.recent = self.obj.map("nat_recent")
        self.fragments = self.obj.map("nat_fragments")
        self.exhausted_map = self.obj.map("nat_exhausted")
        self.stats_map = self.obj.map("nat_stats")
        self.progs = self.obj.map("nat_progs")
        self.layout = carried_layout()
        layout_map = self.obj.map("nat_layout")
        layout_map[layout_map.Key(0)] = layout_map.Leaf(self.layout)
        self._own: list[int] = []
        self.hooks = Classifiers(self.pin_dir)
        self.fds = {fn: self._program(fn) for fn in ("nat_out", "nat_in", "nat_new")}
        for slot, fn in TAIL_CALLS.items():
            self.progs[self.progs.Key(slot)] = self.progs.Leaf(self.fds[fn])

    def _program(self, fn: str) -> int:
        """The pinned program of this generation, else loaded now (and pinned)."""
        return pinned_program(self.obj, fn, BPF.SCHED_CLS, self.pin_dir, self._own)

    # --- the uplink ------------------------------------------------------------------------

    def attach(self, ifname: str, ns: str | None = None) -> None:
        """Translate on ``ifname``: nat_out on its tc egress, nat_in on its ingress, as tcx
        links (pinned with this generation; an older generation's have their programs
        swapped), or clsact filters without tcx (``classifiers``)."""
        self.hooks.attach(ifname, self._programs(), ns)

    def attached(self, ifname: str, ns: str | None = None) -> bool:
        return self.hooks.attached(ifname, self._programs(), ns)

    def _programs(self) -> Programs:
        return {direction: (fn, self.fds[fn]) for direction, fn in PROGRAMS.items()}

    # --- configuration -----------------------------------------------------------------------

    def set_pool(self, index: int, pool: Pool) -> None:
        """The behaviour of pool ``index`` (< MAX_POOLS): applies at once to its mappings."""
        if not 0 <= index < MAX_POOLS:
            raise DataplaneError(f"pool index {index}: 0 to {MAX_POOLS - 1}")
        if pool.filtering not in FILTERING:
            raise DataplaneError(f"filtering {pool.filtering!r}: one of {FILTERING}")
        leaf = self.pools_map.Leaf()
        leaf.filtering = FILTERING.index(pool.filtering)
        t = pool.timeouts
        leaf.udp, leaf.tcp_established, leaf.tcp_transitory = t.udp, t.tcp_established, \
            t.tcp_transitory
        leaf.icmp, leaf.hold = t.icmp, t.hold
        if pool.filtering != FILTERING[0]:
            node = self.node_map[self.node_map.Key(0)]
            node.filters = 1
            self.node_map[self.node_map.Key(0)] = node  # first: nat_out then reads the pool
        self.pools_map[self.pools_map.Key(index)] = leaf

    def pool(self, index: int) -> Pool:
        v = self.pools_map[self.pools_map.Key(index)]
        return Pool(FILTERING[int(v.filtering)] if v.filtering < len(FILTERING) else "?",
                    Timeouts(int(v.udp), int(v.tcp_established), int(v.tcp_transitory),
                             int(v.icmp), int(v.hold)))

    def put_address(self, public: IPv4Address, pool: int) -> None:
        """Serve ``public`` (of pool ``pool``): traffic to it is translated by its mappings
        and dropped without one (so the node never routes it back out)."""
        node = self.node_map[self.node_map.Key(0)]
        a = int(public)
        node.lo, node.hi = (min(node.lo, a), max(node.hi, a)) if node.hi else (a, a)
        self.node_map[self.node_map.Key(0)] = node  # first: nat_out then looks it up
        leaf = self.addresses_map.Leaf()
        leaf.pool = pool
        self.addresses_map[self.addresses_map.Key(_be32(public))] = leaf

    def public_span(self) -> tuple[int, int]:
        """(lowest, highest) address nat_out looks up in the addresses to hairpin (integers;
        (0, 0): none). Widened by ``put_address``, never narrowed: it only spares lookups."""
        v = self.node_map[self.node_map.Key(0)]
        return int(v.lo), int(v.hi)

    def filtering_anywhere(self) -> bool:
        """Whether nat_out looks up a mapped packet's pool: set once a pool filters, never
        cleared (it only spares lookups)."""
        return bool(self.node_map[self.node_map.Key(0)].filters)

    def delete_address(self, public: IPv4Address) -> None:
        with contextlib.suppress(KeyError):
            del self.addresses_map[self.addresses_map.Key(_be32(public))]

    def addresses(self) -> dict[IPv4Address, int]:
        return {_address(k.value): int(v.pool) for k, v in self.addresses_map.items()}

    def put_inside(self, prefix: IPv4Network) -> None:
        """Sources in ``prefix`` must be NATed: one without a binding is dropped, never sent
        out with its private address."""
        self.inside_map[self.inside_map.Key(prefix.prefixlen,
                                            _be32(prefix.network_address))] = \
            self.inside_map.Leaf(1)

    def delete_inside(self, prefix: IPv4Network) -> None:
        with contextlib.suppress(KeyError):
            del self.inside_map[self.inside_map.Key(prefix.prefixlen,
                                                    _be32(prefix.network_address))]

    def inside_prefixes(self) -> list[IPv4Network]:
        return sorted(IPv4Network((_address(k.addr), int(k.prefixlen)))
                      for k in self.inside_map)  # (an LpmTrie has no len)

    # --- subscribers -----------------------------------------------------------------------

    def put_binding(self, inside: IPv4Address, binding: Binding) -> None:
        """NAT ``inside`` to ``binding`` from its next packet. Mappings it already has keep
        their ports (a block taken away: ``flush`` them)."""
        if not 1 <= len(binding.blocks) <= self.max_blocks:
            raise DataplaneError(f"{len(binding.blocks)} blocks: 1 to {self.max_blocks}")
        if not 1 <= binding.block_size <= 65535 or not 0 <= binding.pool < MAX_POOLS:
            raise DataplaneError(f"block size {binding.block_size} or pool {binding.pool}")
        for first in binding.blocks:
            if first < 1 or first + binding.block_size - 1 > 65535:
                raise DataplaneError(f"block {first}+{binding.block_size} is not in 1-65535")
        leaf = self.bindings_map.Leaf()
        leaf.public_addr = _be32(binding.public)
        leaf.pool = binding.pool
        leaf.block_size = binding.block_size
        leaf.nblocks = len(binding.blocks)
        for i, first in enumerate(binding.blocks):
            leaf.first[i] = first
        self.bindings_map[self.bindings_map.Key(_be32(inside))] = leaf

    def binding(self, inside: IPv4Address) -> Binding | None:
        try:
            v = self.bindings_map[self.bindings_map.Key(_be32(inside))]
        except KeyError:
            return None
        return self._binding(v)

    @staticmethod
    def _binding(v: Any) -> Binding:
        return Binding(_address(v.public_addr), int(v.pool), int(v.block_size),
                       tuple(int(v.first[i]) for i in range(int(v.nblocks))))

    def bindings(self) -> dict[IPv4Address, Binding]:
        return {_address(k.value): self._binding(v) for k, v in self.bindings_map.items()}

    def delete_binding(self, inside: IPv4Address) -> int:
        """Stop NATing ``inside`` (its session ended): its binding and its mappings go (their
        ports free at once: holding a released block is the allocator's). Returns the
        mappings removed."""
        binding = self.binding(inside)
        if binding is None:
            return 0
        with contextlib.suppress(KeyError):
            del self.bindings_map[self.bindings_map.Key(_be32(inside))]
        return self.flush(inside, binding)

    def _owned(self, inside: int, binding: Binding) -> Iterator[tuple[Any, Any]]:
        """(inbound key, inbound value) of each of ``binding``'s public endpoints mapped to
        ``inside`` (network order): a lookup per port and protocol, however large the
        tables."""
        public = _be32(binding.public)
        for first in binding.blocks:
            for port in range(first, first + binding.block_size):
                for proto in PROTOCOLS:
                    k = self.inbound.Key(public, _be16(port), proto)
                    try:
                        v = self.inbound[k]
                    except KeyError:
                        continue
                    if int(v.addr) == inside and not v.flags & F_HELD:
                        yield k, v

    def _halves(self, inside: IPv4Address, binding: Binding | None
                ) -> list[tuple[Any, Any, Any, Any]]:
        """(outbound key, outbound value or None, inbound key, inbound value or None) of each
        mapping of ``inside``: by ``binding``'s ports, or (None) by a walk of the outbound
        table."""
        addr = _be32(inside)
        out = []
        if binding is not None:
            for ik, iv in self._owned(addr, binding):
                ok = self.outbound.Key(addr, int(iv.port), int(ik.proto))
                try:
                    ov = self.outbound[ok]
                except KeyError:
                    ov = None
                if ov is not None and (int(ov.addr), int(ov.port)) != (int(ik.addr),
                                                                       int(ik.port)):
                    ov = None  # that inside endpoint's mapping is another port now
                out.append((ok, ov, ik, iv))
            return out
        for ok, ov in _items(self.outbound):
            if int(ok.addr) != addr:
                continue
            ik = self.inbound.Key(int(ov.addr), int(ov.port), int(ok.proto))
            try:
                iv = self.inbound[ik]
            except KeyError:
                iv = None
            if iv is not None and ((int(iv.addr), int(iv.port)) != (addr, int(ok.port)) or
                                   iv.flags & F_HELD):
                iv = None
            out.append((ok, ov, ik, iv))
        return out

    def flush(self, inside: IPv4Address, binding: Binding | None = None,
              keep: Binding | None = None) -> int:
        """Remove ``inside``'s mappings on ``binding``'s ports, both directions, but those
        whose public endpoint ``keep`` holds. On a binding change, ``flush(inside, old,
        keep=new)`` removes the mappings of the blocks taken away. Without ``binding``,
        every mapping of ``inside`` is found by a walk of the whole table (slow). The
        remotes they let in go with the next ``collect``. Returns how many."""
        gone = 0
        for ok, ov, ik, iv in self._halves(inside, binding):
            if keep is not None and _address(ik.addr) == keep.public and \
                    keep.holds(_port(ik.port)):
                continue
            if ov is not None:
                with contextlib.suppress(KeyError):
                    del self.outbound[ok]
                self._forget_recent(ok)
            if iv is not None:
                with contextlib.suppress(KeyError):
                    del self.inbound[ik]
            gone += 1
        return gone

    def _forget_recent(self, outbound_key: Any) -> None:
        """Delete the copy nat_out keeps of an outbound mapping (the same key), with it."""
        with contextlib.suppress(KeyError):
            del self.recent[self.recent.Key(int(outbound_key.addr), int(outbound_key.port),
                                            int(outbound_key.proto))]

    def mappings(self, inside: IPv4Address | None = None) -> list[Mapping]:
        """Every mapping, with the later time of its two directions; or ``inside``'s, by its
        binding's ports (a lookup each, not a walk of the tables). Held ports are not
        mappings."""
        binding = self.binding(inside) if inside is not None else None
        if inside is not None and binding is not None:
            return [self._mapping(ok, ov, iv) for ok, ov, _, iv in self._halves(inside, binding)
                    if ov is not None]
        want = _be32(inside) if inside is not None else None
        inbound = {(int(k.addr), int(k.port), int(k.proto)): v for k, v in _items(self.inbound)}
        out = []
        for k, v in _items(self.outbound):
            if want is not None and int(k.addr) != want:
                continue
            back = inbound.get((int(v.addr), int(v.port), int(k.proto)))
            if back is not None and ((int(back.addr), int(back.port)) != (int(k.addr),
                                                                         int(k.port)) or
                                     back.flags & F_HELD):
                back = None
            out.append(self._mapping(k, v, back))
        return out

    @staticmethod
    def _mapping(k: Any, v: Any, back: Any) -> Mapping:
        last, tcp_in = int(v.last_seen_ns), 0
        if back is not None:
            last, tcp_in = max(last, int(back.last_seen_ns)), int(back.tcp)
        return Mapping(int(k.proto), _address(k.addr), _port(k.port), _address(v.addr),
                       _port(v.port), last,
                       int(k.proto) == TCP and _established(int(v.tcp), tcp_in))

    def exhausted(self, clear: bool = True) -> dict[IPv4Address, Exhaustion]:
        """Subscribers whose blocks were full (another block is due, up to
        blocksPerSubscriber), read and, with ``clear``, forgotten."""
        out = {}
        for k, v in self.exhausted_map.items():
            out[_address(k.value)] = Exhaustion(int(v.count), int(v.last_ns))
            if clear:
                with contextlib.suppress(KeyError):
                    del self.exhausted_map[k]
        return out

    # --- the collector -------------------------------------------------------------------------

    def collect(self, now_ns: int | None = None) -> Collected:
        """One pass of the collector: a mapping idle past its pool's timeout ends (its
        outbound half goes; its public port stays taken, held); a port held past the hold is
        free again; remotes of ended mappings or idle past the timeout are no longer let in;
        fragments past FRAGMENT_TIMEOUT_NS go. The programs take over an expired port
        themselves when they find no free one, so a late collector delays, never stops,
        reuse."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        pools: dict[int, Pool] = {}
        public_pool = {int(k.value): int(v.pool) for k, v in self.addresses_map.items()}

        def pool_of(public: int) -> Pool:
            index = public_pool.get(public, 0)
            if index not in pools:
                pools[index] = self.pool(index)
            return pools[index]

        outbound = {(int(k.addr), int(k.port), int(k.proto)): (k, v)
                    for k, v in _items(self.outbound)}
        ended = released = orphans = 0
        live: set[tuple[int, int, int]] = set()
        claimed: set[tuple[int, int, int]] = set()
        for k, v in _items(self.inbound):
            public = (int(k.addr), int(k.port), int(k.proto))
            t = pool_of(public[0]).timeouts
            if v.flags & F_HELD:
                if now - int(v.last_seen_ns) > t.hold * _NS:
                    with contextlib.suppress(KeyError):
                        if self.inbound[k].flags & F_HELD:
                            del self.inbound[k]
                            released += 1
                continue
            owner = (int(v.addr), int(v.port), public[2])
            half = outbound.get(owner)
            last, tcp_out = int(v.last_seen_ns), 0
            if half is not None and (int(half[1].addr), int(half[1].port)) == public[:2]:
                claimed.add(owner)
                last, tcp_out = max(last, int(half[1].last_seen_ns)), int(half[1].tcp)
            else:
                half = None
            timeout = timeout_s(t, public[2], _established(tcp_out, int(v.tcp))) * _NS
            if now - last <= timeout:
                live.add(public)
                continue
            # Ended: the outbound half first (no new packet uses it), then the port is held.
            with contextlib.suppress(KeyError):
                current = self.inbound[k]
                if int(current.last_seen_ns) != int(v.last_seen_ns):
                    live.add(public)
                    continue  # a packet came (or the kernel took it over) meanwhile
                if half is not None:
                    with contextlib.suppress(KeyError):
                        del self.outbound[half[0]]
                    self._forget_recent(half[0])
                held = self.inbound.Leaf()
                held.flags = F_HELD
                held.last_seen_ns = now
                self.inbound[k] = held
                ended += 1
        for owner, (k, v) in outbound.items():
            if owner in claimed:
                continue
            # An outbound half whose port another mapping holds (a race, a crash): once idle
            # past its timeout, it goes.
            t = pool_of(int(v.addr)).timeouts
            if now - int(v.last_seen_ns) > timeout_s(t, owner[2], False) * _NS:
                with contextlib.suppress(KeyError):
                    del self.outbound[k]
                    orphans += 1
                self._forget_recent(k)
        filters = 0
        for fk, seen in _items(self.filters):
            public = (int(fk.public_addr), int(fk.public_port), int(fk.proto))
            t = pool_of(public[0]).timeouts
            idle = now - int(getattr(seen, "value", seen))  # batches give ints
            if public not in live or idle > timeout_s(t, public[2], True) * _NS:
                with contextlib.suppress(KeyError):
                    del self.filters[fk]
                    filters += 1
        fragments = 0
        for fk, f in self.fragments.items():
            if now - int(f.seen_ns) > FRAGMENT_TIMEOUT_NS:
                with contextlib.suppress(KeyError):
                    del self.fragments[fk]
                    fragments += 1
        return Collected(ended, released, filters, fragments, orphans)

    # --- counters ----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {name: int(sum(self.stats_map[self.stats_map.Key(i)]))
                for i, name in enumerate(STATS)}

    def counts(self) -> dict[str, int]:
        """Entries in each table (for map-fill metrics)."""
        return {name: sum(1 for _ in table) for name, table in (
            ("bindings", self.bindings_map), ("outbound", self.outbound),
            ("inbound", self.inbound), ("filters", self.filters), ("recent", self.recent),
            ("fragments", self.fragments))}

    def mapping_entries(self) -> dict[str, list[tuple[bytes, bytes]]]:
        """The carried tables' entries, raw (for another generation: ``put_entries``)."""
        return {name: [(bytes(k), bytes(v) if not isinstance(v, int) else
                        v.to_bytes(8, "little")) for k, v in _items(self.obj.map(name))]
                for name in CARRIED}

    def sibling_entries(self) -> list[tuple[str, dict[str, list[tuple[bytes, bytes]]] | None]]:
        """Per other pinned generation: its carried tables' entries, raw; None when their
        layout is not this one's (or it predates the layout stamp), so none can be kept."""
        if self.pin_dir is None:
            return []
        out: list[tuple[str, dict[str, list[tuple[bytes, bytes]]] | None]] = []
        for d in sorted(self.pin_dir.parent.iterdir()):
            if d == self.pin_dir or not is_generation(d.name) or not d.is_dir():
                continue
            stamp = pinned_map_items(d / "nat_layout")
            same = bool(stamp) and int.from_bytes(stamp[0][1], "little") == self.layout
            out.append((d.name, {n: pinned_map_items(d / n) for n in CARRIED} if same
                        else None))
        return out

    def put_entries(self, entries: dict[str, list[tuple[bytes, bytes]]]) -> tuple[int, int]:
        """Add another generation's mappings, held ports and filters to this one's tables,
        so its flows go on once these programs replace its. An entry this generation
        already has is kept (its own programs made it). Returns (copied, did not fit)."""
        copied = lost = 0
        for name, items in entries.items():
            table = self.obj.map(name)
            ksize, vsize = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
            for k, v in items:
                if len(k) != ksize or len(v) != vsize:
                    lost += 1
                    continue
                key = ctypes.create_string_buffer(k, ksize)
                if libbcc.lib.bpf_update_elem(table.map_fd, key,
                                              ctypes.create_string_buffer(v, vsize),
                                              _BPF_NOEXIST) == 0:
                    copied += 1
                elif libbcc.lib.bpf_lookup_elem(table.map_fd, key,
                                                ctypes.create_string_buffer(vsize)) != 0:
                    lost += 1  # not there, and no room for it
        return copied, lost

    # --- lifecycle -----------------------------------------------------------------------------

    def remove_other_generations(self) -> list[str]:
        """Unpin older generations, once this one's programs have replaced theirs on
        the uplink."""
        return sweep_generations(self.pin_dir)

    def close(self) -> None:
        """Free this process's handles. Pins, pinned (or clsact) programs stay; unpinned
        tcx links go."""
        for fd in self._own:
            os.close(fd)
        self._own.clear()
        self.hooks.close()
        self.obj.close(keep=True)


def remove(pin_root: Path, interfaces: list[str], ns: str | None = None) -> None:
    """Take the NAT away: its programs from each uplink (the tcx links pinned for it, and
    its clsact qdisc: the uplink carries nothing else there), and the pins."""
    for ifname in interfaces:
        classifiers.detach(pin_root / "nat", ifname, ns)
    shutil.rmtree(pin_root / "nat", ignore_errors=True)

"""The XDP DHCP fast path (bpf/xdp_dhcp.c): load it, fill its maps, run it on frames.

Map entries are built with BCC's generated ``Key``/``Leaf`` types; the C header
bpf/lib/dhcp.h owns every layout. The constants below mirror that header, and
tests/bpf/test_fastpath.py checks they agree.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from bcc import libbcc

from bng_operator.agent.dataplane.loader import BPF_DIR, BPFObject

SOURCE = Path(BPF_DIR) / "xdp_dhcp.c"
PROGRAM = "xdp_dhcp"
REPLY_DHCP_LEN = 368
MAX_RELAY_AGENT_LEN = 62
# enum fastpath_counter, in order.
COUNTERS = ("offer", "ack", "pass_not_dhcp", "pass_malformed", "pass_miss", "pass_expired",
            "pass_wrong_address", "pass_other_type", "pass_layout", "pass_no_interface", "drop")
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf); ``sz`` lets libbpf accept an older layout."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_test_run = libbcc.lib.bpf_prog_test_run_opts
_test_run.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]


@dataclass(frozen=True)
class RunResult:
    action: int
    frame: bytes
    ns_per_run: int


def _ip(addr: str | IPv4Address) -> int:
    """An address as the u32 the kernel stores (network byte order in memory)."""
    return int.from_bytes(IPv4Address(addr).packed, "little")


def boot_ns(wall: float) -> int:
    """A wall-clock time as CLOCK_BOOTTIME nanoseconds, the clock the program reads."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) + int((wall - time.time()) * 1e9)


class FastPath:
    def __init__(self, max_subscribers: int = 100_000) -> None:
        self.obj = BPFObject(SOURCE, cflags={"MAX_SUBSCRIBERS": max_subscribers})
        self.fd = self.obj.load_xdp(PROGRAM)
        self.subscribers = self.obj.map("subscribers")
        self.pools = self.obj.map("pool_options")
        self.interfaces = self.obj.map("interfaces")
        self.counters_map = self.obj.map("counters")

    # --- maps -------------------------------------------------------------------------------

    def put_interface(self, ifindex: int, mac: bytes) -> None:
        leaf = self.interfaces.Leaf()
        leaf.mac[:] = list(mac)
        self.interfaces[self.interfaces.Key(ifindex)] = leaf

    def put_pool(self, index: int, mask: str, router: str, dns: list[str]) -> None:
        leaf = self.pools.Leaf()
        leaf.subnet_mask, leaf.router = _ip(mask), _ip(router)
        for i, d in enumerate(dns[:2]):
            leaf.dns[i] = _ip(d)
        leaf.dns_count = min(len(dns), 2)
        self.pools[self.pools.Key(index)] = leaf

    def _key(self, mac: str, vlan: int) -> object:
        k = self.subscribers.Key()
        k.mac[:] = list(bytes.fromhex(mac.replace(":", "")))
        k.vlan = vlan
        return k

    def put_subscriber(self, mac: str, vlan: int, address: str, server_id: str,
                       expires: float, lease_seconds: int, pool: int) -> None:
        leaf = self.subscribers.Leaf()
        leaf.address, leaf.server_id = _ip(address), _ip(server_id)
        leaf.expires_ns = boot_ns(expires)
        leaf.lease_seconds, leaf.pool = lease_seconds, pool
        self.subscribers[self._key(mac, vlan)] = leaf

    def subscriber_expiry_ns(self, mac: str, vlan: int) -> int:
        return int(self.subscribers[self._key(mac, vlan)].expires_ns)

    def delete_subscriber(self, mac: str, vlan: int) -> None:
        del self.subscribers[self._key(mac, vlan)]

    def counters(self) -> dict[str, int]:
        """Per-CPU counters summed over CPUs."""
        return {name: int(sum(self.counters_map[self.counters_map.Key(i)]))
                for i, name in enumerate(COUNTERS)}

    # --- running ---------------------------------------------------------------------------

    def run(self, frame: bytes, repeat: int = 1) -> RunResult:
        """BPF_PROG_TEST_RUN on one frame. The kernel reuses the buffer between repeats, so
        with ``repeat`` > 1 only the first run sees ``frame`` as given."""
        buf_in = ctypes.create_string_buffer(frame, len(frame))
        out = ctypes.create_string_buffer(4096)
        opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(buf_in),
                            data_out=ctypes.addressof(out), data_size_in=len(frame),
                            data_size_out=len(out), repeat=repeat)
        rc = _test_run(self.fd, ctypes.byref(opts))
        if rc != 0:
            raise OSError(-rc, f"BPF_PROG_TEST_RUN failed: {rc}")
        return RunResult(opts.retval, out.raw[: opts.data_size_out], opts.duration)

    def close(self) -> None:
        self.obj.close()

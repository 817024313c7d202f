"""A lab of network namespaces joined by veth pairs: every node and subscriber is a namespace.

Names carry the creating process's pid (``bngt<pid>-<n>-<role>``), so a later run can tell a
crashed run's leftovers (pid gone) from a run still going, and remove only those.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bng_operator import netlink

PREFIX = "bngt"
_seq = itertools.count()
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Run the block with the calling thread in ``netns`` (setns is per thread), then move
    it back. For sockets opened there, or an ifindex that only means something there."""
    with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{netns}") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(own.fileno())


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def kill_processes(ns: str) -> None:
    """SIGKILL whatever still runs in ``ns`` (clients that daemonized, a crashed agent)."""
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    for pid in r.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


ETC_NETNS = Path("/etc/netns")
# `ip netns exec` mounts a fresh /sys, which hides /sys/fs/bpf; a bpffs mounted elsewhere
# before the namespaces are entered is seen from inside them.
BPF_PINS = Path("/run/bng-test/bpffs")


def _pins_mounted() -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(BPF_PINS) for line in f)


def mount_bpffs() -> Path:
    """The bpffs that labs pin under, mounted if it is not."""
    if _pins_mounted():
        return BPF_PINS
    BPF_PINS.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(BPF_PINS)], check=True)
    return BPF_PINS


def unmount_bpffs() -> None:
    """Unmount the labs' bpffs once no lab pins anything in it."""
    if _pins_mounted() and not any(p for p in BPF_PINS.iterdir() if not p.name.endswith(".debug")):
        subprocess.run(["umount", str(BPF_PINS)], check=False)
        with contextlib.suppress(OSError):
            BPF_PINS.rmdir()
            BPF_PINS.parent.rmdir()


def remove_netns(ns: str) -> None:
    kill_processes(ns)
    netlink.remove_netns(ns)
    shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)


def remove_leftovers(prefix: str = PREFIX, only_dead: bool = True) -> list[str]:
    """Remove namespaces made by processes that no longer run (or all of this prefix's,
    with ``only_dead=False``). Returns their names."""
    pattern = re.compile(rf"^{prefix}(\d+)-")
    removed = []
    for name in netlink.list_netns():
        m = pattern.match(name)
        if m and not (only_dead and _alive(int(m.group(1)))):
            remove_netns(name)
            removed.append(name)
    if BPF_PINS.is_dir():  # fast-path pins of labs whose process is gone
        for d in BPF_PINS.iterdir():
            m = pattern.match(d.name + "-")
            if m and not (only_dead and _alive(int(m.group(1)))):
                shutil.rmtree(d, ignore_errors=True)
    if ETC_NETNS.is_dir():  # per-namespace /etc files whose namespace is gone
        live = set(netlink.list_netns())
        for d in ETC_NETNS.iterdir():
            if pattern.match(d.name) and d.name not in live:
                shutil.rmtree(d, ignore_errors=True)
    return removed


@dataclass
class NetLab:
    """Namespaces and links made for one test; ``close()`` removes all of them."""

    prefix: str = PREFIX
    tag: str = field(init=False)
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tag = f"{self.prefix}{os.getpid()}-{next(_seq)}"

    def namespace(self, role: str) -> str:
        """Create a namespace for ``role`` (e.g. "bng", "sub1") with loopback up."""
        name = f"{self.tag}-{role}"
        # `ip netns exec` bind-mounts /etc/netns/<name>/* over /etc: DHCP clients' scripts
        # then write this resolv.conf, never the host's.
        (ETC_NETNS / name).mkdir(parents=True, exist_ok=True)
        (ETC_NETNS / name / "resolv.conf").touch()
        netlink.create_netns(name)
        self.namespaces.append(name)
        netlink.set_up("lo", name)
        return name

    def link(self, ns_a: str | None, if_a: str, ns_b: str | None, if_b: str,
             addr_a: str | None = None, addr_b: str | None = None,
             mac_b: str | None = None) -> None:
        """A veth pair ``if_a``@``ns_a`` <-> ``if_b``@``ns_b``, both up, optionally addressed."""
        netlink.add_veth_pair(if_a, ns_a, if_b, ns_b)
        if mac_b:
            netlink.set_mac(if_b, mac_b, ns_b)
        for ifname, ns, addr in ((if_a, ns_a, addr_a), (if_b, ns_b, addr_b)):
            if addr:
                netlink.add_address(ifname, addr, ns)
            netlink.set_up(ifname, ns)

    def bridge(self, ns: str, name: str, ports: list[str]) -> None:
        """A Linux bridge in ``ns`` joining ``ports`` (an access switch)."""
        netlink.add_bridge(name, ns)
        for p in ports:
            netlink.set_master(p, name, ns)

    def run(self, ns: str, *argv: str, check: bool = True, timeout: float = 30,
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``ns`` and wait for it."""
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                              text=True, check=check, timeout=timeout)

    def popen(self, ns: str, *argv: str, **kw: object) -> subprocess.Popen[bytes]:
        """Start a command inside ``ns``; the caller stops it."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)  # type: ignore[call-overload, no-any-return]

    @property
    def bpf_dir(self) -> Path:
        """Where an agent of this lab pins its fast path (removed with the lab)."""
        return mount_bpffs() / self.tag

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            remove_netns(ns)
        self.namespaces.clear()
        shutil.rmtree(self.bpf_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # only if empty: other labs may still use it
            ETC_NETNS.rmdir()

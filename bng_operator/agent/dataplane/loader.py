"""Compile, load, attach and pin BPF programs through BCC, with a clear lifecycle.

    with BPFObject(Path("bpf/access_ingress.c"), cflags={"MAX_LEASES": 100000}) as obj:
        fd = obj.load_xdp("xdp_dhcp")
        obj.attach_xdp("eth1", "xdp_dhcp")
        obj.pin_map("scratch", Path("/sys/fs/bpf/bng/scratch"))
    # leaving the block detaches the program and removes the pins it made

Maps that outlive the process (``pins=``) are pinned or adopted by path, so a restarted agent
needs no more than CAP_BPF to find them again.

``close()`` undoes exactly what this object did, so a test or an agent that exits leaves
nothing attached or pinned unless it asked to keep it (``keep=True``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bcc import BPF, libbcc
from bcc.table import Table

from bng_operator import netlink
from bng_operator.agent.dataplane.cpulog import possible_cpus
from bng_operator.netlink import XDPMode

BPFFS = Path("/sys/fs/bpf")
# The C sources: the checkout's bpf/ in development, BNG_BPF_DIR in the image.
BPF_DIR = Path(os.environ.get("BNG_BPF_DIR", Path(__file__).resolve().parents[3] / "bpf"))


BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1


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


class _XdpMd(ctypes.Structure):
    """struct xdp_md, the context BPF_PROG_RUN takes for an XDP program."""

    _fields_ = [(name, ctypes.c_uint32) for name in (
        "data", "data_end", "data_meta", "ingress_ifindex", "rx_queue_index", "egress_ifindex")]


_test_run = libbcc.lib.bpf_prog_test_run_opts
_test_run.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]

# libbcc through PyDLL: the GIL is kept through the call. bcc's own tables call it through
# CDLL, which gives the GIL up for each bpf(2); on the event loop under load a worker thread
# takes it meanwhile, and a map write averaged 64 us there (cProfile, 600 sessions/s)
# against a few for the system call. A map update never sleeps.
_libbcc_keeping_gil = ctypes.PyDLL(libbcc.lib._name, use_errno=True)
_update_elem = _libbcc_keeping_gil.bpf_update_elem
_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulonglong]
_update_elem.restype = ctypes.c_int


def update_elem(table: Any, key: Any, leaf: Any) -> None:
    """``table[key] = leaf`` for the event loop: the GIL kept (see above). Raises OSError."""
    if _update_elem(table.map_fd, ctypes.byref(key), ctypes.byref(leaf), 0) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"could not update map: {os.strerror(e)}")


@dataclass(frozen=True)
class RunResult:
    action: int
    frame: bytes
    ns_per_run: int


def _prog_run(fd: int, frame: bytes, **opts: Any) -> _TestRunOpts:
    """BPF_PROG_RUN of ``fd`` on ``frame`` with the other fields of bpf_test_run_opts."""
    buf_in = ctypes.create_string_buffer(frame, len(frame))
    o = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(buf_in),
                     data_size_in=len(frame), **opts)
    rc = _test_run(fd, ctypes.byref(o))
    if rc != 0:
        raise OSError(-rc, f"BPF_PROG_RUN failed: {rc}")
    return o


def test_run(fd: int, frame: bytes, repeat: int = 1) -> RunResult:
    """BPF_PROG_RUN of the XDP program ``fd`` on ``frame``, ``repeat`` times, as if received
    on lo. The kernel reuses the buffer between repeats."""
    out = ctypes.create_string_buffer(4096)
    o = _prog_run(fd, frame, data_out=ctypes.addressof(out), data_size_out=len(out),
                  repeat=repeat)
    return RunResult(o.retval, out.raw[: o.data_size_out], o.duration)


def send_live(fd: int, frame: bytes, repeat: int, ifindex: int) -> None:
    """BPF_PROG_RUN in live-frame mode: run the XDP program ``fd`` ``repeat`` times on copies
    of ``frame`` as if received on ``ifindex`` (of the calling thread's network namespace),
    and carry out what it returns: XDP_TX sends the frame out of that interface."""
    ctx = _XdpMd(data=0, data_end=len(frame), ingress_ifindex=ifindex)
    _prog_run(fd, frame, ctx_in=ctypes.addressof(ctx), ctx_size_in=ctypes.sizeof(ctx),
              repeat=repeat, flags=BPF_F_TEST_XDP_LIVE_FRAMES)


class DataplaneError(RuntimeError):
    """The kernel refused something; the message says what and what to do."""


def bpf_mount_of(path: Path) -> Path | None:
    """The bpf filesystem ``path`` is on (it need not exist yet), or None if it is on none."""
    with open("/proc/mounts") as f:
        mounts = {Path(p[1]): p[2] for p in (line.split() for line in f)}
    path = path.absolute()
    for candidate in (path, *path.parents):
        if candidate in mounts:
            return candidate if mounts[candidate] == "bpf" else None
    return None


def bpffs_mounted(path: Path = BPFFS) -> bool:
    return bpf_mount_of(path) == path


def pinned_fd(path: Path, required: bool = False) -> int | None:
    """An fd for the BPF object pinned at ``path``, or None if nothing is pinned there. An
    object there that cannot be opened is None too, unless ``required``: then the error
    says why (permissions, or not a BPF object)."""
    if not path.exists():
        return None
    fd = int(libbcc.lib.bpf_obj_get(str(path).encode()))
    if fd >= 0:
        return fd
    if required:
        raise DataplaneError(f"opening the pinned BPF object {path}: {os.strerror(-fd)}")
    return None


_MAP_INFO_SHAPE = slice(0, 24)  # struct bpf_map_info: type, id, key, value, entries, flags


def _map_shape(fd: int) -> tuple[int, ...]:
    """(type, key size, value size, max entries, flags) of the map behind ``fd``."""
    info = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(len(info))
    if libbcc.lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) != 0:
        raise DataplaneError(f"reading the info of BPF map fd {fd} failed")
    raw = info.raw[_MAP_INFO_SHAPE]
    fields = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 24, 4)]
    return fields[0], *fields[2:]


_LD_IMM64 = 0x18
_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE = 1, 2


def _with_map_fds(insns: bytes, fds: Mapping[int, int]) -> bytes:
    """``insns`` with each map fd in ``fds`` (old -> new) replaced: the fd of a map reference
    is the imm of a BPF_LD_IMM64 whose src register is BPF_PSEUDO_MAP_FD or _VALUE."""
    out = bytearray(insns)
    i = 0
    while i + 16 <= len(out):
        if out[i] == _LD_IMM64:
            if out[i + 1] >> 4 in (_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE):
                old = int.from_bytes(out[i + 4 : i + 8], "little", signed=True)
                if old in fds:
                    out[i + 4 : i + 8] = fds[old].to_bytes(4, "little", signed=True)
            i += 16  # the instruction takes two slots
        else:
            i += 8
    return bytes(out)


def _compile_hint() -> str:
    """What to look at when BCC fails to compile: missing headers, or the compiler's output."""
    build = Path("/lib/modules") / os.uname().release / "build"
    if not build.exists():
        return f"The kernel headers are missing ({build}): install them (make setup)."
    return "The compiler's messages are above this line."


def pinned_map_items(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the map pinned at ``path``, raw: for tools and benchmarks that
    look at a running agent's maps from outside it. Empty if nothing is pinned there."""
    fd = pinned_fd(path)
    if fd is None:
        return []
    try:
        info = ctypes.create_string_buffer(256)  # struct bpf_map_info; only its head is read
        size = ctypes.c_uint32(len(info))
        if libbcc.lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) != 0:
            raise DataplaneError(f"reading the map info of {path} failed")
        key_size, value_size = int.from_bytes(info.raw[8:12], "little"), \
            int.from_bytes(info.raw[12:16], "little")
        key, nxt = ctypes.create_string_buffer(key_size), ctypes.create_string_buffer(key_size)
        value = ctypes.create_string_buffer(value_size)
        out: list[tuple[bytes, bytes]] = []
        first = True
        while libbcc.lib.bpf_get_next_key(fd, None if first else key, nxt) == 0:
            first = False
            ctypes.memmove(key, nxt, key_size)
            if libbcc.lib.bpf_lookup_elem(fd, key, value) == 0:
                out.append((key.raw, value.raw))
        return out
    finally:
        os.close(fd)


def pin_fd(fd: int, path: Path) -> None:
    if bpf_mount_of(path) is None:
        raise DataplaneError(f"{path} is not on a bpf filesystem: mount -t bpf bpf {BPFFS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rc = libbcc.lib.bpf_obj_pin(fd, str(path).encode())
    if rc != 0:  # libbpf returns -errno
        raise DataplaneError(f"pinning {path}: {os.strerror(-rc)}")


# Offsets in struct bpf_prog_info (include/uapi/linux/bpf.h): id after type; run_time_ns
# and run_cnt (Linux 5.1+); verified_insns (Linux 5.16+) after them and recursion_misses.
_INFO_ID, _INFO_RUN_TIME_NS, _INFO_RUN_CNT, _INFO_VERIFIED_INSNS = 4, 192, 200, 216


def _prog_info(fd: int) -> bytes:
    info = ctypes.create_string_buffer(256)
    size = ctypes.c_uint32(len(info))
    if libbcc.lib.bpf_obj_get_info(fd, info, ctypes.byref(size)) != 0:
        raise DataplaneError(f"reading the info of BPF fd {fd} failed")
    return info.raw[: size.value]


def program_id(fd: int) -> int:
    """The kernel's id of the program behind ``fd``."""
    return int.from_bytes(_prog_info(fd)[_INFO_ID : _INFO_ID + 4], "little")


def verified_instructions(fd: int) -> int | None:
    """How many instructions the verifier explored to accept the program behind ``fd`` (its
    budget is 1,000,000); None on a kernel that does not say."""
    raw = _prog_info(fd)
    if len(raw) < _INFO_VERIFIED_INSNS + 4:
        return None
    return int.from_bytes(raw[_INFO_VERIFIED_INSNS : _INFO_VERIFIED_INSNS + 4], "little")


def run_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program behind ``fd``: what it has cost so far, counted
    only while kernel.bpf_stats_enabled is 1."""
    raw = _prog_info(fd)
    return (int.from_bytes(raw[_INFO_RUN_TIME_NS : _INFO_RUN_TIME_NS + 8], "little"),
            int.from_bytes(raw[_INFO_RUN_CNT : _INFO_RUN_CNT + 8], "little"))


def program_exists(prog_id: int) -> bool:
    """Whether the kernel still holds a BPF program with this id."""
    fd = libbcc.lib.bpf_prog_get_fd_by_id(ctypes.c_uint(prog_id))
    if fd >= 0:
        os.close(fd)
        return True
    return False


# --- tcx: tc programs as BPF links (Linux 6.6+) ----------------------------------------------

# enum bpf_attach_type (include/uapi/linux/bpf.h)
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
TCX_ATTACH_TYPES = {"ingress": BPF_TCX_INGRESS, "egress": BPF_TCX_EGRESS}
# What BPF_LINK_CREATE says on a kernel without tcx (an unknown attach type, no
# CONFIG_NET_XGRESS): the caller falls back to a clsact qdisc.
_NO_TCX = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.E2BIG}
_PROG_INFO_NAME = slice(64, 80)  # struct bpf_prog_info: name[BPF_OBJ_NAME_LEN]
_LINK_INFO_PROG_ID = slice(8, 12)  # struct bpf_link_info: type, id, prog_id

_link_create = libbcc.lib.bpf_link_create
_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_link_update = libbcc.lib.bpf_link_update
_link_update.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_link_detach = libbcc.lib.bpf_link_detach
_link_detach.argtypes = [ctypes.c_int]
_prog_query = libbcc.lib.bpf_prog_query
_prog_query.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint32,
                        ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                        ctypes.POINTER(ctypes.c_uint32)]


def attach_tcx(prog_fd: int, ifindex: int, attach_type: int) -> int | None:
    """A tcx link of the program ``prog_fd`` on ``ifindex`` (of the calling thread's
    namespace), appended after any there; its fd (closing the last fd of an unpinned link
    detaches it). None: this kernel has no tcx."""
    fd = int(_link_create(prog_fd, ifindex, attach_type, None))
    if fd >= 0:
        return fd
    if -fd in _NO_TCX:
        return None
    raise DataplaneError(f"attaching a tcx link on ifindex {ifindex}: {os.strerror(-fd)}")


def update_link(link_fd: int, prog_fd: int) -> None:
    """Swap the link's program for ``prog_fd`` in one step (BPF_LINK_UPDATE): no moment
    without one."""
    rc = int(_link_update(link_fd, prog_fd, None))
    if rc != 0:
        raise DataplaneError(f"updating BPF link fd {link_fd}: {os.strerror(-rc)}")


def detach_link(link_fd: int) -> None:
    """Detach the link now, whoever else holds or pins it (BPF_LINK_DETACH)."""
    rc = int(_link_detach(link_fd))
    if rc != 0 and -rc != errno.ENOLINK:  # ENOLINK: its interface is gone, so is it
        raise DataplaneError(f"detaching BPF link fd {link_fd}: {os.strerror(-rc)}")


def link_program_id(link_fd: int) -> int:
    """The id of the program the link ``link_fd`` runs (0: detached)."""
    raw = _prog_info(link_fd)
    return int.from_bytes(raw[_LINK_INFO_PROG_ID], "little")


def tcx_program_ids(ifindex: int, attach_type: int) -> list[int]:
    """The programs on ``ifindex``'s tcx hook (of the calling thread's namespace), in the
    order they run; [] without tcx."""
    ids = (ctypes.c_uint32 * 64)()
    count, flags = ctypes.c_uint32(len(ids)), ctypes.c_uint32(0)
    rc = int(_prog_query(ifindex, attach_type, 0, ctypes.byref(flags), ids,
                         ctypes.byref(count)))
    if rc != 0:
        return []
    return list(ids[: count.value])


def program_name(prog_id: int) -> str | None:
    """The name of the program with this id (as loaded: 15 characters at most), or None."""
    fd = int(libbcc.lib.bpf_prog_get_fd_by_id(ctypes.c_uint(prog_id)))
    if fd < 0:
        return None
    try:
        return _prog_info(fd)[_PROG_INFO_NAME].split(b"\0", 1)[0].decode()
    finally:
        os.close(fd)


@dataclass
class _Attachment:
    ifname: str
    ns: str | None
    mode: XDPMode


def pinned_program(obj: BPFObject, fn: str, prog_type: int, pin_dir: Path | None,
                   own: list[int]) -> int:
    """The program ``fn`` pinned in ``pin_dir`` (its fd appended to ``own``, the caller's
    to close), else loaded from ``obj`` now and pinned there."""
    if pin_dir is not None:
        fd = pinned_fd(pin_dir / fn, required=True)
        if fd is not None:
            own.append(fd)
            return fd
    fd = obj.load(fn, prog_type)
    if pin_dir is not None:
        pin_fd(fd, pin_dir / fn)
    return fd


# BCC's compiler (clang/LLVM in-process) hung when two threads compiled at once (shaping
# and NAT load side by side at the agent's start): one compile at a time.
_COMPILING = threading.Lock()


class BPFObject:
    """One C file compiled by BCC: its programs, its maps, and what was attached and pinned."""

    def __init__(self, src: Path, cflags: dict[str, int | str] | None = None,
                 include_dirs: tuple[Path, ...] = (), pins: Mapping[str, Path] | None = None
                 ) -> None:
        """``pins`` maps a map's name to its bpffs path: a map already pinned there is used in
        place of the one BCC made (adopted), else BCC's is pinned there."""
        if not src.exists():
            raise DataplaneError(f"BPF source {src} not found")
        # Every program is built for this machine's CPUs: the per-CPU logs (lib/flow.h) are
        # shared between programs, and a map's size must be the same in each.
        flags = [f"-D{k}={v}" for k, v in {"MAX_CPUS": possible_cpus(), **(cflags or {})}.items()]
        flags += [f"-I{d}" for d in (BPF_DIR, *include_dirs)]
        try:
            with _COMPILING:
                self.bpf = BPF(src_file=str(src).encode(), cflags=flags)
        except Exception as e:  # BCC raises bare Exception on compile errors
            raise DataplaneError(f"compiling {src.name} failed: {e}. {_compile_hint()}") from e
        self._fns: dict[str, int] = {}
        self._attached: list[_Attachment] = []
        self._pins: list[Path] = []
        self._closed = False
        self._tables: dict[str, Any] = {}
        # BCC's fd of a map -> the fd of the pinned map used instead (ours to close)
        self._adopted: dict[int, int] = {}
        self.adopted: set[str] = set()
        self._loaded_here: list[int] = []
        try:
            for name, path in (pins or {}).items():
                self._pin_or_adopt(name, path)
        except BaseException:
            self.close()
            raise

    def _pin_or_adopt(self, name: str, path: Path) -> None:
        # BCC's own BPF_TABLE_PINNED re-opens a pinned map by its id (BPF_MAP_GET_FD_BY_ID),
        # which the kernel allows only with CAP_SYS_ADMIN. Opening it by its path needs only
        # CAP_BPF and the file's permissions, so pins are ours, not BCC's.
        bcc_fd = int(libbcc.lib.bpf_table_fd(self.bpf.module, name.encode()))
        if bcc_fd < 0:
            raise DataplaneError(f"{name}: no such map in the BPF source")
        fd = pinned_fd(path, required=True)
        if fd is None:
            pin_fd(bcc_fd, path)
            return
        pinned, wanted = _map_shape(fd), _map_shape(bcc_fd)
        if pinned != wanted:
            os.close(fd)
            raise DataplaneError(
                f"the map pinned at {path} has another layout than {name} in this program "
                f"(type, key, value, entries, flags: {pinned} vs {wanted}); remove the stale "
                "fast path with `bng fastpath-remove`")
        self._adopted[bcc_fd] = fd
        self.adopted.add(name)

    def load_xdp(self, fn: str) -> int:
        """Load (verify) the XDP function ``fn``; returns its fd."""
        return self.load(fn, BPF.XDP)

    def load_tc(self, fn: str) -> int:
        """Load (verify) the tc classifier ``fn`` (direct action); returns its fd."""
        return self.load(fn, BPF.SCHED_CLS)

    def load(self, fn: str, prog_type: int) -> int:
        if fn not in self._fns:
            try:
                self._fns[fn] = self._load(fn, prog_type)
            except Exception as e:
                raise DataplaneError(f"the verifier rejected {fn}: {e}") from e
        return int(self._fns[fn])

    def _load(self, fn: str, prog_type: int) -> int:
        """BCC's load, with each adopted map's fd in place of the one BCC made."""
        name = fn.encode()
        if not self._adopted:
            return int(self.bpf.load_func(name, prog_type).fd)
        # BCC would load the instructions with its own maps' fds in them
        module = self.bpf.module
        start = libbcc.lib.bpf_function_start(module, name)
        if not start:
            raise DataplaneError(f"no function {fn} in the BPF source")
        size = int(libbcc.lib.bpf_function_size(module, name))
        insns = _with_map_fds(ctypes.string_at(start, size), self._adopted)
        buf = ctypes.create_string_buffer(insns, size)
        fd = int(libbcc.lib.bcc_func_load(
            module, prog_type, name, buf, size, libbcc.lib.bpf_module_license(module),
            libbcc.lib.bpf_module_kern_version(module), 0, None, 0, None, -1))
        if fd < 0:
            raise DataplaneError(f"loading {fn}: {os.strerror(ctypes.get_errno() or -fd)}")
        self._loaded_here.append(fd)
        return fd

    def attach_xdp(self, ifname: str, fn: str, ns: str | None = None,
                   mode: XDPMode = "native") -> None:
        netlink.attach_xdp(ifname, self.load_xdp(fn), ns, mode)
        self._attached.append(_Attachment(ifname, ns, mode))

    def map(self, name: str) -> Any:
        """The BCC table ``name`` (the adopted map, if it was); use its ``Key`` / ``Leaf``
        types, not ctypes mirrors."""
        if name not in self._tables:
            table = self.bpf[name.encode()]
            fd = self._adopted.get(int(table.map_fd))
            if fd is not None:
                # a per-CPU table's Leaf is an array of its sLeaf, one per CPU
                leaf = getattr(table, "sLeaf", table.Leaf)
                table = Table(self.bpf, table.map_id, fd, table.Key, leaf, name.encode())
            self._tables[name] = table
        return self._tables[name]

    def pin_map(self, name: str, path: Path) -> None:
        pin_fd(self.map(name).map_fd, path)
        self._pins.append(path)

    def close(self, keep: bool = False) -> None:
        """Detach and unpin what this object did (unless ``keep``), then free the programs."""
        if self._closed:
            return
        self._closed = True
        if not keep:
            for a in reversed(self._attached):
                # A link or namespace already gone took the program with it.
                with contextlib.suppress(netlink.InterfaceMissing, OSError):
                    netlink.detach_xdp(a.ifname, a.ns, a.mode)
            for p in reversed(self._pins):
                p.unlink(missing_ok=True)
                if p.parent != BPFFS and p.parent.is_dir() and not any(p.parent.iterdir()):
                    p.parent.rmdir()
        for fd in self._loaded_here:
            os.close(fd)  # BCC closes the programs it loaded, not these
        for fd in self._adopted.values():
            os.close(fd)
        self.bpf.cleanup()

    def __enter__(self) -> BPFObject:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def attach_xdp_pass(ifname: str, ns: str | None = None) -> None:
    """Attach bpf/xdp_pass.c: the veth peer of an XDP_TX interface needs a program to take
    those frames (see the file)."""
    obj = BPFObject(BPF_DIR / "xdp_pass.c")
    try:
        netlink.attach_xdp(ifname, obj.load_xdp("xdp_pass"), ns, "native")
    finally:
        obj.close(keep=True)  # attached programs outlive the fd; the link owns it now


"""Flow events from the programs (bpf/lib/flow.h): the layout both sides read, one event
per decision while someone watches, none while nobody does, and one flow log for every
program, pinned above the generations, that loses only what was overwritten."""

from __future__ import annotations

import ctypes
import os
import queue
import re
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bng_operator.agent.dataplane import flows as kflows
from bng_operator.agent.dataplane import qos
from bng_operator.agent.dataplane.cpulog import CpuLog
from bng_operator.agent.dataplane.fastpath import XDP_TX, FastPath
from bng_operator.agent.dataplane.loader import BPF_DIR
from bng_operator.agent.dhcp.transport import parse_frame
from bng_operator.agent.observe import flow
from bng_operator.agent.observe.flow import Point, Source, Verdict, from_kernel
from tests.bpf.test_fastpath import SERVER_MAC, TAGS, _slow_and_fast
from tests.bpf.test_qos import DOT1Q, IF_MAC, LO, OTHER, SERVER, TC_ACT_SHOT, _udp, run_tc

HEADER = Path(BPF_DIR) / "lib" / "flow.h"
# struct flow_event's fields, in the order of flow.EVENT's format
FIELDS = ("jiffies", "ifindex", "source", "verdict", "point", "reason", "src_mac", "dst_mac",
          "vlan_outer", "vlan_inner", "saddr", "daddr", "sport", "dport", "proto", "dhcp_type",
          "pad", "dhcp_yiaddr", "xid", "xlated_addr", "xlated_port", "pad2")


def test_the_layout_and_enums_agree_with_the_c_header(bpffs: Path) -> None:
    from bcc import BPF

    b = BPF(text=(f'#include <uapi/linux/bpf.h>\n#include <uapi/linux/in.h>\n'
                 f'#include <uapi/linux/ip.h>\n#include "{HEADER}"\n').encode(),
            cflags=[f"-I{BPF_DIR}", "-DMAX_CPUS=1"])
    try:
        leaf = b[b"flow_log"].Leaf
        assert ctypes.sizeof(leaf) == flow.EVENT.size == 64  # a cache line a slot
        head = b[b"flow_heads"].Leaf
        assert (ctypes.sizeof(head), head.head.offset, head.tail.offset) == (64, 0, 8)
        fmt = flow.EVENT.format.lstrip("<")
        items = re.findall(r"\d*[A-Za-z]", fmt)
        assert len(items) == len(FIELDS)
        for i, name in enumerate(FIELDS):
            if name.startswith("pad"):
                continue
            want = struct.calcsize("<" + "".join(items[:i]))
            assert getattr(leaf, name).offset == want, name
    finally:
        b.cleanup()
    h = HEADER.read_text()
    for enum, members in (("flow_source", {"FLOW_SRC_" + s.name: s.value for s in Source
                                           if s.value < 16}),
                          ("flow_verdict", {"FLOW_" + v.name: v.value for v in Verdict}),
                          ("flow_point", {"FLOW_" + p.name: p.value for p in Point})):
        body = re.search(rf"enum {enum} \{{(.*?)\}};", h, re.S)
        assert body is not None, enum
        found = {n: int(v) for n, v in re.findall(r"(FLOW_\w+) = (\d+)", body.group(1))}
        assert found == members, enum
    assert f"#define FLOW_LOG_LEN {kflows.FLOW_LOG_LEN}" in h
    assert f"#define FLOW_READ_MS {kflows.FLOW_READ_MS}" in h


@pytest.fixture
def root(bpffs: Path) -> Iterator[Path]:
    r = bpffs / "bngtest-flows"
    shutil.rmtree(r, ignore_errors=True)  # a crashed run's
    r.mkdir()
    yield r
    shutil.rmtree(r, ignore_errors=True)


def _events(got: queue.Queue[bytes], n: int, timeout: float = 2.0) -> list[flow.Flow]:
    out = []
    for _ in range(n):
        out.append(from_kernel(got.get(timeout=timeout), int))
    return out


def test_the_fast_path_reports_its_reply_only_while_watched(root: Path) -> None:
    got: queue.Queue[bytes] = queue.Queue()
    reader = kflows.KernelFlows(root, got.put)
    fp = FastPath(max_subscribers=1024, pin_root=root)
    try:
        fp.put_interface(1, SERVER_MAC)
        assert all((root / m).exists() for m in kflows.FLOW_MAPS)
        _slow_and_fast(fp, "discover", b"", None, relayed=False)  # nobody watching
        reader.watch(True)
        _, _, frame, _ = _slow_and_fast(fp, "discover", DOT1Q, None, relayed=False)
        (ev,) = _events(got, 1)
        assert (ev.source, ev.verdict, ev.point, ev.reason, ev.dhcp) == \
            (Source.DHCP, Verdict.FORWARDED, Point.TO_NETWORK, "offer", "OFFER")
        assert ev.vlans == (100,) and ev.dport == 68 and ev.sport == 67
        assert ev.yiaddr.startswith("100.64.") and ev.xid == 0xFEDCBA98
        assert ev.src_mac == SERVER_MAC.hex(":")
        # a request that is not answered: to the slow path, with the reason
        unknown = frame.replace(bytes.fromhex("020000000001"), bytes.fromhex("020000000099"))
        assert fp.run(unknown).action != XDP_TX
        (ev,) = _events(got, 1)
        assert (ev.point, ev.reason, ev.dhcp) == (Point.TO_STACK, "pass_miss", "DISCOVER")
        # a reply's reason follows from its verdict, never from the pass before it
        assert fp.run(frame).action == XDP_TX
        (ev,) = _events(got, 1)
        assert (ev.point, ev.reason, ev.dhcp) == (Point.TO_NETWORK, "offer", "OFFER")
        # traffic that is not DHCP has no event
        fp.run(_udp(OTHER, SERVER))
        reader.watch(False)
        _slow_and_fast(fp, "discover", b"", None, relayed=False)
        with pytest.raises(queue.Empty):
            got.get(timeout=0.5)
    finally:
        fp.close()
        reader.close()


@pytest.mark.parametrize("tags", list(TAGS.values()), ids=list(TAGS))
@pytest.mark.parametrize("kind", ["discover", "selecting"])
def test_a_replys_event_says_what_the_reply_says(root: Path, kind: str, tags: bytes) -> None:
    """A reply's event, with any VLAN tags, gives what a full parse of the reply gives, and
    its reason is the reply's (a reply keeps no reason of its own: it follows from the
    verdict)."""
    got: queue.Queue[bytes] = queue.Queue()
    reader = kflows.KernelFlows(root, got.put)
    fp = FastPath(max_subscribers=1024, pin_root=root)
    try:
        fp.put_interface(1, SERVER_MAC)
        reader.watch(True)
        _, _, _, reply = _slow_and_fast(fp, kind, tags, None, relayed=False)
        (ev,) = _events(got, 1)
        f = parse_frame(reply)
        udp = 14 + len(f.tags) + 20
        sport, dport = struct.unpack_from("!HH", reply, udp)
        (xid,) = struct.unpack_from("!I", reply, udp + 8 + 4)
        yiaddr = IPv4Address(reply[udp + 8 + 16:udp + 8 + 20])
        assert (ev.src_mac, ev.dst_mac, ev.vlans) == \
            (f.src_mac.hex(":"), f.dst_mac.hex(":"), f.vlans)
        assert (ev.saddr, ev.daddr, ev.proto, ev.sport, ev.dport) == \
            (str(f.src_ip), str(f.dst_ip), 17, sport, dport)
        assert (ev.xid, ev.yiaddr) == (xid, str(yiaddr))
        assert (ev.point, ev.reason) == \
            (Point.TO_NETWORK, "offer" if kind == "discover" else "ack")
        assert len(f.vlans) == len(tags) // 4
    finally:
        fp.close()
        reader.close()


def test_the_access_data_path_reports_its_drops_into_the_same_log(root: Path) -> None:
    got: queue.Queue[bytes] = queue.Queue()
    reader = kflows.KernelFlows(root, got.put)
    path = qos.QosPath(max_subscribers=64, pin_root=root)
    try:
        leaf = path.interfaces.Leaf()
        leaf.ifb = LO
        for i, b in enumerate(IF_MAC):
            leaf.mac[i] = b
        path.interfaces[path.interfaces.Key(LO)] = leaf
        reader.watch(True)
        assert run_tc(path._fds["qos_up"], _udp(OTHER, SERVER, tags=DOT1Q)).action == \
            TC_ACT_SHOT
        (ev,) = _events(got, 1)
        assert (ev.source, ev.verdict, ev.reason) == \
            (Source.ACCESS, Verdict.DROPPED, "spoof_source")
        assert (IPv4Address(ev.saddr), IPv4Address(ev.daddr), ev.dport) == \
            (OTHER, SERVER, 5001)
        assert ev.vlans == (100,) and ev.summary() == "dropped: spoof_source"
    finally:
        path.close()
        reader.close()


def _on_cpu(cpu: int, run: Callable[[], object]) -> None:
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        run()
    finally:
        os.sched_setaffinity(0, mask)


@pytest.fixture
def passing(bpffs: Path) -> Iterator[tuple[FastPath, CpuLog[bytes], bytes]]:
    """A watched fast path (unpinned), its flow log, and a DISCOVER it passes to the slow
    path (pass_miss) with the frame unchanged, so every repeat of a BPF_PROG_RUN writes an
    event."""
    fp = FastPath(max_subscribers=1024)
    log = kflows.flow_log(fp.obj)
    try:
        fp.put_interface(1, SERVER_MAC)
        _, _, frame, _ = _slow_and_fast(fp, "discover", b"", None, relayed=False)
        ctl = fp.obj.map("flow_ctl")
        leaf = ctl[ctl.Key(0)]
        leaf.observers = 1
        ctl[ctl.Key(0)] = leaf
        yield fp, log, frame.replace(bytes.fromhex("020000000001"),
                                     bytes.fromhex("020000000099"))
    finally:
        log.close()
        fp.close()


def test_the_flow_log_loses_only_what_was_overwritten(
        passing: tuple[FastPath, CpuLog[bytes], bytes]) -> None:
    """Written past its length on one CPU, a CPU's log keeps the newest events: the reader
    gets them in order and counts the rest lost, the oldest kept one too (it sits in the
    slot the program writes next, so it may be half rewritten as it is read)."""
    fp, log, frame = passing
    cpu = min(os.sched_getaffinity(0))
    extra = 10
    _on_cpu(cpu, lambda: fp.run(frame, repeat=kflows.FLOW_LOG_LEN + extra))
    events = [from_kernel(raw, int) for raw in log.drain()]
    assert len(events) == kflows.FLOW_LOG_LEN - 1 and log.lost == extra + 1
    assert {(e.point, e.reason, e.dhcp, e.xid) for e in events} == \
        {(Point.TO_STACK, "pass_miss", "DISCOVER", 0xFEDCBA98)}
    assert log.drain() == [] and log.lost == extra + 1
    # read in time: nothing lost
    _on_cpu(cpu, lambda: fp.run(frame, repeat=100))
    assert len(log.drain()) == 100 and log.lost == extra + 1


def test_the_logs_of_several_cpus_arrive_in_time_order(
        passing: tuple[FastPath, CpuLog[bytes], bytes]) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    fp, log, frame = passing
    # the higher CPU first: read CPU by CPU, its events would come last
    _on_cpu(cpus[-1], lambda: fp.run(frame, repeat=3))
    time.sleep(0.05)  # a tick or more later (HZ >= 100)
    _on_cpu(cpus[0], lambda: fp.run(frame, repeat=2))
    drained = log.drain()
    assert len(drained) == 5 and log.lost == 0
    ordered = kflows.in_time_order(drained)
    assert ordered != drained
    jiffies = [from_kernel(raw, int).time_ns for raw in ordered]  # as read: jiffies
    assert jiffies == sorted(jiffies) and jiffies[2] < jiffies[3]

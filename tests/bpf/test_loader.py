"""The dataplane loader: compile with BCC, attach to a veth in a namespace, count, clean up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bcc import BPF

from bng_lab.netlab import NetLab, remove_leftovers
from bng_operator import netlink
from bng_operator.agent.dataplane.loader import (
    BPFObject,
    DataplaneError,
    program_exists,
    update_elem,
)
from bng_operator.agent.dataplane.loader import test_run as run_xdp

PROG = Path(__file__).with_name("xdp_count_ping.c")


def _pair(netlab: NetLab) -> tuple[str, str]:
    node, sub = netlab.namespace("bng"), netlab.namespace("sub")
    netlab.link(node, "access0", sub, "eth0", "192.0.2.1/24", "192.0.2.2/24")
    return node, sub


def test_xdp_counts_a_ping_and_detaches_cleanly(netlab: NetLab, bpffs: Path) -> None:
    node, sub = _pair(netlab)
    pin = bpffs / f"bngt{os.getpid()}" / "echo_requests"
    obj = BPFObject(PROG)
    try:
        obj.attach_xdp("access0", "xdp_count_ping", ns=node, mode="native")
        prog_id = netlink.xdp_program_id("access0", node)
        assert prog_id is not None and program_exists(prog_id)
        obj.pin_map("echo_requests", pin)
        assert pin.exists()

        netlab.run(sub, "ping", "-c", "5", "-i", "0.05", "-W", "1", "192.0.2.1")

        table = obj.map("echo_requests")
        assert sum(table[table.Key(0)]) == 5  # echo requests only: ARP and replies not counted
    finally:
        obj.close()
    assert netlink.xdp_program_id("access0", node) is None
    assert not pin.exists() and not pin.parent.exists()
    assert not program_exists(prog_id)


def test_close_keeps_attachment_and_pins_when_asked(netlab: NetLab, bpffs: Path) -> None:
    """The fast path must outlive the agent: keep=True leaves program and maps in place."""
    node, _ = _pair(netlab)
    pin = bpffs / f"bngt{os.getpid()}" / "kept"
    obj = BPFObject(PROG)
    obj.attach_xdp("access0", "xdp_count_ping", ns=node)
    obj.pin_map("echo_requests", pin)
    prog_id = netlink.xdp_program_id("access0", node)
    obj.close(keep=True)
    try:
        assert netlink.xdp_program_id("access0", node) == prog_id
        assert program_exists(prog_id) and pin.exists()
    finally:
        netlink.detach_xdp("access0", node)
        pin.unlink()
        pin.parent.rmdir()
    assert not program_exists(prog_id)


def test_attaching_over_another_program_is_refused(netlab: NetLab, bpffs: Path) -> None:
    node, _ = _pair(netlab)
    with BPFObject(PROG) as first, BPFObject(PROG) as second:
        first.attach_xdp("access0", "xdp_count_ping", ns=node)
        with pytest.raises(RuntimeError, match="another XDP program is attached"):
            second.attach_xdp("access0", "xdp_count_ping", ns=node)


def test_missing_interface_is_a_clear_error(netlab: NetLab, bpffs: Path) -> None:
    node = netlab.namespace("bng")
    with BPFObject(PROG) as obj, pytest.raises(netlink.InterfaceMissing, match="'nope0' not found"):
        obj.attach_xdp("nope0", "xdp_count_ping", ns=node)


def test_compile_error_is_a_clear_error(tmp_path: Path, bpffs: Path) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("int xdp_bad(struct xdp_md *ctx) { return undefined_thing; }\n")
    with pytest.raises(DataplaneError, match=r"compiling bad\.c failed"):
        BPFObject(bad)


def test_netlab_removes_leftovers_of_a_dead_run(bpffs: Path) -> None:
    dead_pid = 2**22 + 1  # above pid_max's default ceiling, so never a live process
    name = f"bngt{dead_pid}-0-bng"
    netlink.create_netns(name)
    assert name in remove_leftovers()
    assert name not in netlink.list_netns()


def test_netlab_close_removes_its_namespaces(bpffs: Path) -> None:
    lab = NetLab()
    a, b = lab.namespace("a"), lab.namespace("b")
    lab.link(a, "x0", b, "y0")
    assert {a, b} <= set(netlink.list_netns())
    lab.close()
    assert not {a, b} & set(netlink.list_netns())


def test_pins_are_adopted_by_path_and_the_program_uses_the_adopted_map(
        tmp_path: Path, bpffs: Path) -> None:
    """``pins``: the first object pins its map, a second adopts it (opened by path, which
    needs no CAP_SYS_ADMIN, unlike BCC's BPF_TABLE_PINNED) and its program counts into it."""
    pin = bpffs / f"bngt{os.getpid()}" / "echo_requests"
    ping = bytes(12) + b"\x08\x00" + bytes([0x45]) + bytes(8) + b"\x01" + bytes(10) + \
        b"\x08" + bytes(7)  # Ethernet, IPv4 (ihl 5, ICMP), an echo request
    first = BPFObject(PROG, pins={"echo_requests": pin})
    try:
        assert pin.exists() and not first.adopted
        second = BPFObject(PROG, pins={"echo_requests": pin})
        try:
            assert second.adopted == {"echo_requests"}
            run_xdp(second.load_xdp("xdp_count_ping"), ping, repeat=3)
            for obj in (first, second):  # one map: what the second counted, the first sees
                table = obj.map("echo_requests")
                assert sum(table[table.Key(0)]) == 3
        finally:
            second.close()
    finally:
        first.close()
        pin.unlink()
        pin.parent.rmdir()


def test_a_pinned_map_of_another_layout_is_refused(tmp_path: Path, bpffs: Path) -> None:
    pin = bpffs / f"bngt{os.getpid()}" / "echo_requests"
    other = tmp_path / "other.c"
    other.write_text("BPF_PERCPU_ARRAY(echo_requests, u32, 4);\n"
                     "int xdp_count_ping(struct xdp_md *ctx) { return XDP_PASS; }\n")
    first = BPFObject(other, pins={"echo_requests": pin})
    try:
        with pytest.raises(DataplaneError, match="another layout"):
            BPFObject(PROG, pins={"echo_requests": pin})
    finally:
        first.close()
        pin.unlink()
        pin.parent.rmdir()


def test_map_writes_that_keep_the_gil_land_and_say_why_when_they_cannot() -> None:
    b = BPF(text=b"BPF_HASH(entries, u32, u64, 4);")
    try:
        t = b[b"entries"]
        for k in range(4):
            update_elem(t, t.Key(k), t.Leaf(1000 + k))
        assert {int(k.value): int(v.value) for k, v in t.items()} == {
            0: 1000, 1: 1001, 2: 1002, 3: 1003}
        update_elem(t, t.Key(2), t.Leaf(7))  # an existing key is overwritten
        assert t[t.Key(2)].value == 7
        with pytest.raises(OSError, match="could not update map: Argument list too long"):
            update_elem(t, t.Key(99), t.Leaf(1))  # full: E2BIG
    finally:
        b.cleanup()

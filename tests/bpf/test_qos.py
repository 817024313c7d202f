"""The shaper's classifiers (bpf/access_qos.c) on crafted frames with BPF_PROG_RUN: a known
address is counted and (upload) redirected to its interface's IFB; anything else passes
unshaped, counted by reason. And the C header and the Python mirror agree."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bng_operator.agent.dataplane import qos
from bng_operator.agent.dataplane.loader import BPF_DIR
from bng_operator.agent.dataplane.loader import test_run as run_prog
from bng_operator.agent.dhcp.transport import build_frame
from tests.bpf.cheader import enum_names

HEADER = Path(BPF_DIR) / "lib" / "qos.h"
TC_ACT_OK, TC_ACT_REDIRECT = 0, 7
SUB, OTHER, SERVER = IPv4Address("100.64.0.20"), IPv4Address("100.64.0.21"), \
    IPv4Address("203.0.113.5")
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def test_constants_agree_with_the_c_header() -> None:
    h = HEADER.read_text()
    assert enum_names(h, "qos_stat", "QOS_") == [*qos.STATS, "stats_max"]
    assert f"#define QOS_INTERFACES {qos.QOS_INTERFACES}" in h


@pytest.fixture(scope="module")
def path() -> Iterator[qos.QosPath]:
    p = qos.QosPath(max_subscribers=64)
    yield p
    p.close()


def _udp(src: IPv4Address, dst: IPv4Address, size: int = 200) -> bytes:
    return build_frame(MAC_B, MAC_A, b"", src, dst, 5001, bytes(size), src_port=5001)


def test_download_to_a_shaped_session_is_classified_and_counted(path: qos.QosPath) -> None:
    path.put(int(SUB), 7)
    frame = _udp(SERVER, SUB)
    before = path.stats()
    r = run_prog(path._fds["qos_down"], frame, repeat=3)
    assert r.action == TC_ACT_OK
    c = path.counters(int(SUB))
    assert (c.packets_down, c.bytes_down, c.packets_up) == (3, 3 * len(frame), 0)
    assert c.last_seen_ns > 0
    after = path.stats()
    assert after["down_shaped"] - before["down_shaped"] == 3
    assert path.installed()[int(SUB)] == 7


@pytest.mark.parametrize(("frame", "stat"), [
    (_udp(SERVER, OTHER), "down_unknown"),  # no session
    (MAC_B + MAC_A + b"\x08\x06" + bytes(28), "down_not_ipv4"),  # ARP
])
def test_download_to_anything_else_passes_unshaped(path: qos.QosPath, frame: bytes,
                                                   stat: str) -> None:
    before = path.stats()
    assert run_prog(path._fds["qos_down"], frame).action == TC_ACT_OK
    assert path.stats()[stat] - before[stat] == 1


def test_upload_goes_to_the_ifb_of_its_interface(path: qos.QosPath) -> None:
    path.put(int(SUB), 7)
    up = path._fds["qos_up"]
    frame = _udp(SUB, SERVER)
    before = path.stats()
    # BPF_PROG_RUN runs as if on lo (ifindex 1): with no IFB for it, unshaped and counted
    assert run_prog(up, frame).action == TC_ACT_OK
    assert path.stats()["up_no_ifb"] - before["up_no_ifb"] == 1
    path.ifbs[path.ifbs.Key(1)] = path.ifbs.Leaf(1)
    try:
        assert run_prog(up, frame).action == TC_ACT_REDIRECT
    finally:
        del path.ifbs[path.ifbs.Key(1)]
    c = path.counters(int(SUB))
    assert c.packets_up >= 1 and c.bytes_up >= len(frame)
    # DHCP from 0.0.0.0 and other unknown sources: unshaped
    assert run_prog(up, _udp(IPv4Address(0), IPv4Address("255.255.255.255"))).action == \
        TC_ACT_OK


def test_a_removed_session_is_unshaped_and_returns_its_counters(path: qos.QosPath) -> None:
    path.put(int(OTHER), 9)
    run_prog(path._fds["qos_down"], _udp(SERVER, OTHER), repeat=2)
    last = path.delete(int(OTHER))
    assert last.packets_down == 2
    assert int(OTHER) not in path.installed()
    assert path.counters(int(OTHER)).packets_down == 0


def test_dhcp_from_a_shaped_session_is_not_queued(path: qos.QosPath) -> None:
    """After the IFB a request would pass the agent's packet socket twice."""
    path.put(int(SUB), 7)
    path.ifbs[path.ifbs.Key(1)] = path.ifbs.Leaf(1)
    try:
        renewal = build_frame(MAC_B, MAC_A, b"", SUB, SERVER, 67, bytes(300), src_port=68)
        before = path.stats()
        assert run_prog(path._fds["qos_up"], renewal).action == TC_ACT_OK
        assert path.stats()["up_dhcp"] - before["up_dhcp"] == 1
    finally:
        del path.ifbs[path.ifbs.Key(1)]

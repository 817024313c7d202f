"""The shaper's HTB classes through netlink.Tc, on a real interface: made at their rate
and burst as `tc` shows them, re-rated in place, deleted, and the kernel's errors raised."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from pyroute2 import NetlinkError

from bng_lab.netlab import NetLab
from bng_operator import netlink


@pytest.fixture
def shaped(netlab: NetLab) -> Iterator[tuple[str, netlink.Tc]]:
    """A namespace whose a0 has an HTB root (b0, its peer, has none), and a Tc there."""
    ns = netlab.namespace("tc")
    netlab.link(ns, "a0", ns, "b0")
    netlink.ensure_htb("a0", ns)
    tc = netlink.Tc(ns)
    yield ns, tc
    tc.close()


def classes(netlab: NetLab, ns: str, dev: str) -> dict[int, str]:
    """class id (a minor alone under the root 1:) -> the class as `tc class show` prints
    it."""
    out = netlab.run(ns, "tc", "class", "show", "dev", dev).stdout
    found = {int(m[1], 16) << 16 | int(m[2], 16): m[0]
             for m in re.finditer(r"class htb ([0-9a-f]+):([0-9a-f]+) .*", out)}
    return {cid & 0xFFFF if cid >> 16 == 1 else cid: line for cid, line in found.items()}


def test_a_class_is_made_at_its_rate_and_burst_and_re_rated_in_place(
        netlab: NetLab, shaped: tuple[str, netlink.Tc]) -> None:
    ns, tc = shaped
    tc.htb_class("a0", 0x2A, 20_000_000, 25_000)
    tc.htb_class("a0", 0x2B, 5_000_000, 6_250)
    got = classes(netlab, ns, "a0")
    assert set(got) == {0x2A, 0x2B}
    assert "rate 20Mbit ceil 20Mbit burst 25000b cburst 25000b" in got[0x2A]
    assert "rate 5Mbit ceil 5Mbit burst 6250b cburst 6250b" in got[0x2B]
    tc.htb_class("a0", 0x2A, 8_000_000, 10_000)
    assert "rate 8Mbit ceil 8Mbit burst 10000b cburst 10000b" in classes(netlab, ns, "a0")[0x2A]


def test_a_deleted_class_is_gone_and_deleting_it_again_is_fine(
        netlab: NetLab, shaped: tuple[str, netlink.Tc]) -> None:
    ns, tc = shaped
    tc.htb_class("a0", 7, 10_000_000, 12_500)
    tc.htb_class("a0", 8, 10_000_000, 12_500)
    tc.del_htb_class("a0", 7)
    assert set(classes(netlab, ns, "a0")) == {8}
    tc.del_htb_class("a0", 7)
    assert set(classes(netlab, ns, "a0")) == {8}


def test_the_kernels_refusal_is_raised(shaped: tuple[str, netlink.Tc]) -> None:
    _, tc = shaped
    with pytest.raises(NetlinkError):
        tc.htb_class("b0", 1, 10_000_000, 12_500)  # no HTB root there
    with pytest.raises(netlink.InterfaceMissing):
        tc.htb_class("c0", 1, 10_000_000, 12_500)
    tc.htb_class("a0", 1, 10_000_000, 12_500)  # the socket goes on after an error


def test_an_interface_made_again_is_looked_up_again(
        netlab: NetLab, shaped: tuple[str, netlink.Tc]) -> None:
    ns, tc = shaped
    tc.htb_class("a0", 1, 10_000_000, 12_500)
    netlink.remove_link("a0", ns)  # its peer b0 goes with it
    netlab.link(ns, "a0", ns, "b0")
    netlink.ensure_htb("a0", ns)
    tc.htb_class("a0", 2, 10_000_000, 12_500)
    assert set(classes(netlab, ns, "a0")) == {2}


def test_a_class_in_a_group_is_made_and_deleted(
        netlab: NetLab, shaped: tuple[str, netlink.Tc]) -> None:
    ns, tc = shaped
    tc.htb_group("a0", 0x1F002, 2)  # qdisc 2: under the root's class 1:f002
    tc.htb_class("a0", 0x20005, 20_000_000, 25_000)
    got = classes(netlab, ns, "a0")
    assert set(got) == {0xF002, 0x20005}
    assert "rate 20Mbit ceil 20Mbit burst 25000b cburst 25000b" in got[0x20005]
    tc.del_htb_class("a0", 0x20005)
    assert set(classes(netlab, ns, "a0")) == {0xF002}

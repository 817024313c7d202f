"""Fixtures shared by the BPF tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Namespaces bngt-qg-a (10.9.0.1 on a0) and bngt-qg-b (10.9.0.2 on b0)."""
    from bng_operator import netlink

    names = ("bngt-qg-a", "bngt-qg-b")
    for ns in names:
        if ns in netlink.list_netns():
            netlink.remove_netns(ns)  # a crashed run's
        netlink.create_netns(ns)
    netlink.add_veth_pair("a0", names[0], "b0", names[1])
    for ns, dev, addr in ((names[0], "a0", "10.9.0.1/24"), (names[1], "b0", "10.9.0.2/24")):
        netlink.add_address(dev, addr, ns)
        netlink.set_up(dev, ns)
    yield names
    for ns in names:
        netlink.remove_netns(ns)

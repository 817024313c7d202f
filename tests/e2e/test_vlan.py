"""VLAN-tagged subscribers and NICs that strip tags (issue 14, point 8).

A NIC with rx-vlan offload takes the tag off before XDP sees it; the fast path then misses
every tagged subscriber (the slow path still serves them: it reads the tag from the socket).
The agent turns that offload off where the fast path attaches (--rx-vlan-offload disable,
the default) or keeps it and warns.

This kernel has no 802.1Q devices, so the subscriber sends tagged frames from a packet
socket. On veth, what decides whether access0's XDP sees the tag is its peer: the switch's
up0 puts it inline (tx-vlan-hw-insert off), as a NIC with the offload off delivers it, or
as metadata (on), as a NIC with the offload on does."""

from __future__ import annotations

import time
from collections.abc import Callable
from ipaddress import IPv4Address

from bng_lab import clients
from bng_lab.netlab import in_netns
from bng_lab.port import Port, dora, port
from bng_lab.site import Site, subscriber_mac
from bng_operator import netlink
from bng_operator.agent.dhcp.codec import MessageType, Opt

TAG = b"\x81\x00\x00\x64"  # 802.1Q, VLAN 100
FAST_ACKS = 'bng_dhcp_requests_total{path="fast",result="ack",type="request"}'
OFFLOAD = 'bng_access_rx_vlan_offload{interface="access0"}'
RENEWALS = 10


def _slow_requests(site: Site) -> float:
    return sum(v for k, v in site.metrics().items()
               if k.startswith("bng_dhcp_requests_total{") and 'path="slow"' in k
               and 'type="request"' in k)


def _offload(site: Site) -> float:
    """The agent's bng_access_rx_vlan_offload for access0, once it attached there."""
    deadline = time.monotonic() + 10
    while OFFLOAD not in (m := site.metrics()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return m[OFFLOAD]


def _bind_and_renew(site: Site, p: Port) -> tuple[int, float, float]:
    """A tagged DORA, then RENEWALS tagged renewals: (ACKs to them, fast ACKs, slow
    requests the agent counted for them)."""
    mac = subscriber_mac(0)
    chaddr = bytes.fromhex(mac.replace(":", ""))
    offer, ack = dora(p, chaddr, 0x1000, tags=TAG)
    assert offer is not None and ack is not None and ack.kind == MessageType.ACK, (offer, ack)
    lease = {"fixed-address": str(ack.yiaddr),
             "dhcp-server-identifier": str(IPv4Address(offer.options[Opt.SERVER_ID]))}
    frames = clients.renewal_frames(lease, mac, site.access_mac(), RENEWALS, tags=TAG)
    time.sleep(1)  # the ACK's lease is in the fast path's maps
    fast, slow = site.metrics().get(FAST_ACKS, 0), _slow_requests(site)
    p.drain()
    for f in frames:
        p.send(bytes.fromhex(f))
    replies = p.drain(3)
    acks = sum(1 for r in replies if r.kind == MessageType.ACK and 0x5000 <= r.xid < 0x5100)
    time.sleep(1.5)  # the kernel's counters read
    m = site.metrics()
    return acks, m.get(FAST_ACKS, 0) - fast, _slow_requests(site) - slow


def test_tagged_renewals_are_answered_in_the_kernel_with_the_offload_turned_off(
        make_site: Callable[..., Site]) -> None:
    site = make_site(subscribers=1)
    with in_netns(site.switch):
        assert netlink.set_feature("up0", netlink.TX_VLAN_OFFLOAD, False)
    with in_netns(site.bng):
        assert netlink.feature("access0", netlink.RX_VLAN_OFFLOAD) is True  # veth's default
    site.start_agent()  # --rx-vlan-offload disable: the default
    assert _offload(site) == 0
    with in_netns(site.bng):
        assert netlink.feature("access0", netlink.RX_VLAN_OFFLOAD) is False
    assert any("turned the NIC's VLAN tag stripping" in str(e.get("msg"))
               for e in site.log_events())
    with port(site.subscribers[0]) as p:
        acks, fast, slow = _bind_and_renew(site, p)
    assert acks == RENEWALS
    assert fast == RENEWALS and slow == 0  # every tagged renewal in the kernel


def test_with_the_offload_kept_the_agent_warns_and_the_slow_path_serves(
        make_site: Callable[..., Site]) -> None:
    site = make_site(subscribers=1)  # up0 inserts tags as metadata: XDP does not see them
    site.start_agent("--rx-vlan-offload", "keep")
    assert _offload(site) == 1
    assert any("strips VLAN tags before XDP sees them" in str(e.get("msg"))
               for e in site.log_events())
    with port(site.subscribers[0]) as p:
        acks, fast, slow = _bind_and_renew(site, p)
    assert acks == RENEWALS  # served all the same, with their tag
    assert fast == 0 and slow == RENEWALS

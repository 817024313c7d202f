"""Leases the kernel renewed are never ended by the agent (issue 14, point 1).

The real program renews 200 bound subscribers' entries; one of them floods REQUESTs for its
own lease. The agent's pieces run as in the agent: the fast-path feature drains the refresh
log into the lease store, and expiry asks the map before it ends a lease.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bng_lab.dhcp_env import Clock, MemoryStore, server
from bng_lab.messages import request
from bng_operator.agent.dataplane.fastpath import REFRESH_LOG_LEN, XDP_TX, FastPath
from bng_operator.agent.dhcp.codec import MessageType, encode
from bng_operator.agent.dhcp.server import Context, DhcpServer
from bng_operator.agent.dhcp.transport import BROADCAST_IP, BROADCAST_MAC, build_frame
from bng_operator.agent.fastpath.cache import SubscriberCache
from bng_operator.agent.fastpath.feature import FastPathFeature
from bng_operator.agent.health import Health
from bng_operator.agent.sessions.events import SessionEvents
from bng_operator.api import SubscriberClass
from bng_operator.api.documents import parse
from bng_operator.metrics import AgentMetrics

SERVER_MAC = bytes.fromhex("02aabbccddee")
SERVER_ID = IPv4Address("100.64.0.1")
CTX = Context("access0", (SERVER_ID,))
SUBSCRIBERS = 200
FLOOD = REFRESH_LOG_LEN + 4000  # more REQUESTs than the log holds
LEASE = 3600


def _everyone(objs):  # type: ignore[no-untyped-def]
    extra = parse({"apiVersion": "bng.dev/v1alpha1", "kind": "SubscriberClass",
                   "metadata": {"name": "everyone"},
                   "spec": {"priority": 1, "pool": "residential", "identity": "mac",
                            "leaseTime": "1h"}})
    return [o for o in objs if not isinstance(o, SubscriberClass)] + [extra]


def _mac(i: int) -> str:
    return f"02:00:00:02:{i >> 8:02x}:{i & 0xFF:02x}"


def _renewal(mac: str, addr: str) -> bytes:
    msg = request(MessageType.REQUEST, mac, requested=addr, server_id=str(SERVER_ID))
    return build_frame(BROADCAST_MAC, bytes.fromhex(mac.replace(":", "")), b"",
                       IPv4Address(0), BROADCAST_IP, 67, encode(msg, list(msg.options)), 68)


class _NoCommit:
    def quietly(self) -> None:  # the MemoryStore needs no commit
        pass


@pytest.fixture
def site(bpffs: Path) -> Iterator[tuple[DhcpServer, MemoryStore, Clock, FastPathFeature,
                                        dict[str, str]]]:
    """200 subscribers bound by the slow path, their entries in the maps as at T1 (half the
    lease gone), and the agent's fast-path feature over the real program."""
    s, store, clock = server(_everyone, clock=Clock(time.time()))
    addrs = {}
    for i in range(SUBSCRIBERS):
        offer = s.handle(request(MessageType.DISCOVER, _mac(i)), CTX).reply
        assert offer is not None
        ack = s.handle(request(MessageType.REQUEST, _mac(i), requested=str(offer.yiaddr),
                               server_id=str(SERVER_ID)), CTX)
        assert ack.kind == "ack"
        addrs[_mac(i)] = str(offer.yiaddr)
    fp = FastPath(max_subscribers=1024)
    fp.put_interface(1, SERVER_MAC)  # BPF_PROG_TEST_RUN runs as if received on lo
    feature = FastPathFeature(s, AgentMetrics(), Health(), _NoCommit(), Path("/nonexistent"),  # type: ignore[arg-type]
                              "native")
    feature.cache = SubscriberCache(fp, s.config)
    feature.cache.warm(s.by_address.values())
    for lease in s.by_address.values():  # as at T1: the next ACK moves the end by L/2
        e = feature.cache.keys[lease.address]
        leaf = fp._table(e[0])[fp._key(*e)]
        leaf.expires = fp.clock.at(time.time() + LEASE / 2)
        fp._table(e[0])[fp._key(*e)] = leaf
    fp.refreshes()
    yield s, store, clock, feature, addrs
    fp.close()


def _renew(fp: FastPath, frames: list[bytes]) -> None:
    for f in frames:
        assert fp.run(f).action == XDP_TX, fp.counters()


def test_a_flood_of_renewals_pushes_no_other_renewal_out_of_the_log(site) -> None:  # type: ignore[no-untyped-def]
    _, store, _, feature, addrs = site
    fp = feature.cache.fp
    macs = list(addrs)
    flooder, others = macs[0], macs[1:]
    ends = {m: store.leases[int(IPv4Address(addrs[m]))].expires for m in macs}
    cpu = min(os.sched_getaffinity(0))
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # one CPU's log: the worst case
    try:
        time.sleep(0.05)  # a tick: renewals move the ends
        _renew(fp, [_renewal(m, addrs[m]) for m in others])
        flood = _renewal(flooder, addrs[flooder])
        for _ in range(FLOOD):
            fp.run(flood)
    finally:
        os.sched_setaffinity(0, mask)
    assert fp.counters()["ack"] >= FLOOD + len(others)
    feature.persist_renewals()
    moved = {m for m in others if store.leases[int(IPv4Address(addrs[m]))].expires > ends[m]}
    assert moved == set(others), f"{len(others) - len(moved)} renewals lost to the flood"
    assert fp._log.lost == 0


def test_expiry_reads_the_map_before_it_ends_a_lease(site) -> None:  # type: ignore[no-untyped-def]
    s, store, clock, feature, addrs = site
    fp = feature.cache.fp
    macs = list(addrs)
    renewed, silent = macs[1:], macs[0]
    time.sleep(0.2)
    _renew(fp, [_renewal(m, addrs[m]) for m in renewed])
    fp.refreshes()  # the log's entries are lost: the store never hears of these renewals
    ends = {m: store.leases[int(IPv4Address(addrs[m]))].expires for m in macs}
    clock.t = max(ends.values()) + 0.05  # every stored end has passed
    s.take_events()
    ended = s.expire(0.0, feature.kernel_expiry)
    assert [lease.mac for lease in ended] == [silent]  # its entry was not renewed either
    bus = SessionEvents()
    bus.subscribe(feature)
    bus.publish(s.take_events())  # as the agent's expiry does: the fast path forgets it
    for m in renewed:
        lease = s.by_address.get(int(IPv4Address(addrs[m])))
        assert lease is not None and lease.mac == m and lease.state == "bound"
        assert store.leases[lease.address].expires > clock.t  # the map's end, persisted
        assert lease.address in feature.cache.keys
    assert len(fp.keys()) == len(renewed)

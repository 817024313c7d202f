"""One subscriber port cannot starve a pool (issue 14, point 3): rate limits come before
any allocation, a circuit-id holds at most a capped number of addresses (leases, offers and
declines together), DECLINEs are rate-limited per circuit, and other ports are served on."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

from bng_lab.dhcp_env import CTX, server
from bng_lab.messages import request
from bng_operator.agent.dhcp.codec import MessageType
from bng_operator.agent.dhcp.server import DEFAULT_CIRCUIT_CAP, DhcpServer
from bng_operator.api import SubscriberClass
from bng_operator.api.documents import parse

D, R, X = MessageType.DISCOVER, MessageType.REQUEST, MessageType.DECLINE
PORT = "olt1 xpon 0/9/9"  # the flooding port's circuit-id


def _by_mac(objs):  # type: ignore[no-untyped-def]
    """Every client its own subscriber by MAC: random MACs are new subscribers."""
    extra = parse({"apiVersion": "bng.dev/v1alpha1", "kind": "SubscriberClass",
                   "metadata": {"name": "everyone"},
                   "spec": {"priority": 1, "pool": "residential", "identity": "mac"}})
    return [o for o in objs if not isinstance(o, SubscriberClass)] + [extra]


def _dora(s: DhcpServer, mac: str, circuit: str) -> str | None:
    offer = s.handle(request(D, mac, circuit=circuit), CTX)
    if offer.reply is None:
        return None
    addr = str(offer.reply.yiaddr)
    ack = s.handle(request(R, mac, circuit=circuit, requested=addr, server_id="100.64.0.1"), CTX)
    return addr if ack.kind == "ack" else None


def test_one_port_cannot_starve_the_pool() -> None:
    s, _, clock = server(_by_mac)
    size = s.pool_usage()["residential"]["free"]
    rng = random.Random(14)
    floor = size - DEFAULT_CIRCUIT_CAP
    others = 0
    for i in range(20_000):  # over 20 simulated minutes: the rate alone would allow 600
        clock.t += 0.06
        mac = "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))
        addr = _dora(s, mac, PORT)
        if addr is not None and i % 2:  # and DECLINE half of what it gets
            s.handle(request(X, mac, circuit=PORT, requested=addr), CTX)
        if i % 1000 == 0:  # a subscriber on another port is served, every time
            assert _dora(s, f"02:00:00:0f:{others >> 8:02x}:{others & 0xFF:02x}",
                         f"olt1 xpon 0/1/{others}") is not None
            others += 1
        s.expire()
        assert s.pool_usage()["residential"]["free"] + others >= floor, i
    usage = s.pool_usage()["residential"]
    held = usage["used"] + usage["declined"] - others
    assert 0 < held <= DEFAULT_CIRCUIT_CAP, usage


def test_rate_limits_come_before_a_requested_address_is_taken() -> None:
    """A DISCOVER carrying option 50 used to take its address before the rate check."""
    s, _, _ = server(_by_mac)
    free = s.pool_usage()["residential"]["free"]
    taken = 0
    for i in range(100):
        out = s.handle(request(D, f"02:00:00:10:00:{i:02x}", circuit=PORT,
                               requested=str(IPv4Address("100.64.1.0") + i)), CTX)
        taken += out.reply is not None
    assert taken == 30  # the class's allocationsPerMinute (default 30) for the circuit
    assert s.pool_usage()["residential"]["free"] == free - taken
    assert len(s.offered) == taken


def test_declines_are_limited_per_circuit() -> None:
    s, _, _ = server(_by_mac)
    addrs = [_dora(s, f"02:00:00:11:00:{i:02x}", PORT) for i in range(5)]
    assert all(addrs)
    kinds = [s.handle(request(X, f"02:00:00:11:00:{i:02x}", circuit=PORT, requested=a), CTX)
             for i, a in enumerate(addrs)]
    assert [k.kind for k in kinds].count("decline") == 2
    assert {k.drop for k in kinds if k.kind == "drop"} == {"decline_rate_limited"}
    assert s.pool_usage()["residential"]["declined"] == 2

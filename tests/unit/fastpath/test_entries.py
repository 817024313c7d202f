"""What the fast path may answer for a lease (pure functions: no BPF, no root)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from bng_lab.dhcp_env import bound_lease, sample_config
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.fastpath.entries import (
    MAX_RELAY_AGENT_LEN,
    circuit_hash,
    entry_for,
    subnet_options,
)

MAC = "02:00:00:00:00:01"
O82 = b"\x01\x04olt1\x02\x07res-100"


CONFIG = sample_config()


@pytest.mark.parametrize(("lease", "by_circuit", "relay", "client_id"), [
    (bound_lease(), False, b"", b""),
    (bound_lease(client_id="0102"), False, b"", b"\x01\x02"),
    (bound_lease(relay_agent=O82), False, bytes([82, len(O82)]) + O82, b""),
    (bound_lease(identity="remote:res-100", relay_agent=O82), True, bytes([82, len(O82)]) + O82, b""),
    (bound_lease(identity="circuit:olt1", relay_agent=O82, client_id="ab" * 40), True,
     bytes([82, len(O82)]) + O82, bytes.fromhex("ab" * 40)),
], ids=["mac", "client-id", "mac-with-82", "remote-id", "circuit-id-long-client-id"])
def test_entries_are_keyed_by_what_identifies_the_subscriber(
        lease: Lease, by_circuit: bool, relay: bytes, client_id: bytes) -> None:
    e = entry_for(lease, CONFIG)
    assert e is not None
    assert (e.by_circuit, e.relay, e.client_id) == (by_circuit, relay, client_id)
    assert e.key == (by_circuit, 0, relay if by_circuit else bytes.fromhex(MAC.replace(":", "")))
    assert e.subnet == int(IPv4Address("100.64.0.0")) and e.lease_seconds == 3600


@pytest.mark.parametrize("lease", [
    bound_lease(state="released"),
    bound_lease(server_id=0),  # stored by an agent that did not record the request
    bound_lease(lease_seconds=0),
    bound_lease(pool="gone"),
    bound_lease(address=int(IPv4Address("10.0.0.1"))),  # outside the pool's subnets
    bound_lease(relay_agent=b"x" * 63),  # longer than the program echoes
    bound_lease(client_id="ab" * 33),  # longer than the program compares
], ids=["not-bound", "no-server-id", "no-lease-time", "no-pool", "no-subnet", "long-82",
        "long-client-id"])
def test_leases_the_fast_path_cannot_answer_get_no_entry(lease: Lease) -> None:
    assert entry_for(lease, CONFIG) is None


def test_subnet_options_carry_what_the_slow_path_sends() -> None:
    sc = CONFIG.pools["residential"].subnets[0]
    so = subnet_options(sc)
    assert so is not None
    assert so.mask == IPv4Address("255.255.240.0").packed
    assert so.router == IPv4Address("100.64.0.1").packed
    assert so.broadcast == IPv4Address("100.64.15.255").packed
    assert so.dns == (IPv4Address("192.0.2.53").packed, IPv4Address("192.0.2.54").packed)
    assert so.domain == b"home.example.net"
    long_domain = replace(sc, options={**sc.options, 15: b"x" * 33})
    assert subnet_options(long_domain) is None


WIRE = bytes([82, len(O82)]) + O82


@pytest.mark.parametrize(("a", "b", "equal"), [
    (WIRE, WIRE + b"\0" * 10, True),  # zero-padded to the key's width either way
    (WIRE, WIRE[:-1] + b"1", False),
    (WIRE, b"", False),
    (b"\x52\x01a", b"\x52\x01b", False),
    (bytes(64), b"", True),
], ids=["padding", "last-byte", "empty", "one-byte", "zeros"])
def test_circuit_hash_cases(a: bytes, b: bytes, equal: bool) -> None:
    assert (circuit_hash(a) == circuit_hash(b)) == equal
    assert 0 <= circuit_hash(a) < 2**64


def test_option_82s_that_differ_in_one_word_never_share_a_circuit_hash() -> None:
    """Each word's step is a bijection of the running hash, so a change confined to one
    8-byte word always changes the hash: lines whose ids differ in a few adjacent bytes
    (port numbers) never collide."""
    base = bytes(range(MAX_RELAY_AGENT_LEN + 2))
    seen = {circuit_hash(base)}
    for pos in range(len(base)):
        for v in (0, 1, 0x80, 0xFF):
            if base[pos] != v:
                changed = base[:pos] + bytes([v]) + base[pos + 1:]
                h = circuit_hash(changed)
                assert h != circuit_hash(base)
                seen.add(h)
    assert len(seen) == 1 + sum(4 - (b in (0, 1, 0x80, 0xFF)) for b in base)

"""Port blocks and the deterministic formula (agent/nat/blocks.py): pure, table-driven."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from bng_operator.agent.nat.blocks import BlockAllocator, Grant, Layout, expand

A = IPv4Address


def layout(addresses: str = "203.0.113.0/30", start: int = 1024, end: int = 65535,
           size: int = 512, per: int = 1, inside: tuple[str, ...] = ()) -> Layout:
    return Layout(expand([addresses]), start, end, size, per,
                  tuple(IPv4Network(n) for n in inside))


def test_expand_keeps_order_and_drops_repeats() -> None:
    assert expand(["203.0.113.4/31", "203.0.113.0", "203.0.113.5"]) == (
        A("203.0.113.4"), A("203.0.113.5"), A("203.0.113.0"))


@pytest.mark.parametrize(("start", "end", "size", "blocks", "first", "last_first"), [
    (1024, 65535, 512, 126, 1024, 65024),
    (1024, 2047, 256, 4, 1024, 1792),
    (1, 65535, 65535, 1, 1, 1),
    (2000, 2009, 3, 3, 2000, 2006),  # the 10th port is left over
])
def test_blocks_per_address(start: int, end: int, size: int, blocks: int, first: int,
                            last_first: int) -> None:
    lay = layout("203.0.113.1", start, end, size)
    assert lay.blocks_per_address == blocks
    assert lay.first_port(0) == first and lay.first_port(blocks - 1) == last_first
    assert lay.index(last_first) == blocks - 1
    assert lay.index(first + 1) is None and lay.index(first + blocks * size) is None


def test_grants_spread_over_addresses_then_fill() -> None:
    alloc = BlockAllocator(layout("203.0.113.0/31", 1024, 2047, 512), hold=60)
    got = [alloc.grant(0) for _ in range(4)]
    assert [(g.public, g.blocks) for g in got if g] == [
        (A("203.0.113.0"), (1024,)), (A("203.0.113.1"), (1024,)),
        (A("203.0.113.0"), (1536,)), (A("203.0.113.1"), (1536,))]
    assert alloc.grant(0) is None  # every block taken
    assert alloc.usage() == {A("203.0.113.0"): 2, A("203.0.113.1"): 2}
    assert alloc.total == 4


def test_a_released_block_is_held_before_reuse() -> None:
    alloc = BlockAllocator(layout("203.0.113.0", 1024, 2047, 512), hold=60)
    g1, g2 = alloc.grant(0), alloc.grant(0)
    assert g1 and g2 and alloc.grant(0) is None
    alloc.release(g1, now=100)
    assert alloc.grant(159.9) is None  # held: the old flows' late packets must not reach others
    assert alloc.usage() == {A("203.0.113.0"): 2}  # a held block counts as used
    again = alloc.grant(160)
    assert again is not None and again.blocks == g1.blocks


def test_grow_stays_on_the_same_address_up_to_the_limit() -> None:
    alloc = BlockAllocator(layout("203.0.113.0/31", 1024, 2559, 512, per=3), hold=0)
    g = alloc.grant(0)
    assert g is not None
    g2 = alloc.grow(g, 0)
    assert g2 is not None and g2.public == g.public and g2.blocks == (1024, 1536)
    g3 = alloc.grow(g2, 0)
    assert g3 is not None and len(g3.blocks) == 3
    assert alloc.grow(g3, 0) is None  # blocksPerSubscriber reached
    other = alloc.grant(0)
    assert other is not None and other.public != g.public  # the emptier address
    # g's address is full: another subscriber there cannot grow, nor move to another one
    assert alloc.grow(Grant(g.public, g.blocks, 512), 0) is None


@pytest.mark.parametrize(("grant", "ok"), [
    (Grant(A("203.0.113.1"), (1536,), 512), True),
    (Grant(A("203.0.113.9"), (1536,), 512), False),  # not this node's address any more
    (Grant(A("203.0.113.1"), (1537,), 512), False),  # not a block boundary
    (Grant(A("203.0.113.1"), (1536,), 256), False),  # another block size
    (Grant(A("203.0.113.1"), (1024, 1536), 512), False),  # more than blocksPerSubscriber
])
def test_adopt_checks_a_restored_grant(grant: Grant, ok: bool) -> None:
    alloc = BlockAllocator(layout("203.0.113.0/30", 1024, 2047, 512), hold=0)
    assert alloc.adopt(grant) is ok
    if ok:
        assert not alloc.adopt(grant)  # never twice
        assert alloc.usage()[grant.public] == 1


def test_adopted_blocks_are_not_granted_again() -> None:
    alloc = BlockAllocator(layout("203.0.113.0", 1024, 2047, 512), hold=0)
    assert alloc.adopt(Grant(A("203.0.113.0"), (1024,), 512))
    g = alloc.grant(0)
    assert g is not None and g.blocks == (1536,)
    assert alloc.grant(0) is None


# --- deterministic mode ----------------------------------------------------------------------

# 31 blocks of 2,048 ports an address, 2 a subscriber: S = 15 subscribers an address
DET = layout("203.0.113.0/30", 1024, 65535, 2048, per=2, inside=("100.64.0.0/27", "10.0.0.0/28"))


@pytest.mark.parametrize(("inside", "public", "first"), [
    ("100.64.0.0", "203.0.113.0", (1024, 3072)),
    ("100.64.0.1", "203.0.113.0", (5120, 7168)),
    ("100.64.0.14", "203.0.113.0", (1024 + 28 * 2048, 1024 + 29 * 2048)),
    ("100.64.0.15", "203.0.113.1", (1024, 3072)),
    ("10.0.0.0", "203.0.113.2", (1024 + 4 * 2048, 1024 + 5 * 2048)),  # n = 32: address 2, slot 2
    ("10.0.0.13", "203.0.113.3", (1024, 3072)),  # n = 45: address 3, slot 0
])
def test_formula(inside: str, public: str, first: tuple[int, int]) -> None:
    g = DET.formula(A(inside))
    assert g is not None and (g.public, g.blocks) == (A(public), first)


def test_formula_beyond_capacity_and_outside() -> None:
    small = layout("203.0.113.0/31", 1024, 65535, 2048, 2, ("100.64.0.0/26",))
    assert small.formula(A("100.64.0.29")) is not None
    assert small.formula(A("100.64.0.30")) is None  # 2 addresses x 15 slots = 30 subscribers
    assert DET.formula(A("192.0.2.1")) is None
    assert "64 inside addresses" in small.capacity_error()
    assert "need 5 public addresses; the pool has 2" in small.capacity_error()
    assert DET.capacity_error() == ""


def test_owner_inverts_the_formula_for_every_port() -> None:
    lay = layout("203.0.113.0/29", 1024, 65535, 4096, per=1, inside=("100.64.0.0/26",))
    assert lay.capacity_error() == ""
    for n in range(64):
        inside = A("100.64.0.0") + n
        g = lay.formula(inside)
        assert g is not None
        for first, last in g.ranges:
            for port in (first, first + 1, last):
                assert lay.owner(g.public, port) == inside
    assert lay.owner(A("203.0.113.0"), 1023) is None  # below the port range
    assert lay.owner(A("198.51.100.1"), 2000) is None
    assert lay.owner(A("203.0.113.3"), 65535) is None  # no subscriber has the tail
    assert lay.owner(A("203.0.113.7"), 2000) is None  # 64 subscribers fill 5 addresses


def test_description_round_trips() -> None:
    assert Layout.from_description(DET.describe()) == DET

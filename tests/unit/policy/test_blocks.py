"""Block IPAM: tables of pools, nodes and usage, and the assignments that must follow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network

import pytest

from bng_operator.api.ippool import BlockAssignment, IPPoolSpec
from bng_operator.policy.blocks import plan_blocks, pool_size, usable

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DAY = 86400


def spec(cidr: str = "100.64.0.0/22", block: int = 24, exclude: tuple[str, str] | None = None,
         gateway: str | None = None) -> IPPoolSpec:
    net = IPv4Network(cidr)
    sub: dict[str, object] = {"cidr": cidr, "gateway": gateway or str(net.network_address + 1)}
    if exclude:
        sub["exclude"] = [{"start": exclude[0], "end": exclude[1]}]
    return IPPoolSpec.model_validate({"subnets": [sub], "blockSize": block})


def a(cidr: str, node: str, leases: int = 0, after: datetime | None = None) -> BlockAssignment:
    return BlockAssignment(cidr=cidr, node=node, leases=leases, release_after=after)


@pytest.mark.parametrize(("pool", "net", "expected"), [
    # the subnet's network, broadcast and gateway are never leased
    (spec(), "100.64.0.0/24", 254),
    (spec(), "100.64.1.0/24", 256),
    (spec(), "100.64.3.0/24", 255),
    (spec(exclude=("100.64.0.1", "100.64.0.15")), "100.64.0.0/24", 240),
    (spec(exclude=("100.64.0.200", "100.64.1.9")), "100.64.1.0/24", 246),
    (spec("100.64.0.0/30", 30), "100.64.0.0/30", 1),
])
def test_usable_addresses(pool: IPPoolSpec, net: str, expected: int) -> None:
    assert usable(pool, IPv4Network(net)) == expected


def test_pool_size_is_the_sum_of_its_subnets() -> None:
    assert pool_size(spec()) == 1024 - 3


CASES = [
    # (name, nodes, current, usage, expected (cidr, node, leases, release_after), starved, more)
    ("every node gets a first block, lowest first, nodes in name order",
     ["b", "a"], [], {}, [("100.64.0.0/24", "a", 0, None), ("100.64.1.0/24", "b", 0, None)], [], []),
    ("a block keeps its node; no new block below the threshold",
     ["a"], [a("100.64.2.0/24", "a", 10)], {"100.64.2.0/24": 200},
     [("100.64.2.0/24", "a", 200, None)], [], []),
    ("crossing the threshold (80%) gives another block",
     ["a"], [a("100.64.0.0/24", "a")], {"100.64.0.0/24": 204},
     [("100.64.0.0/24", "a", 204, None), ("100.64.1.0/24", "a", 0, None)], [], []),
    ("the threshold counts all of a node's blocks together",
     ["a"], [a("100.64.0.0/24", "a"), a("100.64.1.0/24", "a")],
     {"100.64.0.0/24": 253, "100.64.1.0/24": 100},
     [("100.64.0.0/24", "a", 253, None), ("100.64.1.0/24", "a", 100, None)], [], []),
    ("a block never goes to two nodes: b waits while a holds them all",
     ["a", "b"], [a(f"100.64.{i}.0/24", "a") for i in range(4)], {},
     [(f"100.64.{i}.0/24", "a", 0, None) for i in range(4)], ["b"], []),
    ("a full node with no free block is reported wanting more",
     ["a"], [a(f"100.64.{i}.0/24", "a") for i in range(4)],
     {f"100.64.{i}.0/24": 250 for i in range(4)},
     [(f"100.64.{i}.0/24", "a", 250, None) for i in range(3)] + [("100.64.3.0/24", "a", 250, None)],
     [], ["a"]),
    ("a departed node's empty block is released at once",
     [], [a("100.64.0.0/24", "gone", 0)], {}, [], [], []),
    ("a departed node's used block drains for the longest lease time",
     [], [a("100.64.0.0/24", "gone", 5)], {},
     [("100.64.0.0/24", "gone", 5, NOW + timedelta(seconds=DAY))], [], []),
    ("a draining block is not given to another node",
     ["b"], [a("100.64.0.0/24", "gone", 5, NOW + timedelta(hours=1))], {},
     [("100.64.0.0/24", "gone", 5, NOW + timedelta(hours=1)), ("100.64.1.0/24", "b", 0, None)],
     [], []),
    ("a drained block returns to the pool",
     ["b"], [a("100.64.0.0/24", "gone", 5, NOW - timedelta(seconds=1))], {},
     [("100.64.0.0/24", "b", 0, None)], [], []),
    ("a node that comes back keeps its draining block",
     ["gone"], [a("100.64.0.0/24", "gone", 5, NOW + timedelta(hours=1))], {},
     [("100.64.0.0/24", "gone", 5, None)], [], []),
    ("a block whose subnet left the pool is dropped",
     ["a"], [a("10.0.0.0/24", "a", 3)], {}, [("100.64.0.0/24", "a", 0, None)], [], []),
]


@pytest.mark.parametrize(("name", "nodes", "current", "usage", "expected", "starved", "more"),
                         CASES, ids=[c[0] for c in CASES])
def test_plan_blocks(name: str, nodes: list[str], current: list[BlockAssignment],
                     usage: dict[str, int], expected: list[tuple[str, str, int, datetime | None]],
                     starved: list[str], more: list[str]) -> None:
    p = plan_blocks(spec(), nodes, current, usage, 0.8, NOW, DAY)
    assert [(b.cidr, b.node, b.leases, b.release_after) for b in p.assignments] == expected
    assert list(p.starved) == starved
    assert list(p.wanting_more) == more
    cidrs = [b.cidr for b in p.assignments]
    assert len(cidrs) == len(set(cidrs))


def test_a_changed_block_size_never_overlaps_blocks_already_held() -> None:
    held = [a("100.64.0.0/24", "a", 250)]
    p = plan_blocks(spec(block=23), ["a", "b"], held, {}, 0.8, NOW, DAY)
    nets = [IPv4Network(b.cidr) for b in p.assignments]
    assert not any(x.overlaps(y) for i, x in enumerate(nets) for y in nets[i + 1:])
    assert [(b.cidr, b.node) for b in p.assignments] == [
        ("100.64.0.0/24", "a"), ("100.64.2.0/23", "a")]
    assert p.starved == ("b",)


def test_fully_excluded_blocks_are_skipped() -> None:
    pool = spec(exclude=("100.64.0.0", "100.64.0.255"), gateway="100.64.1.1")
    p = plan_blocks(pool, ["a"], [], {}, 0.8, NOW, DAY)
    assert [b.cidr for b in p.assignments] == ["100.64.1.0/24"]

"""NAT pool split: tables of pools, nodes, reports and holds, and the split that must follow.
The one rule under all of them: no public address is ever on two nodes at once."""

from __future__ import annotations

import random
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bng_operator.api.bngnode import NATUsage
from bng_operator.api.natpool import NATNodeUsage, NATPoolSpec
from bng_operator.policy.natsplit import (
    AddressPlan,
    address_count,
    plan_addresses,
    pool_addresses,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DRAIN = 86400
HOLD = timedelta(minutes=2)  # the NATPool default
PER = (65535 - 1024 + 1) // 512  # blocks on one address with the default ports


def spec(*addresses: str, **kw: Any) -> NATPoolSpec:
    return NATPoolSpec.model_validate({"addresses": list(addresses or ["203.0.113.0/29"]), **kw})


def A(*last: int) -> list[str]:
    return [f"203.0.113.{i}" for i in last]


def share(node: str, addrs: Sequence[int], releasing: Sequence[int] = (),
          after: datetime | None = None, used: int = 0, foreign: Sequence[str] = ()) -> NATNodeUsage:
    return NATNodeUsage(node=node, addresses=[*foreign, *A(*addrs)], releasing=A(*releasing),
                        release_after=after, blocks_used=used, blocks_total=len(addrs) * PER)


def report(node: str, used: dict[int, int]) -> tuple[str, list[NATUsage]]:
    return node, [NATUsage(pool="cgnat", address=A(i)[0], blocks_used=n, blocks_total=PER)
                  for i, n in used.items()]


@pytest.mark.parametrize(("prefixes", "expected"), [
    (["203.0.113.0/28"], [f"203.0.113.{i}" for i in range(16)]),  # a /28 is 16 addresses
    (["198.51.100.7", "203.0.113.0/31"], ["198.51.100.7", "203.0.113.0", "203.0.113.1"]),
    # the pool's order is the order written (RFC 7422 numbers them so), each address once
    (["203.0.113.4/30", "203.0.113.0/29"], A(4, 5, 6, 7, 0, 1, 2, 3)),
])
def test_pool_addresses(prefixes: list[str], expected: list[str]) -> None:
    assert pool_addresses(spec(*prefixes)) == expected
    assert address_count(spec(*prefixes)) == len(expected)


def test_a_large_pool_is_counted_without_listing_it() -> None:
    assert address_count(spec("100.0.0.0/8", "100.1.0.0/16", "101.0.0.0/31")) == 2**24 + 2


T = NOW + HOLD
LATER = NOW + timedelta(hours=1)
PAST = NOW - timedelta(seconds=1)

# (name, nodes, current, reports, in_use, expected [(node, addresses, releasing, after)],
#  starved, pending)
CASES: list[tuple[Any, ...]] = [
    ("an even split, lowest first, in runs, nodes in name order",
     ["b", "a"], [], {}, {},
     [("a", [0, 1, 2, 3], [], None), ("b", [4, 5, 6, 7], [], None)], [], 0),
    ("an odd split: the nodes holding the most keep the remainder",
     ["a", "b", "c"], [share("c", [0, 1, 2])], {}, {},
     [("a", [3, 4, 5], [], None), ("b", [6, 7], [], None), ("c", [0, 1, 2], [], None)], [], 0),
    ("a node keeps what it has; a new node takes the free addresses",
     ["a", "b"], [share("a", [5, 6, 7])], {}, {},
     [("a", [4, 5, 6, 7], [], None), ("b", [0, 1, 2, 3], [], None)], [], 0),
    ("a node that joins a full pool: the others hand over idle addresses, highest first",
     ["a", "b", "c"], [share("a", [0, 1, 2, 3]), share("b", [4, 5, 6, 7])], {}, {},
     [("a", [0, 1, 2], [3], T), ("b", [4, 5, 6], [7], T), ("c", [], [], None)], ["c"], 2),
    ("an address with a port block in use stays with its node",
     ["a", "b", "c"], [share("a", [0, 1, 2, 3]), share("b", [4, 5, 6, 7])],
     dict([report("a", {3: 1, 2: 4}), report("b", {4: 1, 5: 1, 6: 1, 7: 1})]), {},
     [("a", [0, 2, 3], [1], T), ("b", [4, 5, 6, 7], [], None), ("c", [], [], None)], ["c"], 1),
    ("every address in use: the new node gets none",
     ["a", "b"], [share("a", [0, 1, 2, 3, 4, 5, 6, 7])],
     dict([report("a", {i: 1 for i in range(8)})]), {},
     [("a", list(range(8)), [], None), ("b", [], [], None)], ["b"], 0),
    ("nothing more is released while enough are on their way",
     ["a", "b", "c"], [share("a", [0, 1, 2], [3], T), share("b", [4, 5], [6, 7], T)], {}, {},
     [("a", [0, 1, 2], [3], T), ("b", [4, 5], [6, 7], T), ("c", [], [], None)], ["c"], 3),
    ("past the hold, addresses the giver no longer uses go to the node short of them",
     ["a", "b", "c"], [share("a", [0, 1, 2], [3], PAST), share("b", [4, 5], [6, 7], PAST)], {},
     {"a": set(A(0, 1, 2)), "b": set(A(4, 5))},
     [("a", [0, 1, 2], [], None), ("b", [4, 5, 7], [], None), ("c", [3, 6], [], None)], [], 0),
    ("not before the hold, even when the giver no longer uses them",
     ["a", "c"], [share("a", [0, 1, 2, 3], [4, 5, 6, 7], LATER)], {}, {"a": set(A(0, 1, 2, 3))},
     [("a", [0, 1, 2, 3], [4, 5, 6, 7], LATER), ("c", [], [], None)], ["c"], 4),
    ("not while the giver's agent has not applied the spec without them",
     ["a", "c"], [share("a", [0, 1, 2, 3], [4, 5, 6, 7], PAST)], {}, {"a": None},
     [("a", [0, 1, 2, 3], [4, 5, 6, 7], PAST), ("c", [], [], None)], ["c"], 4),
    ("not while the giver still reports a block on one",
     ["a", "c"], [share("a", [0, 1, 2, 3], [4, 5, 6, 7], PAST)], {},
     {"a": set(A(0, 1, 2, 3, 6))},
     [("a", [0, 1, 2, 3], [6], PAST), ("c", [4, 5, 7], [], None)], [], 1),
    ("a departed node's addresses are held for the drain and the hold when blocks were in use",
     ["a"], [share("a", [0, 1, 2, 3]), share("gone", [4, 5, 6, 7], used=3)], {}, {},
     [("a", [0, 1, 2, 3], [], None),
      ("gone", [4, 5, 6, 7], [], NOW + HOLD + timedelta(seconds=DRAIN))], [], 4),
    ("at once when none was (as an IPPool block without leases)",
     ["a"], [share("a", [0, 1, 2, 3]), share("gone", [4, 5, 6, 7])], {}, {},
     [("a", [0, 1, 2, 3, 4, 5, 6, 7], [], None)], [], 0),
    ("a departed node's fresh report decides",
     ["a"], [share("a", [0, 1, 2, 3]), share("gone", [4, 5, 6, 7], used=3)],
     dict([report("gone", {4: 0})]), {}, [("a", [0, 1, 2, 3, 4, 5, 6, 7], [], None)], [], 0),
    ("a departed node's fresh report of a block in use decides",
     ["a"], [share("a", [0, 1, 2, 3]), share("gone", [4, 5, 6, 7])],
     dict([report("gone", {4: 1})]), {},
     [("a", [0, 1, 2, 3], [], None),
      ("gone", [4, 5, 6, 7], [], NOW + HOLD + timedelta(seconds=DRAIN))], [], 4),
    ("a held address goes to nobody before its time",
     ["a", "b"], [share("gone", [4, 5, 6, 7], after=LATER)], {}, {},
     [("a", [0, 1, 2, 3], [], None), ("b", [], [], None), ("gone", [4, 5, 6, 7], [], LATER)],
     ["b"], 4),
    ("and returns to the pool after it",
     ["a", "b"], [share("a", [0, 1, 2, 3]), share("gone", [4, 5, 6, 7], after=PAST)], {}, {},
     [("a", [0, 1, 2, 3], [], None), ("b", [4, 5, 6, 7], [], None)], [], 0),
    ("a node that comes back before its time keeps its addresses",
     ["gone"], [share("gone", [4, 5], after=LATER)], {}, {},
     [("gone", [4, 5, 0, 1, 2, 3, 6, 7], [], None)], [], 0),
    ("a node that leaves while handing over holds those too",
     ["b"], [share("a", [0, 1], [2, 3], T, used=1), share("b", [4, 5, 6, 7])], {}, {},
     [("a", [0, 1, 2, 3], [], NOW + HOLD + timedelta(seconds=DRAIN)),
      ("b", [4, 5, 6, 7], [], None)], [], 4),
    ("an address that left the pool is dropped",
     ["a"], [share("a", [0, 1], foreign=["192.0.2.1"])], {}, {},
     [("a", [0, 1, 2, 3, 4, 5, 6, 7], [], None)], [], 0),
    ("an address named twice (a hand edit) stays with the first node only",
     ["a", "b"], [share("a", [0, 1, 2, 3]), share("b", [3, 4, 5, 6, 7])], {}, {},
     [("a", [0, 1, 2, 3], [], None), ("b", [4, 5, 6, 7], [], None)], [], 0),
    ("more nodes than addresses: the last ones get none",
     ["a", "b", "c"], [], {}, {},
     [("a", [0, 1, 2], [], None), ("b", [3, 4, 5], [], None), ("c", [6, 7], [], None)], [], 0),
    ("a node that left with nothing leaves nothing behind",
     [], [share("gone", [])], {}, {}, [], [], 0),
]


def check(p: AddressPlan, pool: Sequence[str]) -> None:
    """The invariant: every address on at most one node, live, releasing or held."""
    named = [a for n in p.nodes for a in (*n.addresses, *n.releasing)]
    assert len(named) == len(set(named)), named
    assert set(named) <= set(pool)
    for n in p.nodes:
        if n.node in p.assigned:
            assert tuple(n.addresses) == p.assigned[n.node]


@pytest.mark.parametrize(("name", "nodes", "current", "reports", "in_use", "expected", "starved",
                          "pending"), CASES, ids=[c[0] for c in CASES])
def test_plan_addresses(name: str, nodes: list[str], current: list[NATNodeUsage],
                        reports: dict[str, list[NATUsage]], in_use: dict[str, Set[str] | None],
                        expected: list[tuple[str, list[int], list[int], datetime | None]],
                        starved: list[str], pending: int) -> None:
    p = plan_addresses(spec(), nodes, current, reports, in_use, NOW, DRAIN)
    got = [(n.node, n.addresses, n.releasing, n.release_after) for n in p.nodes]
    assert got == [(n, sorted(A(*a), key=pool_addresses(spec()).index), A(*r), t)
                   for n, a, r, t in expected]
    assert list(p.starved) == starved
    assert p.pending == pending
    check(p, pool_addresses(spec()))


def test_usage_and_totals_follow_the_reports() -> None:
    p = plan_addresses(spec(), ["a", "b"], [share("a", [0, 1, 2, 3], used=9)],
                       dict([report("a", {0: 5, 1: 2})]), {}, NOW, DRAIN)
    assert [(n.node, n.blocks_used, n.blocks_total) for n in p.nodes] == [
        ("a", 7, 4 * PER), ("b", 0, 4 * PER)]


def test_a_zero_hold_hands_over_as_soon_as_the_giver_has_let_go() -> None:
    pool = spec(timeouts={"hold": "0s"})
    first = plan_addresses(pool, ["a", "b"], [share("a", list(range(8)))], {}, {}, NOW, DRAIN)
    assert [(n.node, n.addresses, n.releasing, n.release_after) for n in first.nodes] == [
        ("a", A(0, 1, 2, 3), A(4, 5, 6, 7), NOW), ("b", [], [], None)]
    second = plan_addresses(pool, ["a", "b"], first.nodes, {}, {"a": set(A(0, 1, 2, 3))}, NOW,
                            DRAIN)
    assert [(n.node, n.addresses, n.releasing) for n in second.nodes] == [
        ("a", A(0, 1, 2, 3), []), ("b", A(4, 5, 6, 7), [])]


def test_deterministic_pools_are_not_split() -> None:
    pool = spec("203.0.113.8/29", "203.0.113.0/30", mode="deterministic",
                insidePrefixes=["100.64.0.0/22"])  # 1,024 inside at 126 an address: 9
    p = plan_addresses(pool, ["b", "a"], [share("gone", [0, 1])],
                       dict([report("a", {8: 3, 9: 1})]), {}, NOW, DRAIN)
    everything = tuple(A(*range(8, 16), 0, 1, 2, 3))  # in the formula's order
    assert p.assigned == {"a": everything, "b": everything}
    # the status lists no addresses (every node holds them all), and holds nothing back
    assert [(n.node, n.addresses, n.blocks_used, n.blocks_total) for n in p.nodes] == [
        ("a", [], 4, 2 * PER), ("b", [], 0, 0)]
    assert p.starved == ()


@pytest.mark.parametrize(("mode", "prefix", "limit"), [
    ("port-block", "100.64.0.0/17", 16384),
    ("deterministic", "100.64.0.0/19", 4096),
])
def test_a_pool_too_large_to_split_is_not_served(mode: str, prefix: str, limit: int) -> None:
    extra = {"insidePrefixes": ["10.0.0.0/8"]} if mode == "deterministic" else {}
    before = [share("a", [0, 1])]
    p = plan_addresses(spec(prefix, mode=mode, **extra), ["a"], before, {}, {}, NOW, DRAIN)
    assert (p.too_large, p.assigned, p.nodes) == (limit, {}, tuple(before))
    fits = spec(prefix.replace("/17", "/18").replace("/19", "/20"), mode=mode, **extra)
    assert plan_addresses(fits, ["a"], [], {}, {}, NOW, DRAIN).too_large is None


def test_a_node_gets_no_more_than_the_data_path_holds() -> None:
    p = plan_addresses(spec("100.64.0.0/18"), ["a", "b", "c"], [], {}, {}, NOW, DRAIN)
    assert [len(n.addresses) for n in p.nodes] == [4096, 4096, 4096]


@dataclass
class Agent:
    applied: set[str] = field(default_factory=set)  # the addresses of the spec it applied
    used: set[str] = field(default_factory=set)  # addresses it holds a port block on
    stop_at: datetime | None = None  # its node left: its last subscriber ends by then

    def may_use(self) -> set[str]:  # an agent allocates only while its node serves the pool
        return self.used if self.stop_at else self.applied | self.used


@pytest.mark.parametrize("seed", range(20))
def test_nodes_coming_and_going_never_share_an_address(seed: int) -> None:
    """Rounds of a cluster whose nodes come and go, whose agents apply their specs late,
    take blocks on addresses between the operator's read and their next spec, and keep
    blocks on an address taken from them: no two agents ever hold one address. A node that
    leaves takes no new block (as with its IPPool blocks), and its subscribers end within
    the drain time."""
    rnd = random.Random(seed)
    pool = spec("203.0.113.0/28", timeouts={"hold": rnd.choice(["0s", "2m"])})
    names = [f"n{i}" for i in range(5)]
    live = set(rnd.sample(names, 2))
    agents = {n: Agent() for n in live}
    specs: dict[str, tuple[str, ...]] = {}  # the BNGNodes' specs, as the operator wrote them
    current: Sequence[NATNodeUsage] = ()
    now, drain = NOW, 600
    for _ in range(200):
        now += timedelta(seconds=rnd.choice([1, 5, 30, 200]))
        if rnd.random() < 0.1:
            n = rnd.choice(names)
            live ^= {n}
            specs.pop(n, None)
            a = agents.setdefault(n, Agent())
            a.stop_at = None if n in live else now + timedelta(seconds=rnd.randrange(drain))
            a.applied = set()  # like an IPPool block: a node that leaves takes no new block
        for n, a in list(agents.items()):
            if a.stop_at is not None and a.stop_at <= now:
                del agents[n]
        # 1. the operator reads the reports and plans
        reports = {n: [NATUsage(pool="cgnat", address=x, blocks_used=1, blocks_total=PER)
                       for x in sorted(a.used)] for n, a in agents.items()}
        in_use: dict[str, Set[str] | None] = {
            n: (set(specs[n]) | agents[n].used if agents[n].applied == set(specs[n]) else None)
            if n in agents else set(specs[n]) for n in specs}
        p = plan_addresses(pool, sorted(live), current, reports, in_use, now, drain)
        check(p, pool_addresses(pool))
        current, specs = p.nodes, dict(p.assigned)
        # 2. agents take and free blocks on what they have applied, then maybe apply
        for n, a in agents.items():
            if a.stop_at is None and a.applied and rnd.random() < 0.4:
                a.used.add(rnd.choice(sorted(a.applied)))
            if a.used and rnd.random() < 0.2:
                a.used.discard(rnd.choice(sorted(a.used)))
            if n in specs and rnd.random() < 0.7:
                a.applied = set(specs[n])
        held = [(n, x) for n, a in agents.items() for x in a.may_use()]
        assert len(held) == len({x for _, x in held}), sorted(held, key=lambda h: h[1])
        for n, mine in specs.items():  # and no spec names what another agent may use
            assert not any(set(mine) & a.may_use() for m, a in agents.items() if m != n)

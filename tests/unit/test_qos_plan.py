"""The access data path's pure parts: how a session is carried, class minors, and what a
reload changes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from bng_operator.agent.config import NodeConfig, PoolConfig, ShapingRates, SubnetConfig
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.qos.plan import (
    GROUP_CLASS_BASE,
    LAST_GROUP,
    Access,
    ClassIds,
    Step,
    access_of,
    class_interfaces,
    group_class,
    reload_steps,
    session_step,
)

RES = ShapingRates("residential", 20_000_000, 25_000, 5_000_000, 6_250)
BIZ = ShapingRates("business", 100_000_000, 125_000, 100_000_000, 125_000)


def _cid(major: int, minor: int) -> int:
    return major << 16 | minor


def test_class_ids_are_handed_out_lowest_first_and_reused() -> None:
    c = ClassIds()
    assert [c.take(a) for a in (10, 11, 12)] == [_cid(1, 1), _cid(1, 2), _cid(1, 3)]
    assert c.take(11) == _cid(1, 2)  # the one it has
    assert c.release(11) == _cid(1, 2) and c.release(11) is None
    assert c.take(13) == _cid(1, 2)
    assert c.by_address == {10: _cid(1, 1), 12: _cid(1, 3), 13: _cid(1, 2)}


def test_adopted_class_ids_are_kept_and_the_gaps_stay_free() -> None:
    c = ClassIds()
    assert c.take(10, _cid(1, 5)) == _cid(1, 5)
    assert c.take(11, _cid(1, 2)) == _cid(1, 2)
    assert c.take(12, _cid(1, 2)) is None  # another address's
    assert c.take(13, _cid(0x0FFF, 1)) is None  # not in this layout
    assert sorted(c.take(a) or 0 for a in (20, 21, 22)) == [_cid(1, 1), _cid(1, 3), _cid(1, 4)]
    assert c.take(23) == _cid(1, 6)


def test_past_the_roots_class_ids_sessions_go_into_groups_until_all_are_taken() -> None:
    c = ClassIds(root_minors=2, group_minors=3, groups=2)
    got = [c.take(a) for a in range(8)]
    assert got == [_cid(1, 1), _cid(1, 2), _cid(2, 1), _cid(2, 2), _cid(2, 3), _cid(3, 1),
                   _cid(3, 2), _cid(3, 3)]
    assert c.take(99) is None  # every id taken: the session goes unshaped, counted
    assert c.release(3) == _cid(2, 2)
    assert c.take(99) == _cid(2, 2)
    assert group_class(2) == _cid(1, GROUP_CLASS_BASE + 2)


def test_the_default_layout_holds_the_design_limit_and_more() -> None:
    c = ClassIds()
    assert c.root_minors == 0xEFFF and c.capacity > 1_000_000
    # the root's last, then group 2's first; ids round-trip through their index
    assert c.class_id(0xEFFE) == _cid(1, 0xEFFF) and c.class_id(0xEFFF) == _cid(2, 1)
    assert all(c.index(c.class_id(i)) == i for i in (0, 0xEFFE, 0xEFFF, 200_000))
    assert group_class(LAST_GROUP) <= _cid(1, 0xFFFE)  # group classes fit the root


def _lease(cls: str = "residential", pool: str = "residential", giaddr: int = 0,
           tags: bytes = b"") -> Lease:
    return Lease(address=ADDRESS, identity="mac:02:00:00:00:00:01", mac="02:00:00:00:00:01",
                 client_id=None, circuit_id=None, remote_id=None, pool=pool,
                 subscriber_class=cls, expires=0, hostname=None, bound_at=0, giaddr=giaddr,
                 tags=tags)


def _config(shaping: dict[str, ShapingRates], gateway: str = "100.64.0.1") -> NodeConfig:
    subnet = SubnetConfig(IPv4Network("100.64.0.0/24"), int(IPv4Address("100.64.0.0")),
                          int(IPv4Address("100.64.0.255")), IPv4Address(gateway), {})
    pool = PoolConfig("residential", None, (), frozenset(), frozenset(),  # type: ignore[arg-type]
                      (subnet,))
    return NodeConfig("n", ("access0",), 10, {"residential": pool}, (), shaping=shaping)


ADDRESS = int(IPv4Address("100.64.0.20"))
MAC = bytes.fromhex("020000000001")
ON_LINK = Access(mac=MAC, gateway=int(IPv4Address("100.64.0.1")))
TAGGED = Access(mac=MAC, tags=b"\x81\x00\x00\x64", gateway=int(IPv4Address("100.64.0.1")))


@pytest.mark.parametrize(("lease", "access"), [
    (_lease(), ON_LINK),
    (_lease(tags=b"\x81\x00\x00\x64"), TAGGED),
    (_lease(giaddr=int(IPv4Address("10.0.0.1"))), Access(routed=True)),  # behind a relay
    (_lease(pool="gone"), Access(mac=MAC)),  # its pool left the config: no gateway
])
def test_a_session_is_carried_as_the_request_that_bound_it_came(
        lease: Lease, access: Access) -> None:
    assert access_of(lease, _config({})) == access


R, B = {"residential": RES}, {"residential": RES, "business": BIZ}


@pytest.mark.parametrize(("installed", "lease", "config", "steps"), [
    ((ON_LINK, RES), _lease(), _config(R), []),  # nothing changed
    ((ON_LINK, RES), _lease(), _config({"residential": BIZ}),
     [Step(ADDRESS, ON_LINK, BIZ)]),  # policy edited
    ((ON_LINK, RES), _lease("business"), _config(B), [Step(ADDRESS, ON_LINK, BIZ)]),
    ((ON_LINK, RES), _lease(), _config({}), [Step(ADDRESS, ON_LINK, None)]),  # lost its policy
    ((ON_LINK, None), _lease(), _config(R), [Step(ADDRESS, ON_LINK, RES)]),  # got one
    ((ON_LINK, RES), None, _config(R), [Step(ADDRESS, None)]),  # no session any more
    ((ON_LINK, RES), _lease(), _config(R, gateway="100.64.0.254"),  # a new gateway
     [Step(ADDRESS, Access(mac=MAC, gateway=int(IPv4Address("100.64.0.254"))), RES)]),
])
def test_a_reload_changes_exactly_the_sessions_whose_access_or_rates_changed(
        installed: tuple[Access, ShapingRates | None], lease: Lease | None,
        config: NodeConfig, steps: list[Step]) -> None:
    leases = {ADDRESS: lease} if lease is not None else {}
    assert reload_steps({ADDRESS: installed}, leases, config) == steps


def test_rates_set_for_a_session_stand_over_its_classs_policy_through_a_reload() -> None:
    lease = _lease()
    assert session_step(lease, _config(R), BIZ) == Step(ADDRESS, ON_LINK, BIZ)
    assert session_step(lease, _config(R)) == Step(ADDRESS, ON_LINK, RES)
    # a policy edit leaves an overridden session alone, and re-rates it once the override goes
    assert reload_steps({ADDRESS: (ON_LINK, BIZ)}, {ADDRESS: lease}, _config(R),
                        {ADDRESS: BIZ}) == []
    assert reload_steps({ADDRESS: (ON_LINK, BIZ)}, {ADDRESS: lease}, _config(R)) == \
        [Step(ADDRESS, ON_LINK, RES)]


@pytest.mark.parametrize(("where", "attached", "classes_on"), [
    ("access1", {"access0", "access1"}, ["access1"]),  # its own interface only
    ("access2", {"access0", "access1"}, []),  # its interface is not shaped (yet)
    ("", {"access1", "access0"}, ["access0", "access1"]),  # a lease that does not say
])
def test_a_sessions_classes_go_on_its_own_access_interface(
        where: str, attached: set[str], classes_on: list[str]) -> None:
    assert class_interfaces(where, attached) == classes_on

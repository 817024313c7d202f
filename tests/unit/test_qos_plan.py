"""The access data path's pure parts: how a session is carried, class minors, and what a
reload changes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from bng_operator.agent.config import NodeConfig, PoolConfig, ShapingRates, SubnetConfig
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.qos.plan import (
    LAST_MINOR,
    Access,
    Minors,
    Step,
    access_of,
    class_interfaces,
    reload_steps,
    session_step,
)

RES = ShapingRates("residential", 20_000_000, 25_000, 5_000_000, 6_250)
BIZ = ShapingRates("business", 100_000_000, 125_000, 100_000_000, 125_000)


def test_minors_are_handed_out_lowest_first_and_reused() -> None:
    m = Minors()
    assert [m.take(a) for a in (10, 11, 12)] == [1, 2, 3]
    assert m.take(11) == 2  # the one it has
    assert m.release(11) == 2 and m.release(11) is None
    assert m.take(13) == 2
    assert m.by_address == {10: 1, 12: 3, 13: 2}


def test_adopted_minors_are_kept_and_the_gaps_stay_free() -> None:
    m = Minors()
    assert m.take(10, minor=5) == 5
    assert m.take(11, minor=2) == 2
    assert sorted(m.take(a) or 0 for a in (20, 21, 22)) == [1, 3, 4]
    assert m.take(23) == 6


def test_minors_run_out_at_the_htb_limit() -> None:
    m = Minors()
    assert m.take(1, minor=LAST_MINOR) == LAST_MINOR
    m._free.clear()  # as if all the rest were taken
    assert m.take(2) is None


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

"""NAT44 as a session feature (agent/nat/feature.py) on the real kernel maps: blocks given as
sessions bind, logged durably and put in ``nat_bindings``; released and held when they end;
another block when one fills (real packets through nat_out); adopted after a restart; a
NATPool edit applied live; deterministic mode. The agent's whole run, with dhclient and
traffic, is tests/e2e/test_nat.py."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from bng_lab.dhcp_env import bound_lease, sample_config
from bng_operator.agent.config import NodeConfig
from bng_operator.agent.dataplane.nat import Binding
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.nat.feature import NatFeature
from bng_operator.agent.sessions.session import Change, EndReason, Identity, Session, State
from bng_operator.api import NATPool
from bng_operator.metrics import AgentMetrics
from tests.bpf.test_nat import TC_ACT_REDIRECT, fields, out, udp

A = IPv4Address
REMOTE = A("198.51.100.7")


def nat_edit(**spec: Any):  # type: ignore[no-untyped-def]
    def edit(objs):  # type: ignore[no-untyped-def]
        return [o.model_copy(update={"spec": o.spec.model_copy(update=spec)})
                if isinstance(o, NATPool) else o for o in objs]
    return edit


# 2 addresses x 4 blocks of 256 ports; 2 blocks a subscriber at most; no hold
SMALL = dict(addresses=["203.0.113.0/31"], port_range={"start": 1024, "end": 2047},
             ports_per_block=256, blocks_per_subscriber=2)


def config(**spec: Any) -> NodeConfig:
    from bng_operator.api.natpool import NATTimeouts, PortRange

    spec = {**SMALL, **spec}
    spec["port_range"] = PortRange(**spec["port_range"])
    spec["timeouts"] = NATTimeouts(**spec.get("timeouts", {"hold": "0s"}))
    return sample_config(nat_edit(**spec))  # type: ignore[no-any-return]


def lease(i: int, **kw: Any) -> Lease:
    return bound_lease(address=int(A("100.64.0.20")) + i, identity=f"remote:res-{i}",
                       mac=f"02:00:00:00:00:{i:02x}", remote_id=f"res-{i}", **kw)


def session(lease_: Lease) -> Session:
    s = Session(lease_.identity, Identity(lease_.mac, remote_id=lease_.remote_id),
                State.BOUND, lease_.address, lease_.pool, lease_.subscriber_class, lease_)
    return s


class Harness:
    def __init__(self, root: Path, file: Path, cfg: NodeConfig) -> None:
        self.leases: dict[int, Lease] = {}
        self.granted: list[str] = []
        self.feature = NatFeature(AgentMetrics(), root, cfg, file,
                                  lambda: list(self.leases.values()), self.leases.get,
                                  granted=lambda lease: self.granted.append(lease.identity))

    def start(self) -> Harness:
        assert self.feature.start()
        return self

    def sync(self) -> None:
        self.feature._work.submit(lambda: None).result()

    def bind(self, lease_: Lease) -> None:
        self.leases[lease_.address] = lease_
        self.feature.on_bound(session(lease_))
        self.sync()

    def end(self, lease_: Lease) -> None:
        self.leases.pop(lease_.address, None)
        s = session(lease_)
        s.state, s.end_reason = State.ENDED, EndReason.RELEASED
        self.feature.on_ended(s)
        self.sync()

    def kernel(self) -> dict[IPv4Address, Binding]:
        assert self.feature.path is not None
        return self.feature.path.bindings()

    def log(self) -> list[tuple[str, str, int, str, str]]:
        db = sqlite3.connect(self.feature.file)
        try:
            return [(e, str(A(p)), f, s, r) for e, p, f, s, r in db.execute(
                "SELECT event, public, first_port, subscriber, reason FROM block_log ORDER BY id")]
        finally:
            db.close()


@pytest.fixture
def where(bpffs: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    root = bpffs / "bngtest-natfeature"
    shutil.rmtree(root, ignore_errors=True)  # a crashed run's
    yield root, tmp_path / "nat-edge-1.sqlite"
    shutil.rmtree(root, ignore_errors=True)


def test_sessions_get_blocks_logged_before_the_kernel_and_lose_them_when_they_end(
        where: tuple[Path, Path]) -> None:
    h = Harness(*where, config()).start()
    try:
        a, b = lease(0), lease(1)
        h.bind(a)
        h.bind(b)
        k = h.kernel()
        assert k[A(a.address)] == Binding(A("203.0.113.0"), 0, 256, (1024,))
        assert k[A(b.address)] == Binding(A("203.0.113.1"), 0, 256, (1024,))  # spread
        assert h.log() == [("allocated", "203.0.113.0", 1024, "remote:res-0", "session bound"),
                           ("allocated", "203.0.113.1", 1024, "remote:res-1", "session bound")]
        assert h.feature.status(a) == {"nat": {"pool": "cgnat", "address": "203.0.113.0",
                                               "portStart": 1024, "portEnd": 1279,
                                               "ports": "1024-1279"}}
        assert h.granted == ["remote:res-0", "remote:res-1"]
        h.end(a)
        assert A(a.address) not in h.kernel()
        assert h.log()[-1] == ("released", "203.0.113.0", 1024, "remote:res-0",
                               "session ended (released)")
        usage = {(u.address, u.blocks_used) for u in h.feature.usage()}
        assert usage == {("203.0.113.0", 0), ("203.0.113.1", 1)}
    finally:
        h.feature.stop()


def test_sessions_before_nat_starts_wake_no_worker_and_get_their_blocks_at_the_start(
        where: tuple[Path, Path]) -> None:
    h = Harness(*where, config())
    handed: list[object] = []
    submit = h.feature._work.submit

    def counted(fn: Any, *args: Any) -> Any:
        handed.append(fn)
        return submit(fn, *args)

    h.feature._work.submit = counted  # type: ignore[method-assign]
    try:
        a = lease(0)
        h.leases[a.address] = a
        h.feature.on_bound(session(a))  # NAT not running: nothing for its worker
        assert handed == []
        h.start()
        assert A(a.address) in h.kernel()  # the start reconciled with the sessions
        b = lease(1)
        h.bind(b)
        assert A(b.address) in h.kernel()
        assert h.log()[-1][3] == "remote:res-1"
    finally:
        h.feature.stop()


def test_a_full_block_grows_on_the_same_address(where: tuple[Path, Path]) -> None:
    h = Harness(*where, config(ports_per_block=4, port_range={"start": 1024, "end": 1039})
                ).start()
    try:
        a = lease(0)
        h.bind(a)
        path = h.feature.path
        assert path is not None
        inside = A(a.address)
        ports = {fields(out(path, udp(inside, REMOTE, 40000 + i, 53)).ip)[2] for i in range(4)}
        assert len(ports) == 4 and all(1024 <= p < 1028 for p in ports)
        full = out(path, udp(inside, REMOTE, 40004, 53))  # its block is full: ICMP 3/13 back
        assert full.action == TC_ACT_REDIRECT and full.ip[9] == 1 and full.ip[20:22] == b"\x03\x0d"
        h.feature._collect()
        g = h.kernel()[inside]
        assert (g.public, g.blocks) == (A("203.0.113.0"), (1024, 1028))
        assert h.log()[-1] == ("allocated", "203.0.113.0", 1028, "remote:res-0", "blocks full")
        sport = fields(out(path, udp(inside, REMOTE, 40004, 53)).ip)[2]
        assert 1028 <= sport < 1032  # the new flow gets a port of the new block
        m = h.feature.metrics.registry.get_sample_value(
            "bng_nat_port_exhaustion_total", {"pool": "cgnat"})
        assert m is not None and m >= 1
        h.feature._collect()  # the tables' sizes are the collector's count
        r = h.feature.reading()
        assert r.stats["block_full"] >= 1 and "block_full" in r.drops
        assert r.tables["bindings"] == 1 and r.tables["outbound"] == 5
    finally:
        h.feature.stop()


def test_a_restart_adopts_bindings_and_releases_those_whose_session_ended_meanwhile(
        where: tuple[Path, Path]) -> None:
    h = Harness(*where, config()).start()
    a, b = lease(0), lease(1)
    try:
        h.bind(a)
        h.bind(b)
        before = h.kernel()
    finally:
        h.feature.stop()
    again = Harness(*where, config())
    again.leases = {a.address: a}  # b's lease ended while the agent was down
    again.start()
    try:
        assert again.feature.path is not None and again.feature.path.adopted
        assert again.kernel() == {A(a.address): before[A(a.address)]}
        assert again.log()[2:] == [("released", "203.0.113.1", 1024, "remote:res-1",
                                    "session ended while the agent was down")]
        c = lease(2)
        again.bind(c)  # a's block is not given again
        assert again.kernel()[A(c.address)].public == A("203.0.113.1")
    finally:
        again.feature.stop()


def test_a_natpool_edit_applies_live_and_is_logged(where: tuple[Path, Path]) -> None:
    h = Harness(*where, config()).start()
    try:
        a, b = lease(0), lease(1)
        h.bind(a)
        h.bind(b)
        assert h.kernel()[A(b.address)].public == A("203.0.113.1")
        h.feature.reconfigure(config(addresses=["203.0.113.0", "203.0.113.9"],
                                     timeouts={"udp": "10m", "hold": "0s"}))
        h.sync()
        k = h.kernel()
        assert k[A(a.address)] == Binding(A("203.0.113.0"), 0, 256, (1024,))  # untouched
        assert k[A(b.address)].public == A("203.0.113.9")
        assert h.log()[2:] == [
            ("released", "203.0.113.1", 1024, "remote:res-1", "NATPool changed"),
            ("allocated", "203.0.113.9", 1024, "remote:res-1", "NATPool changed")]
        assert h.feature.path is not None
        assert h.feature.path.pool(0).timeouts.udp == 600
        assert set(h.feature.path.addresses()) == {A("203.0.113.0"), A("203.0.113.9")}
    finally:
        h.feature.stop()


def test_a_natpool_removed_releases_its_blocks_with_that_reason(
        where: tuple[Path, Path]) -> None:
    from bng_operator.api import SubscriberClass

    def without_nat(objs):  # type: ignore[no-untyped-def]
        return [o.model_copy(update={"spec": o.spec.model_copy(update={"nat_pool": None})})
                if isinstance(o, SubscriberClass) else o
                for o in objs if not isinstance(o, NATPool)]

    h = Harness(*where, config()).start()
    try:
        a = lease(0)
        h.bind(a)
        h.feature.reconfigure(sample_config(without_nat))
        h.sync()
        assert h.kernel() == {}
        assert h.log()[-1] == ("released", "203.0.113.0", 1024, "remote:res-0",
                               "NATPool cgnat removed")
    finally:
        h.feature.stop()


def test_a_class_without_nat_loses_its_binding(where: tuple[Path, Path]) -> None:
    h = Harness(*where, config()).start()
    try:
        a = lease(0)
        h.bind(a)
        moved = lease(0, subscriber_class="business")
        h.leases[a.address] = moved
        h.feature.on_changed(session(moved), Change.CLASS, a)
        h.sync()
        assert h.kernel() == {}
        assert h.log()[-1][0] == "released"
    finally:
        h.feature.stop()


def test_deterministic_mode_logs_the_formula_not_the_subscribers(where: tuple[Path, Path]) -> None:
    cfg = config(mode="deterministic", inside_prefixes=["100.64.0.0/28"],
                 ports_per_block=256, blocks_per_subscriber=1, addresses=["203.0.113.0/30"])
    h = Harness(*where, cfg).start()
    try:
        a = lease(0)  # 100.64.0.20 is not in 100.64.0.0/28: no binding, traffic dropped
        h.bind(a)
        assert h.kernel() == {}
        b = bound_lease(address=int(A("100.64.0.9")), identity="remote:res-9")
        h.bind(b)
        # n = 9, 4 slots an address: address 2, slot 1
        assert h.kernel()[A("100.64.0.9")] == Binding(A("203.0.113.2"), 0, 256, (1280,))
        assert h.log() == []
        db = sqlite3.connect(h.feature.file)
        [(pool, formula)] = db.execute("SELECT pool, config FROM formula_log").fetchall()
        db.close()
        assert pool == "cgnat" and '"insidePrefixes": ["100.64.0.0/28"]' in formula
    finally:
        h.feature.stop()


def test_sessions_of_other_classes_get_no_binding(where: tuple[Path, Path]) -> None:
    h = Harness(*where, config()).start()
    try:
        h.bind(lease(0, subscriber_class="business"))
        assert h.kernel() == {} and h.log() == []
    finally:
        h.feature.stop()



def test_the_status_fields_fit_the_subscriber_schema(where: tuple[Path, Path]) -> None:
    from bng_operator.api.subscriber import SubscriberStatus

    h = Harness(*where, config()).start()
    try:
        a = lease(0)
        h.bind(a)
        st = SubscriberStatus.model_validate(h.feature.status(a) | {"conditions": []})
        assert st.nat is not None and (st.nat.address, st.nat.port_start, st.nat.ports) == (
            "203.0.113.0", 1024, "1024-1279")
    finally:
        h.feature.stop()


def test_a_pool_that_outgrows_the_tables_gets_new_ones_with_its_flows(
        where: tuple[Path, Path]) -> None:
    h = Harness(*where, config()).start()
    try:
        a = lease(0)
        h.bind(a)
        old = h.feature.path
        assert old is not None
        inside = A(a.address)
        sport = fields(out(old, udp(inside, REMOTE, 40000, 53)).ip)[2]
        # 64 addresses x 1,024 ports: the tables grow from 8,192 to 262,144 entries
        h.feature.reconfigure(config(addresses=["203.0.113.0/26"]))
        h.sync()
        new = h.feature.path
        assert new is not None and new is not old and new.generation != old.generation
        [m] = new.mappings(inside)
        assert (m.inside_port, m.public_port) == (40000, sport)  # carried over
        assert fields(out(new, udp(inside, REMOTE, 40000, 53)).ip)[2] == sport
        assert h.kernel()[inside].public == A("203.0.113.0")  # the binding kept its block
    finally:
        h.feature.stop()


@pytest.mark.parametrize("same_layout", [True, False])
def test_a_restart_with_other_table_sizes_carries_the_flows_over(
        where: tuple[Path, Path], same_layout: bool) -> None:
    h = Harness(*where, config()).start()
    a = lease(0)
    inside = A(a.address)
    try:
        h.bind(a)
        old = h.feature.path
        assert old is not None
        sport = fields(out(old, udp(inside, REMOTE, 40000, 53)).ip)[2]
        gen = old.generation
        if not same_layout:  # as if an agent whose mappings mean something else made it
            stamp = old.obj.map("nat_layout")
            stamp[stamp.Key(0)] = stamp.Leaf(old.layout ^ 1)
    finally:
        h.feature.stop()
    # The agent comes back with a NATPool that grew while it was down: other table sizes.
    again = Harness(*where, config(addresses=["203.0.113.0/26"]))
    again.leases[a.address] = a
    again.start()
    try:
        new = again.feature.path
        assert new is not None and not new.adopted and new.generation != gen
        assert again.kernel()[inside].public == A("203.0.113.0")  # the binding kept its block
        errors = again.feature.metrics.nat_errors.labels("carry-over")._value.get()
        if same_layout:
            [m] = new.mappings(inside)
            assert (m.inside_port, m.public_port) == (40000, sport)
            assert fields(out(new, udp(inside, REMOTE, 40000, 53)).ip)[2] == sport
            assert errors == 0
        else:  # nothing of it is trusted: the flow gets a new mapping, and it is counted
            assert new.mappings(inside) == []
            assert errors == 1
    finally:
        again.feature.stop()

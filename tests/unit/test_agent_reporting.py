"""What the agent tells the apiserver: Subscriber names and status, BNGNode status, and the
writer's coalescing and bounds. Pure tables, plus the writer against a recording fake."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any

import pytest

from bng_lab.dhcp_env import bound_lease
from bng_operator.agent.config import node_config
from bng_operator.agent.report.kube import KubeReporter, ReportSettings
from bng_operator.agent.report.status import block_usage, node_status
from bng_operator.agent.report.subscribers import expired_past_ttl, object_name, status
from bng_operator.agent.runtime import Agent, AgentSettings
from bng_operator.agent.sources import FileSource, load_node_config
from bng_operator.api.bngnode import BNGNodeSpec
from bng_operator.metrics import AgentMetrics
from tests.cases import SAMPLES

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("identity", "name"), [
    ("mac:02:00:5E:10:00:01", "mac-02-00-5e-10-00-01"),
    ("remote:res-1", "remote-res-1-"),
    ("circuit:biz-olt1-1/1/7", "circuit-biz-olt1-1-1-7-"),
    ("cid:01020304", "cid-01020304-"),
    ("circuit:///", "circuit-"),
])
def test_object_names_are_dns_names_and_never_collide(identity: str, name: str) -> None:
    got = object_name(identity)
    assert got.startswith(name)
    assert len(got) <= 63 and got == got.lower() and got[0].isalnum() and got[-1].isalnum()


def test_distinct_identities_with_the_same_slug_get_distinct_names() -> None:
    assert object_name("circuit:a/1") != object_name("circuit:a-1")


@pytest.mark.parametrize(("event", "state", "expiry"), [
    ("allocate", "Bound", NOW + 3600),
    ("release", "Released", NOW),
    ("expire", "Expired", NOW),
    ("decline", "Declined", NOW),
])
def test_status_after_each_event(event: Any, state: str, expiry: float) -> None:
    lease = bound_lease(expires=NOW + 3600)
    st = status(lease, event, "edge-1", NOW)
    assert st["state"] == state and st["node"] == "edge-1"
    assert st["address"] == str(IPv4Address(lease.address))
    assert st["leaseExpiry"] == datetime.fromtimestamp(expiry, UTC).isoformat().replace(
        "+00:00", "Z")


def _obj(state: str, ended: float, node: str = "edge-1", managed: bool = True) -> dict[str, Any]:
    labels = {"bng.dev/node": node}
    if managed:
        labels["app.kubernetes.io/managed-by"] = "bng-agent"
    return {"metadata": {"name": "x", "labels": labels},
            "status": {"state": state, "node": node,
                       "leaseExpiry": datetime.fromtimestamp(ended, UTC).isoformat()}}


@pytest.mark.parametrize(("obj", "gone"), [
    (_obj("Expired", NOW - 90), True),
    (_obj("Released", NOW - 90), True),
    (_obj("Expired", NOW - 30), False),  # within the TTL
    (_obj("Bound", NOW - 90), False),
    (_obj("Expired", NOW - 90, node="edge-2"), False),  # another node's
    (_obj("Expired", NOW - 90, managed=False), False),  # a user's (a reservation)
])
def test_ttl_cleanup_takes_only_this_nodes_ended_subscribers(obj: dict[str, Any],
                                                            gone: bool) -> None:
    assert expired_past_ttl(obj, "edge-1", 60, NOW) is gone


def _config() -> Any:
    spec = BNGNodeSpec.model_validate({
        "nodeName": "edge-1", "interfaces": {"access": ["access0"]},
        "pools": [{"name": "residential", "blocks": ["100.64.0.0/24", "100.64.1.0/24"],
                   "spec": {"subnets": [{"cidr": "100.64.0.0/20", "gateway": "100.64.0.1"}]}}]})
    return node_config(spec)


def test_block_usage_counts_leases_per_block_and_orphans_under_their_pool() -> None:
    leases = [bound_lease(address=int(IPv4Address("100.64.0.20"))),
              bound_lease(address=int(IPv4Address("100.64.1.5")), identity="mac:b"),
              bound_lease(address=int(IPv4Address("100.64.1.6")), identity="mac:c"),
              bound_lease(address=int(IPv4Address("10.1.1.1")), identity="mac:d", pool="gone")]
    got = [(b.pool, b.cidr, b.leases, b.size) for b in block_usage(_config(), leases)]
    assert got == [("gone", "", 1, 0), ("residential", "100.64.0.0/24", 1, 254),
                   ("residential", "100.64.1.0/24", 2, 256)]


def test_node_status_conditions() -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    ok = node_status(_config(), [], [], [], "", ("", ""), 4, now, [], now)
    assert [(c.type, c.status, c.observed_generation) for c in ok.conditions] == [
        ("Ready", "True", 4), ("Degraded", "False", 4)]
    bad = node_status(_config(), [], [], [], "access interfaces missing: access0",
                      ("FastPathDown", "fast path unavailable"), 5, now, list(ok.conditions), now)
    assert [(c.type, c.status, c.reason, c.message) for c in bad.conditions] == [
        ("Ready", "False", "NotServing", "access interfaces missing: access0"),
        ("Degraded", "True", "FastPathDown", "fast path unavailable")]


@pytest.mark.parametrize(("field", "reason"), [
    ("refused", "CredentialsRefused"), ("reload_error", "ConfigurationNotApplied"),
    ("placement", "CPUPlacementNotFollowed")])
def test_the_degraded_condition_names_its_cause(field: str, reason: str) -> None:
    agent = Agent(AgentSettings("edge-1", fast_path=False), FileSource([SAMPLES]))
    agent.config = load_node_config(agent.source, "edge-1")
    assert agent._degraded() == ("", "")
    setattr(agent.health, field, "what went wrong")
    assert agent._degraded() == (reason, "what went wrong")
    agent.settings.fast_path = True  # and a fast path that never loaded: the first still wins
    assert agent._degraded() == (reason, "what went wrong")
    setattr(agent.health, field, "")
    assert agent._degraded() == ("FastPathDown", "fast path unavailable: the slow path serves "
                                 "every request")


class FakeApi:
    """Records the writer's calls; ``down`` makes every call fail as a dead apiserver does.
    ``objects`` are what a list returns, in ``page``-sized pages."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.times: list[float] = []  # time.monotonic() of each call
        self.lists: list[dict[str, Any]] = []  # the keyword arguments of each list
        self.down = False
        self.objects: list[dict[str, Any]] = []

    def __getattr__(self, verb: str) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            if self.down:
                raise ConnectionError("connection refused")
            name = args[4] if len(args) > 4 and isinstance(args[4], str) else ""
            self.calls.append((verb, name))
            self.times.append(time.monotonic())
            if verb != "list_namespaced_custom_object":
                return {}
            self.lists.append(kw)
            start = int(kw.get("_continue") or 0)
            end = start + kw.get("limit", len(self.objects))
            more = str(end) if end < len(self.objects) else None
            return {"items": self.objects[start:end], "metadata": {"continue": more}}
        return call


def _reporter(**kw: Any) -> tuple[KubeReporter, FakeApi]:
    api = FakeApi()
    r = KubeReporter(None, "edge-1", "bng-system", ReportSettings(**kw), AgentMetrics())
    r.custom = api
    return r, api


def _drain(r: KubeReporter, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while r.pending() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_updates_of_one_subscriber_coalesce_into_the_latest() -> None:
    r, api = _reporter(rate=1000)
    api.down = True
    r.start()
    lease = bound_lease()
    for event in ("allocate", "release", "allocate", "expire", "allocate"):
        r.subscriber("mac-x", event, lease)  # type: ignore[arg-type]
    assert r.pending() == 1
    api.down = False
    _drain(r)
    r.stop()
    writes = [c for c in api.calls if c[0] != "list_namespaced_custom_object"]
    assert writes == [("create_namespaced_custom_object", ""),
                      ("patch_namespaced_custom_object_status", "mac-x")]


def test_the_queue_is_bounded_and_a_full_one_asks_for_a_resync() -> None:
    r, _ = _reporter(max_pending=3)
    for i in range(5):
        r.subscriber(f"s{i}", "allocate", bound_lease(identity=f"mac:{i}"))
    assert r.pending() == 3
    assert r.need_resync


def test_writes_are_capped_in_rate() -> None:
    r, api = _reporter(rate=20)
    r.start()
    t0 = time.monotonic()
    for i in range(15):
        r.subscriber(f"s{i}", "allocate", bound_lease(identity=f"mac:{i}"))
    _drain(r, 10)
    took = time.monotonic() - t0
    r.stop()
    n = len([c for c in api.calls if c[0] != "list_namespaced_custom_object"])
    assert n == 30  # create + status each
    assert took >= (n - 20) / 20 * 0.9  # a burst of 20, then 20 per second


def _writes(api: FakeApi) -> list[tuple[str, str]]:
    return [c for c in api.calls if c[0] != "list_namespaced_custom_object"]


def test_events_are_written_before_the_background() -> None:
    """A new subscriber is not queued behind a resync or an accounting round."""
    r, api = _reporter(rate=1000)
    api.down = True
    r.start()
    for i in range(50):
        r.subscriber(f"old{i}", "allocate", bound_lease(identity=f"mac:{i}"), background=True)
    r.subscriber("new", "allocate", bound_lease(identity="mac:new"))
    assert not r.background_idle()
    api.down = False
    _drain(r)
    r.stop()
    names = [n for _, n in _writes(api) if n]
    assert names[0] == "new" and len(names) == 51
    assert r.background_idle()


def test_an_event_makes_the_background_update_of_its_object_moot() -> None:
    r, _ = _reporter()
    lease = bound_lease()
    r.subscriber("mac-x", "allocate", lease, background=True)
    r.subscriber("mac-x", "release", lease)
    r.subscriber("mac-x", "allocate", lease, refresh=True, background=True)  # older news
    assert r.pending() == 1 and r.background_idle()


def test_the_cleanup_lists_only_this_nodes_reports_a_page_at_a_time() -> None:
    r, api = _reporter(rate=1000)
    api.objects = [{"metadata": {"name": f"s{i}", "labels": {}}, "status": {}}
                   for i in range(1234)]
    r.start()
    deadline = time.monotonic() + 5
    while len(api.lists) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    r.stop()
    assert len(api.lists) == 3  # 1234 objects in pages of 500
    assert all(kw["label_selector"] == "bng.dev/node=edge-1,app.kubernetes.io/managed-by=bng-agent"
               for kw in api.lists)
    assert r._known == {f"s{i}" for i in range(1234)}


def test_every_request_lists_included_is_paced_by_the_rate() -> None:
    # the bucket is full (20) from the reporter's birth, so the k-th call can come no sooner
    # than (k - 20) / 20 s after it; calls are timed where they land, as a loaded machine
    # can stall this thread between any two of its own steps
    t0 = time.monotonic()
    r, api = _reporter(rate=20)
    api.objects = [{"metadata": {"name": f"s{i}", "labels": {}}, "status": {}}
                   for i in range(5000)]  # 10 list pages
    r.start()
    for i in range(15):
        r.subscriber(f"n{i}", "allocate", bound_lease(identity=f"mac:{i}"))
    _drain(r, 10)
    while len(api.lists) < 10 and time.monotonic() - t0 < 10:
        time.sleep(0.01)
    stopping = time.monotonic()  # stop() lets a call waiting for a token go at once
    r.stop()
    n = len(api.calls)
    assert n >= 40  # 30 writes, 10 list pages
    paced = [t for t in api.times if t < stopping]
    assert len(paced) >= 30  # the pacing is put to the test
    early = [(k, round(t - t0, 3)) for k, t in enumerate(paced, 1)
             if t - t0 < (k - 20) / 20 * 0.9]
    assert not early  # (call, when) that beat a burst of 20, then 20 per second

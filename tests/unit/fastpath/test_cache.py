"""The maps as a cache of bound leases: a failed delete is retried, never left answering
(issue 14, point 2)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from bng_lab.dhcp_env import bound_lease, sample_config, server
from bng_lab.messages import request
from bng_operator.agent.dhcp.codec import MessageType
from bng_operator.agent.dhcp.server import OFFER_HOLD, Context
from bng_operator.agent.fastpath.cache import SubscriberCache
from bng_operator.agent.fastpath.entries import FastEntry, SubnetOptions
from bng_operator.agent.fastpath.feature import FastPathFeature
from bng_operator.agent.sessions.events import SessionEvents
from bng_operator.agent.sessions.session import Change, State
from bng_operator.api import IPPool, SubscriberClass
from bng_operator.api.ippool import AddressRange
from bng_operator.metrics import AgentMetrics


class FlakyMaps:
    """The FastPath's map calls, with deletes that fail while ``broken``."""

    adopted_maps = False

    def __init__(self) -> None:
        self.entries: dict[tuple[bool, int, bytes], FastEntry] = {}
        self.broken = False

    def put(self, e: FastEntry) -> None:
        self.entries[e.key] = e

    def delete(self, key: tuple[bool, int, bytes]) -> None:
        if self.broken:
            raise OSError("EBUSY")
        self.entries.pop(key, None)

    def put_many(self, entries: list[FastEntry]) -> None:
        for e in entries:
            self.put(e)

    def put_subnet(self, so: SubnetOptions) -> None:
        pass


def test_a_failed_delete_is_retried_until_the_entry_is_gone() -> None:
    maps = FlakyMaps()
    errors: list[str] = []
    cache = SubscriberCache(maps, sample_config(), errors.append)  # type: ignore[arg-type]
    lease = bound_lease()
    cache.bound(lease)
    assert len(maps.entries) == 1
    maps.broken = True
    cache.unbound(lease)
    assert errors == ["delete"] and len(cache.undeleted) == 1 and len(maps.entries) == 1
    assert cache.retry_deletes() == 1  # still failing: still listed
    maps.broken = False
    assert cache.retry_deletes() == 0 and maps.entries == {} and cache.undeleted == {}


def test_a_retry_never_deletes_an_entry_bound_again() -> None:
    maps = FlakyMaps()
    cache = SubscriberCache(maps, sample_config())  # type: ignore[arg-type]
    lease = bound_lease()
    cache.bound(lease)
    maps.broken = True
    cache.unbound(lease)
    maps.broken = False
    cache.bound(lease)  # the same client, the same key, bound again
    assert cache.undeleted == {}
    assert cache.retry_deletes() == 0 and len(maps.entries) == 1


def test_a_pool_change_on_reload_removes_its_leases_entries() -> None:
    """Leases whose pool, block or excluded ranges changed leave the maps on a reload
    (issue 14, point 2): the slow path decides their next request."""
    s, _, _ = server()
    ctx = Context("access0", (IPv4Address("100.64.0.1"),))
    for i, who in enumerate(({"remote": "res-1"}, {"circuit": "biz-olt1-1/1/3"})):
        mac = f"02:00:00:00:0d:0{i}"
        offer = s.handle(request(MessageType.DISCOVER, mac, **who), ctx).reply  # type: ignore[arg-type]
        assert offer is not None
        s.handle(request(MessageType.REQUEST, mac, requested=str(offer.yiaddr),  # type: ignore[arg-type]
                         server_id="100.64.0.1", **who), ctx)
    maps = FlakyMaps()
    feature = FastPathFeature(s, None, None, None, None, "native")  # type: ignore[arg-type]
    feature.cache = SubscriberCache(maps, s.config)  # type: ignore[arg-type]
    feature.cache.warm(s.by_address.values())
    assert len(maps.entries) == 2
    bus = SessionEvents()
    bus.subscribe(feature)
    s.take_events()

    def edit(objs):  # type: ignore[no-untyped-def]
        out = []
        for o in objs:
            if isinstance(o, IPPool) and o.name == "residential":
                sub = o.spec.subnets[0]
                wider = [*sub.exclude, AddressRange(start="100.64.0.16", end="100.64.0.17")]
                sub = sub.model_copy(update={"exclude": wider})
                o = o.model_copy(update={"spec": o.spec.model_copy(update={"subnets": [sub]})})
            out.append(o)
        return out

    s.reconfigure(sample_config(edit))
    feature.cache.config = s.config
    bus.publish(s.take_events())
    left = {e.address for e in maps.entries.values()}
    business = {a for a, lease in s.by_address.items() if lease.pool == "business"}
    assert len(business) == 1 and left == business  # the residential entry left the maps


def test_a_subscriber_classified_anew_after_a_reload_is_answered_by_the_kernel_again() -> None:
    """A reload that redefines a subscriber's class or pool (a new block from the operator
    does) takes its entry out of the maps, so the slow path classifies its next request. That
    ACK, in the same class on the same address, puts the entry back: without it the
    subscriber would be answered by the slow path for good."""
    s, _, _ = server()
    ctx = Context("access0", (IPv4Address("100.64.0.1"),))
    mac, who = "02:00:00:00:0e:01", {"remote": "res-7"}
    offer = s.handle(request(MessageType.DISCOVER, mac, **who), ctx).reply  # type: ignore[arg-type]
    assert offer is not None
    address = str(offer.yiaddr)
    s.handle(request(MessageType.REQUEST, mac, requested=address,  # type: ignore[arg-type]
                     server_id="100.64.0.1", **who), ctx)
    maps = FlakyMaps()
    feature = FastPathFeature(s, None, None, None, None, "native")  # type: ignore[arg-type]
    feature.cache = SubscriberCache(maps, s.config)  # type: ignore[arg-type]
    feature.cache.warm(s.by_address.values())
    bus = SessionEvents()
    bus.subscribe(feature)
    s.take_events()

    def longer_leases(objs):  # type: ignore[no-untyped-def]
        return [o.model_copy(update={"spec": o.spec.model_copy(update={"lease_time": "2h"})})
                if isinstance(o, SubscriberClass) and o.name == "residential" else o
                for o in objs]

    s.reconfigure(sample_config(longer_leases))
    feature.cache.config = s.config
    events = s.take_events()
    assert [e.what for e in events] == [Change.POLICY]
    bus.publish(events)
    assert maps.entries == {}

    renewal = request(MessageType.REQUEST, mac, ciaddr=address, **who)  # type: ignore[arg-type]
    ack = s.handle(renewal, ctx).reply
    assert ack is not None and str(ack.yiaddr) == address
    events = s.take_events()
    assert [e.what for e in events] == [Change.RECLASSIFIED]
    bus.publish(events)
    (entry,) = maps.entries.values()
    assert str(IPv4Address(entry.address)) == address
    assert entry.lease_seconds == 7200  # the new policy's

    # Renewed again, nothing changed: no event (the kernel answers it from now on).
    s.handle(renewal, ctx)
    assert s.take_events() == []


class AckingMaps(FlakyMaps):
    """FlakyMaps with the refresh log: ``ack`` is the program ACKing an entry's REQUEST."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0
        self._log: list[tuple[int, float]] = []

    def put(self, e: FastEntry) -> None:
        self.puts += 1
        super().put(e)

    def ack(self, address: int, until: float) -> None:
        self._log.append((address, until))

    def refreshes(self) -> list[tuple[int, float]]:
        out, self._log = self._log, []
        return out


def test_the_kernels_ack_of_a_committed_offer_binds_it_and_is_not_written_again() -> None:
    class Quiet:
        asked = 0

        def quietly(self) -> None:
            self.asked += 1

    s, store, clock = server()
    s.config = replace(s.config, commit_at_offer=True)
    ctx = Context("access0", (IPv4Address("100.64.0.1"),))
    maps, commits, metrics, bus = AckingMaps(), Quiet(), AgentMetrics(), SessionEvents()
    feature = FastPathFeature(s, metrics, None, commits, None, "native",  # type: ignore[arg-type]
                              publish=bus.publish)
    feature.cache = SubscriberCache(maps, s.config)  # type: ignore[arg-type]
    bus.subscribe(feature)
    offers = [s.handle(request(MessageType.DISCOVER, f"02:00:00:00:0f:0{i}", remote=f"res-{i}"),
                       ctx).reply for i in range(2)]
    bus.publish(s.take_events())
    addrs = [int(o.yiaddr) for o in offers if o is not None]
    assert maps.puts == 2 and {e.address for e in maps.entries.values()} == set(addrs)

    maps.ack(addrs[0], clock.t + 4 * 3600)  # the first client's REQUEST, ACKed by XDP
    feature.persist_renewals()
    lease = s.by_address[addrs[0]]
    assert lease.state == "bound" and store.leases[addrs[0]].state == "bound"
    assert s.sessions[lease.identity].state == State.BOUND
    assert maps.puts == 2  # its entry is the kernel's already: not written again
    assert metrics.fast_first_acks._value.get() == 1 and commits.asked == 1

    clock.t += OFFER_HOLD  # the second never asked: its entry goes
    s.expire()
    bus.publish(s.take_events())
    assert {e.address for e in maps.entries.values()} == {addrs[0]}

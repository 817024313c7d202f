"""Prometheus metrics of the agent. One instance per process, on its own registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bng_dhcp_requests_total", "DHCP requests handled.",
            ["type", "path", "result"], registry=r)
        self.duration = Histogram(
            "bng_dhcp_request_duration_seconds",
            "Time from receiving a request to sending its reply (lease commit included).",
            ["type"], registry=r,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                     1.0))
        self.drops = Counter("bng_dhcp_drops_total", "Requests dropped, by reason.", ["reason"],
                             registry=r)
        self.lease_commits = Counter(
            "bng_lease_store_commits_total", "fsync'd commits of the lease store.", registry=r)
        self.send_failures = Counter(
            "bng_dhcp_send_failures_total", "Replies the kernel did not take.", ["interface"],
            registry=r)
        self.config_loaded = Gauge(
            "bng_config_loaded", "1 when the last configuration load succeeded.", registry=r)
        # labels() costs a lock and a dict lookup per call; the packet path keeps children.
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._durations: dict[str, Any] = {}
        self._drops: dict[str, Any] = {}

    def request(self, mtype: str, path: str, result: str) -> None:
        key = (mtype, path, result)
        c = self._requests.get(key)
        if c is None:
            c = self._requests[key] = self.requests.labels(mtype, path, result)
        c.inc()

    def duration_of(self, mtype: str, seconds: float) -> None:
        h = self._durations.get(mtype)
        if h is None:
            h = self._durations[mtype] = self.duration.labels(mtype)
        h.observe(seconds)

    def watch_leases(self, usage: Callable[[], dict[str, dict[str, int]]],
                     active: Callable[[], int]) -> None:
        """Pool and lease gauges, computed when scraped (always current, free otherwise)."""
        self.registry.register(_LeaseCollector(usage, active))

    def drop(self, reason: str) -> None:
        c = self._drops.get(reason)
        if c is None:
            c = self._drops[reason] = self.drops.labels(reason)
        c.inc()


class _LeaseCollector:
    def __init__(self, usage: Callable[[], dict[str, dict[str, int]]],
                 active: Callable[[], int]) -> None:
        self.usage, self.active = usage, active

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pools = GaugeMetricFamily("bng_pool_addresses",
                                  "Addresses of each pool on this node, by state.",
                                  labels=["pool", "state"])
        for pool, states in self.usage().items():
            for state, n in states.items():
                pools.add_metric([pool, state], n)
        yield pools
        yield GaugeMetricFamily("bng_leases_active", "Bound leases on this node.",
                                value=self.active())

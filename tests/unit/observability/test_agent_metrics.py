"""Metrics added for the dashboards and alerts: readiness, and the fast-path maps' capacity."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bng_operator.agent.health import Health
from bng_operator.metrics import AgentMetrics


def _ready(m: AgentMetrics) -> float:
    for family in text_string_to_metric_families(m.render().decode()):
        if family.name == "bng_agent_ready":
            return float(family.samples[0].value)
    raise AssertionError("bng_agent_ready not exported")


def test_the_ready_gauge_follows_the_health_of_each_scrape() -> None:
    m, h = AgentMetrics(), Health()
    m.watch_ready(h.ready)
    assert _ready(m) == 0  # starting
    h.problem = ""
    assert _ready(m) == 1
    h.store_problem = "lease store: disk full"
    assert _ready(m) == 0
    h.store_problem = ""
    assert _ready(m) == 1


def test_map_fill_has_the_capacity_beside_the_entries() -> None:
    m = AgentMetrics()
    m.watch_maps(lambda: {"subscribers": 3, "circuits": 1}, 100)
    samples = {(s.name, s.labels["map"]): s.value
               for f in text_string_to_metric_families(m.render().decode()) for s in f.samples
               if s.name.startswith("bng_ebpf_map_")}
    assert samples == {("bng_ebpf_map_entries", "subscribers"): 3,
                       ("bng_ebpf_map_entries", "circuits"): 1,
                       ("bng_ebpf_map_capacity", "subscribers"): 100,
                       ("bng_ebpf_map_capacity", "circuits"): 100}

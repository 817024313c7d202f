"""The dashboards and alert rules against a real agent: the agent's live /metrics has every
metric they use, and a real Prometheus (hack/prometheus/build.sh) that scrapes the agent
answers every dashboard query and raises the pool alerts when real DHCP clients fill a pool.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from bng_lab import clients, prometheus
from bng_lab.prometheus import RULES, Prometheus
from bng_lab.site import INTERNET_ADDRESS, Site
from tests.e2e.conftest import TINY_POOL, wait, wait_natted
from tests.observability import (
    dashboard_queries,
    exported_names,
    metric_names,
    operator_exposition,
    rule_queries,
    undefined,
)

SUBSCRIBERS = 6

# Metrics a query may find no series of on this site, and why. A labelled counter has no
# series until something is counted; the operator does not run here. Every other query must
# return data, and a query that returns none must use one of these.
MAY_BE_EMPTY = {
    "bng_dhcp_send_failures_total": "no reply failed to send",
    "bng_session_feature_errors_total": "no feature failed on a session event",
    "bng_sessions_ended_total": "no session ends: the leases outlive the test",
    "bng_fastpath_errors_total": "no fast-path map write failed",
    "bng_fastpath_passes_total": "the XDP counters fold in from the second reading: the "
                                 "clients may all be served before it",
    "bng_qos_errors_total": "no shaping operation failed",
    "bng_nat_sessions_without_block_total": "the NATPool has blocks for every session",
    "bng_kube_writes_total": "standalone: no apiserver",
    "bng_kube_requests_total": "standalone: no apiserver",
    "bng_kube_pending_updates": "standalone: no Subscriber writer",
    "bng_operator_reconcile_rounds_total": "no operator runs here (its registry is checked "
                                           "for the names)",
    "bng_operator_reconcile_seconds_bucket": "no operator runs here",
    "bng_operator_writes_total": "no operator runs here",
}
RADIUS = "the site's classes use no RADIUS"


def _may_be_empty(name: str) -> str | None:
    if name.startswith("bng_radius_"):
        return RADIUS
    return MAY_BE_EMPTY.get(name)


@pytest.fixture
def prometheus_built() -> None:
    try:
        prometheus.binary_dir()
    except prometheus.PrometheusMissing as e:
        pytest.fail(str(e), pytrace=False)


def test_prometheus_scrapes_the_agent_answers_the_dashboards_and_alerts_on_a_full_pool(
        prometheus_built: None, make_site: Callable[..., Site], tmp_path: Path) -> None:
    # residential subscribers (option 82 remote-id): shaped and NATed, as in the samples
    lines = {i: (f"olt1/1/{i}", f"res-{1000 + i}") for i in range(SUBSCRIBERS)}
    site = make_site(subscribers=SUBSCRIBERS, option82=lines,
                     replace={"ippool-residential.yaml": TINY_POOL})
    site.add_internet()
    site.start_agent(timeout=120)  # BCC compiles three programs: slow on a busy machine

    # the live /metrics has every metric the dashboards and rules use
    exposition = site.lab.run(site.bng, "curl", "-sf",
                              f"http://127.0.0.1:{site.metrics_port}/metrics").stdout
    exported = exported_names(exposition) | exported_names(operator_exposition())
    assert undefined(dashboard_queries(), exported) == {}
    assert undefined(rule_queries(), exported) == {}

    # dhclient configures the address (for traffic) and renews every 2 s (answered by XDP);
    # the sixth client finds the pool full
    renewing = [clients.dhclient_renewing(ns, "eth0", tmp_path, 2)
                for ns in site.subscribers[:5]]
    try:
        _fill_and_scrape(site, tmp_path)
    finally:
        for p in renewing:
            p.kill()
            p.wait()


def _fill_and_scrape(site: Site, tmp_path: Path) -> None:
    """Five clients bound and one refused, traffic through NAT; then Prometheus."""
    wait("five clients bound", lambda: all(clients.lease_history(ns, tmp_path)
                                           for ns in site.subscribers[:5]))
    assert len({clients.lease_history(ns, tmp_path)[-1]["fixed-address"]
                for ns in site.subscribers[:5]}) == 5
    with pytest.raises(clients.ClientFailed):
        clients.udhcpc(site.subscribers[5], "eth0", tmp_path, timeout=4)
    wait("a renewal answered by XDP", lambda: site.metrics().get(
        'bng_dhcp_requests_total{path="fast",result="ack",type="request"}', 0) >= 1)
    wait_natted(site, 5)
    for ns in site.subscribers[:2]:  # traffic through shaping and NAT
        site.lab.run(ns, "ping", "-c", "3", "-i", "0.2", INTERNET_ADDRESS)

    with Prometheus(site.lab, site.bng, tmp_path / "prometheus",
                    [f"127.0.0.1:{site.metrics_port}"], rules=(RULES,)) as prom:
        prom.wait_for("three scrapes of the agent (rates need two)",
                      lambda: prom.query('count_over_time(up{job="bng-agent"}[1m]) >= 3'))
        prom.wait_for("a rule evaluation", lambda: all(h != "unknown"
                                                        for _, h, _ in prom.rule_health()))
        assert [r for r in prom.rule_health() if r[1] != "ok"] == []

        # every dashboard query returns data, or uses a metric that may have no series here
        empty = {}
        for q in dashboard_queries():
            if prom.query(q.expr):
                continue
            why = {n: _may_be_empty(n) for n in metric_names(q.expr)}
            if not any(why.values()):
                empty[q.where] = q.expr
        assert empty == {}, f"queries without data and without a reason: {empty}"
        # the parts of this site the dashboards must see
        for expr in ('bng_pool_addresses{pool="residential",state="used"} == 5',
                     'bng_dhcp_drops_total{reason="pool_exhausted"} >= 1',
                     'bng_ebpf_program_attached{program="xdp_dhcp"} == 1',
                     "bng_agent_ready == 1", "bng_leases_active == 5",
                     'bng_nat_translated_packets_total{direction="out"} > 0'):
            assert prom.query(expr), expr

        # the full pool raises its alerts (pending: their `for` is minutes; the promtool
        # tests cover the `for`), and only for that pool
        def pool_alerts() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for a in prom.alerts():
                if a["labels"]["alertname"].startswith("BNGPool"):
                    out.setdefault(a["labels"]["alertname"], set()).add(a["labels"]["pool"])
            return out

        prom.wait_for("the pool alerts", lambda: len(pool_alerts()) == 3, timeout=30)
        assert pool_alerts() == {"BNGPoolAbove80Percent": {"residential"},
                                 "BNGPoolAbove95Percent": {"residential"},
                                 "BNGPoolExhausted": {"residential"}}
        (a80,) = [a for a in prom.alerts()
                  if a["labels"]["alertname"] == "BNGPoolAbove80Percent"]
        assert a80["state"] in ("pending", "firing") and float(a80["value"]) == 1.0
        assert a80["annotations"]["summary"] == (
            f"Pool residential is 100% used on 127.0.0.1:{site.metrics_port}")
        # nothing else is wrong on this site
        others = {a["labels"]["alertname"] for a in prom.alerts()} - set(pool_alerts())
        assert others == set()

        # and fires once its `for` has passed: the same rules with `for` cut to 2 s
        quick = tmp_path / "quick-rules.yaml"
        quick.write_text(re.sub(r"(?m)^(\s+for: )\d+m$", r"\g<1>2s", RULES.read_text()))
        assert quick.read_text().count("for: 2s") >= 8
        prom.reload((quick,))

        def firing() -> set[str]:
            return {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}

        pool = {"BNGPoolAbove80Percent", "BNGPoolAbove95Percent", "BNGPoolExhausted"}
        prom.wait_for("the pool alerts firing", lambda: firing() == pool, timeout=30)

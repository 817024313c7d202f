"""The Grafana dashboards of bng, built with Grafana's foundation SDK (a dev dependency: only
``bng dashboards`` imports this module). ``bng dashboards --write charts/bng/dashboards``
regenerates the JSON the chart ships; ``--check`` fails when it is stale.

Every query uses only metrics the agent (bng_operator/metrics.py) or the operator
(bng_operator/operator/main.py) export; tests/unit/test_dashboards.py and the e2e tier hold
them to that. The datasource is a template variable, never a fixed UID, so the dashboards
import into any Grafana."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every agent and operator series carries the scrape's `instance`: one per node's agent.
SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"
TAGS = ["bng"]


@dataclass(frozen=True)
class Q:
    """One query of a panel: PromQL and its legend."""

    expr: str
    legend: str = ""


def _targets(queries: Sequence[Q]) -> list[prometheus.Dataquery]:
    out = []
    for i, q in enumerate(queries):
        t = prometheus.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DS)
        if q.legend:
            t = t.legend_format(q.legend)
        out.append(t)
    return out


def ts(title: str, description: str, queries: Sequence[Q], unit: str = "short",
       w: int = 12, h: int = 8, stack: bool = False) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(description).datasource(DS)
         .unit(unit).span(w).height(h).fill_opacity(10 if not stack else 60))
    for t in _targets(queries):
        p = p.with_target(t)
    if stack:
        from grafana_foundation_sdk.builders.common import StackingConfig
        from grafana_foundation_sdk.models.common import StackingMode

        p = p.stacking(StackingConfig().mode(StackingMode.NORMAL))
    return p


def st(title: str, description: str, query: Q, unit: str = "short", w: int = 4, h: int = 4,
       thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),)) -> stat.Panel:
    steps = [model.Threshold(value=v, color=c) for v, c in thresholds]
    p = (stat.Panel().title(title).description(description).datasource(DS).unit(unit)
         .span(w).height(h)
         .thresholds(dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)))
    for t in _targets([query]):
        p = p.with_target(t)
    return p


def _base(uid: str, title: str, description: str) -> dash.Dashboard:
    return (dash.Dashboard(title).uid(uid).description(description).tags(TAGS)
            .refresh("30s").time("now-3h", "now").timezone("browser").editable()
            .with_variable(dash.DatasourceVariable("datasource").label("Data source")
                           .type("prometheus"))
            .with_variable(
                dash.QueryVariable("instance").label("Node (agent)").datasource(DS)
                .query("label_values(bng_config_loaded, instance)")
                .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .multi(True).include_all(True).all_value(".*")
                .sort(model.VariableSort.ALPHABETICAL_ASC)))


def _rate(metric: str, by: str, extra: str = "") -> str:
    sel = SEL + (f", {extra}" if extra else "")
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{RATE}]))"


def _quantile(q: float, metric: str, by: str) -> str:
    return (f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric}_bucket{{{SEL}}}[{RATE}])))")


# Pool utilisation: addresses not free over all this node's addresses of the pool (reserved
# addresses are held for one subscriber each and never on a free list, so left out).
POOL_USED = (f'1 - sum by (instance, pool) (bng_pool_addresses{{{SEL}, pool=~"$pool", '
             f'state="free"}}) / sum by (instance, pool) (bng_pool_addresses{{{SEL}, '
             f'pool=~"$pool", state!="reserved"}})')


def overview() -> dash.Dashboard:
    d = _base("bng-overview", "bng / Site overview",
              "DHCP on every node: how much, how fast, how much of it the kernel answers, "
              "and what went wrong.")
    d = (d.with_panel(st("Nodes ready", "Agents whose /readyz would say ready "
                          "(bng_agent_ready).", Q(f"sum(bng_agent_ready{{{SEL}}})")))
         .with_panel(st("Bound leases", "Bound leases on the selected nodes.",
                        Q(f"sum(bng_leases_active{{{SEL}}})")))
         .with_panel(st("Fast path hit ratio", "DISCOVERs and REQUESTs the XDP program "
                        "answered, over all that reached it (lowest node).",
                        Q(f"min(bng_fastpath_hit_ratio{{{SEL}}})"), unit="percentunit",
                        thresholds=((None, "red"), (0.5, "yellow"), (0.8, "green"))))
         .with_panel(st("DHCP requests/s", "All DHCP requests handled, fast and slow path.",
                        Q(f"sum(rate(bng_dhcp_requests_total{{{SEL}}}[{RATE}]))"),
                        unit="reqps"))
         .with_panel(st("Config loaded", "Nodes whose last configuration load failed "
                        "(0 when all loaded).",
                        Q(f"count(bng_config_loaded{{{SEL}}} == 0) or vector(0)"),
                        thresholds=((None, "green"), (1, "red"))))
         .with_panel(st("Lease store failures (1h)", "Lease store commits that failed: "
                        "their ACKs were not sent.",
                        Q(f"sum(increase(bng_lease_store_commit_failures_total{{{SEL}}}"
                          "[1h]))"), thresholds=((None, "green"), (1, "red"))))
         .with_panel(ts("DHCP requests by path", "fast: answered by XDP in the kernel; "
                        "slow: by the agent in userspace.",
                        [Q(_rate("bng_dhcp_requests_total", "path"), "{{path}}")],
                        unit="reqps"))
         .with_panel(ts("DHCP requests by type and result", "What the requests were and "
                        "how they were answered.",
                        [Q(_rate("bng_dhcp_requests_total", "type, result"),
                           "{{type}} {{result}}")], unit="reqps"))
         .with_panel(ts("Fast path hit ratio by node", "Share of DISCOVERs and REQUESTs "
                        "answered in the kernel.",
                        [Q(f"bng_fastpath_hit_ratio{{{SEL}}}", "{{instance}}")],
                        unit="percentunit"))
         .with_panel(ts("Slow path latency", "Time from receiving a request to sending "
                        "its reply, lease commit included (fast-path replies are not "
                        "timed: they never leave the kernel).",
                        [Q(_quantile(0.5, "bng_dhcp_request_duration_seconds", "type"),
                           "p50 {{type}}"),
                         Q(_quantile(0.99, "bng_dhcp_request_duration_seconds", "type"),
                           "p99 {{type}}")], unit="s"))
         .with_panel(ts("Bound leases by node", "Bound leases on each node.",
                        [Q(f"bng_leases_active{{{SEL}}}", "{{instance}}")]))
         .with_panel(ts("Sessions ended", "Subscriber sessions that ended, by reason.",
                        [Q(_rate("bng_sessions_ended_total", "reason"), "{{reason}}")],
                        unit="ops"))
         .with_panel(ts("DHCP drops by reason", "Requests the agent dropped unanswered.",
                        [Q(_rate("bng_dhcp_drops_total", "reason"), "{{reason}}")],
                        unit="pps"))
         .with_panel(ts("Errors", "Failures that cost subscribers a reply or a feature.",
                        [Q(f"sum(rate(bng_lease_store_commit_failures_total{{{SEL}}}"
                           f"[{RATE}]))", "lease store commit failures"),
                         Q(_rate("bng_dhcp_send_failures_total", "interface"),
                           "send failures {{interface}}"),
                         Q(_rate("bng_session_feature_errors_total", "feature"),
                           "feature {{feature}}")], unit="ops")))
    return d


def pools() -> dash.Dashboard:
    d = (_base("bng-pools", "bng / Address pools",
               "How full each pool is on each node, and who was refused an address.")
         .with_variable(dash.QueryVariable("pool").label("Pool").datasource(DS)
                        .query(f'label_values(bng_pool_addresses{{{SEL}}}, pool)')
                        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                        .multi(True).include_all(True).all_value(".*")))
    pool = f'{SEL}, pool=~"$pool"'
    return (d.with_panel(ts("Pool utilisation by node", "Addresses not free over all of the "
                             "node's addresses of the pool. Alerts at 80% and 95% "
                             "(BNGPoolAbove80Percent, BNGPoolAbove95Percent); the "
                             "operator hands out another block at its blockThreshold.",
                             [Q(POOL_USED, "{{pool}} on {{instance}}")], unit="percentunit",
                             w=24))
            .with_panel(ts("Addresses by state", "free, used (bound), declined (held: "
                           "someone else answered ARP for them), reserved.",
                           [Q(f"sum by (pool, state) (bng_pool_addresses{{{pool}}})",
                              "{{pool}} {{state}}")], stack=True))
            .with_panel(ts("Free addresses by node", "Addresses a new subscriber can get.",
                           [Q(f'bng_pool_addresses{{{pool}, state="free"}}',
                              "{{pool}} on {{instance}}")]))
            .with_panel(ts("Refused: pool exhausted", "DISCOVERs dropped because no address "
                           "of the subscriber's pool was free on the node.",
                           [Q(_rate("bng_dhcp_drops_total", "instance",
                                    'reason="pool_exhausted"'), "{{instance}}")],
                           unit="pps"))
            .with_panel(ts("NAT port blocks used", "Port blocks given to subscribers over "
                           "all blocks of the node's public addresses, by NATPool.",
                           [Q(f"sum by (instance, pool) (bng_nat_blocks_used{{{SEL}}}) / "
                              f"sum by (instance, pool) (bng_nat_blocks_total{{{SEL}}})",
                              "{{pool}} on {{instance}}")], unit="percentunit"))
            .with_panel(ts("NAT sessions without a block", "Sessions of a NAT class that "
                           "got no port block (their traffic is dropped until one frees).",
                           [Q(_rate("bng_nat_sessions_without_block_total", "pool"),
                              "{{pool}}")], unit="ops", w=24)))


def datapath() -> dash.Dashboard:
    d = _base("bng-datapath", "bng / Data path",
              "The eBPF programs: XDP on access ingress (DHCP fast path, anti-spoofing), "
              "tc shaping, NAT44; what they pass, drop and hold.")
    return (d.with_panel(ts("Programs attached", "1 when the program is attached to the "
                            "interface (alert: BNGFastPathDetached).",
                            [Q(f"bng_ebpf_program_attached{{{SEL}}}",
                               "{{program}} {{interface}} {{instance}}")], w=24, h=6))
            .with_panel(ts("XDP: answered in the kernel", "DHCP replies XDP built itself "
                           "(XDP_TX).",
                           [Q(_rate("bng_dhcp_requests_total", "type", 'path="fast"'),
                              "{{type}}")], unit="pps"))
            .with_panel(ts("XDP: passed to the slow path", "Frames the XDP program handed "
                           "to the agent, by reason.",
                           [Q(_rate("bng_fastpath_passes_total", "reason"), "{{reason}}")],
                           unit="pps"))
            .with_panel(ts("XDP: drops and map errors", "Frames XDP dropped, and map writes "
                           "that failed (the slow path answers those).",
                           [Q(f"sum(rate(bng_fastpath_drops_total{{{SEL}}}[{RATE}]))",
                              "dropped"),
                            Q(_rate("bng_fastpath_errors_total", "op"), "error {{op}}")],
                           unit="pps"))
            .with_panel(ts("Anti-spoofing drops by reason", "Frames from subscriber ports "
                           "dropped at access ingress.",
                           [Q(_rate("bng_antispoof_drops_total", "reason"), "{{reason}}")],
                           unit="pps"))
            .with_panel(ts("QoS drops", "Packets dropped by the shaper's queues, or routed "
                           "to an address no session holds.",
                           [Q(_rate("bng_qos_drops_total", "direction, reason"),
                              "{{direction}} {{reason}}")], unit="pps"))
            .with_panel(ts("Shaped traffic by class", "Bits per second of shaped "
                           "subscribers' traffic, by class and direction.",
                           [Q(f"8 * {_rate('bng_qos_bytes_total', 'class, direction')}",
                              "{{class}} {{direction}}")], unit="bps"))
            .with_panel(ts("NAT packets", "Packets translated, by direction.",
                           [Q(_rate("bng_nat_translated_packets_total", "direction"),
                              "{{direction}}")], unit="pps"))
            .with_panel(ts("NAT drops by reason", "Packets the NAT dropped.",
                           [Q(_rate("bng_nat_translation_failures_total", "reason"),
                              "{{reason}}")], unit="pps"))
            .with_panel(ts("Fast path map fill", "Entries of each fast-path map over the "
                           "entries it was made for: a full map sends new subscribers to the "
                           "slow path.",
                           [Q(f"bng_ebpf_map_entries{{{SEL}}} / "
                              f"bng_ebpf_map_capacity{{{SEL}}}", "{{map}} on {{instance}}")],
                           unit="percentunit"))
            .with_panel(ts("NAT tables", "Entries of the NAT mapping tables.",
                           [Q(f"sum by (table) (bng_nat_mappings{{{SEL}}})", "{{table}}")]))
            .with_panel(ts("Shaped subscribers", "Bound sessions with an HTB class each way.",
                           [Q(f"bng_qos_subscribers_shaped{{{SEL}}}", "{{instance}}")]))
            .with_panel(ts("Shaping errors and install time", "Failed shaping operations "
                           "(the session goes unshaped), and p99 time to install one "
                           "session's shaping.",
                           [Q(_rate("bng_qos_errors_total", "op"), "error {{op}}"),
                            Q(_quantile(0.99, "bng_qos_install_seconds", "instance"),
                              "p99 install {{instance}}")])))


def radius() -> dash.Dashboard:
    d = _base("bng-radius", "bng / RADIUS and accounting",
              "Authorisation, accounting and CoA/Disconnect, per RADIUS server.")
    return (d.with_panel(ts("Servers up", "0 while the agent marks a server dead "
                            "(alert: BNGRadiusServerDown).",
                            [Q(f"bng_radius_server_up{{{SEL}}}", "{{server}} {{instance}}")],
                            w=24, h=6))
            .with_panel(ts("Access-Requests and replies", "Requests sent (retransmissions "
                           "not counted) and replies by result.",
                           [Q(_rate("bng_radius_requests_total", "server"),
                              "sent {{server}}"),
                            Q(_rate("bng_radius_replies_total", "server, result"),
                              "{{result}} {{server}}")], unit="reqps"))
            .with_panel(ts("Timeouts and retransmissions", "Requests sent again, and "
                           "requests left unanswered after every retransmission.",
                           [Q(_rate("bng_radius_retransmits_total", "server"),
                              "retransmit {{server}}"),
                            Q(_rate("bng_radius_timeouts_total", "server"),
                              "timeout {{server}}")], unit="reqps"))
            .with_panel(ts("Round-trip time", "Of answered requests, Access and Accounting.",
                           [Q(_quantile(0.5, "bng_radius_rtt_seconds", "server"),
                              "p50 {{server}}"),
                            Q(_quantile(0.99, "bng_radius_rtt_seconds", "server"),
                              "p99 {{server}}")], unit="s"))
            .with_panel(ts("Decisions by class", "How new sessions were authorised.",
                           [Q(_rate("bng_radius_decisions_total", "subscriber_class, result"),
                              "{{subscriber_class}} {{result}}")], unit="ops"))
            .with_panel(ts("Accounting requests", "Accounting-Requests, acknowledgements "
                           "and timeouts per server.",
                           [Q(_rate("bng_radius_acct_requests_total", "server"),
                              "sent {{server}}"),
                            Q(_rate("bng_radius_acct_responses_total", "server"),
                              "acked {{server}}"),
                            Q(_rate("bng_radius_acct_timeouts_total", "server"),
                              "timeout {{server}}")], unit="reqps"))
            .with_panel(ts("Accounting queue", "Records waiting on disk for a server's "
                           "acknowledgement.",
                           [Q(f"bng_radius_acct_queue_depth{{{SEL}}}", "{{instance}}")]))
            .with_panel(ts("Accounting records", "Records queued by Acct-Status-Type, and "
                           "dropped unsent by reason.",
                           [Q(_rate("bng_radius_acct_records_total", "type"), "{{type}}"),
                            Q(_rate("bng_radius_acct_dropped_total", "type, reason"),
                              "dropped {{type}} {{reason}}")], unit="ops"))
            .with_panel(ts("CoA and Disconnect", "RFC 5176 requests by type and result.",
                           [Q(_rate("bng_radius_dynauth_requests_total", "type, result"),
                              "{{type}} {{result}}")], unit="reqps")))


def kubernetes() -> dash.Dashboard:
    d = _base("bng-kubernetes", "bng / Kubernetes",
              "What the agents and the operator cost the apiserver, and whether they reach "
              "it (Kubernetes mode only: standalone agents write nothing).")
    return (d.with_panel(ts("Apiserver reachable", "1 when the agent's last apiserver "
                            "request succeeded (alert: BNGApiserverUnreachable); auth "
                            "refused: 1 when its credentials were refused.",
                            [Q(f"bng_kube_reachable{{{SEL}}}", "reachable {{instance}}"),
                             Q(f"bng_kube_auth_refused{{{SEL}}}",
                               "auth refused {{instance}}")]))
            .with_panel(ts("Agent writes", "Apiserver writes of the agents, by kind and "
                           "verb (paced by subscriberWriteRate).",
                           [Q(_rate("bng_kube_writes_total", "kind, verb"),
                              "{{verb}} {{kind}}")], unit="wps"))
            .with_panel(ts("Update queue", "Subscriber updates waiting to be written.",
                           [Q(f"sum by (queue) (bng_kube_pending_updates{{{SEL}}})",
                              "{{queue}}")]))
            .with_panel(ts("Requests and dropped updates", "All apiserver requests of the "
                           "Subscriber writer, and updates dropped from a full queue.",
                           [Q(_rate("bng_kube_requests_total", "verb"), "{{verb}}"),
                            Q(f"sum(rate(bng_kube_dropped_updates_total{{{SEL}}}[{RATE}]))",
                              "dropped")], unit="reqps"))
            .with_panel(ts("Accounting interval", "Time between the last two accounting "
                           "rounds: longer than configured when the write rate cannot "
                           "keep up.",
                           [Q(f"bng_kube_accounting_interval_seconds{{{SEL}}}",
                              "{{instance}}")], unit="s"))
            .with_panel(ts("Operator reconcile rounds", "Rounds by result, and p99 round "
                           "time.",
                           [Q("sum by (result) (rate(bng_operator_reconcile_rounds_total"
                              f"[{RATE}]))", "{{result}}"),
                            Q("histogram_quantile(0.99, sum by (le) "
                              f"(rate(bng_operator_reconcile_seconds_bucket[{RATE}])))",
                              "p99 seconds")]))
            .with_panel(ts("Operator writes", "Apiserver writes of the operator by kind and "
                           "verb.",
                           [Q(f"sum by (kind, verb) (rate(bng_operator_writes_total[{RATE}]))",
                              "{{verb}} {{kind}}")], unit="wps", w=24)))


DASHBOARDS = {"overview": overview, "pools": pools, "datapath": datapath, "radius": radius,
              "kubernetes": kubernetes}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for name, build in DASHBOARDS.items():
        d = build().build()
        for i, panel in enumerate(d.panels or [], 1):  # stable ids: links and tests name them
            panel.id_val = i
        text = json.dumps(d, cls=JSONEncoder, indent=2, sort_keys=True)
        out[f"bng-{name}.json"] = text + "\n"
    return out

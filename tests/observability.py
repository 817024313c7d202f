"""What the dashboards and alert rules query, and what bng exports: shared by the unit checks
(tests/unit/observability) and the live scrape (tests/e2e/test_observability.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bng_lab.prometheus import DASHBOARDS, RULES

# The dashboards' template variables, as Grafana fills them in ("All" for the selections).
VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$pool": ".*"}
# The suffixes each metric type's samples carry in the exposition format.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                             "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",), "untyped": ("",)}


@dataclass(frozen=True)
class Query:
    where: str  # "dashboard file: panel title" or "rules: alert name"
    expr: str  # with the template variables filled in


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for p in d.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def fill(expr: str) -> str:
    for k, v in VARIABLES.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"a template variable without a value: {expr}"
    return expr


def dashboard_queries() -> list[Query]:
    return [Query(f"{name}: {p['title']}", fill(t["expr"]))
            for name, d in dashboards().items() for p in panels(d)
            for t in p.get("targets", [])]


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def rule_queries() -> list[Query]:
    return [Query(f"rules: {r.get('alert') or r['record']}", r["expr"]) for r in rules()]


def metric_names(expr: str) -> set[str]:
    """Names of the series ``expr`` selects (recorded series, with a colon, left out)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return {n for n in names if ":" not in n}


def exported_names(exposition: str) -> set[str]:
    """Every series name a scrape of ``exposition`` can yield, labelled metrics without
    children yet included (their HELP and TYPE lines are there)."""
    out: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        out.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        out.update(s.name for s in family.samples)
    return out


def operator_exposition() -> str:
    from prometheus_client import generate_latest

    from bng_operator.operator.main import Metrics

    return bytes(generate_latest(Metrics().registry)).decode()


def agent_exposition() -> str:
    """The agent's registry with every scrape-time collector the runtime registers, fed
    with empty readings."""
    from bng_operator.metrics import AccessReading, AgentMetrics, NatReading

    m = AgentMetrics()
    m.watch_leases(dict, lambda: 0)
    m.watch_ready(lambda: (True, "ready"))
    m.watch_maps(dict, 1)
    m.watch_access(lambda: AccessReading({}, {}, {}))
    m.watch_nat(lambda: NatReading({}, (), {}))
    return m.render().decode()


def undefined(queries: list[Query], exported: set[str]) -> dict[str, set[str]]:
    """Per query, the metric names it uses that ``exported`` lacks."""
    out = {}
    for q in queries:
        missing = metric_names(q.expr) - exported
        if missing:
            out[q.where] = missing
    return out


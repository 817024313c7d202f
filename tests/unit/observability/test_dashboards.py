"""The Grafana dashboards: generated, readable by Grafana's own model, and asking only for
what bng exports."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bng_lab.prometheus import DASHBOARDS
from tests.observability import (
    agent_exposition,
    dashboard_queries,
    dashboards,
    exported_names,
    metric_names,
    operator_exposition,
    panels,
    undefined,
)

sdk = pytest.importorskip("grafana_foundation_sdk", reason="a dev dependency: pip install -e .[dev]")


def test_the_chart_ships_what_the_generator_makes() -> None:
    from bng_operator.dashboards import render

    rendered = render()
    assert sorted(rendered) == sorted(p.name for p in DASHBOARDS.glob("*.json"))
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, f"{name} is stale: make dashboards"


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_the_sdk_reads_each_dashboard_back_unchanged(name: str) -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard
    from grafana_foundation_sdk.models.prometheus import Dataquery

    register_default_plugins()  # the decoders of panel options and queries, by type

    data = dashboards()[name]
    back = json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder))
    assert back == data
    # and the decoder really typed the parts (not a dict passed through)
    model = Dashboard.from_json(data)
    assert model.panels and all(type(p).__name__ == "Panel" for p in model.panels)
    targets = [t for p in model.panels for t in getattr(p, "targets", None) or []]
    assert targets and all(isinstance(t, Dataquery) for t in targets)


def test_every_query_parses_as_promql() -> None:
    queries = dashboard_queries()
    assert len(queries) > 50
    for q in queries:
        assert metric_names(q.expr), f"{q.where}: selects no metric: {q.expr}"


def test_every_metric_a_dashboard_uses_is_exported_by_the_agent_or_operator() -> None:
    exported = exported_names(agent_exposition()) | exported_names(operator_exposition())
    assert undefined(dashboard_queries(), exported) == {}


def test_the_check_sees_an_unknown_metric() -> None:
    from tests.observability import Query

    exported = exported_names(agent_exposition())
    assert "bng_dhcp_requests_total" in exported and "bng_pool_addresses" in exported
    bad = Query("x", 'sum(rate(bng_dhcp_request_total{path="fast"}[1m]))')
    assert undefined([bad], exported) == {"x": {"bng_dhcp_request_total"}}


def _rects(d: dict[str, Any]) -> list[tuple[str, int, int, int, int]]:
    return [(p["title"], p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"],
             p["gridPos"]["h"]) for p in panels(d)]


def _overlaps(rects: list[tuple[str, int, int, int, int]]) -> list[tuple[str, str]]:
    out = []
    for i, (a, ax, ay, aw, ah) in enumerate(rects):
        for b, bx, by, bw, bh in rects[i + 1:]:
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                out.append((a, b))
    return out


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_no_two_panels_overlap_and_all_fit_the_grid(name: str) -> None:
    rects = _rects(dashboards()[name])
    assert _overlaps(rects) == []
    assert all(x >= 0 and w > 0 and h > 0 and x + w <= 24 for _, x, _, w, h in rects)


def test_the_overlap_check_sees_an_overlap() -> None:
    assert _overlaps([("a", 0, 0, 12, 8), ("b", 11, 7, 4, 4)]) == [("a", "b")]
    assert _overlaps([("a", 0, 0, 12, 8), ("b", 12, 0, 12, 8), ("c", 0, 8, 24, 1)]) == []


def _datasource_uids(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["datasource"].get("uid", "")] if isinstance(node.get("datasource"),
                                                                 dict) else []
        return found + [u for v in node.values() for u in _datasource_uids(v)]
    if isinstance(node, list):
        return [u for v in node for u in _datasource_uids(v)]
    return []


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_the_datasource_is_a_variable_never_a_fixed_uid(name: str) -> None:
    d = dashboards()[name]
    uids = _datasource_uids(d)
    assert uids and set(uids) == {"${datasource}"}
    (var,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    assert len({p["id"] for p in panels(d)}) == len(panels(d))

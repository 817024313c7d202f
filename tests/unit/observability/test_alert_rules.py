"""The alert rules (charts/bng/rules/bng-alerts.yaml): valid for promtool, each alert unit-
tested by promtool on series that mean it (alerts.test.yaml), and every metric they use
exported by bng."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bng_lab import prometheus
from tests.observability import (
    agent_exposition,
    exported_names,
    metric_names,
    operator_exposition,
    rule_queries,
    rules,
    undefined,
)

HERE = Path(__file__).resolve().parent
TESTS = HERE / "alerts.test.yaml"


@pytest.fixture(scope="module")
def promtool() -> None:
    """promtool is built by `make setup`. Missing, the tests skip on a developer's quick
    `pytest -m unit`, and fail where the tiers are required (`make test`, CI)."""
    try:
        prometheus.binary_dir()
    except prometheus.PrometheusMissing as e:
        if os.environ.get("BNG_REQUIRE_TIERS"):
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))


def test_promtool_checks_the_rules(promtool: None) -> None:
    r = prometheus.promtool("check", "rules", str(prometheus.RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout, r.stdout


def test_promtool_unit_tests_pass(promtool: None) -> None:
    r = prometheus.promtool("test", "rules", TESTS.name, cwd=HERE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_promtool_unit_tests_fail_on_a_wrong_expectation(promtool: None,
                                                         tmp_path: Path) -> None:
    # the harness can fail: the same tests with one alert expected too early
    text = TESTS.read_text().replace("      - {eval_time: 6m, alertname: BNGAgentNotReady, "
                                     "exp_alerts: []}\n", "")
    text = text.replace("      - eval_time: 7m\n        alertname: BNGAgentNotReady",
                        "      - eval_time: 6m\n        alertname: BNGAgentNotReady")
    text = text.replace("../../../charts", str(prometheus.REPO / "charts"))
    (tmp_path / "t.yaml").write_text(text)
    r = prometheus.promtool("test", "rules", "t.yaml", cwd=tmp_path)
    assert r.returncode != 0 and "BNGAgentNotReady" in r.stdout + r.stderr


def test_every_alert_has_a_unit_test_and_a_runbook_section() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    tested = TESTS.read_text()
    runbook = (prometheus.REPO / "docs" / "runbook.md").read_text()
    assert len(alerts) >= 10
    for a in alerts:
        assert f"alertname: {a}\n" in tested, f"{a} has no promtool unit test"
        assert f"\n## {a}\n" in runbook, f"{a} has no section in docs/runbook.md"
        (rule,) = [r for r in rules() if r.get("alert") == a]
        assert rule["annotations"]["runbook_url"].endswith(f"runbook.md#{a.lower()}")


def test_every_metric_the_rules_use_is_exported() -> None:
    exported = exported_names(agent_exposition()) | exported_names(operator_exposition())
    assert all(metric_names(q.expr) or ":" in q.expr for q in rule_queries())
    assert undefined(rule_queries(), exported) == {}

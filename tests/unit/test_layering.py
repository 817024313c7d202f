"""Who may import whom: the rooms of the house, checked on the source.

- Only the dataplane imports bcc, and only bng_operator/netlink.py talks netlink.
- The agent and the operator never import each other; what both need is in policy/ (pure),
  which imports neither.
- The DHCP room and the session core never import a feature (fastpath, report, audit): a
  feature follows session events, so adding one never edits the DHCP server.
- The product never imports the lab (bng_lab), except the `bng lab` command.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "bng_operator"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _importers(module: str, under: Path = PKG) -> set[str]:
    return {str(path.relative_to(under)) for path in under.rglob("*.py")
            if any(n == module or n.startswith(module + ".") for n in _imports(path))}


def _in(room: str) -> set[str]:
    """Files of the package under ``room`` (a folder or a module, relative to PKG)."""
    return {str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
            if str(p.relative_to(PKG)).startswith(room)}


def test_only_the_dataplane_imports_bcc() -> None:
    assert all(p.startswith("agent/dataplane/") for p in _importers("bcc")), _importers("bcc")


def test_only_one_module_talks_netlink() -> None:
    assert _importers("pyroute2") == {"netlink.py"}
    assert _importers("pyroute2", ROOT / "bng_lab") == set()


@pytest.mark.parametrize(("room", "forbidden"), [
    ("agent/", "bng_operator.operator"),
    ("operator/", "bng_operator.agent"),
    ("policy/", "bng_operator.agent"),
    ("policy/", "bng_operator.operator"),
    ("api/", "bng_operator.agent"),
    ("api/", "bng_operator.operator"),
    ("api/", "bng_operator.policy"),
    ("agent/dhcp/", "bng_operator.agent.fastpath"),
    ("agent/dhcp/", "bng_operator.agent.report"),
    ("agent/dhcp/", "bng_operator.agent.audit"),
    ("agent/sessions/", "bng_operator.agent.fastpath"),
    ("agent/sessions/", "bng_operator.agent.report"),
    ("agent/sessions/", "bng_operator.agent.audit"),
    ("agent/sessions/", "bng_operator.agent.dhcp.server"),
    ("agent/dhcp/", "bng_operator.agent.radius"),
    ("agent/sessions/", "bng_operator.agent.radius"),
])
def test_rooms_keep_to_themselves(room: str, forbidden: str) -> None:
    offenders = _importers(forbidden) & _in(room)
    assert not offenders, f"{sorted(offenders)} import {forbidden}"


def test_the_product_never_imports_the_lab() -> None:
    assert _importers("bng_lab") <= {"cli.py"}, _importers("bng_lab")


def test_the_rules_see_real_imports() -> None:
    """A rule that matches nothing proves nothing: the names above are imported somewhere."""
    assert _importers("bng_operator.policy") & _in("agent/")
    assert _importers("bng_operator.policy") & _in("operator/")
    assert _importers("bng_operator.agent.sessions") & _in("agent/dhcp/")
    assert _importers("bng_lab") == {"cli.py"}


def test_only_the_dashboard_generator_imports_the_grafana_sdk() -> None:
    # a dev dependency: the agent and operator images do not have it
    assert _importers("grafana_foundation_sdk") == {"dashboards.py"}
    assert "bng_operator.dashboards" not in {n for p in PKG.rglob("*.py") if p.name != "cli.py"
                                             for n in _imports(p)}

"""Only the dataplane imports bcc, and only bng_operator/netlink.py talks netlink."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "bng_operator"


def _importers(module: str) -> set[str]:
    found = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == module or n.startswith(module + ".") for n in names):
                found.add(str(path.relative_to(PKG)))
    return found


def test_only_the_dataplane_imports_bcc() -> None:
    assert all(p.startswith("agent/dataplane/") for p in _importers("bcc")), _importers("bcc")


def test_only_one_module_talks_netlink() -> None:
    assert _importers("pyroute2") == {"netlink.py"}

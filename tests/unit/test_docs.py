"""The architecture page names only paths that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"


def _named_paths() -> set[str]:
    ticked = re.findall(r"`([^`\s]+)`", PAGE.read_text())
    return {t.rstrip("/") for t in ticked
            if "/" in t or re.search(r"\.(py|c|h|md)$", t)}


def test_every_path_the_architecture_page_names_exists() -> None:
    missing = []
    for name in _named_paths():
        found = (ROOT / name).exists() or (ROOT / "bng_operator" / name).exists() or \
            ("/" not in name and any(ROOT.glob(f"bng_operator/**/{name}")))
        if not found:
            missing.append(name)
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_the_check_sees_the_paths() -> None:
    names = _named_paths()
    assert "bng_operator/agent/sessions/" in {n + "/" for n in names}
    assert "bpf/access_ingress.c" in names and len(names) > 25

"""The CRD files are generated from the models, are structural, and are up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bng_operator.api import RESOURCES
from bng_operator.api.crd import crd_file_name, crds, render_yaml
from bng_operator.cli import main

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
THIRD_PARTY = {"kopf-peering.yaml"}  # kopf's own CRD, copied, not generated


def test_crd_files_match_the_models() -> None:
    """Fails when someone edits a model without `bng crds --write crds/` (or edits the YAML)."""
    expected = {crd_file_name(c): render_yaml(c) for c in crds()}
    on_disk = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml") if p.name not in THIRD_PARTY}
    assert sorted(on_disk) == sorted(expected)
    for name, text in expected.items():
        assert on_disk[name] == text, f"crds/{name} is stale: run `bng crds --write crds/`"


def test_bng_crds_check_reports_drift(tmp_path: Path) -> None:
    assert main(["crds", "--write", str(tmp_path)]) == 0
    assert main(["crds", "--check", str(tmp_path)]) == 0
    (tmp_path / "ippools.bng.dev.yaml").write_text("edited by hand\n")
    assert main(["crds", "--check", str(tmp_path)]) == 1


def walk_options(node: Any, path: str = "") -> list[tuple[str, str]]:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "const") or (
                    k == "additionalProperties" and v is False):
                found.append((path, k))
            found += walk_options(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += walk_options(v, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("crd", crds(), ids=lambda c: c["metadata"]["name"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    assert walk_options(crd["spec"]["versions"][0]["schema"]) == []


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.info.kind)
def test_every_crd_is_in_the_bng_category_with_columns(resource: Any) -> None:
    crd = next(c for c in crds() if c["spec"]["names"]["kind"] == resource.info.kind)
    names = crd["spec"]["names"]
    assert names["categories"] == ["bng"]
    assert names["shortNames"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert len(version["additionalPrinterColumns"]) >= 4


def test_api_version_literal_matches_group_and_version() -> None:
    from bng_operator.api import API_VERSION, GROUP, VERSION, IPPool

    assert f"{GROUP}/{VERSION}" == API_VERSION
    assert IPPool.model_fields["api_version"].default == API_VERSION

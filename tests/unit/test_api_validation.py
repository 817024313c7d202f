"""The models reject what users get wrong, and say which field is wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bng_operator.api.documents import explain, load, parse, yaml_files
from tests.cases import SAMPLES, WRONG, WRONG_NODE, Wrong


@pytest.mark.parametrize("case", WRONG + WRONG_NODE, ids=lambda c: c.id)
def test_wrong_object_is_rejected_naming_the_field(case: Wrong) -> None:
    with pytest.raises(ValidationError) as e:
        parse(case.object())
    lines = explain(e.value)
    assert any(line.startswith(case.field + ":") or line.startswith(case.field + "[")
               for line in lines), lines


def test_every_sample_is_valid() -> None:
    objects, errors = load(yaml_files([SAMPLES]))
    assert errors == []
    assert sorted(f"{o.kind}/{o.name}" for o in objects) == [
        "BNGNode/edge-1",
        "IPPool/business", "IPPool/residential", "NATPool/cgnat",
        "QoSPolicy/business-1g", "QoSPolicy/residential-100m",
        "Subscriber/acme-hq", "SubscriberClass/business", "SubscriberClass/residential",
    ]


def test_error_lines_read_like_paths() -> None:
    case = next(c for c in WRONG if c.id == "gateway-outside")
    with pytest.raises(ValidationError) as e:
        parse(case.object())
    assert explain(e.value) == ["spec.subnets[0].gateway: gateway must be inside the subnet's cidr"]


def test_unknown_field_is_refused() -> None:
    obj = WRONG[0].object()
    obj["spec"]["subnets"][0]["cidr"] = "100.64.0.0/20"
    obj["spec"]["leasetime"] = "1h"  # a typo of leaseTime must not pass silently
    with pytest.raises(ValidationError) as e:
        parse(obj)
    assert any(line.startswith("spec.leasetime:") for line in explain(e.value))


def test_wrong_kind_and_foreign_documents(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "mixed.yaml"
    p.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n"
                 "apiVersion: bng.dev/v1alpha1\nkind: Pool\nmetadata: {name: y}\n---\n- a list\n")
    objects, errors = load([p])
    assert objects == []
    assert [e.what for e in errors] == ["Pool/y", "document"]
    assert "not a bng.dev object" in errors[0].message


def test_wrong_cases_cover_every_kind_users_write() -> None:
    kinds = {c.object()["kind"] for c in WRONG}
    assert kinds == {"IPPool", "QoSPolicy", "NATPool", "SubscriberClass", "Subscriber"}
    assert len({c.id for c in WRONG}) == len(WRONG)

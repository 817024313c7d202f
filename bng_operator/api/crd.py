"""CustomResourceDefinitions generated from the pydantic models.

Pydantic's JSON schema is close to what Kubernetes wants; this turns it into a structural
schema: references inlined, ``Optional`` unwrapped, titles and ``additionalProperties: false``
dropped (the apiserver prunes unknown fields instead).
"""

from __future__ import annotations

from typing import Any

import yaml

from bng_operator.api import RESOURCES
from bng_operator.api.common import GROUP, VERSION
from bng_operator.api.resource import Resource

_DROP = {"title", "examples"}


def _drop_none(value: Any) -> Any:
    """Defaults without unset (None) members: the apiserver refuses null for them."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**target, **node}  # a sibling description wins over the target's
        return _structural(merged, defs)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"CRD schemas cannot express a union of {branches}")
        node = {**branches[0], **node}
        if node.get("default", ...) is None:
            del node["default"]
        return _structural(node, defs)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key == "default":
            out[key] = _drop_none(value)
        elif key in ("enum", "required", "x-kubernetes-validations",
                     "x-kubernetes-list-map-keys"):
            out[key] = value
        else:
            out[key] = _structural(value, defs)
    return out


def _without_rules(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_rules(n) for n in node]
    if isinstance(node, dict):
        return {k: _without_rules(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    return node


def schema_of(model: type[Any], rules: bool = True) -> dict[str, Any]:
    """The structural openAPIV3Schema of one pydantic model."""
    js = model.model_json_schema(by_alias=True, mode="validation")
    defs = js.pop("$defs", {})
    out = _structural(js, defs)
    return out if rules else _without_rules(out)  # type: ignore[no-any-return]


def crd_for(resource: type[Resource]) -> dict[str, Any]:
    info = resource.info
    fields = resource.model_fields
    spec_model = fields["spec"].annotation
    status_model = next(a for a in fields["status"].annotation.__args__ if a is not type(None))  # type: ignore[union-attr]
    doc = (resource.__doc__ or "").strip() or f"{info.kind} of the bng Broadband Network Gateway."
    module_doc = (__import__(resource.__module__, fromlist=["_"]).__doc__ or "").strip()
    root = {
        "type": "object",
        "description": module_doc or doc,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": schema_of(spec_model, rules=info.spec_rules),  # type: ignore[arg-type]
            "status": schema_of(status_model),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.crd_name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": ["bng"],
            },
            "scope": info.scope,
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [c.crd_dict() for c in info.columns],
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [crd_for(r) for r in RESOURCES]


HEADER = "# Generated from bng_operator/api by `bng crds --write crds/`. Do not edit.\n"


def crd_file_name(crd: dict[str, Any]) -> str:
    return f"{crd['metadata']['name']}.yaml"


def render_yaml(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100)

"""Reading bng objects out of YAML documents (standalone config files, samples, GitOps repos)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bng_operator.api import BY_KIND, GROUP, Resource


@dataclass(frozen=True)
class DocumentError:
    """One problem in one document, worded for the person who wrote it."""

    source: str
    index: int
    what: str  # Kind/name, or "document"
    message: str

    def __str__(self) -> str:
        return f"{self.source}[{self.index}] {self.what}: {self.message}"


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def explain(err: ValidationError) -> list[str]:
    """pydantic errors as ``spec.subnets[0].gateway: message`` lines."""
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        where = _loc(e["loc"]) + str((e.get("ctx") or {}).get("field", ""))
        lines.append(f"{where}: {msg}" if where else msg)
    return lines


def parse(doc: dict[str, Any]) -> Resource:
    """One bng object from a decoded document. Raises ValueError or ValidationError."""
    kind = doc.get("kind")
    api = str(doc.get("apiVersion", ""))
    cls = BY_KIND.get(str(kind))
    if cls is None or not api.startswith(GROUP + "/"):
        raise ValueError(f"not a {GROUP} object: apiVersion {api!r}, kind {kind!r}")
    return cls.model_validate(doc)


def load(paths: Iterable[Path]) -> tuple[list[Resource], list[DocumentError]]:
    """All bng objects in the given files; other kinds (Namespace, ...) are skipped."""
    objects: list[Resource] = []
    errors: list[DocumentError] = []
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as e:
            errors.append(DocumentError(str(path), 0, "file", str(e).replace("\n", " ")))
            continue
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                errors.append(DocumentError(str(path), i, "document", "is not a mapping"))
                continue
            if not str(doc.get("apiVersion", "")).startswith(GROUP + "/"):
                continue
            name = (doc.get("metadata") or {}).get("name", "?")
            what = f"{doc.get('kind')}/{name}"
            try:
                objects.append(parse(doc))
            except ValidationError as e:
                errors.extend(DocumentError(str(path), i, what, m) for m in explain(e))
            except ValueError as e:
                errors.append(DocumentError(str(path), i, what, str(e)))
    return objects, errors


def yaml_files(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, plus *.yaml / *.yml inside named directories, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml")))
        else:
            out.append(p)
    return out

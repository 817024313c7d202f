"""The envelope every bng custom resource shares, and what the CRD says about each kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bng_operator.api.common import GROUP, ObjectMeta


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0  # 1 = shown only with -o wide

    def crd_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            d["description"] = self.description
        if self.priority:
            d["priority"] = self.priority
        return d


@dataclass(frozen=True)
class ResourceInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    scope: Literal["Cluster", "Namespaced"]
    columns: tuple[PrinterColumn, ...]
    # False where the spec is written by bng itself from objects the apiserver already
    # validated: the CEL rules are left out, because repeating them inside long lists
    # exceeds the apiserver's cost budget and guards nothing a user types.
    spec_rules: bool = True

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")


def ready_column(condition: str = "Ready") -> PrinterColumn:
    return PrinterColumn(condition, "string", f'.status.conditions[?(@.type=="{condition}")].status')


class Resource(BaseModel):
    """apiVersion, kind, metadata, spec, status. Subclasses set ``info``, ``spec``, ``status``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)
    info: ClassVar[ResourceInfo]

    api_version: Literal["bng.dev/v1alpha1"] = Field(default="bng.dev/v1alpha1", alias="apiVersion")
    kind: str
    metadata: ObjectMeta

    @model_validator(mode="before")
    @classmethod
    def _kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            kind = data.setdefault("kind", cls.info.kind)
            if kind != cls.info.kind:
                raise ValueError(f"kind is {kind!r}, expected {cls.info.kind!r}")
        return data

    @property
    def name(self) -> str:
        return self.metadata.name


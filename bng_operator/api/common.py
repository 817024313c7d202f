"""Building blocks shared by every bng resource: the base model, metadata, typed strings."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from bng_operator.api.rules import (
    CEL_IS_REGEX,
    Checked,
    Rule,
    apply_rules,
    is_ipv4,
    is_ipv4_cidr,
    is_masked,
    is_regex,
)

GROUP = "bng.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_NAMESPACE = "bng-system"
# The label saying which bng component made (and may delete) an object.
MANAGED_BY = "app.kubernetes.io/managed-by"
AGENT_MANAGER = "bng-agent"  # MANAGED_BY of the Subscriber objects agents report
# The Subscribers users make (reservations), not the agents' reports.
USERS_SUBSCRIBERS = f"{MANAGED_BY}!={AGENT_MANAGER}"


class Model(BaseModel):
    """Base of every schema model: camelCase on the wire, unknown fields refused.

    Subclasses list object-level rules in ``rules``; they land in the CRD as
    ``x-kubernetes-validations`` and run in Python after field validation.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Model:
        apply_rules(type(self).rules, self)
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        js = super().__get_pydantic_json_schema__(core_schema, handler)
        if cls.rules:
            target = handler.resolve_ref_schema(js)
            target["x-kubernetes-validations"] = [r.cel_dict() for r in cls.rules]
        return js


# --- typed strings -----------------------------------------------------------------------

IPv4 = Annotated[
    str,
    Field(max_length=15),
    Checked(Rule("isIP(self) && ip(self).family() == 4",
                 "must be an IPv4 address such as 100.64.0.1", is_ipv4)),
]

IPv4CIDR = Annotated[
    str,
    Field(max_length=18),
    Checked(
        Rule("isCIDR(self) && cidr(self).ip().family() == 4",
             "must be an IPv4 CIDR such as 100.64.0.0/16", is_ipv4_cidr),
        Rule("!isCIDR(self) || cidr(self) == cidr(self).masked()",
             "has host bits set: write the network address (100.64.0.0/16, not 100.64.0.1/16)",
             is_masked),
    ),
]

MAC_RE = r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$"
MAC = Annotated[
    str,
    Field(max_length=17),
    Checked(Rule(f"self.matches('{MAC_RE}')", "must be a MAC address such as 02:00:5e:10:00:01",
                 lambda s: re.fullmatch(MAC_RE, s) is not None)),
]

MAC_PREFIX_RE = r"^([0-9a-fA-F]{2})(:[0-9a-fA-F]{2}){0,5}$"
MACPrefix = Annotated[
    str,
    Field(max_length=17),
    Checked(Rule(f"self.matches('{MAC_PREFIX_RE}')",
                 "must be 1 to 6 colon-separated hex octets such as 00:1a:2b",
                 lambda s: re.fullmatch(MAC_PREFIX_RE, s) is not None)),
]

Regex = Annotated[
    str,
    Field(min_length=1, max_length=256),
    Checked(Rule(CEL_IS_REGEX, "must be a valid regular expression (RE2 syntax)", is_regex)),
]

# Go duration syntax, so that CEL's duration() parses exactly what Python does.
DURATION_RE = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"


def rfc3339(t: float) -> str:
    """A Unix time as the API writes a date-time: UTC, to the second."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@lru_cache(maxsize=256)  # a handful of distinct strings, parsed per request by the agent
def parse_duration(s: str) -> int:
    """Seconds in a duration such as ``12h``, ``90m`` or ``1h30m``."""
    m = re.fullmatch(DURATION_RE, s)
    if not m or not s:
        raise ValueError(f"not a duration: {s!r}")
    h, mi, sec = (int(g[:-1]) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + sec


def Duration(low: str, high: str) -> Any:
    """A duration string within ``[low, high]``, both written as durations."""
    lo, hi = parse_duration(low), parse_duration(high)
    syntax = Rule(f"self != '' && self.matches('{DURATION_RE}')",
                  "must be a duration such as 12h, 30m or 1h30m (units h, m, s)",
                  lambda s: s != "" and re.fullmatch(DURATION_RE, s) is not None)
    bounds = Rule(f"!self.matches('{DURATION_RE}') || self == '' || "
                  f"(duration(self) >= duration('{low}') && duration(self) <= duration('{high}'))",
                  f"must be between {low} and {high}",
                  lambda s: re.fullmatch(DURATION_RE, s) is None or s == ""
                  or lo <= parse_duration(s) <= hi)
    return Annotated[str, Field(max_length=16), Checked(syntax, bounds)]


# --- metadata and status pieces -----------------------------------------------------------


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata bng reads. Not part of any CRD schema."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    creation_timestamp: datetime | None = Field(default=None, alias="creationTimestamp")
    deletion_timestamp: datetime | None = Field(default=None, alias="deletionTimestamp")
    finalizers: list[str] | None = None


class Condition(Model):
    """A status condition, shaped like metav1.Condition."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime | None = None
    observed_generation: int | None = Field(default=None, ge=0)


Conditions = Annotated[
    list[Condition],
    Field(default_factory=list, max_length=16,
          json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
]


ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=253,
          pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
          description="Name of another bng object."),
]


def with_condition(conditions: list[Condition], type: str, status: bool, reason: str,
                   message: str, generation: int | None, now: datetime) -> list[Condition]:
    """``conditions`` with one condition set. The transition time moves only when the status
    does, so setting the same condition twice gives an equal list (and no apiserver write)."""
    value: Literal["True", "False"] = "True" if status else "False"
    old = next((c for c in conditions if c.type == type), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(type=type, status=value, reason=reason, message=message,
                    last_transition_time=since, observed_generation=generation)
    return [new if c.type == type else c for c in conditions] if old else [*conditions, new]

"""Validation rules that both the apiserver and Python enforce.

A rule is written once here, as a CEL expression for the CRD's ``x-kubernetes-validations``
and as its Python mirror, with one message. The apiserver runs the CEL when a user applies an
object; pydantic runs the mirror when bng reads a standalone config file. The table of wrong
objects in ``tests/cases`` is fed to both, so the two sides cannot drift apart unseen.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema


@dataclass(frozen=True)
class Rule:
    """One rule: CEL for the apiserver, ``check`` for Python, one message for both."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    # Where the apiserver reports the error, relative to the object the rule sits on.
    field_path: str | None = None

    def cel_dict(self) -> dict[str, str]:
        d = {"rule": self.cel, "message": self.message}
        if self.field_path:
            d["fieldPath"] = self.field_path
        return d


def apply_rules(rules: tuple[Rule, ...], value: Any) -> None:
    """Raise a pydantic error for the first rule ``value`` breaks."""
    for r in rules:
        if not r.check(value):
            # ``field`` extends the error's location, the way fieldPath does in the apiserver.
            raise PydanticCustomError("bng_rule", r.message, {"field": r.field_path or ""})


class Checked:
    """``Annotated`` marker that attaches rules to a field's type (a string, a list...)."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = rules

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> Any:
            apply_rules(self.rules, value)
            return value

        return core_schema.no_info_after_validator_function(validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        js = handler(schema)
        js.setdefault("x-kubernetes-validations", []).extend(r.cel_dict() for r in self.rules)
        return js


# Python mirrors of the Kubernetes CEL ip/cidr library (k8s >= 1.31).


def is_ipv4(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def is_cidr(s: str) -> bool:
    """Mirror of CEL ``isCIDR``: an address with a prefix length, host bits allowed."""
    if "/" not in s:
        return False
    try:
        ipaddress.ip_interface(s)
    except ValueError:
        return False
    return True


def is_ipv4_cidr(s: str) -> bool:
    return is_cidr(s) and ipaddress.ip_interface(s).version == 4


def is_masked(s: str) -> bool:
    """True when the CIDR has no host bits set (10.0.0.0/24, not 10.0.0.1/24)."""
    if not is_cidr(s):
        return True
    i = ipaddress.ip_interface(s)
    return i.ip == i.network.network_address


def cidr_contains(cidr: str, ip: str) -> bool:
    if not (is_cidr(cidr) and is_ipv4(ip)):
        return True  # the syntax rules of each field report that
    return ipaddress.IPv4Address(ip) in ipaddress.ip_interface(cidr).network


def cidr_prefix(cidr: str) -> int:
    return ipaddress.ip_interface(cidr).network.prefixlen


def is_regex(s: str) -> bool:
    """Whether ``s`` compiles both in RE2 (CEL ``matches``) and in Python's ``re``.

    Python compiles it here; RE2's extra refusals (look-around, back-references) are
    checked by a small screen so that a pattern the apiserver takes also works in the agent.
    """
    try:
        re.compile(s)
    except re.error:
        return False
    return not re.search(r"\(\?[=!<]|\\[1-9]|\(\?P=", s)


# CEL that accepts what ``is_regex`` accepts: ''.matches(self) errors on a bad RE2 pattern,
# so both sides of the || error and the rule fails; otherwise it is true.
CEL_IS_REGEX = "''.matches(self) || !''.matches(self)"

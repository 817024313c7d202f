"""Reading constants out of the C headers, for the tests that hold Python mirrors to them."""

from __future__ import annotations

import re


def enum_names(header: str, enum: str, prefix: str) -> list[str]:
    """The member names of ``enum <enum>`` in ``header``'s text, in order, without
    ``prefix``, lower-cased."""
    m = re.search(rf"enum {enum} \{{(.*?)\}};", header, re.S)
    assert m is not None, f"enum {enum} not found"
    body = re.sub(r"//[^\n]*", "", m.group(1))
    return [n.strip().split("=")[0].strip().removeprefix(prefix).lower()
            for n in body.split(",") if n.strip()]

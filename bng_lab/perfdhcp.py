"""Running Kea's perfdhcp and reading its report."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Exchange:
    sent: int
    received: int
    drops_ratio: float  # percent
    min_ms: float
    avg_ms: float
    max_ms: float
    std_ms: float


@dataclass(frozen=True)
class Report:
    rate: float  # completed 4-way exchanges per second
    discover: Exchange
    request: Exchange


def parse(out: str) -> Report:
    rate = re.search(r"Rate: ([\d.]+) 4-way exchanges/second", out)
    sections = re.split(r"\*\*\*Statistics for: ", out)[1:]

    def ex(text: str) -> Exchange:
        def num(name: str) -> float:
            m = re.search(rf"{name}: ([\d.]+)", text)
            return float(m.group(1)) if m else float("nan")

        return Exchange(int(num("sent packets")), int(num("received packets")),
                        num("drops ratio"), num("min delay"), num("avg delay"),
                        num("max delay"), num("std deviation"))

    by = {s.split("***")[0]: ex(s) for s in sections}
    if rate is None or "DISCOVER-OFFER" not in by or "REQUEST-ACK" not in by:
        raise ValueError(f"not a perfdhcp report:\n{out[-2000:]}")
    return Report(float(rate.group(1)), by["DISCOVER-OFFER"], by["REQUEST-ACK"])

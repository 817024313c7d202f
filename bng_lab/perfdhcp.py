"""Running Kea's perfdhcp and reading its report."""

from __future__ import annotations

import math
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
    # perfdhcp's own rate: every ACK, those received in its exit wait (-W) too, over the
    # whole run, that wait included
    rate: float
    discover: Exchange
    request: Exchange
    # ACKs received by the end of the test period (-p): the periodic report that timed()
    # asks for; None without one
    acks_in_period: int | None = None


def timed(seconds: int) -> list[str]:
    """Arguments for a test period of ``seconds`` that also reports the replies received
    by its end. perfdhcp times its period (-p) and its periodic reports (-t) from the same
    moment, so a report every ``seconds`` comes once, when the period ends and the exit
    wait (-W, needed for it) begins, before the replies received in that wait."""
    return ["-p", str(seconds), "-t", str(seconds)]


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
    # "sent: D/R; received: O/A; ...": the exchanges in the order DO, RA
    periodic = re.findall(r"^sent: \d+/\d+; received: \d+/(\d+);", out, re.MULTILINE)
    return Report(float(rate.group(1)), by["DISCOVER-OFFER"], by["REQUEST-ACK"],
                  int(periodic[0]) if periodic else None)


def timers(out: str) -> dict[str, list[float]]:
    """Each successful exchange's delay in ms, by exchange ("DISCOVER-OFFER", "REQUEST-ACK"),
    from the timestamps that ``-x t`` makes perfdhcp print when it finishes."""
    found: dict[str, list[float]] = {}
    for section in re.split(r"\*\*\*Timestamps for packets: ", out)[1:]:
        name = section.split("***")[0]
        found[name] = [(float(rcvd) - float(sent)) * 1e3 for sent, rcvd in re.findall(
            r"^sent / received: ([\d.]+) / ([\d.]+)$", section, re.MULTILINE)]
    return found


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN if there are none."""
    if not values:
        return float("nan")
    ranked = sorted(values)
    return ranked[max(0, min(len(ranked) - 1, math.ceil(p / 100 * len(ranked)) - 1))]

"""QoSPolicy: download shaping and upload policing rates for a class of subscribers."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import Field

from bng_operator.api.common import Conditions, Model
from bng_operator.api.resource import AGE, PrinterColumn, Resource, ResourceInfo
from bng_operator.api.rules import Checked, Rule

RATE_RE = r"^[0-9]+([.][0-9]+)?([kKmMgGtT])?bit$"
BYTES_RE = r"^[0-9]+([.][0-9]+)?([kKmMgG]i?)?B$"
_SI = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IEC = {"ki": 2**10, "mi": 2**20, "gi": 2**30}

# The shaper needs at least one full-size frame of credit, or big packets never pass.
MIN_BURST_BYTES = 1514


def parse_rate(s: str) -> int:
    """Bits per second in a rate such as ``100Mbit``, ``512kbit`` or ``1.5Gbit``."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kKmMgGtT]?)bit", s)
    if not m:
        raise ValueError(f"not a rate: {s!r}")
    return int(float(m.group(1)) * _SI[m.group(2).lower()])


def parse_bytes(s: str) -> int:
    """Bytes in a size such as ``1500B``, ``64KiB`` or ``1.5MB``."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kKmMgG]i?)?B", s)
    if not m:
        raise ValueError(f"not a byte size: {s!r}")
    unit = (m.group(2) or "").lower()
    return int(float(m.group(1)) * (_IEC[unit] if unit.endswith("i") else _SI[unit]))


Rate = Annotated[
    str,
    Field(max_length=24),
    Checked(
        Rule(f"self.matches('{RATE_RE}')",
             "must be a rate in bits per second with a unit: 512kbit, 100Mbit, 1.5Gbit",
             lambda s: re.fullmatch(RATE_RE, s) is not None),
        Rule(f"!self.matches('{RATE_RE}') || !self.matches('^[0.]+[kKmMgGtT]?bit$')",
             "must be greater than zero", lambda s: re.fullmatch(r"[0.]+[kKmMgGtT]?bit", s) is None),
    ),
]

ByteSize = Annotated[
    str,
    Field(max_length=24),
    Checked(Rule(f"self.matches('{BYTES_RE}')",
                 "must be a size in bytes with a unit: 1514B, 64KiB, 1.5MB",
                 lambda s: re.fullmatch(BYTES_RE, s) is not None)),
]


class RateLimit(Model):
    """A token bucket: ``rate`` sustained, ``burst`` bytes above it."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            # Reject bursts below one frame. B and kB values are the only ones that can be;
            # their number is compared in CEL after stripping the unit.
            f"!has(self.burst) || !self.burst.matches('{BYTES_RE}') || "
            "!self.burst.matches('^[0-9]+B$') || int(self.burst.replace('B', '')) >= "
            f"{MIN_BURST_BYTES}",
            f"burst must hold at least one full frame ({MIN_BURST_BYTES}B)",
            lambda r: r.burst is None or re.fullmatch(r"[0-9]+B", r.burst) is None
            or parse_bytes(r.burst) >= MIN_BURST_BYTES,
            field_path=".burst",
        ),
    )
    rate: Rate
    burst: ByteSize | None = Field(
        default=None, description="Defaults to 10 ms of rate, at least one full frame.",
    )

    @property
    def rate_bps(self) -> int:
        return parse_rate(self.rate)

    @property
    def burst_bytes(self) -> int:
        if self.burst is not None:
            return parse_bytes(self.burst)
        return max(MIN_BURST_BYTES, self.rate_bps // 8 // 100)


class QoSPolicySpec(Model):
    download: RateLimit = Field(description="Towards the subscriber: shaped on access egress.")
    upload: RateLimit = Field(description="From the subscriber: policed at XDP ingress.")


class QoSPolicyStatus(Model):
    conditions: Conditions


class QoSPolicy(Resource):
    info: ClassVar[ResourceInfo] = ResourceInfo(
        kind="QoSPolicy",
        plural="qospolicies",
        short_names=("qos",),
        scope="Cluster",
        columns=(
            PrinterColumn("Download", "string", ".spec.download.rate"),
            PrinterColumn("Upload", "string", ".spec.upload.rate"),
            PrinterColumn("Down-Burst", "string", ".spec.download.burst", priority=1),
            PrinterColumn("Up-Burst", "string", ".spec.upload.burst", priority=1),
            AGE,
        ),
    )
    spec: QoSPolicySpec
    status: QoSPolicyStatus | None = None

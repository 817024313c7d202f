"""Objects users get wrong, each with the field its error must name.

The unit tier feeds them to the pydantic models; the k8s tier sends them to the real
apiserver. Both must reject every one and name the field, so the CEL rules in the CRDs and
their Python mirrors cannot drift apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SAMPLES = Path(__file__).resolve().parents[1] / "config" / "samples"


def sample(file: str) -> dict[str, Any]:
    return yaml.safe_load((SAMPLES / file).read_text())  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Wrong:
    id: str
    base: str  # sample file the object starts from
    path: tuple[str | int, ...]  # where to change it
    value: Any  # the wrong value (DELETE removes the key)
    field: str  # what the error must name, as the apiserver spells it

    def object(self) -> dict[str, Any]:
        obj = copy.deepcopy(sample(self.base))
        obj["metadata"]["name"] = f"wrong-{self.id}"
        node = obj
        for key in self.path[:-1]:
            node = node[key]
        if self.value is DELETE:
            del node[self.path[-1]]
        else:
            node[self.path[-1]] = self.value
        return obj


DELETE = object()
POOL, BIZ_POOL = "ippool-residential.yaml", "ippool-business.yaml"
QOS, NAT = "qospolicy-residential.yaml", "natpool-cgnat.yaml"
CLASS, SUB = "subscriberclass-residential.yaml", "subscriber-reserved.yaml"
NODE = "bngnode-standalone.yaml"
S0 = ("spec", "subnets", 0)

WRONG = [
    Wrong("cidr-prefix-33", POOL, (*S0, "cidr"), "100.64.0.0/33", "spec.subnets[0].cidr"),
    Wrong("cidr-host-bits", POOL, (*S0, "cidr"), "100.64.0.1/20", "spec.subnets[0].cidr"),
    Wrong("cidr-ipv6", POOL, (*S0, "cidr"), "2001:db8::/64", "spec.subnets[0].cidr"),
    Wrong("cidr-too-small", POOL, S0, {"cidr": "100.64.0.0/31", "gateway": "100.64.0.1"},
          "spec.subnets[0].cidr"),
    Wrong("gateway-syntax", POOL, (*S0, "gateway"), "100.64.0.256", "spec.subnets[0].gateway"),
    Wrong("gateway-outside", POOL, (*S0, "gateway"), "10.0.0.1", "spec.subnets[0].gateway"),
    Wrong("gateway-network-address", POOL, (*S0, "gateway"), "100.64.0.0",
          "spec.subnets[0].gateway"),
    Wrong("exclude-outside", POOL, (*S0, "exclude"), [{"start": "10.0.0.1", "end": "10.0.0.9"}],
          "spec.subnets[0].exclude"),
    Wrong("exclude-reversed", POOL, (*S0, "exclude"),
          [{"start": "100.64.0.15", "end": "100.64.0.1"}], "spec.subnets[0].exclude[0].end"),
    Wrong("subnets-overlap", POOL, ("spec", "subnets"),
          [{"cidr": "100.64.0.0/20", "gateway": "100.64.0.1"},
           {"cidr": "100.64.8.0/24", "gateway": "100.64.8.1"}], "spec.subnets"),
    Wrong("block-larger-than-subnet", BIZ_POOL, ("spec", "blockSize"), 22, "spec.blockSize"),
    Wrong("block-size-range", POOL, ("spec", "blockSize"), 33, "spec.blockSize"),
    Wrong("lease-syntax", POOL, ("spec", "leaseTime"), "1 day", "spec.leaseTime"),
    Wrong("lease-too-short", POOL, ("spec", "leaseTime"), "10s", "spec.leaseTime"),
    Wrong("dns-not-ip", POOL, ("spec", "dns"), ["dns.example.net"], "spec.dns[0]"),
    Wrong("rate-no-unit", QOS, ("spec", "download", "rate"), "100", "spec.download.rate"),
    Wrong("rate-bytes-unit", QOS, ("spec", "upload", "rate"), "100MB/s", "spec.upload.rate"),
    Wrong("rate-zero", QOS, ("spec", "upload", "rate"), "0Mbit", "spec.upload.rate"),
    Wrong("burst-syntax", QOS, ("spec", "download", "burst"), "1Mbit", "spec.download.burst"),
    Wrong("burst-below-frame", QOS, ("spec", "download", "burst"), "100B", "spec.download.burst"),
    Wrong("port-range-reversed", NAT, ("spec", "portRange"), {"start": 60000, "end": 1024},
          "spec.portRange.start"),
    Wrong("port-range-max", NAT, ("spec", "portRange", "end"), 70000, "spec.portRange.end"),
    Wrong("ports-per-block-uneven", NAT, ("spec", "portsPerBlock"), 1000, "spec.portsPerBlock"),
    Wrong("nat-address", NAT, ("spec", "addresses"), ["203.0.113.1/28"], "spec.addresses[0]"),
    Wrong("nat-mode", NAT, ("spec", "mode"), "masquerade", "spec.mode"),
    Wrong("nat-udp-timeout-short", NAT, ("spec", "timeouts", "udp"), "30s",
          "spec.timeouts.udp"),
    Wrong("regex-syntax", CLASS, ("spec", "match", "remoteId"), "^res-([0-9]+$",
          "spec.match.remoteId"),
    Wrong("regex-lookahead", CLASS, ("spec", "match", "remoteId"), "^res-(?!9)",
          "spec.match.remoteId"),
    Wrong("mac-prefix", CLASS, ("spec", "match", "macPrefix"), "00:1g", "spec.match.macPrefix"),
    Wrong("identity-unknown", CLASS, ("spec", "identity"), "username", "spec.identity"),
    Wrong("class-without-pool", CLASS, ("spec", "pool"), DELETE, "spec.pool"),
    Wrong("pool-name-syntax", CLASS, ("spec", "pool"), "Residential_Pool", "spec.pool"),
    Wrong("radius-without-servers", CLASS, ("spec", "auth"), "radius", "spec.radius"),
    Wrong("radius-no-server", CLASS, ("spec", "radius"), {"servers": []},
          "spec.radius.servers"),
    Wrong("radius-address-name", CLASS, ("spec", "radius"),
          {"servers": [{"address": "radius.example", "secret": {"name": "radius"}}]},
          "spec.radius.servers[0].address"),
    Wrong("radius-secret-inline", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "secret": "testing123"}]},
          "spec.radius.servers[0].secret"),
    Wrong("radius-secret-name", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "secret": {"name": "Radius_Secret"}}]},
          "spec.radius.servers[0].secret.name"),
    Wrong("radius-port", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "authPort": 0, "secret": {"name": "r"}}]},
          "spec.radius.servers[0].authPort"),
    Wrong("radius-timeout", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "timeout": "2m", "secret": {"name": "r"}}]},
          "spec.radius.servers[0].timeout"),
    Wrong("radius-retries", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "retries": 11, "secret": {"name": "r"}}]},
          "spec.radius.servers[0].retries"),
    Wrong("radius-server-twice", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "secret": {"name": "r"}},
                       {"address": "192.0.2.10", "secret": {"name": "s"}}]},
          "spec.radius.servers"),
    Wrong("radius-template-field", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "secret": {"name": "r"}}],
           "userName": "{hostname}"}, "spec.radius.userName"),
    Wrong("radius-mac-format", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "secret": {"name": "r"}}],
           "macFormat": "cisco"}, "spec.radius.macFormat"),
    Wrong("radius-fallback", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "secret": {"name": "r"}}],
           "fallback": "maybe"}, "spec.radius.fallback"),
    Wrong("radius-hold-down", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "secret": {"name": "r"}}],
           "rejectHoldDown": "30"}, "spec.radius.rejectHoldDown"),
    Wrong("radius-interim-interval", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "secret": {"name": "r"}}],
           "interimInterval": "25h"}, "spec.radius.interimInterval"),
    Wrong("radius-acct-port", CLASS, ("spec", "radius"),
          {"servers": [{"address": "192.0.2.10", "acctPort": 70000, "secret": {"name": "r"}}]},
          "spec.radius.servers[0].acctPort"),
    Wrong("subscriber-no-identity", SUB, ("spec", "identity"), {}, "spec.identity"),
    Wrong("subscriber-mac", SUB, ("spec", "identity"), {"mac": "02:00:5e:10:00"},
          "spec.identity.mac"),
    Wrong("subscriber-address", SUB, ("spec", "address"), "198.51.100", "spec.address"),
]

# BNGNode: the operator writes it in Kubernetes mode, and its CRD carries no CEL rules (its
# embedded policy was checked as IPPool, SubscriberClass, ...); users write it in standalone
# mode, where the models check it. These go to the models only.
WRONG_NODE = [
    Wrong("option82-trusted-not-access", NODE, ("spec", "interfaces", "option82", "trusted"),
          ["eth7"], "spec.interfaces.option82.trusted"),
    Wrong("option82-untrusted-mode", NODE, ("spec", "interfaces", "option82", "untrusted"),
          "ignore", "spec.interfaces.option82.untrusted"),
    Wrong("option82-relay-cidr", NODE, ("spec", "interfaces", "option82", "trustedRelays"),
          ["192.0.2.0/33"], "spec.interfaces.option82.trustedRelays[0]"),
    Wrong("event-loop-cpu-negative", NODE, ("spec", "eventLoopCPU"), -1, "spec.eventLoopCPU"),
    Wrong("event-loop-cpu-too-high", NODE, ("spec", "eventLoopCPU"), 4096, "spec.eventLoopCPU"),
    Wrong("event-loop-cpu-a-list", NODE, ("spec", "eventLoopCPU"), "0-1", "spec.eventLoopCPU"),
]

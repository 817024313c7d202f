"""What the XDP fast path may answer, as plain values: no bcc here, so it is unit-tested.

A fast-path entry is a bound lease plus the request it was granted on. The program answers
only a request that looks like that one (same client id, same option 82, same relay), so its
reply is the one the slow path would send. Anything else goes to the slow path, which may
classify the client anew.
"""

from __future__ import annotations

from dataclasses import dataclass

from bng_operator.agent.config import NodeConfig, SubnetConfig
from bng_operator.agent.dhcp.leases import Lease

# Mirrors of bpf/lib/dhcp.h; tests/bpf/test_fastpath.py checks that they agree.
MAX_RELAY_AGENT_LEN = 62
MAX_CLIENT_ID_LEN = 32
MAX_DNS = 4
MAX_DOMAIN_LEN = 32
CIRCUIT_HASH_MUL = 0x9E3779B97F4A7C15
_OPT_RELAY_AGENT = 82
_LINE_IDENTITIES = ("circuit:", "remote:")
_U64 = (1 << 64) - 1


def circuit_hash(relay: bytes) -> int:
    """The circuit key's hash of option 82 as on the wire (code, length, value), as
    circuit_hash() in bpf/lib/dhcp.h computes it: zero-padded, in little-endian words."""
    padded = relay.ljust(MAX_RELAY_AGENT_LEN + 2, b"\0")
    h = 0
    for i in range(0, len(padded), 8):
        h = ((h ^ int.from_bytes(padded[i:i + 8], "little")) * CIRCUIT_HASH_MUL) & _U64
        h ^= h >> 32
    return h


@dataclass(frozen=True)
class SubnetOptions:
    """The reply options of one subnet, as the fast path writes them."""

    network: int
    mask: bytes
    router: bytes
    broadcast: bytes
    dns: tuple[bytes, ...]
    domain: bytes


def subnet_options(sc: SubnetConfig) -> SubnetOptions | None:
    """None when the subnet's options do not fit the fast path's fixed reply (more than
    MAX_DNS servers, a domain longer than MAX_DOMAIN_LEN): its clients use the slow path."""
    dns_raw = sc.options.get(6, b"")
    dns = tuple(dns_raw[i:i + 4] for i in range(0, len(dns_raw), 4))
    domain = sc.options.get(15, b"")
    if len(dns) > MAX_DNS or len(domain) > MAX_DOMAIN_LEN:
        return None
    return SubnetOptions(int(sc.network.network_address), sc.options[1], sc.options[3],
                         sc.options[28], dns, domain)


@dataclass(frozen=True)
class FastEntry:
    by_circuit: bool  # keyed by option 82 (circuit-/remote-id classes), else by MAC + VLAN
    mac: bytes
    vlan: int
    relay: bytes  # option 82 as on the wire (code, length, value), b"" if none
    client_id: bytes
    address: int
    server_id: int
    giaddr: int
    subnet: int  # network address of the lease's subnet
    lease_seconds: int
    expires: float  # unix time

    @property
    def key(self) -> tuple[bool, int, bytes]:
        return (self.by_circuit, self.vlan, self.relay if self.by_circuit else self.mac)


def entry_for(lease: Lease, config: NodeConfig) -> FastEntry | None:
    """The entry for a bound lease or a committed offer (its REQUEST is ACKed), or None when
    the fast path cannot answer for it."""
    if lease.state not in ("bound", "offered") or not lease.server_id or not lease.lease_seconds:
        return None  # e.g. a lease stored by an agent that did not record its request
    pool = config.pools.get(lease.pool)
    sc = pool.subnet_config(lease.address) if pool else None
    if sc is None or subnet_options(sc) is None:
        return None
    relay = b""
    if lease.relay_agent is not None:
        if len(lease.relay_agent) > MAX_RELAY_AGENT_LEN:
            return None
        relay = bytes([_OPT_RELAY_AGENT, len(lease.relay_agent)]) + lease.relay_agent
    by_circuit = bool(relay) and lease.identity.startswith(_LINE_IDENTITIES)
    client_id = bytes.fromhex(lease.client_id) if lease.client_id else b""
    if not by_circuit and len(client_id) > MAX_CLIENT_ID_LEN:
        return None
    return FastEntry(by_circuit, bytes.fromhex(lease.mac.replace(":", "")), lease.vlan, relay,
                     client_id, lease.address, lease.server_id, lease.giaddr,
                     int(sc.network.network_address), lease.lease_seconds, lease.expires)

"""Which SubscriberClass, pool, identity and reservation a DHCP request gets: pure, no state."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from bng_operator.agent.config import (
    ClassConfig,
    NodeConfig,
    PoolConfig,
    Reservation,
    SubnetConfig,
    identity_keys,
)
from bng_operator.agent.dhcp.codec import Message


@dataclass(frozen=True)
class Classified:
    cls: ClassConfig | None
    pool: PoolConfig
    identity: str
    reservation: Reservation | None
    subnet: SubnetConfig | None  # allocations must come from here (giaddr's link)


def identity_of(mode: str, msg: Message) -> str:
    """The key identifying the client under a class's identity mode (MAC as the fallback)."""
    cid = msg.client_id.hex() if msg.client_id else None
    if mode == "circuit-id" and msg.circuit_id:
        return identity_keys(None, None, msg.circuit_id, None)[0]
    if mode == "remote-id" and msg.remote_id:
        return identity_keys(None, None, None, msg.remote_id)[0]
    if mode == "client-id" and cid:
        return identity_keys(None, cid, None, None)[0]
    return identity_keys(msg.mac, None, None, None)[0]


def message_keys(msg: Message) -> list[str]:
    """Every identity key a reservation may be written against."""
    return identity_keys(msg.mac, msg.client_id.hex() if msg.client_id else None,
                         msg.circuit_id, msg.remote_id)


def matches(c: ClassConfig, msg: Message, vlans: tuple[int, ...]) -> bool:
    m = c.spec.match
    if c.circuit_id and (msg.circuit_id is None or not c.circuit_id.search(msg.circuit_id)):
        return False
    if c.remote_id and (msg.remote_id is None or not c.remote_id.search(msg.remote_id)):
        return False
    if c.vendor_class and (msg.vendor_class is None or not c.vendor_class.search(msg.vendor_class)):
        return False
    if m.mac_prefix and not msg.mac.startswith(m.mac_prefix.lower()):
        return False
    if c.relays and (int(msg.giaddr) == 0 or not any(msg.giaddr in r for r in c.relays)):
        return False
    return not (m.vlan is not None and (not vlans or vlans[0] != m.vlan))


def option82_trusted(config: NodeConfig, interface: str, giaddr: IPv4Address) -> bool:
    """Whether option 82 in a request is believed (RFC 3046 §2.1, §2.2): on an access
    interface marked as behind an access node that inserts it, or from a trusted relay."""
    return interface in config.option82_trusted or \
        (int(giaddr) != 0 and any(giaddr in r for r in config.option82_relays))


def classify(config: NodeConfig, msg: Message, vlans: tuple[int, ...]) -> Classified | None:
    """The reservation's class, else the first class that matches; the reservation's pool,
    else the class's, else (relayed) the pool of giaddr's subnet; None when nothing serves
    the client. A relayed client is served only from the subnet of giaddr's link."""
    reservation = None
    if config.reservation_by_key:
        keys = message_keys(msg)
        reservation = next((r for k in keys if (r := config.reservation_by_key.get(k))
                            and all(key in keys for key in r.keys)), None)
    cls = None
    if reservation and reservation.subscriber_class:
        cls = config.class_by_name.get(reservation.subscriber_class)
    if cls is None:
        cls = next((c for c in config.classes if matches(c, msg, vlans)), None)
    relayed = int(msg.giaddr) != 0
    if cls is not None:
        pool = config.pools[reservation.pool if reservation else cls.spec.pool]
    elif reservation:  # its own pool; relayed, its subnet must be the relay's link (below)
        pool = config.pools[reservation.pool]
    elif relayed:  # no class: the relay's link picks the pool, as in any DHCP server
        found = next((p for p in config.pools.values() if p.subnet_config(msg.giaddr)), None)
        if found is None:
            return None
        pool = found
    else:
        return None
    subnet = pool.subnet_config(msg.giaddr) if relayed else None
    identity = identity_of(cls.spec.identity if cls else "client-id", msg)
    return Classified(cls, pool, identity, reservation, subnet)


def served_from(config: NodeConfig, where: IPv4Address) -> PoolConfig | None:
    """The pool whose subnet holds ``where`` (an INFORM's ciaddr)."""
    return next((p for p in config.pools.values() if p.subnet_config(where)), None)

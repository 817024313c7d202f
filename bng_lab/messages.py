"""Building DHCP requests for tests, the way clients and relays write them."""

from __future__ import annotations

from ipaddress import IPv4Address

from bng_operator.agent.dhcp.codec import BOOTREQUEST, Message, MessageType, Opt


def relay82(circuit: str | None = None, remote: str | None = None) -> bytes:
    out = b""
    if circuit is not None:
        out += bytes([1, len(circuit)]) + circuit.encode()
    if remote is not None:
        out += bytes([2, len(remote)]) + remote.encode()
    return out


def request(kind: MessageType, mac: str = "02:00:00:00:00:01", *, xid: int = 0x1234,
            requested: str | None = None, server_id: str | None = None, ciaddr: str = "0.0.0.0",
            giaddr: str = "0.0.0.0", circuit: str | None = None, remote: str | None = None,
            client_id: bytes | None = None, prl: bytes | None = None, broadcast: bool = False,
            hostname: str | None = None, extra: dict[int, bytes] | None = None) -> Message:
    opts: dict[int, bytes] = {Opt.MESSAGE_TYPE: bytes([kind])}
    if requested:
        opts[Opt.REQUESTED_IP] = IPv4Address(requested).packed
    if server_id:
        opts[Opt.SERVER_ID] = IPv4Address(server_id).packed
    if client_id is not None:
        opts[Opt.CLIENT_ID] = client_id
    if prl is not None:
        opts[Opt.PARAM_REQUEST] = prl
    if hostname:
        opts[Opt.HOSTNAME] = hostname.encode()
    if circuit is not None or remote is not None:
        opts[Opt.RELAY_AGENT] = relay82(circuit, remote)
    opts.update(extra or {})
    return Message(op=BOOTREQUEST, xid=xid, chaddr=bytes.fromhex(mac.replace(":", "")) + bytes(10),
                   flags=0x8000 if broadcast else 0, ciaddr=IPv4Address(ciaddr),
                   giaddr=IPv4Address(giaddr), options=opts)

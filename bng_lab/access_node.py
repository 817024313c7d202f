"""A lab access node (OLT/DSLAM) that inserts option 82, as an L2 DHCP relay agent does.

Real access nodes snoop DHCP on subscriber ports and add option 82 before passing requests
up to the BNG; DHCP clients cannot send it themselves. Here a Linux bridge carries the
traffic, nftables keeps it from forwarding subscribers' DHCP requests, and this process
forwards them instead, with circuit-id and remote-id of the port they came in on.

    python -m bng_lab.access_node UPLINK PORT=CIRCUIT,REMOTE [PORT=...]
"""

from __future__ import annotations

import select
import socket
import sys

from bng_operator.agent.dhcp.codec import Malformed, Opt, decode, encode
from bng_operator.agent.dhcp.transport import (
    ETH_P_ALL,
    attach_filter,
    build_frame,
    dhcp_server_filter,
    parse_frame,
)


def relay_agent_option(circuit: str, remote: str) -> bytes:
    c, r = circuit.encode(), remote.encode()
    return bytes([1, len(c)]) + c + (bytes([2, len(r)]) + r if r else b"")


def main(argv: list[str]) -> int:
    uplink, ports = argv[0], dict(a.split("=", 1) for a in argv[1:])
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    out.bind((uplink, ETH_P_ALL))
    socks = {}
    for port, ids in ports.items():
        circuit, _, remote = ids.partition(",")
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        attach_filter(s, dhcp_server_filter())
        s.bind((port, ETH_P_ALL))
        socks[s] = relay_agent_option(circuit, remote)
    print(f"access node: inserting option 82 on {len(socks)} ports, up via {uplink}", flush=True)
    while True:
        for s in select.select(list(socks), [], [])[0]:
            data = s.recv(2048)
            try:
                frame = parse_frame(data)
                msg = decode(frame.payload)
            except Malformed:
                continue
            # Its own, always: what a subscriber put there is replaced (RFC 3046 §2.1), which
            # is what makes option 82 from this port worth believing.
            msg.options[Opt.RELAY_AGENT] = socks[s]
            order = [k for k in msg.options if k != Opt.RELAY_AGENT] + [Opt.RELAY_AGENT]
            out.send(build_frame(frame.dst_mac, frame.src_mac, frame.tags, frame.src_ip,
                                 frame.dst_ip, 67, encode(msg, order), src_port=68))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A raw-socket DHCP prober, run inside a subscriber namespace by tests and benches.

    python -m bng_lab.probe discover eth0 --mac 02:00:00:00:00:09 [--opt 82=HEX]
    python -m bng_lab.probe raw eth0 HEXFRAME [HEXFRAME ...] [--repeat N]

``discover`` prints the OFFER as JSON (or {"timeout": true}); ``raw`` sends frames as given.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
from ipaddress import IPv4Address

from bng_operator.agent.dhcp.codec import BOOTREQUEST, Message, MessageType, Opt, encode
from bng_operator.agent.dhcp.transport import BROADCAST_IP, BROADCAST_MAC, build_frame

ETH_P_ALL = 0x0003


def _socket(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, ETH_P_ALL))
    return s


def discover(iface: str, mac: str, opts: dict[int, bytes], timeout: float) -> dict[str, object]:
    s = _socket(iface)
    chaddr = bytes.fromhex(mac.replace(":", ""))
    xid = int.from_bytes(os.urandom(4), "big")
    options = {Opt.MESSAGE_TYPE: bytes([MessageType.DISCOVER]), **opts}
    msg = Message(op=BOOTREQUEST, xid=xid, chaddr=chaddr + bytes(10), flags=0x8000,
                  options=options)
    payload = encode(msg, [Opt.MESSAGE_TYPE, *[k for k in opts]])
    frame = build_frame(BROADCAST_MAC, chaddr, b"", IPv4Address(0), BROADCAST_IP, 67, payload)
    # A client sends from port 68.
    frame = frame[:34] + (68).to_bytes(2, "big") + frame[36:40] + b"\x00\x00" + frame[42:]
    s.send(frame)
    deadline = time.monotonic() + timeout
    from bng_operator.agent.dhcp.codec import HEADER_LEN, MAGIC

    while time.monotonic() < deadline:
        if not select.select([s], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        data = s.recv(2048)
        if len(data) < 42 + HEADER_LEN or data[23] != 17 or data[36:38] != b"\x00\x44":
            continue
        payload = data[42:]
        if payload[0] != 2 or int.from_bytes(payload[4:8], "big") != xid:
            continue
        if payload[HEADER_LEN:HEADER_LEN + 4] != MAGIC:
            continue
        i, raw = HEADER_LEN + 4, {}
        while i < len(payload) and payload[i] != 255:
            if payload[i] == 0:
                i += 1
                continue
            raw[payload[i]] = payload[i + 2 : i + 2 + payload[i + 1]].hex()
            i += 2 + payload[i + 1]
        return {"yiaddr": str(IPv4Address(payload[16:20])), "options": raw}
    return {"timeout": True}


def main() -> int:
    p = argparse.ArgumentParser(prog="probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("discover")
    d.add_argument("iface")
    d.add_argument("--mac", required=True)
    d.add_argument("--opt", action="append", default=[], help="CODE=HEX")
    d.add_argument("--timeout", type=float, default=3.0)
    r = sub.add_parser("raw")
    r.add_argument("iface")
    r.add_argument("frames", nargs="+")
    r.add_argument("--repeat", type=int, default=1, help="send the frames this many times")
    r.add_argument("--interval", type=float, default=0.0, help="seconds between frames")
    a = p.parse_args()
    if a.cmd == "discover":
        opts = {int(k): bytes.fromhex(v) for k, v in (o.split("=", 1) for o in a.opt)}
        print(json.dumps(discover(a.iface, a.mac, opts, a.timeout)))
    else:
        s = _socket(a.iface)
        failed = 0
        frames = [bytes.fromhex(f) for f in a.frames]
        for _ in range(a.repeat):
            for f in frames:
                try:
                    s.send(f)
                except OSError as e:
                    failed += 1
                    print(f"frame of {len(f)} bytes not sent: {e}", file=sys.stderr)
                if a.interval:
                    time.sleep(a.interval)
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

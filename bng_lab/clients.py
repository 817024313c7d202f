"""Real DHCP clients (dhclient, udhcpc, dhcpcd) run in a namespace, their results parsed
from the client's own output or lease file."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClientLease:
    address: str
    mask: str
    routers: tuple[str, ...]
    dns: tuple[str, ...]
    lease_time: int
    server_id: str
    domain: str | None = None


class ClientFailed(RuntimeError):
    pass


def _ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def dhclient(ns: str, iface: str, workdir: Path, timeout: float = 20,
             extra: tuple[str, ...] = ()) -> ClientLease:
    """One-shot dhclient; returns the lease dhclient wrote (the last one in its lease file)."""
    leases, pid = workdir / f"dhclient-{ns}.leases", workdir / f"dhclient-{ns}.pid"
    r = subprocess.run(_ns(ns, "dhclient", "-1", "-v", "-lf", str(leases), "-pf", str(pid),
                           *extra, iface), capture_output=True, text=True, timeout=timeout + 10)
    history = lease_history(ns, workdir)
    if r.returncode != 0 or not history:
        raise ClientFailed(f"dhclient in {ns} got no lease:\n{r.stderr[-2000:]}")
    last = history[-1]
    return ClientLease(last["fixed-address"], last.get("subnet-mask", ""),
                       tuple(last.get("routers", "").split(",")),
                       tuple(last.get("domain-name-servers", "").split(",")),
                       int(last.get("dhcp-lease-time", 0)),
                       last.get("dhcp-server-identifier", ""), last.get("domain-name"))


def dhclient_renewing(ns: str, iface: str, workdir: Path, every: int = 2,
                      ) -> subprocess.Popen[bytes]:
    """dhclient as a daemon that renews every ``every`` seconds (its config overrides T1):
    RENEWING requests, unicast to the server, as a real CPE sends them. The caller stops it;
    ``lease_history`` reads what it was given."""
    conf = workdir / f"dhclient-{ns}.conf"
    conf.write_text(f"supersede dhcp-renewal-time {every};\n")
    leases, pid = workdir / f"dhclient-{ns}.leases", workdir / f"dhclient-{ns}.pid"
    log = open(workdir / f"dhclient-{ns}.log", "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(_ns(ns, "dhclient", "-d", "-v", "-cf", str(conf), "-lf", str(leases),
                                "-pf", str(pid), iface), stdout=log, stderr=subprocess.STDOUT)


def dhclient_acks(ns: str, workdir: Path) -> list[str]:
    """The DHCPACKs a ``dhclient_renewing`` client logged: "<address> from <server>"."""
    path = workdir / f"dhclient-{ns}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return re.findall(r"^DHCPACK of (\S+ from \S+)", text, re.M)


def lease_history(ns: str, workdir: Path) -> list[dict[str, str]]:
    """The lease blocks in dhclient's lease file, oldest first, as {option: value}. dhclient
    rewrites the file as it goes, so the last block is the current lease."""
    path = workdir / f"dhclient-{ns}.leases"
    text = path.read_text() if path.exists() else ""
    out = []
    for block in text.split("lease {")[1:]:
        fields = dict(re.findall(r"option ([\w-]+) ([^;]+);", block))
        address = re.search(r"fixed-address ([\d.]+);", block)
        if address:
            fields["fixed-address"] = address.group(1)
        out.append({k: v.strip('"') for k, v in fields.items()})
    return out


def dhclient_release(ns: str, iface: str, workdir: Path) -> None:
    leases, pid = workdir / f"dhclient-{ns}.leases", workdir / f"dhclient-{ns}.pid"
    subprocess.run(_ns(ns, "dhclient", "-r", "-lf", str(leases), "-pf", str(pid), iface),
                   capture_output=True, timeout=20)


UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc hands the lease to this script in environment variables; keep them.
[ "$1" = bound ] || [ "$1" = renew ] && env > "$UDHCPC_OUT.$1"
exit 0
"""


def udhcpc(ns: str, iface: str, workdir: Path, options: dict[int, bytes] | None = None,
           timeout: int = 10) -> ClientLease:
    """One-shot udhcpc (BusyBox); ``options`` are sent raw (e.g. {82: relay_agent_bytes})."""
    script = workdir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    out = workdir / f"udhcpc-{ns}"
    args = []
    for code, value in (options or {}).items():
        args += ["-x", f"0x{code:02x}:{value.hex()}"]
    r = subprocess.run(["ip", "netns", "exec", ns, "env", f"UDHCPC_OUT={out}", "udhcpc", "-i",
                        iface, "-n", "-q", "-f", "-t", "5", "-T", "2", "-s", str(script), *args],
                       capture_output=True, text=True, timeout=timeout + 20)
    bound = Path(f"{out}.bound")
    if r.returncode != 0 or not bound.exists():
        raise ClientFailed(f"udhcpc in {ns} got no lease:\n{r.stderr[-2000:]}")
    env = dict(line.split("=", 1) for line in bound.read_text().splitlines() if "=" in line)
    return ClientLease(env["ip"], env.get("subnet", ""), tuple(env.get("router", "").split()),
                       tuple(env.get("dns", "").split()), int(env.get("lease", 0)),
                       env.get("serverid", ""), env.get("domain"))


DHCPCD_SCRIPT = """#!/bin/sh
# dhcpcd's hook (it clears the environment, so the output path is written in here).
[ "$reason" = BOUND ] && env > "{out}"
exit 0
"""


def dhcpcd(ns: str, iface: str, workdir: Path, timeout: int = 20) -> ClientLease:
    """One-shot dhcpcd (-1): full DORA, configures the interface, then exits. Its hook
    script records the lease variables."""
    out = workdir / f"dhcpcd-{ns}.env"
    script = workdir / f"dhcpcd-{ns}.sh"
    script.write_text(DHCPCD_SCRIPT.format(out=out))
    script.chmod(0o755)
    # dhcpcd keeps a DUID and leases in /var/lib/dhcpcd and its sockets in /run/dhcpcd, paths
    # fixed at build time: give it private, empty ones (ip netns exec is its own mount ns).
    # /run/dhcpcd may not exist on a fresh host (/run is a tmpfs), and making it would touch
    # the host: a private tmpfs over /run holds it instead (the netns is entered already).
    run = ("mount -t tmpfs bng /var/lib/dhcpcd && { [ -d /run/dhcpcd ] || "
           "{ mount -t tmpfs bng /run && mkdir /run/dhcpcd; }; } && "
           "mount -t tmpfs bng /run/dhcpcd && "
           f"exec dhcpcd -4 -1 -B -t {timeout} -c {script} --noipv4ll {iface}")
    r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", run],
                       capture_output=True, text=True, timeout=timeout + 10)
    if not out.exists():
        raise ClientFailed(f"dhcpcd in {ns} got no lease:\n{(r.stdout + r.stderr)[-2000:]}")
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    return ClientLease(env["new_ip_address"], env.get("new_subnet_mask", ""),
                       tuple(env.get("new_routers", "").split()),
                       tuple(env.get("new_domain_name_servers", "").split()),
                       int(env.get("new_dhcp_lease_time", 0)),
                       env.get("new_dhcp_server_identifier", ""), env.get("new_domain_name"))


def send_frames(ns: str, iface: str, frames: list[str], repeat: int = 1,
                interval: float = 0.0) -> None:
    """Send hex ``frames`` out of ``iface`` in ``ns``, ``repeat`` times (``probe raw``)."""
    r = subprocess.run(_ns(ns, sys.executable, "-m", "bng_lab.probe", "raw", iface,
                           *frames, "--repeat", str(repeat), "--interval", str(interval)),
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise ClientFailed(f"probe in {ns} could not send: {r.stderr[-2000:]}")


def renewal_frames(lease: dict[str, str], mac: str, server_mac: str, n: int,
                   size: int | None = None, tags: bytes = b"") -> list[str]:
    """``n`` RENEWING requests as dhclient sends them for ``lease`` (a ``lease_history``
    entry): unicast to the server, ciaddr set, padded to 300 bytes. With ``size``, DHCP
    payloads of exactly that many bytes and no padding, as BNG Blaster's clients send (a
    parameter request list fills them). ``tags``: 802.1Q tags, inline. Hex frames, for
    ``probe raw``."""
    from ipaddress import IPv4Address

    from bng_operator.agent.dhcp.codec import BOOTREQUEST, Message, MessageType, Opt, encode
    from bng_operator.agent.dhcp.transport import build_frame

    addr, server = IPv4Address(lease["fixed-address"]), IPv4Address(lease["dhcp-server-identifier"])
    chaddr = bytes.fromhex(mac.replace(":", ""))
    out = []
    for xid in range(n):
        options: dict[int, bytes] = {Opt.MESSAGE_TYPE: bytes([MessageType.REQUEST])}
        order: list[int] = [Opt.MESSAGE_TYPE]
        if size is not None:
            fill = size - 244 - 2  # the fixed part, cookie, type and end; the option's head
            if not 1 <= fill <= 255:
                raise ValueError(f"no {size}-byte request: 247..501 bytes")
            options[Opt.PARAM_REQUEST] = bytes((1, 3, 6, 15, 28, 42, 51, 54)[i % 8]
                                               for i in range(fill))
            order.append(Opt.PARAM_REQUEST)
        msg = Message(op=BOOTREQUEST, xid=0x5000 + xid, chaddr=chaddr + bytes(10), ciaddr=addr,
                      options=options)
        payload = encode(msg, order)  # padded to 300 bytes, as a reply is
        if size is not None:
            payload = payload[:size]  # the padding follows the end option: cut, not parsed
        if len(payload) != (size or 300):
            raise ValueError(f"built a {len(payload)}-byte request, not {size}")
        out.append(build_frame(bytes.fromhex(server_mac.replace(":", "")), chaddr, tags, addr,
                               server, 67, payload, src_port=68).hex())
    return out

"""A small ISP site in network namespaces: a bng node, an access switch, subscribers.

    bng (access0: 100.64.0.1/20, 198.51.100.1/24) ── up0 ┐
                                                       br0 ├─ p0 ── s0 (eth0)
                                     relay (optional) ─────┤─ p1 ── s1 (eth0) ...

The agent runs as a real process in the bng namespace, so tests can kill -9 it. Used by the
e2e tests, the benchmarks and ``bng lab``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bng_lab.netlab import NetLab
from bng_operator import netlink

GATEWAYS = ("100.64.0.1/20", "198.51.100.1/24")
RELAY_ADDRESS = "198.51.100.2/24"
METRICS_PORT = 9641
INTERNET_LINK = ("192.0.2.1/24", "192.0.2.2/24")  # bng's uplink0, the internet's eth0
INTERNET_ADDRESS = INTERNET_LINK[1].split("/")[0]
# Public NAT addresses (the samples' NATPool cgnat is 203.0.113.0/28): routed to the node.
NAT_PUBLIC = "203.0.113.0/24"


def requests(metrics: dict[str, float], path: str) -> float:
    """REQUESTs an agent answered on ``path`` ("fast" or "slow"), whatever the result, from
    its ``Site.metrics()``."""
    return sum(v for k, v in metrics.items() if k.startswith("bng_dhcp_requests_total{")
               and f'path="{path}"' in k and 'type="request"' in k)


def subscriber_mac(i: int) -> str:
    return f"02:00:00:00:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"


@dataclass
class Site:
    lab: NetLab
    workdir: Path
    config: list[Path]
    node: str = "edge-1"
    bng: str = ""
    switch: str = ""
    relay: str = ""
    subscribers: list[str] = field(default_factory=list)
    agent: subprocess.Popen[bytes] | None = None
    access: str = "access0"  # the agent's access interface
    in_root: bool = False  # agent in this process's namespace (to reach a loopback apiserver)
    metrics_port: int = METRICS_PORT
    hubble_port: int = 4245  # Hubble's API (in the bng namespace; in_root: a free port)
    wrap: tuple[str, ...] = ()  # argv the agent runs under, e.g. setpriv with the chart's caps

    def build(self, subscribers: int = 3, relay: bool = False,
              option82: dict[int, tuple[str, str]] | None = None, in_root: bool = False) -> Site:
        """``option82`` maps subscriber index -> (circuit-id, remote-id) that the access node
        inserts for that subscriber's port. ``in_root`` puts the agent's side in this
        process's namespace, on an interface named after the lab (removed with it)."""
        lab = self.lab
        self.switch = lab.namespace("sw")
        if in_root:
            from bng_lab.controlplane import free_port

            self.in_root, self.bng = True, ""
            self.access = f"bt{lab.tag.removeprefix(lab.prefix)}"[:15]
            self.metrics_port = free_port()
            self.hubble_port = free_port()
        else:
            self.bng = lab.namespace("bng")
        lab.link(self.switch, "up0", self.bng or None, self.access)
        for gw in GATEWAYS:
            netlink.add_address(self.access, gw, self.bng or None)
        ports = ["up0"]
        for i in range(subscribers):
            ns = lab.namespace(f"s{i}")
            lab.link(self.switch, f"p{i}", ns, "eth0", mac_b=subscriber_mac(i))
            ports.append(f"p{i}")
            self.subscribers.append(ns)
        if relay:
            self.relay = lab.namespace("relay")
            lab.link(self.switch, "prelay", self.relay, "eth0", addr_b=RELAY_ADDRESS)
            ports.append("prelay")
        lab.bridge(self.switch, "br0", ports)
        # veth drops native XDP_TX frames unless the peer runs an XDP program of its own.
        from bng_operator.agent.dataplane.loader import attach_xdp_pass

        attach_xdp_pass("up0", self.switch)
        if option82:
            self._access_node(option82)
        return self

    def _access_node(self, option82: dict[int, tuple[str, str]]) -> None:
        rules = ("table bridge bnglab {\n chain forward {\n"
                 "  type filter hook forward priority 0;\n"
                 '  iifname != "up0" udp dport 67 drop\n }\n}\n')
        subprocess.run(["ip", "netns", "exec", self.switch, "nft", "-f", "-"], input=rules,
                       text=True, check=True)
        args = [f"p{i}={c},{r}" for i, (c, r) in option82.items()]
        self.lab.popen(self.switch, sys.executable, "-m", "bng_lab.access_node",
                       "up0", *args, stdout=open(self.workdir / "access-node.log", "ab"),  # noqa: SIM115
                       stderr=subprocess.STDOUT)

    # --- the internet behind the node --------------------------------------------------------

    def add_internet(self) -> str:
        """An "internet" namespace behind the bng node, which routes between its access
        subnets and it (INTERNET_ADDRESS), and NATs to NAT_PUBLIC. Returns the namespace."""
        inet = self.lab.namespace("inet")
        bng_side, inet_side = INTERNET_LINK
        self.lab.link(self.bng or None, "uplink0", inet, "eth0", bng_side, inet_side)
        via = bng_side.split("/")[0]
        for net in [str(ipaddress.ip_interface(gw).network) for gw in GATEWAYS] + [NAT_PUBLIC]:
            self.lab.run(inet, "ip", "route", "add", net, "via", via)
        self.lab.run(self.bng, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The internet is the node's default route (one subscriber reaching another's
        # public NAT address goes out towards it, and the NAT turns it back: hairpinning).
        if self.bng:  # never the host's own default route
            self.lab.run(self.bng, "ip", "route", "add", "default", "via",
                         inet_side.split("/")[0])
        return inet

    # --- the agent -------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def start_agent(self, *extra: str, timeout: float = 20) -> None:
        cmd = [*self.wrap, sys.executable, "-m", "bng_operator", "agent", "--node", self.node,
               "--state-dir", str(self.state_dir), "--log-level", "debug",
               "--metrics-port", str(self.metrics_port), "--bpf-dir", str(self.lab.bpf_dir),
               "--hubble-listen", f"0.0.0.0:{self.hubble_port}", *extra]
        for c in self.config:
            cmd += ["--config", str(c)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        if self.in_root:
            self.agent = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        else:
            self.agent = self.lab.popen(self.bng, *cmd, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)

    def _curl(self, path: str, check: bool) -> subprocess.CompletedProcess[str]:
        argv = ["curl", "-sf", f"http://127.0.0.1:{self.metrics_port}{path}"]
        if self.in_root:
            return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=10)
        return self.lab.run(self.bng, *argv, check=check)

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent is not None and self.agent.poll() is not None:
                raise RuntimeError(f"agent exited with {self.agent.returncode}:\n{self.log()}")
            if self._curl("/readyz", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"agent not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop_agent(self, sig: int = signal.SIGTERM) -> int | None:
        if self.agent is None:
            return None
        if self.agent.poll() is None:
            # ip netns exec replaces itself with the command, so this pid is the agent's.
            os.kill(self.agent.pid, sig)
            try:
                self.agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        code = self.agent.returncode
        self.agent = None
        return code

    def access_mac(self) -> str:
        """The agent's access interface's MAC, as "02:..."."""
        return netlink.interface_info(self.access, self.bng or None)[1]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def metrics(self) -> dict[str, float]:
        """The agent's /metrics as {'name{labels}': value}."""
        r = self._curl("/metrics", check=True)
        out = {}
        for line in r.stdout.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def close(self) -> None:
        self.stop_agent()
        if self.in_root:  # the shaper's IFB sits beside the lab's interface, not in a lab netns
            from bng_operator.agent.qos.feature import ifb_name

            netlink.remove_link(ifb_name(self.access))
        self.lab.close()

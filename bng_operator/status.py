"""`bng status`: one node's health at a glance, from its agent's /metrics and /readyz.

The reading is pure (``summary``), so that what an operator sees is tested on a metrics
text; the CLI only fetches.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class NodeStatus:
    ready: bool
    ready_reason: str
    programs: list[tuple[str, str, bool]] = field(default_factory=list)  # program, if, up
    maps: list[tuple[str, int, int]] = field(default_factory=list)  # map, entries, capacity
    leases: int = 0
    pools: dict[str, dict[str, int]] = field(default_factory=dict)  # pool -> state -> n
    radius: dict[str, bool] = field(default_factory=dict)  # server -> up
    apiserver: str = "standalone"  # reachable, unreachable, standalone
    flow_observers: int = 0
    lease_store_failures: int = 0


def summary(metrics: str, ready: bool, ready_reason: str) -> NodeStatus:
    st = NodeStatus(ready, ready_reason)
    entries: dict[str, int] = {}
    capacity: dict[str, int] = {}
    pools: dict[str, dict[str, int]] = defaultdict(dict)
    kube_requests = 0.0
    reachable = 0.0
    for fam in text_string_to_metric_families(metrics):
        for s in fam.samples:
            lb, v = s.labels, s.value
            if s.name == "bng_ebpf_program_attached":
                st.programs.append((lb.get("program", ""), lb.get("interface", ""), v >= 1))
            elif s.name == "bng_ebpf_map_entries":
                entries[lb.get("map", "")] = int(v)
            elif s.name == "bng_ebpf_map_capacity":
                capacity[lb.get("map", "")] = int(v)
            elif s.name == "bng_leases_active":
                st.leases = int(v)
            elif s.name == "bng_pool_addresses":
                pools[lb.get("pool", "")][lb.get("state", "")] = int(v)
            elif s.name == "bng_radius_server_up":
                st.radius[lb.get("server", "")] = v >= 1
            elif s.name == "bng_kube_reachable":
                reachable = v
            elif s.name == "bng_kube_requests_total":
                kube_requests += v
            elif s.name == "bng_flow_observers":
                st.flow_observers = int(v)
            elif s.name == "bng_lease_store_commit_failures_total":
                st.lease_store_failures = int(v)
    st.maps = sorted((m, n, capacity.get(m, 0)) for m, n in entries.items())
    st.pools = dict(pools)
    if kube_requests:
        st.apiserver = "reachable" if reachable >= 1 else "unreachable"
    return st


def render(st: NodeStatus) -> str:
    ok = "ready" if st.ready else f"NOT READY: {st.ready_reason}"
    lines = [f"agent:      {ok}", f"apiserver:  {st.apiserver}", f"leases:     {st.leases}"]
    if st.lease_store_failures:
        lines.append(f"lease store: {st.lease_store_failures} commits failed")
    for pool, states in sorted(st.pools.items()):
        total = sum(states.values())
        used = total - states.get("free", 0)
        pct = f"{100 * used / total:.0f}%" if total else "-"
        detail = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
        lines.append(f"pool {pool}: {pct} used ({detail})")
    for prog, iface, up in sorted(st.programs):
        lines.append(f"program {prog} on {iface}: {'attached' if up else 'NOT ATTACHED'}")
    for m, n, cap in st.maps:
        fill = f" of {cap} ({100 * n / cap:.0f}%)" if cap else ""
        lines.append(f"map {m}: {n}{fill}")
    for server, up in sorted(st.radius.items()):
        lines.append(f"RADIUS {server}: {'up' if up else 'DOWN'}")
    lines.append(f"flow observers: {st.flow_observers}")
    return "\n".join(lines)


def fetch(base: str, timeout: float = 5) -> NodeStatus:
    """The status of the agent serving /metrics at ``base`` (http://host:port)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=timeout) as r:
        metrics = r.read().decode()
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=timeout) as r:
            ready, reason = True, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        ready, reason = False, e.read().decode().strip() or f"HTTP {e.code}"
    return summary(metrics, ready, reason)

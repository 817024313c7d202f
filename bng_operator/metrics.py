"""Prometheus metrics of the agent. One instance per process, on its own registry."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "bng_dhcp_requests_total", "DHCP requests handled.",
            ["type", "path", "result"], registry=r)
        self.duration = Histogram(
            "bng_dhcp_request_duration_seconds",
            "Time from receiving a request to sending its reply (lease commit included).",
            ["type"], registry=r,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                     1.0))
        self.drops = Counter("bng_dhcp_drops_total", "Requests dropped, by reason.", ["reason"],
                             registry=r)
        self.flow_observers = Gauge(
            "bng_flow_observers", "Hubble API clients following or reading flows now.",
            registry=r)
        self.flow_events = Counter(
            "bng_flow_events_total", "Flow events read from the programs' flow log, by "
            "program (dhcp, access, nat).", ["source"], registry=r)
        self.flow_events_undecoded = Counter(
            "bng_flow_events_undecoded_total", "Flow events from the kernel that could not be "
            "decoded (a layout from another program generation).", registry=r)
        self.option82_stripped = Counter(
            "bng_dhcp_option82_stripped_total",
            "Requests whose option 82 came from an untrusted place and was ignored.", registry=r)
        self.lease_commits = Counter(
            "bng_lease_store_commits_total", "fsync'd commits of the lease store.", registry=r)
        self.lease_commit_duration = Histogram(
            "bng_lease_store_commit_duration_seconds",
            "Time from a batch of lease writes going to the lease writer until its answer is "
            "read: the transaction and its fsync, the wait behind the batch before it, and the "
            "event loop's delay in reading.", registry=r,
            buckets=(0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                     5.0))
        self.lease_commit_failures = Counter(
            "bng_lease_store_commit_failures_total",
            "Lease store commits that failed after their retries (their replies were not sent).",
            registry=r)
        # The agent's garbage collections (agent/heap.py): the event loop stops for each.
        self.gc_pause = Histogram(
            "bng_gc_pause_seconds", "Garbage collections of the agent's Python heap, by "
            "generation (2: a full one of what is not frozen).", ["generation"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.gc_swept = Gauge(
            "bng_gc_sweep_unreachable_objects", "Unreachable objects the last hourly full "
            "collection found: cyclic garbage kept meanwhile by the freeze, and young garbage.",
            registry=r)
        self.send_failures = Counter(
            "bng_dhcp_send_failures_total", "Replies the kernel did not take.", ["interface"],
            registry=r)
        self.config_loaded = Gauge(
            "bng_config_loaded", "1 when the last configuration load succeeded.", registry=r)
        self.event_loop_cpu = Gauge(
            "bng_event_loop_cpu", "The CPU the agent's process runs on, its helpers on its "
            "others (BNGNode spec.eventLoopCPU); -1: the kernel places them (unset, or not "
            "followed: see the Degraded condition).", registry=r)
        self.event_loop_cpu.set(-1)
        # The XDP fast path; its requests are counted in bng_dhcp_requests_total{path="fast"}.
        self.fast_passes = Counter(
            "bng_fastpath_passes_total",
            "Frames the XDP program handed to the slow path, by reason.", ["reason"], registry=r)
        self.fast_drops = Counter(
            "bng_fastpath_drops_total", "Frames the XDP program dropped.", registry=r)
        self.fast_hit_ratio = Gauge(
            "bng_fastpath_hit_ratio",
            "DISCOVERs and REQUESTs answered in the kernel, over all that reached it.",
            registry=r)
        self.fast_errors = Counter(
            "bng_fastpath_errors_total", "Map writes that failed (the slow path answers).",
            ["op"], registry=r)
        self.fast_undeleted = Gauge(
            "bng_fastpath_undeleted_entries",
            "Entries of ended leases whose removal failed; retried until they are gone.",
            registry=r)
        self.fast_refreshes = Counter(
            "bng_fastpath_renewals_persisted_total",
            "Lease ends moved by fast-path ACKs and written to the lease store.", registry=r)
        self.fast_first_acks = Counter(
            "bng_fastpath_offers_bound_total",
            "Sessions bound by a fast-path ACK of a committed offer (BNGNode "
            "spec.commitAtOffer).", registry=r)
        self.fast_refreshes_lost = Counter(
            "bng_fastpath_refreshes_lost_total",
            "Fast-path ACKs whose new lease end could not be queued to the agent.", registry=r)
        self.qos_shaped = Gauge(
            "bng_qos_subscribers_shaped",
            "Bound sessions with an HTB class each way on the attached access interfaces.",
            registry=r)
        self.qos_errors = Counter(
            "bng_qos_errors_total", "Shaping operations that failed (the session goes "
            "unshaped), by operation.", ["op"], registry=r)
        self.qos_install_seconds = Histogram(
            "bng_qos_install_seconds", "Time to install one session's shaping (its classes "
            "on every access interface and IFB, and its map entry).",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5), registry=r)
        self.nat_blocks_used = Gauge(
            "bng_nat_blocks_used", "Port blocks given to subscribers (or held after their "
            "release) on this node, by NATPool.", ["pool"], registry=r)
        self.nat_blocks_total = Gauge(
            "bng_nat_blocks_total", "Port blocks of the public addresses this node "
            "translates to, by NATPool.", ["pool"], registry=r)
        self.nat_block_events = Counter(
            "bng_nat_block_events_total", "Block allocations and releases written to the "
            "block log, by NATPool and event.", ["pool", "event"], registry=r)
        self.nat_unserved = Counter(
            "bng_nat_sessions_without_block_total", "Sessions of a NAT class that got no "
            "block: every block of the pool's addresses on this node was taken. Their "
            "traffic is dropped (no_binding) until a block frees.", ["pool"], registry=r)
        self.nat_port_exhaustion = Counter(
            "bng_nat_port_exhaustion_total", "New flows refused because the subscriber's "
            "blocks were full (an ICMP 3/13 went back), by NATPool.", ["pool"], registry=r)
        self.nat_errors = Counter(
            "bng_nat_errors_total", "NAT operations that failed, by operation.", ["op"],
            registry=r)
        self.rx_vlan_offload = Gauge(
            "bng_access_rx_vlan_offload",
            "1 when the access interface's NIC takes VLAN tags off before XDP sees them: "
            "the fast path then misses every tagged subscriber (see --rx-vlan-offload).",
            ["interface"], registry=r)
        self.program_attached = Gauge(
            "bng_ebpf_program_attached", "1 when the program is attached to the interface.",
            ["program", "interface"], registry=r)
        # Kubernetes mode: what the agent writes to the apiserver.
        self.kube_writes = Counter(
            "bng_kube_writes_total", "Apiserver writes, by kind and verb.", ["kind", "verb"],
            registry=r)
        self.kube_pending = Gauge(
            "bng_kube_pending_updates", "Subscriber updates waiting to be written, by queue: "
            "events (bound, changed, ended: written first) and background (resyncs and "
            "accounting refreshes).", ["queue"], registry=r)
        self.kube_accounting_interval = Gauge(
            "bng_kube_accounting_interval_seconds",
            "Time between the starts of the last two accounting rounds: the configured "
            "interval, or longer when writing every bound subscriber takes longer at the "
            "write rate.", registry=r)
        self.kube_requests = Counter(
            "bng_kube_requests_total", "Apiserver requests of the Subscriber writer (writes "
            "and list pages), all paced by the write rate.", ["verb"], registry=r)
        self.kube_dropped = Counter(
            "bng_kube_dropped_updates_total",
            "Updates dropped from a full queue (a resync follows).", registry=r)
        self.kube_auth_refused = Gauge(
            "bng_kube_auth_refused",
            "1 when the apiserver refused the agent's credentials (401/403) on its last read.",
            registry=r)
        self.kube_reachable = Gauge(
            "bng_kube_reachable", "1 when the last apiserver request succeeded.", registry=r)
        # Sessions (agent/sessions): how they end, and features that failed on an event.
        self.sessions_ended = Counter(
            "bng_sessions_ended_total", "Subscriber sessions that ended, by reason.", ["reason"],
            registry=r)
        self.feature_errors = Counter(
            "bng_session_feature_errors_total",
            "Session events a feature failed to handle (logged; other features go on).",
            ["feature"], registry=r)
        # RADIUS (agent/radius): per server, and the decisions per class.
        self.radius_requests = Counter(
            "bng_radius_requests_total",
            "Access-Requests sent to a server (retransmissions not counted).", ["server"],
            registry=r)
        self.radius_retransmits = Counter(
            "bng_radius_retransmits_total", "Access-Requests sent again after a timeout.",
            ["server"], registry=r)
        self.radius_replies = Counter(
            "bng_radius_replies_total",
            "Replies from a server: accept, reject, or invalid (failed verification: wrong "
            "secret, no valid Message-Authenticator; dropped).", ["server", "result"],
            registry=r)
        self.radius_timeouts = Counter(
            "bng_radius_timeouts_total",
            "Access-Requests a server left unanswered after every retransmission.", ["server"],
            registry=r)
        self.radius_rtt = Histogram(
            "bng_radius_rtt_seconds", "Round-trip time of answered requests (Access, Accounting).",
            ["server"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
        self.radius_server_up = Gauge(
            "bng_radius_server_up",
            "0 while a server is marked dead (deadAfter timeouts in a row; skipped for "
            "deadTime), else 1.", ["server"], registry=r)
        self.radius_probes = Counter(
            "bng_radius_status_server_total",
            "Status-Server probes of dead servers (statusServer: true): answered (the server "
            "is used again) or timeout.", ["server", "result"], registry=r)
        self.radius_decisions = Counter(
            "bng_radius_decisions_total",
            "Authorisations of new sessions by class and result: accept, reject, held_down "
            "(refused within a reject's hold-down, RADIUS not asked), fallback_admit and "
            "fallback_refuse (no server answered), refused (an Accept this node cannot "
            "honour), error (the request could not be built).", ["subscriber_class", "result"],
            registry=r)
        self.radius_session_timeouts = Counter(
            "bng_radius_session_timeouts_total",
            "Bound sessions ended by their Session-Timeout (bng_sessions_ended_total counts "
            "them as disconnected).", registry=r)
        self.radius_dynauth = Counter(
            "bng_radius_dynauth_requests_total",
            "CoA-Requests and Disconnect-Requests (RFC 5176) by type (coa, disconnect) and "
            "result: ack; a NAK's Error-Cause (session_not_found, unsupported_attribute, "
            "missing_attribute, invalid_request); or dropped without a reply (unknown_client, "
            "bad_authenticator: a wrong secret, replay: Event-Timestamp out of the window, "
            "malformed), or duplicate (a retransmission, answered again).",
            ["type", "result"], registry=r)
        self.radius_idle_timeouts = Counter(
            "bng_radius_idle_timeouts_total",
            "Bound sessions ended by their Idle-Timeout: no packet from the subscriber for "
            "that long (bng_sessions_ended_total counts them as disconnected).", registry=r)
        self.radius_unknown_attributes = Counter(
            "bng_radius_unknown_attributes_total",
            "Attributes of an Access-Accept that bng does not honour (ignored).", registry=r)
        # RADIUS accounting (agent/radius/feature.py): per accounting server, and the queue.
        self.radius_acct_requests = Counter(
            "bng_radius_acct_requests_total",
            "Accounting-Requests sent to a server (retransmissions not counted).", ["server"],
            registry=r)
        self.radius_acct_retransmits = Counter(
            "bng_radius_acct_retransmits_total",
            "Accounting-Requests sent again after a timeout.", ["server"], registry=r)
        self.radius_acct_responses = Counter(
            "bng_radius_acct_responses_total",
            "Accounting-Responses (acknowledgements, verified) from a server.", ["server"],
            registry=r)
        self.radius_acct_timeouts = Counter(
            "bng_radius_acct_timeouts_total",
            "Accounting-Requests a server left unanswered after every retransmission.",
            ["server"], registry=r)
        self.radius_acct_queued = Counter(
            "bng_radius_acct_records_total",
            "Accounting records queued, by Acct-Status-Type.", ["type"], registry=r)
        self.radius_acct_queue_depth = Gauge(
            "bng_radius_acct_queue_depth",
            "Accounting records waiting for a server's acknowledgement (on disk).", registry=r)
        self.radius_acct_dropped = Counter(
            "bng_radius_acct_dropped_total",
            "Accounting records dropped unsent, by Acct-Status-Type and reason: overflow (the "
            "queue was full; Interim-Updates go first), no_class (their class has no RADIUS "
            "servers any more).", ["type", "reason"], registry=r)
        self._kernel: dict[str, int] = {}
        # Run before each scrape: readings that must be current when scraped, into counters.
        self.before_scrape: list[Callable[[], None]] = []
        # labels() costs a lock and a dict lookup per call; the packet paths keep children.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def render(self) -> bytes:
        """The exposition text of a scrape."""
        for refresh in self.before_scrape:
            refresh()
        return bytes(generate_latest(self.registry))

    def request(self, mtype: str, path: str, result: str, n: int = 1) -> None:
        self.child(self.requests, mtype, path, result).inc(n)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: for hot paths (not for children that are
        removed, as a server's up gauge is)."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def duration_of(self, mtype: str, seconds: float) -> None:
        self.child(self.duration, mtype).observe(seconds)

    def watch_leases(self, usage: Callable[[], dict[str, dict[str, int]]],
                     active: Callable[[], int]) -> None:
        """Pool and lease gauges, computed when scraped (always current, free otherwise)."""
        self.registry.register(_LeaseCollector(usage, active))

    def watch_ready(self, ready: Callable[[], tuple[bool, str]]) -> None:
        """bng_agent_ready: what /readyz says, computed when scraped, so that an alert sees
        a node that runs but does not serve."""
        self.registry.register(_ReadyCollector(ready))

    def kernel_counters(self, now: dict[str, int]) -> None:
        """Fold the XDP program's cumulative counters in (a smaller value: a new program).
        The first reading is the base: what an adopted program counted before this agent
        started was reported by the agent before."""
        before, self._kernel = self._kernel, dict(now)
        for name, v in now.items() if before else ():
            was = before.get(name, 0)
            n = v - was if v >= was else v
            if not n:
                continue
            if name == "offer":
                self.request("discover", "fast", "offer", n)
            elif name == "ack":
                self.request("request", "fast", "ack", n)
            elif name == "drop":
                self.fast_drops.inc(n)
            elif name == "refresh_lost":
                self.fast_refreshes_lost.inc(n)
            else:
                self.fast_passes.labels(name.removeprefix("pass_")).inc(n)
        hits = now.get("offer", 0) + now.get("ack", 0)
        misses = sum(v for k, v in now.items() if k in _MISSES)
        if hits + misses:
            self.fast_hit_ratio.set(hits / (hits + misses))

    def watch_maps(self, counts: Callable[[], dict[str, int]],
                   capacity: int | dict[str, int] | None = None,
                   ) -> None:
        """bng_ebpf_map_entries{map}, computed when scraped, and bng_ebpf_map_capacity{map}
        (the entries each map was made for) when ``capacity`` is given."""
        self.registry.register(_MapCollector(counts, capacity))

    def watch_access(self, read: Callable[[], AccessReading]) -> None:
        """The access data path's drops, ARP answers and bytes by class, read when scraped
        (kernel counters: cumulative since the program's maps were made)."""
        self.registry.register(_AccessCollector(read))

    def watch_nat(self, read: Callable[[], NatReading]) -> None:
        """The NAT programs' verdicts and mapping tables, read when scraped."""
        self.registry.register(_NatCollector(read))

    def watch_flows_lost(self, read: Callable[[], int]) -> None:
        """The flow events the programs could not write (a full ring), read when scraped."""
        self.registry.register(_FlowsLostCollector(read))

    def drop(self, reason: str) -> None:
        self.child(self.drops, reason).inc()


# Passes of DISCOVERs and REQUESTs the cache could not answer (not other types or non-DHCP).
_MISSES = frozenset({"pass_miss", "pass_expired", "pass_wrong_address", "pass_changed",
                     "pass_layout", "pass_no_interface", "pass_no_subnet", "pass_no_room",
                     "pass_no_agent", "pass_untrusted_82"})


class _LeaseCollector:
    def __init__(self, usage: Callable[[], dict[str, dict[str, int]]],
                 active: Callable[[], int]) -> None:
        self.usage, self.active = usage, active

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pools = GaugeMetricFamily("bng_pool_addresses",
                                  "Addresses of each pool on this node, by state.",
                                  labels=["pool", "state"])
        for pool, states in self.usage().items():
            for state, n in states.items():
                pools.add_metric([pool, state], n)
        yield pools
        yield GaugeMetricFamily("bng_leases_active", "Bound leases on this node.",
                                value=self.active())


class _ReadyCollector:
    def __init__(self, ready: Callable[[], tuple[bool, str]]) -> None:
        self.ready = ready

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("bng_agent_ready", "1 when the agent serves (its /readyz says "
                                "ready), else 0 (starting, lease store failing, ...).",
                                value=1 if self.ready()[0] else 0)


class _MapCollector:
    def __init__(self, counts: Callable[[], dict[str, int]],
                 capacity: int | dict[str, int] | None) -> None:
        self.counts, self.capacity = counts, capacity

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.counts()
        g = GaugeMetricFamily("bng_ebpf_map_entries", "Entries in each map of the fast path.",
                              labels=["map"])
        for name, n in counts.items():
            g.add_metric([name], n)
        yield g
        if self.capacity is not None:
            # a full map sends every new subscriber to the slow path: the fill is the ratio
            cap = GaugeMetricFamily("bng_ebpf_map_capacity", "Entries each map of the fast "
                                    "path was made for (--max-leases of the node).",
                                    labels=["map"])
            for name in counts:
                size = self.capacity.get(name) if isinstance(self.capacity, dict) \
                    else self.capacity
                if size is not None:
                    cap.add_metric([name], size)
            yield cap


# qos_stats names (bng_operator/agent/dataplane/qos.py STATS) -> the reason label
ANTISPOOF_REASONS = {"spoof_source": "unknown_source", "spoof_mac": "mac", "spoof_vlan": "vlan",
                     "spoof_not_ipv4": "not_ipv4", "arp_dropped": "arp"}


@dataclass(frozen=True)
class AccessReading:
    stats: dict[str, int]  # the programs' qos_stats, by name
    queue_drops: dict[str, int]  # direction (down, up) -> packets HTB dropped
    bytes_by_class: dict[tuple[str, str, str], int]  # (class, policy, direction) -> bytes


class _AccessCollector:
    def __init__(self, read: Callable[[], AccessReading]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            r = self.read()
        except Exception:  # a scrape shows the rest of the metrics, and says why not these
            logging.getLogger("bng.metrics").exception("reading the access data path failed")
            return
        spoof = CounterMetricFamily(
            "bng_antispoof_drops", "Frames from subscriber ports dropped at access ingress: "
            "an address no session holds, a session's address from another MAC or VLAN, "
            "tagged non-IPv4, ARP not from a session for its gateway.", labels=["reason"])
        for name, reason in ANTISPOOF_REASONS.items():
            spoof.add_metric([reason], r.stats.get(name, 0))
        yield spoof
        drops = CounterMetricFamily(
            "bng_qos_drops", "Packets to or from subscribers dropped by the access data path: "
            "by the shaper's queues (queue), or routed to an address no session holds "
            "(no_session).", labels=["direction", "reason"])
        for direction, n in sorted(r.queue_drops.items()):
            drops.add_metric([direction, "queue"], n)
        drops.add_metric(["down", "no_session"], r.stats.get("down_no_session", 0))
        yield drops
        arp = CounterMetricFamily(
            "bng_access_arp", "Subscribers' ARP requests for their gateway answered in XDP "
            "(answered), and untagged ARP of no session left to the kernel (passed).",
            labels=["result"])
        for result in ("answered", "passed"):
            arp.add_metric([result], r.stats.get(f"arp_{result}", 0))
        yield arp
        shaped = CounterMetricFamily(
            "bng_qos_bytes", "IP bytes of shaped subscribers' traffic as on the wire (a GSO "
            "packet as its segments), by subscriber class, QoS policy and direction.",
            labels=["class", "policy", "direction"])
        for (cls, policy, direction), n in sorted(r.bytes_by_class.items()):
            shaped.add_metric([cls, policy, direction], n)
        yield shaped


@dataclass(frozen=True)
class NatReading:
    stats: dict[str, int]  # the NAT programs' nat_stats, by name
    drops: tuple[str, ...]  # which of them are drops (translation failures)
    tables: dict[str, int]  # entries of each mapping table


class _FlowsLostCollector:
    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            n = self.read()
        except Exception:
            logging.getLogger("bng.metrics").exception("reading the flow log's losses")
            return
        yield CounterMetricFamily("bng_flow_events_lost", "Flow events overwritten in the "
                                  "programs' flow log before the agent read them.", value=n)


class _NatCollector:
    def __init__(self, read: Callable[[], NatReading]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        try:
            r = self.read()
        except Exception:
            logging.getLogger("bng.metrics").exception("reading the NAT data path failed")
            return
        translated = CounterMetricFamily(
            "bng_nat_translated_packets", "Packets the NAT translated, by direction.",
            labels=["direction"])
        translated.add_metric(["out"], r.stats.get("out_translated", 0))
        translated.add_metric(["in"], r.stats.get("in_translated", 0))
        yield translated
        failures = CounterMetricFamily(
            "bng_nat_translation_failures", "Packets the NAT dropped, by reason (no_binding: "
            "an inside source without a block; block_full: port exhaustion; filtered: "
            "refused by the pool's filtering; fragment_unknown: a fragment before its "
            "first; ...).", labels=["reason"])
        for reason in r.drops:
            failures.add_metric([reason], r.stats.get(reason, 0))
        yield failures
        mappings = GaugeMetricFamily(
            "bng_nat_mappings", "Entries of the NAT tables: outbound and inbound mappings, "
            "filters, recent flows' copies (recent) and fragments.", labels=["table"])
        for table, n in sorted(r.tables.items()):
            mappings.add_metric([table], n)
        yield mappings

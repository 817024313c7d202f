"""Hubble's Observer API, served from the agent's flows: what ``hubble observe`` and
hubble-relay speak (observer.Observer, peer.Peer, grpc.health.v1).

The mapping from our flows to Hubble's fields is docs/observe.md's. Filters are evaluated
here, on our flows: the fields listed in SUPPORTED; a filter that sets any other field is
refused with INVALID_ARGUMENT, so that nobody reads an unfiltered answer as a filtered one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import timestamp_pb2, wrappers_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bng_operator._hubble.flow import flow_pb2
from bng_operator._hubble.observer import observer_pb2, observer_pb2_grpc
from bng_operator._hubble.peer import peer_pb2, peer_pb2_grpc
from bng_operator._hubble.relay import relay_pb2
from bng_operator.agent.observe.flow import Flow, Point, Source, Verdict
from bng_operator.agent.observe.hub import FlowHub

log = logging.getLogger("bng.agent.observe")
Context = grpc.aio.ServicerContext[Any, Any]

# Cilium's monitor message types and trace sub-types (pkg/monitor/api), as the CLI's
# --type names them: drop, trace:to-stack, trace:to-network.
EVENT_DROP, EVENT_TRACE = 1, 4
TRACE_TO_STACK, TRACE_TO_NETWORK = 3, 11
HEALTH_SERVICE = "hubble.server.Observer"

# Our drop reasons as Hubble's DropReason (the exact reason is in the Summary).
DROP_REASONS: dict[str, flow_pb2.DropReason] = {
    "spoof_source": flow_pb2.INVALID_SOURCE_IP,
    "spoof_mac": flow_pb2.INVALID_SOURCE_MAC,
    "spoof_vlan": flow_pb2.VLAN_FILTERED,
    "spoof_not_ipv4": flow_pb2.UNSUPPORTED_L3_PROTOCOL,
    "arp_dropped": flow_pb2.UNSUPPORTED_L2_PROTOCOL,
    "down_no_session": flow_pb2.UNKNOWN_L3_TARGET_ADDRESS,
    "no_binding": flow_pb2.NAT_NOT_NEEDED,
    "no_mapping": flow_pb2.NO_MAPPING_FOR_NAT_MASQUERADE,
    "filtered": flow_pb2.POLICY_DENIED,
    "block_full": flow_pb2.NO_MAPPING_FOR_NAT_MASQUERADE,
    "map_full": flow_pb2.CT_MAP_INSERTION_FAILED,
    "fragment_unknown": flow_pb2.FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
    "icmp_error_unknown": flow_pb2.NO_MAPPING_FOR_NAT_MASQUERADE,
    "malformed": flow_pb2.INVALID_PACKET_DROPPED,
    "unsupported": flow_pb2.UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE,
    "write_error": flow_pb2.ERROR_WHILE_CORRECTING_L3_CHECKSUM,
    "not_authorised": flow_pb2.POLICY_DENIED,
    "reject": flow_pb2.POLICY_DENIED,
}

SUPPORTED = frozenset({
    "source_ip", "destination_ip", "source_ip_xlated", "source_pod", "destination_pod",
    "verdict", "drop_reason_desc", "event_type", "protocol", "source_port",
    "destination_port", "reply", "node_name", "ip_version", "interface",
})


class BadFilter(ValueError):
    """A filter this server does not evaluate."""


@dataclass(frozen=True)
class Resolved:
    """A flow with the Subscriber it belongs to (None: no session known)."""

    flow: Flow
    subscriber: str


def event_type(f: Flow) -> tuple[int, int]:
    if f.verdict == Verdict.DROPPED:
        return EVENT_DROP, 0
    return EVENT_TRACE, TRACE_TO_STACK if f.point == Point.TO_STACK else TRACE_TO_NETWORK


def subscriber_is_source(f: Flow) -> bool:
    """Whether the flow's source is the subscriber (requests, upstream) rather than its
    destination (replies, downstream)."""
    if f.point == Point.TO_NETWORK:
        return False
    return not (f.source == Source.ACCESS and f.reason.startswith("down"))


class Converter:
    """Our flows as Hubble's, on node ``node``; Subscribers live in ``namespace``."""

    def __init__(self, node: str, namespace: str,
                 resolve: Callable[[Flow], str] = lambda f: "",
                 interfaces: Callable[[int], str] = lambda i: "") -> None:
        self.node = node
        self.namespace = namespace
        self.resolve = resolve
        self.interfaces = interfaces

    def to_proto(self, f: Flow, subscriber: str) -> flow_pb2.Flow:
        return self.response(f, subscriber).flow

    def response(self, f: Flow, subscriber: str) -> observer_pb2.GetFlowsResponse:
        """The GetFlowsResponse of a flow, built in place: a message assigned whole, or
        through a constructor, is copied (that took half the time per flow)."""
        r = observer_pb2.GetFlowsResponse(node_name=self.node)
        secs, nanos = divmod(f.time_ns, 1_000_000_000)
        r.time.seconds, r.time.nanos = secs, nanos
        p = r.flow
        p.node_name = self.node
        p.Type = flow_pb2.L3_L4
        p.verdict = int(f.verdict)  # type: ignore[assignment]  # Verdict's values are Hubble's
        p.time.seconds, p.time.nanos = secs, nanos
        if f.src_mac or f.dst_mac:
            e = p.ethernet
            e.source, e.destination = f.src_mac, f.dst_mac
        if f.saddr or f.daddr:
            ip = p.IP
            ip.source, ip.destination, ip.ipVersion = f.saddr, f.daddr, flow_pb2.IPv4
            if f.xlated_addr and f.verdict == Verdict.TRANSLATED:
                ip.source_xlated = f.xlated_addr
        if f.proto in (6, 17):
            ports = p.l4.UDP if f.proto == 17 else p.l4.TCP
            ports.source_port, ports.destination_port = f.sport, f.dport
        elif f.proto == 1:
            p.l4.ICMPv4.type = 0
        etype, sub = event_type(f)
        et = p.event_type
        et.type, et.sub_type = etype, sub
        if f.verdict == Verdict.DROPPED:
            p.drop_reason_desc = DROP_REASONS.get(f.reason, flow_pb2.DROP_REASON_UNKNOWN)
        else:
            p.trace_observation_point = flow_pb2.TO_STACK if f.point == Point.TO_STACK \
                else flow_pb2.TO_NETWORK
        p.is_reply.value = f.point == Point.TO_NETWORK
        name = f.interface or (self.interfaces(f.ifindex) if f.ifindex else "")
        if f.ifindex or name:
            i = p.interface
            i.index, i.name = f.ifindex, name
        if subscriber:
            ep = p.source if subscriber_is_source(f) else p.destination
            ep.namespace, ep.pod_name = self.namespace, subscriber
            ep.labels.append(f"bng.dev/source={f.source.name.lower()}")
        p.Summary = f.summary()
        return r


# --- filters ---------------------------------------------------------------------------------

Match = Callable[[Resolved], bool]


def _ips(values: Iterable[str], field: str) -> Callable[[str], bool]:
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError as e:
            raise BadFilter(f"{field}: {v!r} is not an IP address or CIDR") from e

    def match(address: str) -> bool:
        if not address:
            return False
        a = ipaddress.ip_address(address)
        return any(a in n for n in nets)
    return match


def _pods(values: Iterable[str], namespace: str) -> Callable[[str], bool]:
    """Hubble's pod filter: "namespace/name-prefix", or "name-prefix" in "default"."""
    wanted = []
    for v in values:
        ns, _, prefix = v.rpartition("/")
        wanted.append((ns or "default", prefix))

    def match(subscriber: str) -> bool:
        return bool(subscriber) and any(ns == namespace and subscriber.startswith(prefix)
                                        for ns, prefix in wanted)
    return match


def _ports(values: Iterable[str], field: str) -> set[int]:
    try:
        return {int(v) for v in values}
    except ValueError as e:
        raise BadFilter(f"{field}: ports are numbers") from e


def compile_filter(ff: flow_pb2.FlowFilter, node: str, namespace: str) -> Match:
    """One FlowFilter: every field it sets must match (each field: any of its values)."""
    tests: list[Match] = []
    for desc, value in ff.ListFields():
        if desc.name not in SUPPORTED:
            raise BadFilter(f"the filter {desc.name} is not supported by bng's Hubble server "
                            f"(supported: {', '.join(sorted(SUPPORTED))})")
        tests.append(_field_test(desc.name, value, node, namespace))
    return lambda r: all(t(r) for t in tests)


def _field_test(name: str, value: Any, node: str, namespace: str) -> Match:
    """The test of one field of a FlowFilter (one of SUPPORTED)."""
    if name in ("source_ip", "destination_ip", "source_ip_xlated"):
        ip = _ips(value, name)
        if name == "source_ip":
            return lambda r: ip(r.flow.saddr)
        if name == "destination_ip":
            return lambda r: ip(r.flow.daddr)
        return lambda r: r.flow.verdict == Verdict.TRANSLATED and ip(r.flow.xlated_addr)
    if name in ("source_pod", "destination_pod"):
        pod = _pods(value, namespace)
        src = name == "source_pod"
        return lambda r: subscriber_is_source(r.flow) == src and pod(r.subscriber)
    if name == "verdict":
        verdicts = set(value)
        return lambda r: int(r.flow.verdict) in verdicts
    if name == "drop_reason_desc":
        reasons = set(value)
        return lambda r: r.flow.verdict == Verdict.DROPPED and \
            DROP_REASONS.get(r.flow.reason, 0) in reasons
    if name == "event_type":
        types = [(t.type, t.match_sub_type, t.sub_type) for t in value]

        def of_type(r: Resolved) -> bool:
            t, sub = event_type(r.flow)
            return any(t == want and (not match_sub or sub == want_sub)
                       for want, match_sub, want_sub in types)
        return of_type
    if name == "protocol":
        protos = {p.lower() for p in value}
        unknown = protos - {"udp", "tcp", "icmp", "icmpv4"}
        if unknown:
            raise BadFilter(f"protocol: {', '.join(sorted(unknown))} not supported "
                            "(udp, tcp, icmp)")
        numbers = {{"udp": 17, "tcp": 6, "icmp": 1, "icmpv4": 1}[p] for p in protos}
        return lambda r: r.flow.proto in numbers
    if name in ("source_port", "destination_port"):
        ports = _ports(value, name)
        if name == "source_port":
            return lambda r: r.flow.proto in (6, 17) and r.flow.sport in ports
        return lambda r: r.flow.proto in (6, 17) and r.flow.dport in ports
    if name == "reply":
        replies = set(value)
        return lambda r: (r.flow.point == Point.TO_NETWORK) in replies
    if name == "node_name":
        patterns = list(value)
        return lambda r: any(_node_matches(p, node) for p in patterns)
    if name == "ip_version":
        versions = set(value)
        return lambda r: bool(r.flow.saddr) and flow_pb2.IPv4 in versions
    assert name == "interface"
    ifs = [(i.index, i.name) for i in value]
    return lambda r: any((not idx or idx == r.flow.ifindex) and
                         (not nm or nm == r.flow.interface) for idx, nm in ifs)


def _node_matches(pattern: str, node: str) -> bool:
    """Hubble's node filter: "node", "cluster/node", with * wildcards."""
    return fnmatch.fnmatchcase(node, pattern.rpartition("/")[2] or "*")


def compile_filters(whitelist: Iterable[flow_pb2.FlowFilter],
                    blacklist: Iterable[flow_pb2.FlowFilter], node: str,
                    namespace: str) -> Match:
    white = [compile_filter(f, node, namespace) for f in whitelist]
    black = [compile_filter(f, node, namespace) for f in blacklist]
    return lambda r: (not white or any(m(r) for m in white)) and not any(m(r) for m in black)


# --- the services ------------------------------------------------------------------------------


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


WRITE_BATCH = 1024  # flows encoded ahead of their writes, at most


class Observer(observer_pb2_grpc.ObserverServicer):
    def __init__(self, hub: FlowHub, conv: Converter, version: str) -> None:
        self.hub = hub
        self.conv = conv
        self.version = version
        self.started = time.monotonic_ns()

    def _resolved(self, flows: Iterable[Flow]) -> Iterable[Resolved]:
        for f in flows:
            yield Resolved(f, self.conv.resolve(f))

    async def GetFlows(self, request: observer_pb2.GetFlowsRequest,
                       context: Context) -> None:
        # context.write(), not an async generator: about half the cost per message
        try:
            match = compile_filters(request.whitelist, request.blacklist, self.conv.node,
                                    self.conv.namespace)
        except BadFilter as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        if request.HasField("experimental") or request.HasField("extensions"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "experimental fields and extensions are not supported")
            return
        since = _ns(request.since) if request.HasField("since") else None
        until = _ns(request.until) if request.HasField("until") else None
        mask = request.field_mask if request.HasField("field_mask") and \
            request.field_mask.paths else None

        def wanted(r: Resolved) -> bool:
            t = r.flow.time_ns
            return (since is None or t >= since) and (until is None or t <= until) and match(r)

        def message(r: Resolved) -> bytes:
            resp = self.conv.response(r.flow, r.subscriber)
            if mask is not None:
                out = flow_pb2.Flow()
                mask.MergeMessage(resp.flow, out)
                resp.flow.CopyFrom(out)
            return resp.SerializeToString()

        async def send(rs: list[Resolved]) -> None:
            # encoded ahead, then written back to back: interleaving the two cost the
            # server a quarter more CPU per message than the encoding itself
            # (bench/observe.py; GetFlows is registered to write bytes as they are)
            for i in range(0, len(rs), WRITE_BATCH):
                for b in [message(r) for r in rs[i:i + WRITE_BATCH]]:
                    await context.write(b)

        with self.hub.observer():
            position = self.hub.seen
            n = request.number
            # the past: the last (or first) N kept, or all since `since`, or, without
            # follow, all kept; a follow without either starts now
            if n or since is not None or not request.follow:
                past = [r for r in self._resolved(self.hub.recent()) if wanted(r)]
                if n:
                    past = past[:n] if request.first else past[-n:]
                await send(past)
            if not request.follow:
                return
            async for flows in self.hub.follow_batches(position):
                new: list[Resolved] = []
                for f in flows:
                    if until is not None and f.time_ns > until:
                        await send(new)
                        return
                    r = Resolved(f, self.conv.resolve(f))
                    if wanted(r):
                        new.append(r)
                await send(new)

    async def ServerStatus(self, request: observer_pb2.ServerStatusRequest,
                           context: Context) -> observer_pb2.ServerStatusResponse:
        return observer_pb2.ServerStatusResponse(
            num_flows=len(self.hub.recent()), max_flows=self.hub.capacity,
            seen_flows=self.hub.seen, uptime_ns=time.monotonic_ns() - self.started,
            version=self.version,
            num_connected_nodes=wrappers_pb2.UInt32Value(value=1),
            num_unavailable_nodes=wrappers_pb2.UInt32Value(value=0))

    async def GetNodes(self, request: observer_pb2.GetNodesRequest,
                       context: Context) -> observer_pb2.GetNodesResponse:
        node = observer_pb2.Node(
            name=self.conv.node, version=self.version, state=relay_pb2.NODE_CONNECTED,
            uptime_ns=time.monotonic_ns() - self.started, num_flows=len(self.hub.recent()),
            max_flows=self.hub.capacity, seen_flows=self.hub.seen)
        return observer_pb2.GetNodesResponse(nodes=[node])

    async def GetNamespaces(self, request: observer_pb2.GetNamespacesRequest,
                            context: Context
                            ) -> observer_pb2.GetNamespacesResponse:
        return observer_pb2.GetNamespacesResponse(
            namespaces=[observer_pb2.Namespace(namespace=self.conv.namespace)])


PEER_POLL = 10.0  # seconds between two readings of the peers


def peer_changes(before: dict[str, str], now: dict[str, str]
                 ) -> list[tuple[str, str, peer_pb2.ChangeNotificationType]]:
    """(name, address, ChangeNotificationType) taking ``before`` to ``now`` (node ->
    address)."""
    out = [(n, a, peer_pb2.PEER_ADDED) for n, a in sorted(now.items()) if n not in before]
    out += [(n, a, peer_pb2.PEER_UPDATED) for n, a in sorted(now.items())
            if n in before and before[n] != a]
    out += [(n, a, peer_pb2.PEER_DELETED) for n, a in sorted(before.items()) if n not in now]
    return out


class Peer(peer_pb2_grpc.PeerServicer):
    """The nodes whose agents serve Hubble's API, as hubble-relay learns them: in
    Kubernetes mode every BNGNode that published its address (status.hubble), else this
    node alone. Changes follow every PEER_POLL seconds."""

    def __init__(self, node: str, address: str,
                 peers: Callable[[], list[tuple[str, str]]] | None = None) -> None:
        self.node = node
        self.address = address
        self.peers = peers

    async def _read(self) -> dict[str, str]:
        if self.peers is None:
            return {self.node: self.address}
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, self.peers)
        except Exception as e:  # the apiserver away: this node at least
            log.warning("listing the Hubble peers failed: %s", e)
            return {self.node: self.address}
        return dict(found) | {self.node: self.address}

    async def Notify(self, request: peer_pb2.NotifyRequest,
                     context: Context) -> AsyncIterator[peer_pb2.ChangeNotification]:
        known: dict[str, str] = {}
        while True:
            now = await self._read()
            for name, address, kind in peer_changes(known, now):
                yield peer_pb2.ChangeNotification(name=name, address=address,
                                                  type=kind)
            known = now
            await asyncio.sleep(PEER_POLL)


def add_observer(observer: Observer, server: grpc.aio.Server) -> None:
    """Register ``observer`` as the generated add_ObserverServicer_to_server does, except
    that GetFlows writes the bytes it is given: it encodes its messages ahead of writing
    them (Observer.GetFlows)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    class Generated:  # what the generated code registers
        def add_generic_rpc_handlers(self, _: Any) -> None:
            pass

        def add_registered_method_handlers(self, _: str, methods: dict[str, Any]) -> None:
            handlers.update(methods)

    observer_pb2_grpc.add_ObserverServicer_to_server(observer, Generated())
    handlers["GetFlows"] = grpc.unary_stream_rpc_method_handler(
        observer.GetFlows, request_deserializer=observer_pb2.GetFlowsRequest.FromString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("observer.Observer", handlers),))
    server.add_registered_method_handlers("observer.Observer", handlers)


async def serve(hub: FlowHub, conv: Converter, listen: str, version: str,
                peer_address: str,
                peers: Callable[[], list[tuple[str, str]]] | None = None) -> grpc.aio.Server:
    """Start the Hubble API on ``listen`` ("host:port" or "unix:///path")."""
    server = grpc.aio.server()
    add_observer(Observer(hub, conv, version), server)
    peer_pb2_grpc.add_PeerServicer_to_server(Peer(conv.node, peer_address, peers), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    await checks.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen} for the Hubble API")
    await server.start()
    log.info("Hubble API on %s", listen)
    return server


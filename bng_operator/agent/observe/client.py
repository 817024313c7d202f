"""`bng observe`: flows of several agents at once, merged by time: what hubble-relay would
give, for a site where it is not deployed (docs/observe.md says why the agents' Peer
service lists only themselves). Each agent is asked with Hubble's own API, so filters are
evaluated where the flows are."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterable, Iterator

import grpc
from google.protobuf import json_format

from bng_operator._hubble.flow import flow_pb2
from bng_operator._hubble.observer import observer_pb2, observer_pb2_grpc


def site_servers(service: str, port: int) -> list[str]:
    """host:port of every agent behind a headless Service's DNS name."""
    infos = socket.getaddrinfo(service, port, type=socket.SOCK_STREAM)
    return sorted({f"{i[4][0]}:{port}" for i in infos})


def request(last: int, follow: bool, verdicts: Iterable[str], ips: Iterable[str],
            ports: Iterable[int]) -> observer_pb2.GetFlowsRequest:
    """A GetFlowsRequest as the hubble CLI builds one for the same flags: each address or
    port as the source or the destination (filters are ORed), each with the verdicts."""
    wanted = [flow_pb2.Verdict.Value(v.upper()) for v in verdicts]
    whitelist = []
    sides = [(f, str(ip)) for ip in ips for f in ("source_ip", "destination_ip")] + \
        [(f, str(p)) for p in ports for f in ("source_port", "destination_port")]
    for name, value in sides or [("", "")]:
        ff = flow_pb2.FlowFilter()
        if name:
            getattr(ff, name).append(value)
        ff.verdict.extend(wanted)  # type: ignore[arg-type]  # Value() gives the ints
        if ff.ListFields():
            whitelist.append(ff)
    return observer_pb2.GetFlowsRequest(number=0 if follow and not last else last,
                                        follow=follow, whitelist=whitelist)


def _ask(server: str, req: observer_pb2.GetFlowsRequest, out: queue.Queue[object],
         timeout: float | None) -> None:
    try:
        with grpc.insecure_channel(server) as ch:
            for r in observer_pb2_grpc.ObserverStub(ch).GetFlows(req, timeout=timeout):
                if r.HasField("flow"):
                    out.put(r)
    except grpc.RpcError as e:
        out.put(RuntimeError(f"{server}: {e.code().name}: {e.details()}"))
    finally:
        out.put(server)  # this one is done


def flows(servers: list[str], req: observer_pb2.GetFlowsRequest,
          timeout: float | None = 30) -> Iterator[observer_pb2.GetFlowsResponse]:
    """Every server's flows: without follow, the last N of all of them by time; with follow,
    as they come. Errors of one server are raised once the others are done."""
    out: queue.Queue[object] = queue.Queue()
    for s in servers:
        threading.Thread(target=_ask, args=(s, req, out, None if req.follow else timeout),
                         daemon=True).start()
    pending, errors = set(servers), []
    got: list[observer_pb2.GetFlowsResponse] = []
    while pending:
        item = out.get()
        if isinstance(item, str):
            pending.discard(item)
        elif isinstance(item, Exception):
            errors.append(str(item))
        elif isinstance(item, observer_pb2.GetFlowsResponse):
            if req.follow:
                yield item
            else:
                got.append(item)
    got.sort(key=lambda r: (r.time.seconds, r.time.nanos))
    yield from (got[-req.number:] if req.number else got)
    if errors:
        raise RuntimeError("; ".join(errors))


def compact(r: observer_pb2.GetFlowsResponse) -> str:
    """One line, as `hubble observe` prints it."""
    f = r.flow
    t = r.time.ToDatetime().strftime("%b %d %H:%M:%S.%f")[:-3]
    src = f.source.pod_name or f.IP.source
    dst = f.destination.pod_name or f.IP.destination
    verdict = flow_pb2.Verdict.Name(f.verdict)
    return f"{t} {r.node_name}: {src} -> {dst} {verdict} {f.Summary}"


def as_json(r: observer_pb2.GetFlowsResponse) -> str:
    return json_format.MessageToJson(r, indent=None, preserving_proto_field_name=True)

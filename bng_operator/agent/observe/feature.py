"""Observation, as the agent runs it: the flows kept in memory (FlowHub), the programs'
events read from the kernel while someone watches, and Hubble's API served on a port or a
unix socket.

Flows name the Subscriber they belong to (Hubble's pod, in the Subscribers' namespace),
looked up when read: by the address, else by the MAC of a session keyed by MAC.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from bng_operator import __version__
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.jiffies import clock as jiffy_clock
from bng_operator.agent.jiffies import to_monotonic_ns
from bng_operator.agent.observe.flow import Flow, from_kernel
from bng_operator.agent.observe.hub import FlowHub
from bng_operator.agent.report.subscribers import object_name
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent.observe")


@dataclass
class ObserveFeature:
    metrics: AgentMetrics
    node: str
    namespace: str
    listen: str  # "host:port" or "unix:///path"; "" serves nothing
    peer_address: str  # what hubble-relay dials for this node
    by_address: Callable[[int], Lease | None]
    by_identity: Callable[[str], Lease | None]
    capacity: int = 4096
    linger: float = 300.0
    peers: Callable[[], list[tuple[str, str]]] | None = None  # every node's Hubble address
    hub: FlowHub = field(init=False)
    kernel: Any = None  # dataplane.flows.KernelFlows, once loaded
    _server: Any = None
    _ifnames: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hub = FlowHub(self.capacity, self.linger, on_watch=self._watch,
                           on_observers=self.metrics.flow_observers.set)

    def start_kernel(self, pin_root: Path | None) -> bool:
        """Read the programs' flow events (worker thread: it compiles bpf/flows.c)."""
        from bng_operator.agent.dataplane.flows import KernelFlows
        from bng_operator.agent.dataplane.loader import DataplaneError
        try:
            self.kernel = KernelFlows(pin_root, self._on_kernel_event)
        except (DataplaneError, OSError) as e:
            log.error("flow events from the programs unavailable: %s; the slow path's flows "
                      "are still kept", e)
            return False
        self.kernel.watch(self.hub.watching)
        self.metrics.watch_flows_lost(self.kernel.lost)
        return True

    def _on_kernel_event(self, raw: bytes) -> None:
        offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.monotonic_ns()
        tick = jiffy_clock()
        try:
            f = from_kernel(raw, lambda j: to_monotonic_ns(j, tick) + offset)
        except (ValueError, IndexError):
            self.metrics.flow_events_undecoded.inc()
            return
        self.metrics.flow_events.labels(f.source.name.lower()).inc()
        self.hub.add(f)

    def _watch(self, on: bool) -> None:
        if self.kernel is not None:
            self.kernel.watch(on)
        log.info("flow events from the programs %s", "on: an observer is connected" if on
                 else "off: nobody has watched for a while")

    def resolve(self, f: Flow) -> str:
        """The name of the Subscriber a flow belongs to ("": none known)."""
        for a in (f.yiaddr, f.saddr, f.daddr):
            if a and a != "0.0.0.0":
                try:
                    lease = self.by_address(int(IPv4Address(a)))
                except ValueError:
                    continue
                if lease is not None:
                    return object_name(lease.identity)
        for mac in (f.src_mac, f.dst_mac):
            if mac and self.by_identity(f"mac:{mac}") is not None:
                return object_name(f"mac:{mac}")
        return ""

    def interface_name(self, ifindex: int) -> str:
        if ifindex not in self._ifnames:
            try:
                self._ifnames[ifindex] = socket.if_indextoname(ifindex)
            except OSError:  # gone: the index is all there is
                self._ifnames[ifindex] = ""
        return self._ifnames[ifindex]

    async def serve(self) -> None:
        if not self.listen:
            return
        from bng_operator.agent.observe.hubble import Converter, serve
        conv = Converter(self.node, self.namespace, self.resolve, self.interface_name)
        self._server = await serve(self.hub, conv, self.listen, f"bng {__version__}",
                                   self.peer_address, self.peers)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)
        if self.kernel is not None:
            self.kernel.close()

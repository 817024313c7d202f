"""The XDP fast path as a session feature: bound sessions are answered in the kernel.

It follows session events (an entry once a lease is committed, removal when it ends or its
policy changes), attaches the program to every open access interface, and carries the lease
ends the kernel moved (renewals it answered) back to the lease store. The program and its
maps outlive the agent: on start they are adopted, and warmed from the lease store.

With BNGNode spec.commitAtOffer, a committed offer gets its entry too (``offered``), so the
kernel ACKs the client's REQUEST; the refresh log reports that ACK like a renewal's, and the
DHCP server binds the session (``DhcpServer.extend``). The log is read every
``OFFER_POLL`` seconds while offers wait: a session is bound that soon after its ACK.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bng_operator import netlink
from bng_operator.agent.config import NodeConfig
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.dhcp.server import DhcpServer
from bng_operator.agent.dhcp.transport import AccessInterface
from bng_operator.agent.health import Commits, Health
from bng_operator.agent.sessions.events import Event
from bng_operator.agent.sessions.session import Change, Session
from bng_operator.api.bngnode import FAST_PATH_AUTHORITY, MapFill, ProgramStatus
from bng_operator.metrics import AgentMetrics

if TYPE_CHECKING:  # the dataplane imports bcc: loaded only when the fast path is on
    from bng_operator.agent.dataplane.fastpath import FastPath
    from bng_operator.agent.fastpath.cache import SubscriberCache

log = logging.getLogger("bng.agent")
OFFER_POLL = 0.005  # seconds between reads of the refresh log while committed offers wait
PROGRAM = "xdp_dhcp"  # as BNGNode status and bng_ebpf_program_attached name it
RxVlanOffload = Literal["disable", "keep"]


@dataclass
class FastPathFeature:
    server: DhcpServer
    metrics: AgentMetrics
    health: Health
    commits: Commits
    pin_root: Path
    xdp_mode: netlink.XDPMode
    authority: float = FAST_PATH_AUTHORITY  # seconds the program answers after a heartbeat
    # The kernel counters as last read into the metrics, kept across agent restarts: what the
    # program counted while no agent ran is counted by the next one.
    counters_file: Path | None = None
    # "disable": turn the NIC's VLAN tag stripping off where the fast path attaches, since
    # XDP must see the tags; "keep": leave it, and warn.
    rx_vlan_offload: RxVlanOffload = "disable"
    name: str = "fastpath"
    # Session events the server made outside a request (sessions bound by the kernel's ACK
    # of a committed offer) go to the features through this.
    publish: Callable[[list[Event]], None] = lambda events: None
    cache: SubscriberCache | None = field(default=None, init=False)
    # Addresses just bound by the kernel's ACK of their committed offer: their entry is in
    # the map, its end moved by that ACK (``on_bound`` writes it no second time).
    _acked: set[int] = field(default_factory=set, init=False)

    # --- start and stop ------------------------------------------------------------------------

    def start(self, config: NodeConfig) -> bool:
        """Load or adopt the XDP program and its maps; take in the renewals it answered while
        no agent ran. False: it could not load, and the slow path serves alone."""
        from bng_operator.agent.dataplane.fastpath import MAX_SUBNETS, FastPath
        from bng_operator.agent.dataplane.loader import DataplaneError
        from bng_operator.agent.fastpath.cache import SubscriberCache

        try:
            fp = FastPath(config.max_leases, self.pin_root, authority=self.authority)
            # Verified now, not at the first attach: a rejected program means no fast path
            # from the start, and the first tick attaches at once.
            fp.fd  # noqa: B018
        except DataplaneError as e:
            log.error("fast path unavailable, serving from the slow path only: %s", e)
            self.metrics.fast_errors.labels("load").inc()
            return False
        self.cache = SubscriberCache(fp, config,
                                     lambda op: self.metrics.fast_errors.labels(op).inc())
        if fp.adopted_maps:
            moved = sum(1 for a, t in fp.expiries().items() if self.server.extend(a, t))
            log.info("fast path: adopted generation %s; %d lease ends moved by renewals it "
                     "answered", fp.generation, moved)
        self.persist_renewals()
        self.metrics.kernel_counters(self._counted_before(fp))  # the base for later readings
        self.read_counters()  # what the program answered while no agent ran
        self.metrics.before_scrape.append(self.read_counters)
        # sized at load: the leases' maps by --max-leases, the subnets' by its constant
        self.metrics.watch_maps(self.cache.counts, {
            "subscribers": config.max_leases, "circuits": config.max_leases,
            "subnet_options": MAX_SUBNETS})
        return True

    def _counted_before(self, fp: FastPath) -> dict[str, int]:
        """What the metrics already hold of the program's counters: nothing of fresh maps,
        the last agent's reading of adopted ones (when it left one), else all of it."""
        now = fp.counters()
        if not fp.adopted_maps:
            return dict.fromkeys(now, 0)
        try:
            saved = json.loads(self.counters_file.read_text()) if self.counters_file else None
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("generation") == fp.generation and \
                isinstance(saved.get("counters"), dict):
            return {k: int(saved["counters"].get(k, 0)) for k in now}
        return now

    def read_counters(self) -> None:
        """Fold the program's counters into the metrics, and remember the reading."""
        if self.cache is None:
            return
        fp = self.cache.fp
        now = fp.counters()
        self.metrics.kernel_counters(now)
        if self.counters_file is None:
            return
        tmp = self.counters_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"generation": fp.generation, "counters": now}))
            tmp.replace(self.counters_file)
        except OSError as e:
            log.warning("fast path: could not keep the counters in %s: %s", self.counters_file, e)

    def warm(self) -> None:
        """Make the maps hold exactly the bound leases (after start-up expiry)."""
        if self.cache is None:
            return
        n = self.cache.warm(self.server.by_address.values())
        log.info("fast path: %d subscribers in the maps (generation %s%s)", n,
                 self.cache.fp.generation, ", adopted" if self.cache.fp.adopted_maps else "")

    def stop(self) -> None:
        """The program and its maps stay: DHCP goes on without the agent."""
        if self.cache is not None:
            self.read_counters()
            self.persist_renewals()
            self.cache.fp.close()

    # --- session events ------------------------------------------------------------------------

    def on_bound(self, s: Session) -> None:
        if self.cache is not None and s.lease is not None and \
                s.lease.address not in self._acked:
            self.cache.bound(s.lease)

    def on_changed(self, s: Session, what: Change, before: Lease | None) -> None:
        if self.cache is None or s.lease is None:
            return
        if what == Change.POLICY:  # the slow path classifies its next request anew
            self.cache.unbound(s.lease)
            return
        if what == Change.ADDRESS and before is not None:
            self.cache.unbound(before)
        self.cache.bound(s.lease)

    def on_ended(self, s: Session) -> None:
        if self.cache is not None and s.lease is not None:
            self.cache.unbound(s.lease)

    def on_offered(self, s: Session, offer: Lease | None) -> None:
        if self.cache is not None and offer is not None:
            self.cache.bound(offer)

    def on_withdrawn(self, s: Session, offer: Lease | None) -> None:
        if self.cache is not None and offer is not None and \
                offer.address not in self.server.by_address:
            self.cache.unbound(offer)

    def reconfigure(self, config: NodeConfig) -> None:
        if self.cache is None:
            return
        if config.max_leases != self.cache.config.max_leases:
            log.warning("maxLeases changed to %d: the fast path's maps keep their size until "
                        "the agent restarts", config.max_leases)
        dropped = self.cache.reconfigure(config, list(self.server.by_address.values()))
        log.info("fast path: options updated, %d entries dropped to be classified anew",
                 dropped)

    # --- the program on the interfaces -----------------------------------------------------------

    def attach(self, interfaces: dict[str, AccessInterface], wanted: Sequence[str]) -> None:
        """Attach to every open access interface (worker thread: it talks netlink)."""
        if self.cache is None:
            return
        fp = self.cache.fp
        attached = self.health.attached
        trusted = self.cache.config.option82_trusted
        for name, iface in interfaces.items():
            try:
                # Every round, so that a reload's option 82 trust reaches the program.
                fp.put_interface(iface.index, iface.mac, name in trusted)
                if name in attached and fp.is_attached(name):
                    continue
                how = fp.attach(name, None, self.xdp_mode)
            except Exception as e:
                attached.discard(name)
                self.metrics.program_attached.labels(PROGRAM, name).set(0)
                log.error("fast path: attaching to %s failed: %s; the slow path serves it",
                          name, e)
                continue
            if name in attached:
                log.warning("fast path: the program on %s had been replaced or removed; "
                            "attached it again", name)
            attached.add(name)
            self.metrics.program_attached.labels(PROGRAM, name).set(1)
            self._vlan_offload(name)
            log.info("fast path on %s: program %s (%s mode, generation %s)", name, how,
                     self.xdp_mode, fp.generation)
        if attached == set(wanted):
            for gen in fp.remove_other_generations():
                log.info("fast path: removed generation %s, no longer attached", gen)

    def _vlan_offload(self, name: str) -> None:
        """A NIC that strips VLAN tags hides them from XDP: tagged subscribers' requests
        then miss the fast path (the slow path reads the tag from the socket and serves
        them). Turned off, or said, per --rx-vlan-offload."""
        try:
            on = netlink.feature(name, netlink.RX_VLAN_OFFLOAD)
            if on and self.rx_vlan_offload == "disable":
                if netlink.set_feature(name, netlink.RX_VLAN_OFFLOAD, False):
                    log.info("fast path on %s: turned the NIC's VLAN tag stripping "
                             "(rx-vlan-hw-parse) off, so that XDP sees the tags", name)
                    on = False
                else:
                    log.warning("fast path on %s: the NIC's VLAN tag stripping "
                                "(rx-vlan-hw-parse) cannot be turned off; tagged subscribers "
                                "are served by the slow path only", name)
            elif on:
                log.warning("fast path on %s: the NIC strips VLAN tags before XDP sees them "
                            "(rx-vlan-hw-parse on, --rx-vlan-offload keep); tagged "
                            "subscribers are served by the slow path only. Turn it off: "
                            "ethtool -K %s rxvlan off", name, name)
        except (OSError, netlink.InterfaceMissing) as e:
            log.warning("fast path on %s: could not read its VLAN offload: %s", name, e)
            return
        self.metrics.rx_vlan_offload.labels(name).set(1 if on else 0)

    # --- renewals the kernel answered ------------------------------------------------------------

    async def sync(self, stop: asyncio.Event, interval: float) -> None:
        """Renewals into the store, and the heartbeat that lets the program answer; every
        OFFER_POLL while committed offers wait, the ACKs of those."""
        next_beat = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if loop.time() >= next_beat:
                    next_beat = loop.time() + interval
                    if self.cache is not None:
                        self.cache.fp.beat()
                        left = self.cache.retry_deletes() if self.cache.undeleted else 0
                        self.metrics.fast_undeleted.set(left)
                self.persist_renewals()
            except Exception:  # the syncer must outlive any one bad round
                log.exception("fast path sync failed; retrying")
            await asyncio.sleep(OFFER_POLL if self.server.offers_committed else
                                max(0.0, next_beat - loop.time()))

    def persist_renewals(self) -> None:
        """Renewals the kernel answered: their new lease ends go to the store (one commit),
        and the sessions its ACKs of committed offers bound go to the features."""
        if self.cache is None:
            return
        renewed = bound = 0
        by_address = self.server.by_address
        for a, t in self.cache.fp.refreshes():
            was_bound = a in by_address
            if self.server.extend(a, t) is not None:
                if was_bound:
                    renewed += 1
                else:
                    bound += 1
                    self._acked.add(a)
        if renewed:
            self.metrics.fast_refreshes.inc(renewed)
        if bound:
            self.metrics.fast_first_acks.inc(bound)
            try:
                self.publish(self.server.take_events())
            finally:
                self._acked.clear()
        if renewed or bound:
            self.commits.quietly()

    def kernel_expiry(self, lease: Lease) -> float | None:
        """The lease's end as the program's map holds it (moved by the renewals it answered),
        or None when it has no entry."""
        if self.cache is None:
            return None
        key = self.cache.keys.get(lease.address)
        if key is None:
            return None
        try:
            return self.cache.fp.clock.wall(self.cache.fp.expiry(key))
        except KeyError:
            return None

    # --- status ------------------------------------------------------------------------------------

    def maps(self, capacity: int) -> list[MapFill]:
        if self.cache is None:
            return []
        return [MapFill(name=k, entries=v, capacity=capacity)
                for k, v in sorted(self.cache.counts().items())]


def programs(interfaces: Sequence[str], attached: set[str]) -> list[ProgramStatus]:
    """The program on each access interface, for the BNGNode status (listed even when it
    could not load: then it is attached nowhere)."""
    return [ProgramStatus(hook="xdp", interface=name, name=PROGRAM, attached=name in attached)
            for name in interfaces]

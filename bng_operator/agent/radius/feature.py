"""RADIUS as the session core's authoriser, and as a feature that follows sessions.

A new session of a class with ``auth: radius`` waits (in a task of its own: other clients
are answered meanwhile) for an Access-Request to the class's servers:

- Access-Accept: what it grants (Framed-IP-Address, Framed-Pool) goes back to the DHCP
  server as the verdict's Grant; its rates (Filter-Id, WISPr-Bandwidth-Max-Up/Down) reach
  shaping through ``QosFeature.override`` when the session is bound; the rest (Class,
  timeouts, Acct-Interim-Interval, the Acct-Session-Id made now) is kept per session, on
  disk, for accounting.
- Access-Reject: no offer, and the identity is refused without asking again for the
  class's ``rejectHoldDown``.
- no server answers: the class's ``fallback``, admit (with the class's defaults) or
  refuse; logged, counted, and shown in the BNGNode status.

A session is authorised once: renewals (mostly answered in XDP) never ask again.

Accounting (RFC 2866): a Start when a session is bound, an Interim-Update every
Acct-Interim-Interval (the Accept's, else the class's ``interimInterval``), a Stop when it
ends. Records go to a durable queue (a table of the state file) and are sent one at a
time, oldest first, to the class's servers (their acctPort; failover and dead servers as
for authentication) until one acknowledges; an outage keeps them queued, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from pyrad.packet import AccessAccept

from bng_operator.agent.config import ClassConfig, NodeConfig, ShapingRates
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.radius.accounting import (
    INTERIM,
    START,
    STOP,
    Usage,
    acct_attributes,
    delay_time,
    overflow,
    terminate_cause,
)
from bng_operator.agent.radius.attributes import (
    Authorisation,
    MissingField,
    RadiusRates,
    Refusal,
    nas_identifier,
    read_accept,
    request_attributes,
    session_rates,
)
from bng_operator.agent.radius.client import Answer, RadiusClient, Server
from bng_operator.agent.radius.coa import (
    COA,
    INVALID_REQUEST,
    NAS_IDENTIFICATION_MISMATCH,
    SESSION_NOT_FOUND,
    UNSUPPORTED_ATTRIBUTE,
    Candidate,
    Request,
    identify,
    matches,
    nas_mismatch,
    rate_attributes,
    timer_attributes,
    unsupported,
)
from bng_operator.agent.radius.listener import CoaListener
from bng_operator.agent.radius.secrets import SecretError, Secrets
from bng_operator.agent.radius.store import (
    AcctRecord,
    RadiusSession,
    RadiusStore,
    new_acct_session_id,
)
from bng_operator.agent.sessions.authorise import Verdict
from bng_operator.agent.sessions.session import (
    Change,
    EndReason,
    Grant,
    Identity,
    Session,
)
from bng_operator.api.bngnode import RadiusServerStatus
from bng_operator.api.common import parse_duration, rfc3339
from bng_operator.api.radius import RadiusAuth, SecretRef
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent.radius")
NAME = "radius"
PRUNE_EVERY = 60.0  # seconds between sweeps of ended hold-downs
FALLBACK_LOG_EVERY = 10.0  # a fallback is logged at most this often per class (all counted)
FALLBACK_SHOWN = 300.0  # seconds a fallback keeps the BNGNode Degraded
ACCT_RETRY_MIN, ACCT_RETRY_MAX = 1.0, 10.0  # seconds between tries while no server acks
# Accounting-Requests in flight at once (never two of one session). One at a time drained
# 1/RTT records a second: 20/s from a server 50 ms away, less than 2,000 subscribers at a
# 60 s interim need. After a failure the window is 1 until a record is acknowledged again.
ACCT_WINDOW = 32


@dataclass
class RadiusFeature:
    metrics: AgentMetrics
    config: NodeConfig
    secrets: Secrets
    state_path: Path
    # QosFeature.override, when shaping is on: rates for one session over its class's
    override: Callable[[Lease, ShapingRates | None], None] = lambda lease, rates: None
    changed: Callable[[], None] = lambda: None  # what the BNGNode status shows changed
    # Ends a bound session by its key (Session-Timeout); False: it is not bound any more
    end: Callable[[str], bool] = lambda key: False
    clock: Callable[[], float] = time.monotonic
    # a session's traffic by its address (shaping's per-session counters); None: unknown
    usage: Callable[[int], Usage | None] = lambda address: None
    acct_limit: int = 100_000  # accounting records queued at most
    wall: Callable[[], float] = time.time
    # the CoA/Disconnect listener (RFC 5176): where (port 0: none), and the clients other
    # than the classes' servers (address, secret)
    coa_address: str = "0.0.0.0"
    coa_port: int = 3799
    coa_clients: tuple[tuple[str, SecretRef], ...] = ()
    shaping: Callable[[], bool] = lambda: True  # whether rates can be changed (QoS is on)
    name: str = NAME
    client: RadiusClient = field(init=False)
    store: RadiusStore | None = field(default=None, init=False)
    sessions: dict[str, RadiusSession] = field(default_factory=dict, init=False)  # by key
    _secrets: dict[SecretRef, bytes | str] = field(default_factory=dict, init=False)
    _held: dict[str, float] = field(default_factory=dict, init=False)  # key -> until
    _pruned: float = field(default=0.0, init=False)
    _fallback_logged: dict[str, float] = field(default_factory=dict, init=False)
    _timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict, init=False)
    fallbacks: int = field(default=0, init=False)  # sessions decided by the fallback
    last_fallback: str = field(default="", init=False)
    last_fallback_at: float = field(default=-1e18, init=False)
    queue: deque[AcctRecord] = field(default_factory=deque, init=False)
    _seq: int = field(default=0, init=False)
    _wake: asyncio.Event | None = field(default=None, init=False)
    _sender: asyncio.Task[None] | None = field(default=None, init=False)
    _flying: dict[int, asyncio.Task[None]] = field(default_factory=dict, init=False)  # by seq
    _acked: bool = field(default=False, init=False)  # since the sender last looked
    _failed: bool = field(default=False, init=False)
    _bound: dict[str, Session] = field(default_factory=dict, init=False)  # accounted, by key
    _interims: dict[str, asyncio.TimerHandle] = field(default_factory=dict, init=False)
    _acct: dict[str, list[tuple[Server, bytes]]] = field(default_factory=dict, init=False)
    # each class's authentication servers, as _servers() last made them: rebuilding them
    # for every Access-Request cost ~6% of the event loop at 300 new sessions/s
    _auth_servers: dict[str, list[tuple[Server, bytes]]] = field(default_factory=dict,
                                                                  init=False)
    _servers_stale: bool = field(default=True, init=False)
    _outage_logged: bool = field(default=False, init=False)
    _queued_interims: int = field(default=0, init=False)
    _coa_secrets: dict[str, bytes] = field(default_factory=dict, init=False)  # by address
    _listener: CoaListener | None = field(default=None, init=False)
    _listen_error: str = field(default="", init=False)
    # Idle-Timeout: the subscriber's packets up when last seen to change, and when (monotonic)
    _idle: dict[str, tuple[int, float]] = field(default_factory=dict, init=False)
    _idle_timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.client = RadiusClient(self.metrics, self.clock)

    # --- start, reload, stop ---------------------------------------------------------------

    @property
    def wanted(self) -> bool:
        return any(self._auth(c) is not None for c in self.config.classes)

    def start(self) -> None:
        """Open the state store (blocking: before serving) and read the secrets."""
        self.store = RadiusStore(self.state_path)
        self.queue = deque(self.store.load_queue())
        self._seq = self.queue[-1].seq if self.queue else 0
        self._queued_interims = sum(1 for r in self.queue if r.status == INTERIM)
        self.metrics.radius_acct_queue_depth.set(len(self.queue))
        self.read_secrets()
        self._servers()

    def read_secrets(self) -> None:
        """Read every secret the classes refer to (blocking: off the loop at a reload).
        One that cannot be read leaves its servers unused, said once here."""
        out: dict[SecretRef, bytes | str] = {}
        for c in self.config.classes:
            auth = self._auth(c)
            for srv in auth.servers if auth else ():
                if srv.secret in out:
                    continue
                try:
                    out[srv.secret] = self.secrets.read(srv.secret)
                except SecretError as e:
                    out[srv.secret] = str(e)
                    log.error("RADIUS: class %s: %s; its servers that use it are not asked",
                              c.name, e)
        for address, ref in self.coa_clients:
            if ref not in out:
                try:
                    out[ref] = self.secrets.read(ref)
                except SecretError as e:
                    out[ref] = str(e)
                    log.error("RADIUS CoA client %s: %s; its requests are dropped", address, e)
        self._secrets = out
        self._servers_stale = True  # remade on the loop, at its next use
        self.changed()

    def reconfigure(self, config: NodeConfig) -> None:
        """A reload: the classes' servers as they are now (their secrets are read again by
        ``refresh_secrets``, which the agent runs next)."""
        self.config = config
        self._servers()
        self._rerate()

    def _rerate(self) -> None:
        """Sessions whose rates RADIUS set (Filter-Id, WISPr) follow edits of the QoSPolicies
        they are made from, live: the one Filter-Id names, the class's under a WISPr rate
        of one direction."""
        for key, s in self._bound.items():
            st = self.sessions.get(key)
            if st is not None and s.lease is not None and \
                    self._made_again(key, st, s.subscriber_class):
                self.override(s.lease, st.rates)

    def _made_again(self, key: str, st: RadiusSession, subscriber_class: str) -> bool:
        """``st.rates`` made again from its rate attributes and the policies as they are
        now; whether they changed."""
        wanted = RadiusRates(st.filter_id, st.rate_down_bps, st.rate_up_bps)
        if not wanted or (st.rates is not None and st.rates.policy == "radius"
                          and not (st.rate_down_bps or st.rate_up_bps)
                          and "radius" not in self.config.qos_policies):
            return False  # RADIUS set no rates; or WISPr rates stored before they were kept
        rates, why = session_rates(wanted, self.config, self.config.shaping.get(subscriber_class))
        if rates == st.rates:
            return False
        if why:
            log.warning("RADIUS: session %s: %s", key, why)
        st.rates = rates
        self._keep(key, st)
        log.info("RADIUS: session %s: a QoSPolicy changed, its rates now %s", key,
                 f"{rates.down} down, {rates.up} up" if rates else "its class's")
        return True

    async def refresh_secrets(self) -> None:
        """``read_secrets`` off the loop (a Kubernetes Secret is an API call)."""
        await asyncio.get_running_loop().run_in_executor(None, self.read_secrets)
        self._servers()

    def _servers(self) -> None:
        """Each class's authentication and accounting servers with their secrets, and the
        CoA/Disconnect clients, as the configuration and the secrets read say now."""
        auth_servers: dict[str, list[tuple[Server, bytes]]] = {}
        acct_servers: dict[str, list[tuple[Server, bytes]]] = {}
        coa: dict[str, bytes] = {}
        keep: set[str] = set()
        for c in self.config.classes:
            auth = self._auth(c)
            if auth is None:
                continue
            servers = auth_servers[c.name] = []
            acct = acct_servers[c.name] = []
            for srv in auth.servers:
                secret = self._secrets.get(srv.secret)
                for port, where in ((srv.auth_port, servers), (srv.acct_port, acct)):
                    # Status-Server to the authentication port only: what an accounting
                    # port answers it with varies by server
                    s = self.client.server(srv.address, port,
                                           float(parse_duration(srv.timeout)), srv.retries,
                                           auth.dead_after,
                                           float(parse_duration(auth.dead_time)),
                                           probe=auth.status_server and where is servers)
                    keep.add(s.key)
                    if isinstance(secret, bytes):
                        where.append((s, secret))
                        if s.probe:
                            s.probe_secret = secret
                            self.client.probe_if_dead(s)
                    else:
                        s.last_error = secret or "secret not read yet"
                if isinstance(secret, bytes):  # a CoA/Disconnect client too
                    coa.setdefault(srv.address, secret)
        for address, ref in self.coa_clients:  # and the other CoA clients
            secret = self._secrets.get(ref)
            if isinstance(secret, bytes):
                coa[address] = secret
        self._coa_secrets = coa
        self.client.forget(keep)
        self._auth_servers, self._acct = auth_servers, acct_servers
        self._servers_stale = False

    async def listen(self) -> None:
        """Open the CoA/Disconnect listener, when a class uses RADIUS (and a port is set).
        A port that cannot be bound is said, and shown in the BNGNode status."""
        if self._listener is not None or not self.coa_port or not self.wanted:
            return
        try:
            _, self._listener = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: CoaListener(self.metrics, self.client.dictionary,
                                    lambda: self._coa_secrets, self.dynauth, self.wall),
                local_addr=(self.coa_address, self.coa_port))
        except OSError as e:
            self._listen_error = f"the CoA/Disconnect listener cannot bind " \
                                 f"{self.coa_address}:{self.coa_port}: {e}"
            log.error("RADIUS: %s", self._listen_error)
            self.changed()
            return
        self._listen_error = ""
        log.info("RADIUS: CoA/Disconnect listener on %s:%d", self.coa_address, self.coa_port)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for timer in [*self._timers.values(), *self._interims.values(),
                      *self._idle_timers.values()]:
            timer.cancel()
        self._timers.clear()
        self._interims.clear()
        self._idle_timers.clear()
        if self._sender is not None:
            self._sender.cancel()
        for task in self._flying.values():
            task.cancel()
        self._flying.clear()
        self.client.close()
        if self.store is not None:
            self.store.close()

    def restore(self, sessions: dict[str, Session], bound: Callable[[str], Lease | None],
                ) -> None:
        """After a restart: the sessions the lease store restored get back what RADIUS
        granted them (their Acct-Session-Id, address, pool and rates); state of sessions
        that ended meanwhile is dropped."""
        assert self.store is not None
        self._start_sender()
        kept = 0
        for key, st in self.store.load().items():
            s, lease = sessions.get(key), bound(key)
            if s is None or lease is None:
                # ended while the agent was away (its lease ran out): its Stop, with the
                # counters of its last record
                if st.start_queued:
                    self._record(STOP, key, st, None, st.bound_address,
                                 Usage(*st.last_usage), terminate_cause(EndReason.EXPIRED))
                self.store.delete(key)
                continue
            self._attach(s, st)
            self._made_again(key, st, s.subscriber_class)  # policies edited meanwhile
            if st.rates is not None:
                self.override(lease, st.rates)
            self._bound[key] = s
            self._arm(key, st)
            if not st.start_queued:  # bound before its state said so (or before accounting)
                self._start(s, st, lease)
            self._arm_interim(key, st)
            kept += 1
        if kept:
            log.info("RADIUS: %d sessions' state restored", kept)
        if self.queue:
            log.info("RADIUS accounting: %d records queued from before the restart",
                     len(self.queue))

    # --- the authoriser ---------------------------------------------------------------------

    def _auth(self, c: ClassConfig | None) -> RadiusAuth | None:
        if c is None or c.spec.auth != "radius":
            return None
        return c.spec.radius

    def _class(self, name: str) -> ClassConfig | None:
        return self.config.class_by_name.get(name)

    def applies(self, s: Session) -> bool:
        return self._auth(self._class(s.subscriber_class)) is not None

    async def authorise(self, s: Session) -> Verdict:
        cls = self._class(s.subscriber_class)
        auth = self._auth(cls)
        if cls is None or auth is None:  # the class changed meanwhile: nothing to ask
            return Verdict(True)
        now = self.clock()
        self._prune(now)
        decided = self.metrics.radius_decisions
        until = self._held.get(s.key, 0.0)
        if until > now:
            decided.labels(cls.name, "held_down").inc()
            return Verdict(False, f"rejected by RADIUS; held down {until - now:.0f} s more")
        try:
            asked = request_attributes(s.identity, auth, self.config.node_name, "0.0.0.0")
            user = asked[0]
        except MissingField as e:
            decided.labels(cls.name, "error").inc()
            return Verdict(False, f"class {cls.name}: {e}")
        if self._servers_stale:
            self._servers()
        servers = self._auth_servers.get(cls.name, [])
        try:
            answer = await self.client.access_request(
                servers, lambda nas_ip: [(k, nas_ip if k == "NAS-IP-Address" else v)
                                         for k, v in asked])
        except (ValueError, TypeError) as e:  # an attribute pyrad cannot encode (too long)
            decided.labels(cls.name, "error").inc()
            return Verdict(False, f"class {cls.name}: cannot build the Access-Request: {e}")
        if answer.reply is None:
            return self._fallback(s, cls, auth, answer, str(user[1]))
        if answer.reply.code != AccessAccept:
            hold = parse_duration(auth.reject_hold_down)
            if hold:
                self._held[s.key] = self.clock() + hold
            decided.labels(cls.name, "reject").inc()
            return Verdict(False, f"Access-Reject from {answer.server}" +
                           (f"; not asked again for {hold} s" if hold else ""))
        attrs, unknown = answer.reply.attributes, answer.reply.unknown
        result = read_accept(attrs, self.config, cls.spec.pool, self.config.shaping.get(cls.name))
        ignored = len(unknown) + len(result.ignored)
        if ignored:
            self.metrics.radius_unknown_attributes.inc(ignored)
            log.debug("RADIUS: session %s: attributes ignored: %s", s.key,
                      ", ".join([*result.ignored, *map(str, unknown)]))
        if isinstance(result, Refusal):
            decided.labels(cls.name, "refused").inc()
            log.error("RADIUS: session %s (%s): the Access-Accept of %s cannot be honoured: %s",
                      s.key, s.identity.mac, answer.server, result.message)
            return Verdict(False, result.message)
        for w in result.warnings:
            log.warning("RADIUS: session %s: %s", s.key, w)
        st = self._accepted(s, str(user[1]), answer, result)
        self.metrics.child(decided, cls.name, "accept").inc()
        return Verdict(True, grant=Grant(st.address, st.pool) if st.address or st.pool
                       else None)

    def _accepted(self, s: Session, user: str, answer: Answer, a: Authorisation,
                  ) -> RadiusSession:
        g, w = a.grant, a.wanted
        st = RadiusSession(
            acct_session_id=new_acct_session_id(), user_name=user, server=answer.server,
            address=g.address if g else 0, pool=g.pool if g else "", rates=a.rates,
            filter_id=w.filter_id, rate_down_bps=w.down_bps, rate_up_bps=w.up_bps,
            session_timeout=a.session_timeout,
            idle_timeout=a.idle_timeout, interim_interval=a.interim_interval, classes=a.classes)
        self._attach(s, st)
        return st

    def _attach(self, s: Session, st: RadiusSession) -> None:
        self.sessions[s.key] = st
        s.attached[NAME] = st
        if st.address or st.pool:
            s.grant = Grant(st.address, st.pool)

    def _fallback(self, s: Session, cls: ClassConfig, auth: RadiusAuth, answer: Answer,
                  user: str) -> Verdict:
        admit = auth.fallback == "admit"
        self.metrics.radius_decisions.labels(
            cls.name, "fallback_admit" if admit else "fallback_refuse").inc()
        why = (f"no RADIUS server answered (asked {', '.join(answer.tried)})" if answer.tried
               else "no RADIUS server is usable (all dead, or their secret unreadable)")
        self.fallbacks += 1
        self.last_fallback = f"class {cls.name}: {why}: {'admitted' if admit else 'refused'}"
        now = self.last_fallback_at = self.clock()
        if now - self._fallback_logged.get(cls.name, -1e18) >= FALLBACK_LOG_EVERY:
            self._fallback_logged[cls.name] = now
            log.warning("RADIUS: session %s (%s) of class %s: %s; fallback: %s (logged at "
                        "most every %g s; bng_radius_decisions_total counts each)", s.key,
                        s.identity.mac, cls.name, why, auth.fallback, FALLBACK_LOG_EVERY)
        self.changed()
        if not admit:
            return Verdict(False, why)
        self._attach(s, RadiusSession(new_acct_session_id(), user, fallback=True))
        return Verdict(True)

    def _prune(self, now: float) -> None:
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        self._held = {k: t for k, t in self._held.items() if t > now}

    # --- session events -------------------------------------------------------------------

    def _keep(self, key: str, st: RadiusSession) -> None:
        """Write ``st``, the state of session ``key``, to the store (when there is one)."""
        if self.store is not None:
            self.store.put(key, st)

    def on_bound(self, s: Session) -> None:
        st = self.sessions.get(s.key)
        if st is None or s.lease is None:
            return
        self._bound[s.key] = s
        if not st.start_queued:
            self._start(s, st)  # writes the state with the Start, in one transaction
        else:
            self._keep(s.key, st)
        if st.rates is not None:
            self.override(s.lease, st.rates)
        self._arm(s.key, st)
        self._arm_interim(s.key, st)

    def on_changed(self, s: Session, what: Change, before: Lease | None) -> None:
        st = self.sessions.get(s.key)
        if st is not None and before is not None and what == Change.ADDRESS:
            # the counters are per address: the old address's traffic is carried over
            u = self.usage(before.address)
            if u is not None:
                st.carried = tuple(a + b for a, b in zip(  # type: ignore[assignment]
                    st.carried, (u.bytes_up, u.packets_up, u.bytes_down, u.packets_down),
                    strict=True))
        if st is not None and what == Change.ADDRESS and s.key in self._idle:
            self._idle[s.key] = (-1, self.clock())  # the new address's counters start anew
            if st.quiet_packets >= 0:
                st.quiet_packets = -1  # the old address's count says nothing of the new's
                self._keep(s.key, st)
        if st is not None and st.rates is not None and s.lease is not None \
                and what == Change.ADDRESS:
            self.override(s.lease, st.rates)  # shaping forgot the old address's

    def on_ended(self, s: Session) -> None:
        st = self.sessions.pop(s.key, None)
        self._bound.pop(s.key, None)
        self._idle.pop(s.key, None)
        self._disarm(s.key, self._timers, self._interims, self._idle_timers)
        if st is not None and st.start_queued and s.lease is not None:
            self._record(STOP, s.key, st, s, s.lease.address, self._usage(st, s.lease.address),
                         st.end_cause or terminate_cause(s.end_reason, st.session_timed_out))
        if st is not None and self.store is not None:
            self.store.delete(s.key)

    # --- Session-Timeout --------------------------------------------------------------------

    def _arm(self, key: str, st: RadiusSession) -> None:
        """A session with a Session-Timeout ends that long after it was authorised (a
        restart keeps the time: it is counted from ``authorised_at``, wall-clock); one with
        an Idle-Timeout is watched for activity."""
        self._arm_idle(key, st)
        if not st.session_timeout or key in self._timers:
            return
        delay = max(0.0, st.authorised_at + st.session_timeout - time.time())
        self._timers[key] = asyncio.get_running_loop().call_later(
            delay, self._session_timeout, key, st.acct_session_id)

    def _retime(self, key: str, st: RadiusSession, timers: dict[str, int]) -> None:
        """A CoA's timers, in effect at once: Session-Timeout counts from now (kept as a
        time from ``authorised_at``, as restarts count it), Idle-Timeout's clock starts
        anew, and the next Interim-Update follows the new interval."""
        if "Session-Timeout" in timers:
            v = timers["Session-Timeout"]
            # rounded up: never a moment before v seconds from now
            st.session_timeout = math.ceil(time.time() - st.authorised_at + v) if v else None
            self._disarm(key, self._timers)
        if "Idle-Timeout" in timers:
            st.idle_timeout = timers["Idle-Timeout"] or None
            st.quiet_packets = -1  # its clock starts anew: no quiet spell to resume
            self._disarm(key, self._idle_timers)
            self._idle.pop(key, None)
        if "Acct-Interim-Interval" in timers:
            st.interim_interval = timers["Acct-Interim-Interval"] or None
            self._disarm(key, self._interims)
        self._keep(key, st)
        self._arm(key, st)
        self._arm_interim(key, st)
        log.info("RADIUS: session %s (Acct-Session-Id %s): CoA, %s", key, st.acct_session_id,
                 ", ".join(f"{k} {v}" for k, v in timers.items()))

    @staticmethod
    def _disarm(key: str, *held: dict[str, asyncio.TimerHandle]) -> None:
        """Cancel ``key``'s timer in each of ``held``."""
        for timers in held:
            timer = timers.pop(key, None)
            if timer is not None:
                timer.cancel()

    def _session_timeout(self, key: str, acct_session_id: str) -> None:
        self._timers.pop(key, None)
        st = self.sessions.get(key)
        if st is None or st.acct_session_id != acct_session_id:
            return
        st.session_timed_out = True  # its Stop says Session-Timeout
        if self.end(key):
            self.metrics.radius_session_timeouts.inc()
            log.info("RADIUS: session %s (Acct-Session-Id %s) reached its Session-Timeout of "
                     "%d s and ended; its next request is authorised anew", key,
                     acct_session_id, st.session_timeout)

    # --- Idle-Timeout -----------------------------------------------------------------------

    def _idle_tick(self, st: RadiusSession) -> float:
        """How often an idle-watched session's counters are read: a tenth of its timeout,
        between 1 and 30 s (it ends at most a tick or two after its Idle-Timeout)."""
        return max(1.0, min(30.0, (st.idle_timeout or 0) / 10))

    def _arm_idle(self, key: str, st: RadiusSession) -> None:
        """Activity is the subscriber's upload: its packets up in shaping's per-session
        counters (what it sends; what it is sent proves nothing about it being there)."""
        if not st.idle_timeout or key in self._idle_timers:
            return
        s = self._bound.get(key)
        u = self.usage(s.lease.address) if s is not None and s.lease is not None else None
        now = self.clock()
        since = self._quiet_since(st, u.packets_up, now) if u is not None else now
        self._idle[key] = (u.packets_up if u is not None else -1, since)
        self._idle_timers[key] = asyncio.get_running_loop().call_later(
            self._idle_tick(st), self._idle_check, key, st.acct_session_id)

    def _idle_check(self, key: str, acct_session_id: str) -> None:
        self._idle_timers.pop(key, None)
        st, s = self.sessions.get(key), self._bound.get(key)
        if st is None or s is None or s.lease is None or st.acct_session_id != acct_session_id \
                or not st.idle_timeout:
            self._idle.pop(key, None)
            return
        now = self.clock()
        u = self.usage(s.lease.address)
        last, since = self._idle.get(key, (-1, now))
        log.debug("RADIUS: session %s: packets up %s (was %d, since %.1f s)", key,
                  u.packets_up if u is not None else "unknown", last, now - since)
        if u is None:  # no counters (shaping off or not loaded yet): never ended meanwhile
            self._idle[key] = (-1, since)
        else:
            if last == -1:
                # counters seen at last: the count it was quiet at before a restart (the
                # clock runs from then), or none counted yet (it runs on), is no activity
                if u.packets_up == st.quiet_packets:
                    since = min(since, self._quiet_since(st, u.packets_up, now))
                elif u.packets_up:
                    since = now
            elif u.packets_up != last:
                since = now
            last = u.packets_up
            self._idle[key] = (last, since)
            if now - since >= st.idle_timeout:
                st.end_cause = "Idle-Timeout"  # its Stop says so
                if self.end(key):
                    self.metrics.radius_idle_timeouts.inc()
                    log.info("RADIUS: session %s (Acct-Session-Id %s) sent nothing for its "
                             "Idle-Timeout of %d s and ended", key, acct_session_id,
                             st.idle_timeout)
                return
            if since == now:  # it sent something: a quiet spell written before is over
                if st.quiet_packets >= 0:
                    st.quiet_packets = -1
                    self._keep(key, st)
            elif now - since >= st.idle_timeout / 2 and st.quiet_packets != last:
                # quiet for half its Idle-Timeout: kept for a restart (a short pause in its
                # traffic writes nothing)
                st.quiet_packets, st.quiet_since = last, self.wall() - (now - since)
                self._keep(key, st)
        self._idle_timers[key] = asyncio.get_running_loop().call_later(
            self._idle_tick(st), self._idle_check, key, acct_session_id)

    def _quiet_since(self, st: RadiusSession, packets_up: int, now: float) -> float:
        """When the idle clock of a session whose upload counter reads ``packets_up`` started
        (the loop's clock): when it was found quiet before a restart, if the counter has not
        moved since; else ``now``."""
        if st.quiet_packets < 0 or packets_up != st.quiet_packets:
            return now
        return now - max(0.0, self.wall() - st.quiet_since)

    # --- CoA and Disconnect (RFC 5176) -----------------------------------------------------

    def candidates(self) -> list[Candidate]:
        out = []
        for key, s in self._bound.items():
            st = self.sessions.get(key)
            if st is not None and s.lease is not None:
                out.append(Candidate(key, st.acct_session_id, st.user_name, s.lease.address,
                                     s.identity.mac))
        return out

    def dynauth(self, r: Request) -> int | None:
        """Act on a verified CoA-Request or Disconnect-Request: None (ACK) or the NAK's
        Error-Cause. Every session it identifies is changed, or ended."""
        bad = unsupported(r.kind, r.attrs, r.unknown)
        if bad:
            log.warning("RADIUS %s: attributes not supported: %s; NAK", r.kind, ", ".join(bad))
            return UNSUPPORTED_ATTRIBUTE
        ident = identify(r.attrs)
        if isinstance(ident, int):
            return ident
        addresses = self.client.local_addresses()
        if addresses and self.coa_address not in ("", "0.0.0.0"):
            addresses.add(self.coa_address)
        why = nas_mismatch(r.attrs, self._nas_identifiers(), addresses)
        if why:
            log.warning("RADIUS %s: %s; NAK", r.kind, why)
            return NAS_IDENTIFICATION_MISMATCH
        keys = matches(ident, self.candidates())
        if not keys:
            log.info("RADIUS %s: no session matches %s; NAK", r.kind, ident)
            return SESSION_NOT_FOUND
        if r.kind == COA:
            timers = timer_attributes(r.attrs)
            if timers is None:
                log.warning("RADIUS CoA: a timer that is not a number of seconds; NAK")
                return INVALID_REQUEST
            return self._coa(keys, rate_attributes(r.attrs), timers)
        ended = 0
        for key in keys:
            st = self.sessions.get(key)
            if st is not None:
                st.end_cause = "Admin-Reset"
            if self.end(key):
                ended += 1
                log.info("RADIUS: session %s (Acct-Session-Id %s) ended by a "
                         "Disconnect-Request", key, st.acct_session_id if st else "?")
        return None if ended else SESSION_NOT_FOUND

    def _nas_identifiers(self) -> set[str]:
        """The NAS-Identifiers this node sends: its classes' nasIdentifier, or its name."""
        return {nas_identifier(auth, self.config.node_name)
                for c in self.config.classes if (auth := self._auth(c)) is not None}

    def _coa(self, keys: list[str], attrs: dict[str, list[object]],
             timers: dict[str, int]) -> int | None:
        """A CoA-Request's changes: all of them, to every session it names, or none (NAK)."""
        if attrs and not self.shaping():
            log.warning("RADIUS CoA: rates asked but shaping is off on this node; NAK")
            return UNSUPPORTED_ATTRIBUTE
        changes = []
        for key in keys if attrs else ():
            s, st = self._bound[key], self.sessions[key]
            a = read_accept(attrs, self.config, "", self.config.shaping.get(s.subscriber_class))
            if isinstance(a, Refusal) or a.warnings:
                log.warning("RADIUS CoA for session %s: %s; NAK", key,
                            a.message if isinstance(a, Refusal) else "; ".join(a.warnings))
                return INVALID_REQUEST
            changes.append((s, st, a))
        if timers:
            for key in keys:
                self._retime(key, self.sessions[key], timers)
        for s, st, a in changes:
            st.rates = a.rates
            w = a.wanted  # the CoA's rate attributes replace the Accept's
            st.filter_id, st.rate_down_bps, st.rate_up_bps = w.filter_id, w.down_bps, w.up_bps
            self._keep(s.key, st)
            assert s.lease is not None
            self.override(s.lease, st.rates)
            log.info("RADIUS: session %s (Acct-Session-Id %s): CoA, rates now %s", s.key,
                     st.acct_session_id, f"{st.rates.down_bps} bit/s down, {st.rates.up_bps} bit/s up"
                     if st.rates else "its class's")
        return None

    # --- accounting -------------------------------------------------------------------------

    def _usage(self, st: RadiusSession, address: int) -> Usage:
        """The session's traffic so far: its address's counters plus what earlier addresses
        carried, never less than its last record said (counters not loaded yet, after a
        restart, read as zero)."""
        u = self.usage(address) if address else None
        now = Usage(*st.carried) + u if u is not None else Usage(*st.carried)
        last = Usage(*st.last_usage)
        return Usage(max(now.bytes_up, last.bytes_up), max(now.packets_up, last.packets_up),
                     max(now.bytes_down, last.bytes_down),
                     max(now.packets_down, last.packets_down))

    def _start(self, s: Session, st: RadiusSession, lease: Lease | None = None) -> None:
        lease = lease or s.lease
        st.started_at = self.wall()
        st.start_queued = True
        self._record(START, s.key, st, s, lease.address if lease else st.address, None, "")

    def _record(self, status: str, key: str, st: RadiusSession, s: Session | None,
                address: int, usage: Usage | None, cause: str) -> None:
        """Queue one Accounting-Request of session ``key`` (``s``: None when it ended while
        the agent was away; its identity then comes from the Start it queued)."""
        now = self.wall()
        cls_name = s.subscriber_class if s is not None else st.subscriber_class
        auth = self._auth(self._class(cls_name))
        identity = s.identity if s is not None else (
            Identity(st.identity["mac"], circuit_id=st.identity.get("circuit_id") or None,
                     remote_id=st.identity.get("remote_id") or None)
            if st.identity.get("mac") else None)
        if auth is None or identity is None:
            self.metrics.radius_acct_dropped.labels(status, "no_class").inc()
            log.warning("RADIUS accounting: session %s (Acct-Session-Id %s): its class %s has "
                        "no RADIUS servers now; its %s is not sent", key, st.acct_session_id,
                        cls_name or "?", status)
            return
        address = address or st.bound_address
        attrs = acct_attributes(
            status, acct_session_id=st.acct_session_id, user_name=st.user_name,
            identity=identity, auth=auth, node=self.config.node_name, address=address,
            classes=st.classes, event_time=now, session_time=now - st.started_at,
            usage=usage, cause=cause)
        st.subscriber_class = cls_name
        st.identity = {"mac": identity.mac, "circuit_id": identity.circuit_id or "",
                       "remote_id": identity.remote_id or ""}
        st.bound_address, st.last_accounting = address, now
        if usage is not None:
            st.last_usage = (usage.bytes_up, usage.packets_up, usage.bytes_down,
                             usage.packets_down)
        self._seq += 1
        r = AcctRecord(self._seq, status, cls_name, now, st.acct_session_id, attrs)
        self.metrics.child(self.metrics.radius_acct_queued, status).inc()
        what = overflow(len(self.queue), self.acct_limit, status, self._queued_interims)
        if what == "drop_new":
            self._dropped(r)
            return
        if what == "drop_oldest_interim":
            old = next(q for q in self.queue if q.status == INTERIM)
            self._forget(old)
            self._dropped(old)
        self.queue.append(r)
        self._queued_interims += r.status == INTERIM
        if self.store is not None:
            self.store.enqueue(r, key, st if status != STOP else None)
        self.metrics.radius_acct_queue_depth.set(len(self.queue))
        if self._wake is not None:
            self._wake.set()

    def _dropped(self, r: AcctRecord) -> None:
        self.metrics.radius_acct_dropped.labels(r.status, "overflow").inc()
        log.error("RADIUS accounting: the queue is full (%d records, --radius-acct-queue); "
                  "the %s of Acct-Session-Id %s is dropped (Interim-Updates go first)",
                  self.acct_limit, r.status, r.acct_session_id)

    def _interval(self, st: RadiusSession) -> float:
        if st.interim_interval:
            return float(st.interim_interval)
        auth = self._auth(self._class(st.subscriber_class))
        return float(parse_duration(auth.interim_interval)) if auth is not None else 0.0

    def _arm_interim(self, key: str, st: RadiusSession) -> None:
        s = self._bound.get(key)
        if s is not None:
            st.subscriber_class = s.subscriber_class
        every = self._interval(st)
        if every <= 0 or key in self._interims:
            return
        delay = max(1.0, every - (self.wall() - st.last_accounting)) \
            if st.last_accounting else every
        self._interims[key] = asyncio.get_running_loop().call_later(
            min(delay, every), self._interim, key, st.acct_session_id)

    def _interim(self, key: str, acct_session_id: str) -> None:
        self._interims.pop(key, None)
        st, s = self.sessions.get(key), self._bound.get(key)
        if st is None or s is None or s.lease is None or st.acct_session_id != acct_session_id:
            return
        self._record(INTERIM, key, st, s, s.lease.address, self._usage(st, s.lease.address), "")
        self._arm_interim(key, st)

    def _start_sender(self) -> None:
        if self._sender is None:
            self._wake = asyncio.Event()
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        """Send the queue (``_send_queue``); a failure of its own is logged, and it goes on
        after a pause: the queue must never stall."""
        while True:
            try:
                await self._send_queue()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("RADIUS accounting: the sender failed; it goes on in %g s",
                              ACCT_RETRY_MAX)
                await asyncio.sleep(ACCT_RETRY_MAX)

    async def _send_queue(self) -> None:
        """Send the queue, oldest first: up to ``ACCT_WINDOW`` records in flight, never two
        of one session (a session's records reach the server in order). A record is sent
        again (to each live server in turn) until a server acknowledges it. When one gets no
        acknowledgement, the sender waits for those in flight, pauses (1 s, doubling to
        10 s), and goes on one record at a time until one is acknowledged: an outage costs
        one request per pause, and the queue drains in order when a server returns."""
        assert self._wake is not None
        retry, window = ACCT_RETRY_MIN, 1
        while True:
            self._wake.clear()
            if self._failed and not self._flying:
                self._failed, window = False, 1
                await asyncio.sleep(retry)
                retry = min(retry * 2, ACCT_RETRY_MAX)
                continue
            if self._acked:
                self._acked = False
                retry, window = ACCT_RETRY_MIN, ACCT_WINDOW
            if not self._failed:
                self._fill(window)
            await self._wake.wait()

    def _fill(self, window: int) -> None:
        """Start sending the oldest records that may go now."""
        busy: set[str] = set()  # sessions with an older record in flight or waiting
        orphans: list[AcctRecord] = []
        looked = 0
        for r in self.queue:
            if len(self._flying) >= window or looked >= 4 * ACCT_WINDOW:
                break
            looked += 1
            if r.seq in self._flying or r.acct_session_id in busy:
                busy.add(r.acct_session_id)
                continue
            busy.add(r.acct_session_id)
            servers = self._acct.get(r.subscriber_class)
            if servers is None:  # no such class of auth: radius any more
                orphans.append(r)
                continue
            self._flying[r.seq] = asyncio.get_running_loop().create_task(
                self._send_one(r, servers))
        for r in orphans:
            self._forget(r)
            self.metrics.radius_acct_dropped.labels(r.status, "no_class").inc()
            log.warning("RADIUS accounting: class %s has no RADIUS servers any more; the "
                        "%s of Acct-Session-Id %s is dropped", r.subscriber_class, r.status,
                        r.acct_session_id)

    async def _send_one(self, r: AcctRecord, servers: list[tuple[Server, bytes]]) -> None:
        try:
            answer = await self.client.accounting_request(
                servers, lambda nas_ip: self._wire(r, nas_ip))
        except (ValueError, TypeError) as e:  # cannot be encoded: never will be
            self._forget(r)
            self.metrics.radius_acct_dropped.labels(r.status, "invalid").inc()
            log.error("RADIUS accounting: the %s of Acct-Session-Id %s cannot be encoded, "
                      "dropped: %s", r.status, r.acct_session_id, e)
            return
        except Exception:  # a failure of our own: kept, and tried again after a pause
            log.exception("RADIUS accounting: sending the %s of Acct-Session-Id %s failed",
                          r.status, r.acct_session_id)
            self._failed = True
        else:
            self._acknowledged(r, answer)
        finally:
            self._flying.pop(r.seq, None)
            if self._wake is not None:
                self._wake.set()

    def _acknowledged(self, r: AcctRecord, answer: Answer) -> None:
        """A record's request ended: acknowledged (forgotten), or by no server (an outage)."""
        if answer.reply is None:
            self._failed = True
            if not self._outage_logged:
                self._outage_logged = True
                log.warning("RADIUS accounting: no server of class %s acknowledges (%s); "
                            "%d records queued, sent again in order when one answers",
                            r.subscriber_class, ", ".join(answer.tried) or "none usable",
                            len(self.queue))
            return
        if self._outage_logged:
            self._outage_logged = False
            log.info("RADIUS accounting: %s acknowledges again; %d records queued",
                     answer.server, len(self.queue))
        self._acked = True
        self._forget(r)

    def _forget(self, r: AcctRecord) -> None:
        with contextlib.suppress(ValueError):  # dropped by an overflow meanwhile
            if self.queue and self.queue[0] is r:
                self.queue.popleft()
            else:
                self.queue.remove(r)
            self._queued_interims -= r.status == INTERIM
            if self.store is not None:
                self.store.dequeue(r.seq)
        self.metrics.radius_acct_queue_depth.set(len(self.queue))

    def _wire(self, r: AcctRecord, nas_ip: str) -> list[tuple[str, object]]:
        """The record as sent now: NAS-IP-Address towards this server, and how long it
        waited (Acct-Delay-Time)."""
        attrs: list[tuple[str, object]] = list(r.attributes)
        at = next(i for i, (k, _) in enumerate(attrs) if k == "NAS-Identifier") + 1
        attrs.insert(at, ("NAS-IP-Address", nas_ip))
        attrs.append(("Acct-Delay-Time", delay_time(r.event_time, self.wall())))
        return attrs

    def status_of(self, key: str) -> dict[str, object]:
        """A session's Subscriber status fields of RADIUS: how it was authorised, the
        attributes of the Accept in effect, its Acct-Session-Id and the time of its last
        accounting record."""
        st = self.sessions.get(key)
        if st is None:
            return {}
        out: dict[str, object] = {
            "authState": "fallback" if st.fallback else "authorised",
            "userName": st.user_name, "authorisedAt": rfc3339(st.authorised_at),
            "acctSessionId": st.acct_session_id,
            "interimInterval": int(self._interval(st))}
        if st.server:
            out["server"] = st.server
        if st.address:
            out["framedIpAddress"] = str(IPv4Address(st.address))
        if st.pool:
            out["framedPool"] = st.pool
        if st.filter_id:
            out["filterId"] = st.filter_id
        if st.rates is not None:
            out["download"], out["upload"] = st.rates.down, st.rates.up
        if st.session_timeout:
            out["sessionTimeout"] = st.session_timeout
            out["sessionEndsAt"] = rfc3339(st.authorised_at + st.session_timeout)
        if st.idle_timeout:
            out["idleTimeout"] = st.idle_timeout
        if st.last_accounting:
            out["lastAccounting"] = rfc3339(st.last_accounting)
        return {"radius": out}

    # --- status -----------------------------------------------------------------------------

    def status(self) -> list[RadiusServerStatus]:
        now = self.clock()
        return [RadiusServerStatus(server=s.key, up=s.alive(now),
                                   timeouts_in_row=s.timeouts_in_row,
                                   last_error=s.last_error[:1024])
                for s in sorted(self.client.servers.values(), key=lambda s: s.key)]

    @property
    def problem(self) -> str:
        """For the BNGNode's Degraded condition: dead servers, unreadable secrets, a
        fallback in the last FALLBACK_SHOWN seconds. Empty when RADIUS is healthy."""
        now = self.clock()
        dead = [s.key for s in self.client.servers.values() if not s.alive(now)]
        bad = [v for v in self._secrets.values() if isinstance(v, str)]
        parts = []
        if dead:
            parts.append(f"RADIUS servers dead: {', '.join(sorted(dead))}")
        if bad:
            parts.append(f"RADIUS secret unreadable: {bad[0]}")
        if self._listen_error:
            parts.append(self._listen_error)
        if now - self.last_fallback_at < FALLBACK_SHOWN:
            parts.append(f"RADIUS fallback ({self.fallbacks} sessions so far), the last "
                         f"{now - self.last_fallback_at:.0f} s ago: {self.last_fallback}")
        return "; ".join(parts)


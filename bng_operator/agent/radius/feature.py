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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyrad.packet import AccessAccept

from bng_operator.agent.config import ClassConfig, NodeConfig, ShapingRates
from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.radius.attributes import (
    Authorisation,
    MissingField,
    Refusal,
    read_accept,
    request_attributes,
)
from bng_operator.agent.radius.client import Answer, RadiusClient, Server
from bng_operator.agent.radius.secrets import SecretError, Secrets
from bng_operator.agent.radius.store import RadiusSession, RadiusStore, new_acct_session_id
from bng_operator.agent.sessions.authorise import Verdict
from bng_operator.agent.sessions.session import Change, Grant, Session
from bng_operator.api.bngnode import RadiusServerStatus
from bng_operator.api.common import parse_duration
from bng_operator.api.radius import RadiusAuth, SecretRef
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent.radius")
NAME = "radius"
PRUNE_EVERY = 60.0  # seconds between sweeps of ended hold-downs
FALLBACK_LOG_EVERY = 10.0  # a fallback is logged at most this often per class (all counted)
FALLBACK_SHOWN = 300.0  # seconds a fallback keeps the BNGNode Degraded


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

    def __post_init__(self) -> None:
        self.client = RadiusClient(self.metrics, self.clock)

    # --- start, reload, stop ---------------------------------------------------------------

    @property
    def wanted(self) -> bool:
        return any(self._auth(c) is not None for c in self.config.classes)

    def start(self) -> None:
        """Open the state store (blocking: before serving) and read the secrets."""
        self.store = RadiusStore(self.state_path)
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
        self._secrets = out
        self.changed()

    def reconfigure(self, config: NodeConfig) -> None:
        """A reload: the classes' servers as they are now (their secrets are read again by
        ``refresh_secrets``, which the agent runs next)."""
        self.config = config
        self._servers()

    async def refresh_secrets(self) -> None:
        """``read_secrets`` off the loop (a Kubernetes Secret is an API call)."""
        await asyncio.get_running_loop().run_in_executor(None, self.read_secrets)
        self._servers()

    def _servers(self) -> list[tuple[ClassConfig, list[tuple[Server, bytes]]]]:
        out = []
        keep: set[str] = set()
        for c in self.config.classes:
            auth = self._auth(c)
            if auth is None:
                continue
            servers = []
            for srv in auth.servers:
                s = self.client.server(srv.address, srv.auth_port,
                                       float(parse_duration(srv.timeout)), srv.retries,
                                       auth.dead_after, float(parse_duration(auth.dead_time)))
                keep.add(s.key)
                secret = self._secrets.get(srv.secret)
                if isinstance(secret, bytes):
                    servers.append((s, secret))
                else:
                    s.last_error = secret or "secret not read yet"
            out.append((c, servers))
        self.client.forget(keep)
        return out

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self.client.close()
        if self.store is not None:
            self.store.close()

    def restore(self, sessions: dict[str, Session], bound: Callable[[str], Lease | None],
                ) -> None:
        """After a restart: the sessions the lease store restored get back what RADIUS
        granted them (their Acct-Session-Id, address, pool and rates); state of sessions
        that ended meanwhile is dropped."""
        assert self.store is not None
        kept = 0
        for key, st in self.store.load().items():
            s, lease = sessions.get(key), bound(key)
            if s is None or lease is None:
                self.store.delete(key)
                continue
            self._attach(s, st)
            if st.rates is not None:
                self.override(lease, st.rates)
            self._arm(key, st)
            kept += 1
        if kept:
            log.info("RADIUS: %d sessions' state restored", kept)

    # --- the authoriser ---------------------------------------------------------------------

    def _auth(self, c: ClassConfig | None) -> RadiusAuth | None:
        if c is None or c.spec.auth != "radius":
            return None
        return c.spec.radius

    def _class(self, name: str) -> ClassConfig | None:
        return next((c for c in self.config.classes if c.name == name), None)

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
            user = request_attributes(s.identity, auth, self.config.node_name, "0.0.0.0")[0]
        except MissingField as e:
            decided.labels(cls.name, "error").inc()
            return Verdict(False, f"class {cls.name}: {e}")
        servers = next((sv for c, sv in self._servers() if c.name == cls.name), [])
        try:
            answer = await self.client.access_request(
                servers, lambda nas_ip: request_attributes(s.identity, auth,
                                                           self.config.node_name, nas_ip))
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
        # pyrad's keys() names the attributes its dictionary knows (iterating gives codes)
        names = list(answer.reply.keys())
        attrs = {k: list(answer.reply[k]) for k in names if isinstance(k, str)}
        unknown = [k for k in names if not isinstance(k, str)]
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
        st = self._accepted(s, str(user[1]), answer, result, attrs)
        decided.labels(cls.name, "accept").inc()
        return Verdict(True, grant=Grant(st.address, st.pool) if st.address or st.pool
                       else None)

    def _accepted(self, s: Session, user: str, answer: Answer, a: Authorisation,
                  attrs: dict[str, list[object]]) -> RadiusSession:
        g = a.grant
        st = RadiusSession(
            acct_session_id=new_acct_session_id(), user_name=user, server=answer.server,
            address=g.address if g else 0, pool=g.pool if g else "", rates=a.rates,
            filter_id=str(attrs.get("Filter-Id", [""])[0]), session_timeout=a.session_timeout,
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

    def on_bound(self, s: Session) -> None:
        st = self.sessions.get(s.key)
        if st is None or s.lease is None:
            return
        if self.store is not None:
            self.store.put(s.key, st)
        if st.rates is not None:
            self.override(s.lease, st.rates)
        self._arm(s.key, st)

    def on_changed(self, s: Session, what: Change, before: Lease | None) -> None:
        st = self.sessions.get(s.key)
        if st is not None and st.rates is not None and s.lease is not None \
                and what == Change.ADDRESS:
            self.override(s.lease, st.rates)  # shaping forgot the old address's

    def on_ended(self, s: Session) -> None:
        st = self.sessions.pop(s.key, None)
        timer = self._timers.pop(s.key, None)
        if timer is not None:
            timer.cancel()
        if st is not None and self.store is not None:
            self.store.delete(s.key)

    # --- Session-Timeout --------------------------------------------------------------------

    def _arm(self, key: str, st: RadiusSession) -> None:
        """A session with a Session-Timeout ends that long after it was authorised (a
        restart keeps the time: it is counted from ``authorised_at``, wall-clock)."""
        if not st.session_timeout or key in self._timers:
            return
        delay = max(0.0, st.authorised_at + st.session_timeout - time.time())
        self._timers[key] = asyncio.get_running_loop().call_later(
            delay, self._session_timeout, key, st.acct_session_id)

    def _session_timeout(self, key: str, acct_session_id: str) -> None:
        self._timers.pop(key, None)
        st = self.sessions.get(key)
        if st is None or st.acct_session_id != acct_session_id:
            return
        if self.end(key):
            self.metrics.radius_session_timeouts.inc()
            log.info("RADIUS: session %s (Acct-Session-Id %s) reached its Session-Timeout of "
                     "%d s and ended; its next request is authorised anew", key,
                     acct_session_id, st.session_timeout)

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
        if now - self.last_fallback_at < FALLBACK_SHOWN:
            parts.append(f"RADIUS fallback ({self.fallbacks} sessions so far), the last "
                         f"{now - self.last_fallback_at:.0f} s ago: {self.last_fallback}")
        return "; ".join(parts)

"""``bng operator``: the kopf program. Handlers are thin: any change to an input schedules one
reconcile round (``reconcile.plan``, pure); ``kube.ClusterIO`` reads the state and writes the
plan. Rounds are level-triggered and coalesced, so a burst of changes costs one round."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bng_operator import http
from bng_operator.api import GROUP, RESOURCES, VERSION, Subscriber
from bng_operator.kubeclient import api_client
from bng_operator.operator.kube import ClusterIO
from bng_operator.operator.reconcile import FINALIZER, Settings, plan

log = logging.getLogger("bng.operator")


@dataclass
class OperatorSettings:
    reconcile: Settings
    kubeconfig: str | None = None
    peering: str = "bng"
    priority: int | None = None  # None: random, so that one replica of many is active
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9642
    debounce: float = 0.05


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.rounds = Counter("bng_operator_reconcile_rounds_total", "Reconcile rounds",
                              ["result"], registry=self.registry)
        self.writes = Counter("bng_operator_writes_total", "Apiserver writes by kind and verb",
                              ["kind", "verb"], registry=self.registry)
        self.duration = Histogram("bng_operator_reconcile_seconds", "Duration of one round",
                                  registry=self.registry)


class Reconciler:
    """Runs rounds one at a time whenever ``poke`` was called since the last one started."""

    def __init__(self, settings: OperatorSettings, io: ClusterIO, metrics: Metrics) -> None:
        self.settings, self.io, self.metrics = settings, io, metrics
        self.dirty = asyncio.Event()
        self.releasable: frozenset[str] = frozenset()
        self.releasable_nat: frozenset[str] = frozenset()
        self.rounds = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def poke(self) -> None:
        self.dirty.set()

    async def run(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        while True:
            await self.dirty.wait()
            await asyncio.sleep(self.settings.debounce)  # coalesce a burst of events
            self.dirty.clear()
            t0 = time.perf_counter()
            try:
                await loop.run_in_executor(None, self._round)
            except Exception as e:
                self.metrics.rounds.labels("error").inc()
                log.error("reconcile failed, retrying in 2 s: %s", e)
                loop.call_later(2, self.poke)
                continue
            self.metrics.rounds.labels("ok").inc()
            self.metrics.duration.observe(time.perf_counter() - t0)

    def _round(self) -> None:
        now = datetime.now(UTC)
        state = self.io.state()
        p = plan(state, self.settings.reconcile, now)
        writes = self.io.apply(p, state)
        self.releasable, self.releasable_nat = p.releasable, p.releasable_nat
        self.rounds += 1
        for (kind, verb), n in writes.items():
            self.metrics.writes.labels(kind, verb).inc(n)
        if writes:
            log.info("reconciled: %s", ", ".join(f"{v} {k} x{n}" for (k, v), n in
                                                 sorted(writes.items())))
        # Come back when a departed node's block or public address is due to return to its
        # pool, or an address handed over between nodes is past its hold. (One past its
        # hold that waits for its node's agent is looked at again when the agent reports.)
        due = [b.release_after for st in p.pool_status.values() for b in st.blocks
               if b.release_after is not None]
        due += [n.release_after for st in p.nat_status.values() for n in st.nodes
                if n.release_after is not None and n.release_after > now]
        if due and self.loop is not None:
            delay = max(1.0, (min(due) - now).total_seconds() + 1)
            self.loop.call_soon_threadsafe(self.loop.call_later, delay, self.poke)


def register(registry: kopf.OperatorRegistry, ours: OperatorSettings, metrics: Metrics,
             state: dict[str, Any]) -> None:
    """The handlers: each only pokes the reconciler; deletion of an IPPool waits for it."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        rec = Reconciler(ours, ClusterIO(api_client(ours.kubeconfig)), metrics)
        state["reconciler"] = rec
        state["task"] = asyncio.create_task(rec.run())
        state["http"] = await http.serve(ours.metrics_host, ours.metrics_port,
                                         lambda: generate_latest(metrics.registry),
                                         lambda: (True, "ready"))
        log.info("operator starting: peering %s, priority %s, nodes labelled %s",
                 ours.peering, ours.priority, _label(ours))

    @kopf.on.login(registry=registry)
    def login(**kw: Any) -> Any:
        if ours.kubeconfig:
            return kopf.login_with_kubeconfig(**kw)  # reads $KUBECONFIG, set by run()
        info = kopf.login_with_service_account(**kw)
        server = in_cluster_server(os.environ)
        if info is None or server is None:
            return info
        return dataclasses.replace(info, server=server)

    def poke(**_: Any) -> None:
        rec = state.get("reconciler")
        if rec is not None:
            rec.poke()

    kopf.on.event("", "v1", "nodes", registry=registry)(poke)
    for cls in RESOURCES:
        if cls is not Subscriber:
            kopf.on.event(GROUP, VERSION, cls.info.plural, registry=registry)(poke)

    async def released(name: str, which: str) -> bool:
        """Whether a fresh round (one that sees the deletion timestamp) lets ``name`` go:
        ``which`` is the plan's set of deleted objects whose finalizer may be removed."""
        rec: Reconciler = state["reconciler"]
        rounds = rec.rounds
        rec.poke()
        for _i in range(100):
            if rec.rounds > rounds:
                break
            await asyncio.sleep(0.1)
        return name in getattr(rec, which)

    @kopf.on.delete(GROUP, VERSION, "ippools", registry=registry)
    async def pool_deleted(name: str, **_: Any) -> None:
        if not await released(name, "releasable"):
            raise kopf.TemporaryError(f"IPPool {name} still has leases on nodes; waiting for "
                                      "them to end (see its Ready condition)", delay=10)

    @kopf.on.delete(GROUP, VERSION, "natpools", registry=registry)
    async def nat_pool_deleted(name: str, **_: Any) -> None:
        if not await released(name, "releasable_nat"):
            raise kopf.TemporaryError(f"NATPool {name}: nodes may still translate to its "
                                      "addresses; waiting for them to release its port blocks "
                                      "(see its Ready condition)", delay=10)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if "task" in state:
            state["task"].cancel()
        if "http" in state:
            state["http"].close()


def _label(s: OperatorSettings) -> str:
    k, v = s.reconcile.node_label
    return f"{k}={v}" if v is not None else k


def run(settings: OperatorSettings) -> int:
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per event otherwise
    if settings.kubeconfig:  # kopf's own login reads it from here
        os.environ["KUBECONFIG"] = settings.kubeconfig
    if settings.priority is None:
        # kopf freezes every replica when two share a priority; a random one makes exactly
        # one replica (the highest) active, and another takes over when it is gone.
        settings.priority = random.randint(1, 1_000_000)
    registry = kopf.OperatorRegistry()
    register(registry, settings, Metrics(), {})
    asyncio.run(kopf.operator(registry=registry, clusterwide=True,
                              peering_name=settings.peering, priority=settings.priority))
    return 0


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """The apiserver a pod reaches, from the variables the kubelet gives every container (as
    client-go's in-cluster config reads them), or None outside a pod. kopf's own login names
    https://kubernetes.default.svc, which needs the cluster's DNS: an operator on a cluster
    whose DNS is down, or not yet up, would never start."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

"""What the agent writes to the apiserver: its BNGNode's status and the Subscriber objects.

Every request goes through one worker thread. Updates are coalesced per object (only the
latest state of a subscriber is written) and every request, writes and list pages alike, is
capped at ``rate`` per second, so the apiserver's load follows subscriber state changes,
never DHCP traffic or the size of the site. Two queues: events (bound, changed, ended) are
written first; the background (a resync, an accounting round) gets what the rate leaves, and
an accounting round starts only once the last one is written, so its interval stretches
with the number of subscribers instead of a backlog growing. While the apiserver is
unreachable the updates wait, at most one per subscriber and never more than
``max_pending``; past that the oldest are dropped and counted, and a full resync follows
when the apiserver is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bng_operator.agent.dhcp.leases import Lease
from bng_operator.agent.report.subscribers import (
    Event,
    expired_past_ttl,
    new_object,
    own_reports,
    status,
)
from bng_operator.api import GROUP, VERSION
from bng_operator.api.bngnode import BNGNodeStatus
from bng_operator.metrics import AgentMetrics

log = logging.getLogger("bng.agent.kube")
TIMEOUT = 5.0  # per request: an unreachable apiserver must not hold the writer long
LIST_PAGE = 500  # Subscriber objects per list request


@dataclass(frozen=True)
class ReportSettings:
    rate: float = 20.0  # writes per second, at most
    ttl: float = 86400.0  # released and expired Subscriber objects are deleted after this
    accounting_interval: float = 300.0  # bound subscribers' lease ends are refreshed this often
    max_pending: int = 100_000
    cleanup_interval: float = 60.0


@dataclass(frozen=True)
class _Update:
    lease: Lease  # a copy, as it was when the update was made
    event: Event
    status: dict[str, Any]
    refresh: bool  # the accounting interval: write if the lease end moved, too


def _summary(st: dict[str, Any]) -> tuple[Any, ...]:
    return (st.get("state"), st.get("address"), st.get("node"), st.get("class"), st.get("qos"))


def _accounting(st: dict[str, Any]) -> tuple[Any, ...]:
    """What an accounting refresh brings: the lease end (renewals) and the counters."""
    return (st.get("leaseExpiry"), st.get("counters"))


def _unchanged(known: tuple[tuple[Any, ...], tuple[Any, ...]] | None, u: _Update) -> bool:
    """Whether the apiserver already says what ``u`` would: the state (and, for an
    accounting refresh, the lease end and counters) it has is the update's."""
    return known is not None and known[0] == _summary(u.status) and \
        (not u.refresh or known[1] == _accounting(u.status))


def _unreachable(e: Exception) -> bool:
    status = getattr(e, "status", None)
    return status is None or status == 0 or status >= 500 or status == 429


class KubeReporter:
    def __init__(self, api: Any, node: str, namespace: str, settings: ReportSettings,
                 metrics: AgentMetrics,
                 extra: Callable[[Lease], dict[str, Any]] = lambda lease: {}) -> None:
        """``extra``: a bound session's status fields of other features (QoS, counters),
        read by the writer when it writes, never when an update is queued."""
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.node, self.namespace, self.settings, self.metrics = node, namespace, settings, metrics
        self.extra = extra
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: OrderedDict[str, _Update] = OrderedDict()  # events
        self._background: OrderedDict[str, _Update] = OrderedDict()  # resyncs, accounting
        self._node_status: dict[str, Any] | None = None
        self._written_status: dict[str, Any] | None = None
        self._known: set[str] = set()
        # objects found to exist though not this node's reports (a reservation, a subscriber
        # that moved here): the cleanup's list, of this node's own, does not show them
        self._foreign: set[str] = set()
        # name -> ((state, address, node, class), lease end) as the apiserver has it: an
        # update that would change none of these is not written
        self._existing: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
        self._tokens = settings.rate
        self._last_refill = time.monotonic()
        self._next_cleanup = 0.0
        # the cleanup's list under way: the items so far and the continue token
        self._listing: tuple[list[dict[str, Any]], str] | None = None
        self.need_resync = True  # read by the agent: hand over every lease again
        self.reachable = False
        self._thread = threading.Thread(target=self._run, name="bng-kube-writer", daemon=True)

    # --- called from the event loop ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what can be flushed within ``timeout``, then stop."""
        deadline = time.monotonic() + timeout
        while self.pending() and self.reachable and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=TIMEOUT + 1)

    def subscriber(self, name: str, event: Event, lease: Lease, refresh: bool = False,
                   background: bool = False) -> None:
        """Queue the object's new state: an event, or (``background``) a resync or an
        accounting refresh, which an event queued for the same object makes moot."""
        snap = replace(lease)
        u = _Update(snap, event, status(snap, event, self.node, time.time()), refresh)
        with self._lock:
            if background:
                if name in self._pending:
                    return
                queue = self._background
            else:
                self._background.pop(name, None)
                queue = self._pending
            queue.pop(name, None)  # coalesce: the newest state goes to the back
            queue[name] = u
            while len(self._pending) + len(self._background) > self.settings.max_pending:
                (self._background or self._pending).popitem(last=False)
                self.metrics.kube_dropped.inc()
                self.need_resync = True
        self._count_pending()
        self._wake.set()

    def background_idle(self) -> bool:
        """Whether the last resync or accounting round is written (the next may start)."""
        with self._lock:
            return not self._background

    def _count_pending(self) -> None:
        self.metrics.kube_pending.labels("events").set(len(self._pending))
        self.metrics.kube_pending.labels("background").set(len(self._background))

    def node_status(self, st: BNGNodeStatus) -> None:
        body = st.model_dump(mode="json", by_alias=True, exclude_none=True)
        with self._lock:
            self._node_status = body
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._background) + \
                (self._node_status != self._written_status)

    # --- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                did = self._write_one()
            except Exception as e:
                if not _unreachable(e):
                    log.error("apiserver write failed (dropped): %s", e)
                    continue
                if self.reachable or backoff == 0.5:
                    log.warning("apiserver unreachable; %d updates wait: %s", self.pending(),
                                str(e).splitlines()[0][:200])
                self._set_reachable(False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not self.reachable:
                log.info("apiserver reachable again; %d updates to write", self.pending())
                self._set_reachable(True)
            backoff = 0.5
            if not did:
                self._wake.wait(1.0)
                self._wake.clear()

    def _set_reachable(self, ok: bool) -> None:
        self.reachable = ok
        self.metrics.kube_reachable.set(1 if ok else 0)

    def _take_token(self, verb: str, n: int = 1) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(self.settings.rate,
                               self._tokens + (now - self._last_refill) * self.settings.rate)
            self._last_refill = now
            if self._tokens >= n or self._stop.is_set():
                self._tokens -= n
                self.metrics.kube_requests.labels(verb).inc(n)
                return
            time.sleep((n - self._tokens) / self.settings.rate)

    def _write_one(self) -> bool:
        """Write the node's status if it changed, else the oldest event, else the oldest
        background update."""
        with self._lock:
            st = self._node_status if self._node_status != self._written_status else None
        if st is not None:
            self._take_token("patch")
            self.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, "bngnodes", self.node, {"status": st}, _request_timeout=TIMEOUT)
            self._written_status = st
            self.metrics.kube_writes.labels("BNGNode", "status").inc()
            return True
        with self._lock:
            events = bool(self._pending)
        if not events and (self._listing is not None or self._next_cleanup <= time.monotonic()):
            self._list_page()
            return True
        with self._lock:
            queue = self._pending or self._background
            if not queue:
                return False
            name, u = next(iter(queue.items()))
        self._write_subscriber(name, u)
        with self._lock:
            if queue.get(name) is u:  # not superseded while it was being written
                del queue[name]
        self._count_pending()
        return True

    def _write_subscriber(self, name: str, u: _Update) -> None:
        from kubernetes.client.exceptions import ApiException

        ended = u.event != "allocate"
        if not ended:
            u = replace(u, status=u.status | self.extra(u.lease))
        if _unchanged(self._existing.get(name), u):
            return
        if name not in self._known and name not in self._foreign:
            if ended:
                return  # never reported as bound: nothing to say about it ending
            self._take_token("create")
            try:
                self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "subscribers",
                    new_object(name, u.lease, self.node, self.namespace), _request_timeout=TIMEOUT)
                self.metrics.kube_writes.labels("Subscriber", "create").inc()
                self._known.add(name)
            except ApiException as e:
                if e.status != 409:  # 409: it exists already (made elsewhere); update it
                    raise
                self._foreign.add(name)
        # An end is written only if the object still says this node: a subscriber that moved
        # on to another node must not be marked gone by the node it left.
        body: Any = ([{"op": "test", "path": "/status/node", "value": self.node},
                      {"op": "replace", "path": "/status", "value": u.status}] if ended
                     else {"status": u.status})
        self._take_token("patch")
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, "subscribers", name, body, _request_timeout=TIMEOUT)
            self.metrics.kube_writes.labels("Subscriber", "status").inc()
            self._existing[name] = (_summary(u.status), _accounting(u.status))
        except ApiException as e:
            if e.status == 404:  # deleted by someone: made again on its next bind
                self._known.discard(name)
                self._foreign.discard(name)
            elif e.status != 422:  # 422: the test failed, it is another node's now
                raise

    def _list_page(self) -> None:
        """One page of the cleanup's list of this node's Subscriber reports (by label: not
        the whole site's); with the last, the cleanup itself. A page at a time, so events
        go between pages; the next list comes when it costs at most a tenth of the rate."""
        from kubernetes.client.exceptions import ApiException

        items, token = self._listing or ([], "")
        self._take_token("list")
        try:
            page = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "subscribers", _request_timeout=TIMEOUT,
                label_selector=own_reports(self.node), limit=LIST_PAGE,
                **({"_continue": token} if token else {}))
        except ApiException as e:
            if e.status == 410:  # the continue token expired (events held the list up)
                self._listing = None
                return
            raise
        items += page["items"]
        token = (page.get("metadata") or {}).get("continue") or ""
        if token:
            self._listing = (items, token)
            return
        self._listing = None
        pages = len(items) // LIST_PAGE + 1
        self._next_cleanup = time.monotonic() + max(self.settings.cleanup_interval,
                                                    10 * pages / self.settings.rate)
        self._sync_objects(items)

    def _sync_objects(self, items: list[dict[str, Any]]) -> None:
        """Learn which of this node's Subscriber objects exist (``items``), and delete those
        that outlived the TTL."""
        self._known = {i["metadata"]["name"] for i in items}
        self._existing = {i["metadata"]["name"]: (_summary(st := i.get("status") or {}),
                                                  _accounting(st)) for i in items}
        now = time.time()
        for obj in items:
            if expired_past_ttl(obj, self.node, self.settings.ttl, now):
                name = obj["metadata"]["name"]
                with self._lock:
                    if name in self._pending:
                        continue
                self._take_token("delete")
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "subscribers", name, _request_timeout=TIMEOUT)
                self._known.discard(name)
                self.metrics.kube_writes.labels("Subscriber", "delete").inc()
                log.info("deleted Subscriber %s: gone for longer than the TTL", name)


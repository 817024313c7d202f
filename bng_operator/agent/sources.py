"""Where an agent's objects come from: a standalone YAML file, or the apiserver.

Both return the same objects, and ``load_node_config`` turns them into the same NodeConfig.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from bng_operator.agent.config import ConfigError, NodeConfig, node_config
from bng_operator.api import (
    GROUP,
    VERSION,
    BNGNode,
    IPPool,
    NATPool,
    QoSPolicy,
    Resource,
    Subscriber,
    SubscriberClass,
)
from bng_operator.api.common import DEFAULT_NAMESPACE, USERS_SUBSCRIBERS
from bng_operator.api.documents import load, yaml_files
from bng_operator.kubeclient import api_client
from bng_operator.policy.render import RenderError, render_node


class Source(Protocol):
    def objects(self) -> list[Resource]: ...
    def describe(self) -> str: ...


class FileSource:
    """Standalone mode: multi-document YAML files (or directories of them)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def objects(self) -> list[Resource]:
        missing = [str(p) for p in self.paths if not p.exists()]
        if missing:
            raise ConfigError(f"config not found: {', '.join(missing)}")
        objects, errors = load(yaml_files(self.paths))
        if errors:
            raise ConfigError("invalid config:\n  " + "\n  ".join(str(e) for e in errors))
        return objects

    def describe(self) -> str:
        return "file " + ", ".join(str(p) for p in self.paths)


log = logging.getLogger("bng.agent.source")
TIMEOUT = 5.0
POLICY_KINDS = (IPPool, SubscriberClass, QoSPolicy, NATPool)


def _reservation(item: dict[str, Any]) -> Any:
    spec = item.get("spec") or {}
    return spec if spec.get("address") else None


class KubeSource:
    """Kubernetes mode: the node's BNGNode, the reservations (Subscribers with an address)
    and, for a BNGNode that does not embed its policy, the policy objects.

    The last objects read are kept in ``cache``: an agent that starts while the apiserver
    is unreachable serves from them. ``watch`` calls back when anything the node's
    configuration is made of changes, and only then (not on status writes)."""

    def __init__(self, node: str, kubeconfig: str | None = None,
                 namespace: str = DEFAULT_NAMESPACE, cache: Path | None = None) -> None:
        from kubernetes import client

        self.api = api_client(kubeconfig)
        self.custom = client.CustomObjectsApi(self.api)
        self.node, self.namespace, self.kubeconfig, self.cache = node, namespace, kubeconfig, cache
        self.generation: int | None = None  # of the BNGNode last read
        self.embedded = True  # the BNGNode carries its policy (written by the operator)
        self.from_cache = False
        # The apiserver refused the agent's credentials on the last read (401/403): what it
        # said, for the log, the BNGNode condition and bng_kube_auth_refused; "" otherwise.
        self.refused = ""

    def _list(self, plural: str, namespaced: bool = False, **kw: Any) -> list[dict[str, Any]]:
        if namespaced:
            return list(self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, _request_timeout=TIMEOUT, **kw)["items"])
        return list(self.custom.list_cluster_custom_object(
            GROUP, VERSION, plural, _request_timeout=TIMEOUT)["items"])

    def hubble_peers(self) -> list[tuple[str, str]]:
        """(node, address) of every node whose agent published its Hubble API."""
        return sorted((o["metadata"]["name"], (o.get("status") or {}).get("hubble", ""))
                      for o in self._list("bngnodes")
                      if (o.get("status") or {}).get("hubble"))

    def _read(self) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        try:
            node = self.custom.get_cluster_custom_object(GROUP, VERSION, "bngnodes", self.node,
                                                         _request_timeout=TIMEOUT)
            items = [node]
        except ApiException as e:
            if e.status != 404:
                raise
            items = []  # load_node_config says which BNGNode is missing
        spec = items[0].get("spec", {}) if items else {}
        self.embedded = bool(spec.get("pools") or spec.get("classes"))
        if items and not self.embedded:
            for cls in POLICY_KINDS:
                items += self._list(cls.info.plural)
        items += [i for i in self._list("subscribers", namespaced=True,
                                        label_selector=USERS_SUBSCRIBERS) if _reservation(i)]
        for item in items:
            item.pop("status", None)  # the agent reads specs; status is ours to write
            item.setdefault("kind", "Subscriber")
        return items

    def objects(self) -> list[Resource]:
        try:
            items = self._read()
            self.from_cache, self.refused = False, ""
            if self.cache is not None and items:
                tmp = self.cache.with_suffix(".tmp")
                tmp.write_text(json.dumps(items))
                tmp.replace(self.cache)
        except Exception as e:
            status = getattr(e, "status", None)
            if status in (401, 403):  # not an outage: the agent's identity or RBAC is wrong
                self.refused = (f"the apiserver refused the agent's credentials ({status} "
                                f"{getattr(e, 'reason', '')}): check its ServiceAccount, "
                                "token and RBAC")
                why = self.refused
                log.error("%s", why)
            else:
                why = f"apiserver unreachable ({str(e).splitlines()[0][:200]})"
            if self.cache is None or not self.cache.exists():
                raise ConfigError(f"{why}, and no cached configuration") from e
            log.warning("%s; serving the configuration cached in %s", why, self.cache)
            out = self._cached()
            self.from_cache = True
            return out
        return self._resources(items)

    def _cached(self) -> list[Resource]:
        """The cached objects; a cache that cannot be read is set aside, with the reason."""
        assert self.cache is not None
        try:
            return self._resources(json.loads(self.cache.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            aside = self.cache.with_suffix(".corrupt")
            with contextlib.suppress(OSError):
                self.cache.replace(aside)
            log.warning("the cached configuration %s cannot be read (%s); set aside as %s",
                        self.cache, str(e).splitlines()[0][:200], aside)
            raise ConfigError(f"the apiserver cannot be read and the cached configuration "
                              f"was unreadable (set aside as {aside})") from e

    def _resources(self, items: list[dict[str, Any]]) -> list[Resource]:
        from bng_operator.api import BY_KIND

        out: list[Resource] = []
        for item in items:
            cls = BY_KIND[item["kind"]]
            obj = cls.model_validate(item)
            if isinstance(obj, BNGNode):
                self.generation = obj.metadata.generation
            out.append(obj)
        return out

    def describe(self) -> str:
        return f"apiserver ({self.kubeconfig or 'in-cluster'})"

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """Threads that call ``changed`` when the configuration may differ: the BNGNode's
        spec, a reservation, or (for a BNGNode without embedded policy, as read last) a
        policy object. After a lost watch they call it too: changes may have been missed."""
        watches: list[tuple[str, bool, dict[str, Any]]] = [
            ("bngnodes", False, {"field_selector": f"metadata.name={self.node}"}),
            # reservations are users' objects: the agents' own reports (every node's status
            # writes) are not watched
            ("subscribers", True, {"label_selector": USERS_SUBSCRIBERS})]
        if not self.embedded:
            watches += [(cls.info.plural, False, {}) for cls in POLICY_KINDS]
        for plural, namespaced, kw in watches:
            threading.Thread(target=self._watch, args=(plural, namespaced, kw, changed, stop),
                             name=f"bng-watch-{plural}", daemon=True).start()

    def _watch(self, plural: str, namespaced: bool, kw: dict[str, Any],
               changed: Callable[[], None], stop: threading.Event) -> None:
        from kubernetes import watch

        seen: dict[str, Any] = {}  # name -> what of it the configuration depends on (if any)

        def relevant(obj: dict[str, Any]) -> Any:
            return _reservation(obj) if plural == "subscribers" else obj.get("spec")

        args: tuple[Any, ...] = (GROUP, VERSION, self.namespace, plural) if namespaced else \
            (GROUP, VERSION, plural)
        fn = self.custom.list_namespaced_custom_object if namespaced else \
            self.custom.list_cluster_custom_object
        first = True
        while not stop.is_set():
            try:
                listed = fn(*args, _request_timeout=TIMEOUT, **kw)
                now = {i["metadata"]["name"]: v for i in listed["items"] if (v := relevant(i))}
                if not first and now != seen:
                    changed()
                seen, first = now, False
                rv = listed["metadata"]["resourceVersion"]
                for ev in watch.Watch().stream(fn, *args, resource_version=rv,
                                               timeout_seconds=60, _request_timeout=90, **kw):
                    if stop.is_set():
                        return
                    if ev["type"] == "ERROR":
                        break
                    obj = ev["object"]
                    name = obj.get("metadata", {}).get("name")
                    new = None if ev["type"] == "DELETED" else relevant(obj)
                    if seen.get(name) != new:
                        if new is None:
                            del seen[name]
                        else:
                            seen[name] = new
                        changed()
            except Exception as e:  # apiserver gone: retry; the re-list catches up
                log.debug("watch of %s lost: %s", plural, e)
                stop.wait(2.0)


class NodeMissing(ConfigError):
    """The source has no BNGNode of this node (yet: in Kubernetes mode the operator writes
    it once it sees the labelled node)."""


def load_node_config(source: Source, node: str) -> NodeConfig:
    objects = source.objects()
    nodes = {o.name: o for o in objects if isinstance(o, BNGNode)}
    if node not in nodes:
        have = ", ".join(sorted(nodes)) or "none"
        raise NodeMissing(f"no BNGNode named {node!r} in {source.describe()} (found: {have})")
    try:
        spec = render_node(nodes[node], objects)
    except RenderError as e:
        raise ConfigError(str(e)) from e
    return node_config(spec, [o for o in objects if isinstance(o, Subscriber)])

"""The operator's reads and writes: cluster state in, a plan's objects out. Compare first,
write only what differs, so a round with nothing new makes no apiserver writes."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from bng_operator.api import GROUP, VERSION, BNGNode, IPPool, NATPool, QoSPolicy, SubscriberClass
from bng_operator.api.common import MANAGED_BY
from bng_operator.api.resource import Resource
from bng_operator.operator.reconcile import ClusterState, Event, Plan
from bng_operator.policy.render import NodeInfo

log = logging.getLogger("bng.operator")

OPERATOR = "bng-operator"  # our MANAGED_BY value
EVENTS_NAMESPACE = "default"  # where Events about cluster-scoped objects go, as kubectl expects


# What one round wrote, by (kind, verb): for metrics and the log.
Writes = Counter[tuple[str, str]]


class ClusterIO:
    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def _list(self, cls: type[Resource]) -> list[Any]:
        items = self.custom.list_cluster_custom_object(GROUP, VERSION, cls.info.plural)["items"]
        out = []
        for item in items:
            try:
                out.append(cls.model_validate(item))
            except ValueError as e:  # the apiserver validated it; a newer schema might not
                log.error("%s %s cannot be read: %s", cls.info.kind,
                          item.get("metadata", {}).get("name"), e)
        return out

    def state(self) -> ClusterState:
        nodes = [NodeInfo(n.metadata.name, n.metadata.uid or "", n.metadata.labels or {},
                          n.metadata.annotations or {}) for n in self.core.list_node().items]
        return ClusterState(nodes=nodes, pools=self._list(IPPool),
                            classes=self._list(SubscriberClass), qos=self._list(QoSPolicy),
                            nat=self._list(NATPool), bngnodes=self._list(BNGNode))

    def apply(self, plan: Plan, state: ClusterState) -> Writes:
        w: Writes = Counter()
        uids = {n.name: n.uid for n in state.nodes}
        existing = {n.name: n for n in state.bngnodes}
        for name, spec in sorted(plan.specs.items()):
            body: dict[str, Any] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "BNGNode",
                    "metadata": {"name": name, "labels": {MANAGED_BY: OPERATOR},
                                 "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                                      "name": name, "uid": uids[name]}]},
                    "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True)}
            old = existing.get(name)
            if old is None:
                self.custom.create_cluster_custom_object(GROUP, VERSION, "bngnodes", body)
                w[("BNGNode", "create")] += 1
            elif old.spec != spec:
                body["metadata"]["resourceVersion"] = old.metadata.resource_version
                self.custom.replace_cluster_custom_object(GROUP, VERSION, "bngnodes", name, body)
                w[("BNGNode", "update")] += 1
        for name, old in existing.items():
            if old.metadata.labels.get(MANAGED_BY) == OPERATOR and name not in plan.specs:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, "bngnodes", name)
                w[("BNGNode", "delete")] += 1
        for kind, plural, objs, statuses in (
                ("IPPool", "ippools", state.pools, plan.pool_status),
                ("SubscriberClass", "subscriberclasses", state.classes, plan.class_status),
                ("NATPool", "natpools", state.nat, plan.nat_status)):
            for o in objs:
                new = statuses.get(o.name)
                if new is None or new == o.status:
                    continue
                self.custom.patch_cluster_custom_object_status(
                    GROUP, VERSION, plural, o.name,
                    {"status": new.model_dump(mode="json", by_alias=True, exclude_none=True)})
                w[(kind, "status")] += 1
        for e in plan.events:
            self._event(e, state)
            w[("Event", "create")] += 1
        return w

    def _event(self, e: Event, state: ClusterState) -> None:
        from kubernetes import client

        objs: list[Resource] = [*state.pools, *state.classes, *state.nat]
        uid = next((o.metadata.uid for o in objs if o.kind == e.kind and o.name == e.name), None)
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{e.name}."),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=e.kind, name=e.name, uid=uid),
            type=e.type, reason=e.reason, message=e.message[:1024],
            source=client.V1EventSource(component="bng-operator"),
            first_timestamp=now, last_timestamp=now, count=1)
        try:
            self.core.create_namespaced_event(EVENTS_NAMESPACE, body)
        except Exception as err:  # an Event is a courtesy: the condition already says it
            log.warning("could not post event %s on %s %s: %s", e.reason, e.kind, e.name, err)

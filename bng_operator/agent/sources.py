"""Where an agent's objects come from: a standalone YAML file, or the apiserver.

Both return the same objects, and ``load_node_config`` turns them into the same NodeConfig.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from bng_operator.api.common import DEFAULT_NAMESPACE
from bng_operator.api.documents import load, yaml_files
from bng_operator.operator.render import RenderError, render_node


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


class KubeSource:
    """Kubernetes mode: the node's BNGNode and the policy objects, read from the apiserver."""

    KINDS = (BNGNode, IPPool, SubscriberClass, QoSPolicy, NATPool, Subscriber)

    def __init__(self, kubeconfig: str | None = None, namespace: str = DEFAULT_NAMESPACE) -> None:
        from kubernetes import client, config

        if kubeconfig:
            api = config.new_client_from_config(config_file=kubeconfig)
        else:
            config.load_incluster_config()
            api = client.ApiClient()
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.kubeconfig = kubeconfig

    def objects(self) -> list[Resource]:
        out: list[Resource] = []
        for cls in self.KINDS:
            p = cls.info.plural
            if cls.info.scope == "Namespaced":
                items: list[dict[str, Any]] = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, p)["items"]
            else:
                items = self.custom.list_cluster_custom_object(GROUP, VERSION, p)["items"]
            for item in items:
                item.pop("status", None)  # the agent reads specs; status is ours to write
                out.append(cls.model_validate(item))
        return out

    def describe(self) -> str:
        return f"apiserver ({self.kubeconfig or 'in-cluster'})"


def load_node_config(source: Source, node: str) -> NodeConfig:
    objects = source.objects()
    nodes = {o.name: o for o in objects if isinstance(o, BNGNode)}
    if node not in nodes:
        have = ", ".join(sorted(nodes)) or "none"
        raise ConfigError(f"no BNGNode named {node!r} in {source.describe()} (found: {have})")
    try:
        spec = render_node(nodes[node], objects)
    except RenderError as e:
        raise ConfigError(str(e)) from e
    return node_config(spec, [o for o in objects if isinstance(o, Subscriber)])

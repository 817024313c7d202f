"""The Kubernetes API client of the operator and the agent: in-cluster, or a kubeconfig."""

from __future__ import annotations

from typing import Any


def api_client(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: from ``kubeconfig`` when given, else in-cluster."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    config.load_incluster_config()
    return client.ApiClient()

"""The operator finds the apiserver from a pod's environment, not through cluster DNS."""

from __future__ import annotations

import pytest

from bng_operator.operator.main import in_cluster_server


@pytest.mark.parametrize(("env", "server"), [
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
     "https://10.96.0.1:443"),
    ({"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"},
     "https://[fd00:10:96::1]:443"),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None),  # half a pod's environment
    ({}, None),  # not in a pod: kopf's own default stands
])
def test_the_apiserver_of_a_pod_comes_from_its_environment(
        env: dict[str, str], server: str | None) -> None:
    assert in_cluster_server(env) == server

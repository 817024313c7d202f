"""The configuration from the apiserver fails loudly (issue 14, point 5): credentials the
apiserver refuses are reported as such, not as an outage; a cache that cannot be read is
set aside with a warning instead of crashing the start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from bng_operator.agent.config import ConfigError
from bng_operator.agent.sources import KubeSource

NODE = {"apiVersion": "bng.dev/v1alpha1", "kind": "BNGNode",
        "metadata": {"name": "edge-1", "generation": 3},
        "spec": {"nodeName": "edge-1", "interfaces": {"access": ["eth1"]}}}


class Refusing:
    def __init__(self, status: int) -> None:
        self.status = status

    def get_cluster_custom_object(self, *a: Any, **kw: Any) -> Any:
        raise ApiException(status=self.status, reason="Forbidden" if self.status == 403
                           else "Unauthorized" if self.status == 401 else "Service Unavailable")


def _source(tmp_path: Path, status: int, cache: str | None) -> KubeSource:
    s = KubeSource.__new__(KubeSource)
    s.node, s.namespace, s.kubeconfig = "edge-1", "bng-system", None
    s.cache = tmp_path / "objects-edge-1.json"
    if cache is not None:
        s.cache.write_text(cache)
    s.generation, s.embedded, s.from_cache, s.refused = None, True, False, ""
    s.custom = Refusing(status)
    return s


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_said_so_and_the_cache_still_serves(tmp_path: Path,
                                                                   status: int) -> None:
    s = _source(tmp_path, status, json.dumps([NODE]))
    (node,) = s.objects()
    assert s.from_cache and node.name == "edge-1"
    assert f"refused the agent's credentials ({status}" in s.refused


def test_an_outage_is_not_a_refusal(tmp_path: Path) -> None:
    s = _source(tmp_path, 503, json.dumps([NODE]))
    s.objects()
    assert s.from_cache and s.refused == ""


def test_refused_with_no_cache_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"refused the agent.s credentials \(403"):
        _source(tmp_path, 403, None).objects()


@pytest.mark.parametrize("cache", ["{not json", json.dumps([{"kind": "BNGNode"}]),
                                   json.dumps([{"kind": "Nonsense"}]), json.dumps({"a": 1})])
def test_a_corrupt_cache_is_set_aside_not_a_crash(tmp_path: Path, cache: str) -> None:
    s = _source(tmp_path, 503, cache)
    with pytest.raises(ConfigError, match="set aside as"):
        s.objects()
    assert not s.cache.exists() and s.cache.with_suffix(".corrupt").read_text() == cache

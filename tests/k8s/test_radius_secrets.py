"""RADIUS shared secrets in Kubernetes mode: read from a real apiserver's Secret, and the
chart lets the agent read the Secrets it names and no other."""

from __future__ import annotations

import pytest

from bng_lab.chart import render
from bng_operator.agent.radius.secrets import KubeSecrets, SecretError
from bng_operator.api.radius import SecretRef
from tests.conftest import Cluster

NS = "bng-radius-secrets"


def test_the_agent_reads_a_radius_secret_and_says_what_is_missing(k8s: Cluster) -> None:
    k8s.kubectl("create", "namespace", NS)
    try:
        k8s.kubectl("-n", NS, "create", "secret", "generic", "radius",
                    "--from-literal=secret=s3cret", "--from-literal=other=x\n")
        secrets = KubeSecrets(k8s.api, NS)
        assert secrets.read(SecretRef(name="radius")) == b"s3cret"
        assert secrets.read(SecretRef(name="radius", key="other")) == b"x"
        with pytest.raises(SecretError, match=f"Secret {NS}/nope key secret: 404"):
            secrets.read(SecretRef(name="nope"))
        with pytest.raises(SecretError, match="no such key"):
            secrets.read(SecretRef(name="radius", key="missing"))
    finally:
        k8s.kubectl("delete", "namespace", NS, "--wait=false")


def _secret_rules(*sets: str) -> list[dict[str, object]]:
    role = next(o for o in render(*sets) if o["kind"] == "Role"
                and o["metadata"]["name"].endswith("-agent"))
    return [r for r in role["rules"] if "secrets" in r["resources"]]


def test_the_chart_grants_the_named_radius_secrets_only() -> None:
    assert _secret_rules() == []  # by default the agent reads no Secret
    assert _secret_rules("agent.radiusSecrets={radius,radius-b}") == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["radius", "radius-b"],
         "verbs": ["get"]}]

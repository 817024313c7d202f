"""The CRDs on a real kube-apiserver: samples accepted, wrong objects rejected by field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from bng_operator.api import BY_KIND, GROUP, VERSION, Subscriber
from tests.cases import SAMPLES, WRONG, Wrong
from tests.conftest import Cluster


@pytest.fixture(scope="module")
def samples(k8s: Cluster) -> Cluster:
    k8s.kubectl("apply", "-f", str(SAMPLES))
    return k8s


def _create(k8s: Cluster, obj: dict[str, Any]) -> None:
    info = BY_KIND[obj["kind"]].info
    if info.scope == "Namespaced":
        k8s.custom.create_namespaced_custom_object(
            GROUP, VERSION, obj["metadata"]["namespace"], info.plural, obj)
    else:
        k8s.custom.create_cluster_custom_object(GROUP, VERSION, info.plural, obj)


def test_every_crd_is_established(k8s: Cluster) -> None:
    out = k8s.kubectl("get", "crd", "-o", "json").stdout
    crds = {c["metadata"]["name"]: c for c in json.loads(out)["items"]}
    expected = [r.info.crd_name for r in BY_KIND.values()] + ["clusterkopfpeerings.kopf.dev"]
    assert sorted(crds) == sorted(expected)
    for c in crds.values():
        conds = {x["type"]: x["status"] for x in c["status"]["conditions"]}
        assert conds["Established"] == "True"


@pytest.mark.parametrize("case", WRONG, ids=lambda c: c.id)
def test_apiserver_rejects_wrong_object_naming_the_field(samples: Cluster, case: Wrong) -> None:
    with pytest.raises(ApiException) as e:
        _create(samples, case.object())
    assert e.value.status == 422, e.value.body
    status = json.loads(e.value.body)
    causes = [c.get("field", "") for c in status["details"]["causes"]]
    assert any(f == case.field or f.startswith(case.field + "[") for f in causes), status
    assert case.field in status["message"]


def test_kubectl_get_bng_lists_the_samples_with_columns(samples: Cluster) -> None:
    out = samples.kubectl("get", "bng", "-A").stdout
    for name in ("ippool.bng.dev/residential", "ippool.bng.dev/business",
                 "subscriberclass.bng.dev/residential", "subscriberclass.bng.dev/business",
                 "qospolicy.bng.dev/residential-100m", "qospolicy.bng.dev/business-1g",
                 "natpool.bng.dev/cgnat", "subscriber.bng.dev/acme-hq"):
        assert name in out, out
    pools = samples.kubectl("get", "ippools").stdout.splitlines()
    assert pools[0].split()[:5] == ["NAME", "SUBNET", "BLOCK", "LEASE", "ALLOCATED"]
    assert pools[2].split()[:4] == ["residential", "100.64.0.0/20", "24", "4h"]
    classes = samples.kubectl("get", "subscriberclasses").stdout.splitlines()
    assert classes[1].split()[:5] == ["business", "50", "circuit-id", "business", "business-1g"]
    assert "cgnat" not in classes[1]  # the business class has no NAT
    assert classes[2].split()[:6] == ["residential", "100", "remote-id", "residential",
                                      "residential-100m", "cgnat"]
    nat = samples.kubectl("get", "natp").stdout.splitlines()
    assert nat[1].split()[:4] == ["cgnat", "203.0.113.0/28", "port-block", "512"]


def test_subscriber_wide_columns_and_status(samples: Cluster) -> None:
    ns = "bng-system"
    samples.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, "subscribers", "acme-hq",
        {"status": {"state": "Bound", "address": "198.51.100.10", "node": "edge-1",
                    "class": "business", "leaseExpiry": "2030-01-01T00:00:00Z"}})
    lines = samples.kubectl("get", "subs", "-n", ns, "-o", "wide").stdout.splitlines()
    header, row = lines[0].split(), lines[1].split()
    assert header[:8] == ["NAME", "MAC", "ADDRESS", "NODE", "CLASS", "STATE", "EXPIRES",
                          "RESERVED"]
    assert "CIRCUIT-ID" in header and "REMOTE-ID" in header
    # The reservation has no MAC, so that column is blank.
    assert row[:5] == ["acme-hq", "198.51.100.10", "edge-1", "business", "Bound"]
    assert row[-3:-1] == ["198.51.100.10", "biz-olt1-1/1/7"]  # Reserved, Circuit-ID


def test_a_subscribers_radius_status_is_kept_whole(samples: Cluster) -> None:
    """Every RADIUS field the agent writes survives the apiserver's pruning."""
    radius = {"authState": "authorised", "server": "192.0.2.1:1812", "userName": "02:00:00:00:00:01",
              "authorisedAt": "2030-01-01T00:00:00Z", "framedIpAddress": "198.51.100.10",
              "framedPool": "residential", "filterId": "gold", "download": "20Mbit",
              "upload": "5Mbit", "sessionTimeout": 600, "sessionEndsAt": "2030-01-01T00:10:00Z",
              "idleTimeout": 120, "interimInterval": 300, "acctSessionId": "0123456789abcdef",
              "lastAccounting": "2030-01-01T00:05:00Z"}
    got = samples.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "bng-system", "subscribers", "acme-hq",
        {"status": {"state": "Bound", "radius": radius}})
    assert got["status"]["radius"] == radius
    assert Subscriber.model_validate(got).status.radius.session_timeout == 600  # type: ignore[union-attr]


def test_defaults_are_filled_by_the_apiserver(samples: Cluster) -> None:
    nat = samples.custom.get_cluster_custom_object(GROUP, VERSION, "natpools", "cgnat")
    assert nat["spec"]["blocksPerSubscriber"] == 1
    cls = samples.custom.get_cluster_custom_object(GROUP, VERSION, "subscriberclasses",
                                                   "business")
    assert cls["spec"]["auth"] == "none"
    assert cls["spec"]["limits"]["allocationsPerMinute"] == 30


def test_objects_read_back_parse_into_the_models(samples: Cluster) -> None:
    """What the apiserver stores (defaults filled in) is valid for the Python models too."""
    for cls in BY_KIND.values():
        if cls.info.kind == "BNGNode":
            continue
        if cls.info.scope == "Namespaced":
            items = samples.custom.list_namespaced_custom_object(
                GROUP, VERSION, "bng-system", cls.info.plural)["items"]
        else:
            items = samples.custom.list_cluster_custom_object(
                GROUP, VERSION, cls.info.plural)["items"]
        assert items, cls.info.kind
        for item in items:
            cls.model_validate(item)

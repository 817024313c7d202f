"""The deployment artefacts: the Helm chart and the kustomize base, on a real kube-apiserver.

The chart is linted and rendered with the helm built by `make setup`, and every render is
applied with ``--dry-run=server`` (admission, schemas, strict field validation) against the
test apiserver. The agent's security properties and the RBAC are checked on the rendered
objects, and the kustomize base must equal the chart's default render.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from bng_lab import chart
from tests.conftest import REPO, Cluster

CHART = REPO / "charts" / "bng"
BASE = REPO / "config" / "base"
NS = "bng-system"
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

Obj = dict[str, Any]
Helm = Callable[..., str]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Runs helm with its config and cache in a temporary directory; returns stdout. A
    missing helm fails the test (never skips)."""
    try:
        chart.helm_binary()
    except chart.HelmMissing as e:
        pytest.fail(str(e), pytrace=False)
    home = tmp_path_factory.mktemp("helm")

    def run(*args: str) -> str:
        return chart.helm(*args, home=home)

    return run


def objects(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(helm: Helm, *sets: str) -> list[Obj]:
    args = [a for s in sets for a in ("--set", s)]
    return objects(helm("template", "bng", str(CHART), "--namespace", NS, *args))


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def dry_run(k8s: Cluster, objs: list[Obj]) -> str:
    """``kubectl apply --dry-run=server`` of ``objs`` after a Namespace bng-system."""
    ns: Obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    # The namespaced objects need their namespace to exist, dry run or not. It is created for
    # real and left in place: without kube-controller-manager a deleted namespace would stay
    # Terminating and break other k8s-tier tests that use bng-system (config/samples).
    k8s.kubectl("apply", "-f", "-", input=yaml.safe_dump(ns))
    out = k8s.kubectl("apply", "--dry-run=server", "-f", "-",
                      input=yaml.safe_dump_all([ns, *objs])).stdout
    assert out.count("(server dry run)") == len(objs) + 1, out
    return out


def assert_least_privilege(objs: list[Obj]) -> None:
    roles = [o for o in objs if o["kind"] in ("Role", "ClusterRole")]
    assert roles, "no Role or ClusterRole rendered"
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"wildcard {field} in {role['metadata']}"
            assert "nonResourceURLs" not in rule, role
    # What each identity may and may not do is asked of the apiserver itself:
    # tests/k8s/test_identities.py.


# --- the chart -------------------------------------------------------------------------------


@pytest.mark.parametrize("sets", [(), ("serviceMonitor.enabled=true", "prometheusRule.enabled=true",
                                         "dashboards.enabled=true")],
                         ids=["default", "monitoring"])
def test_helm_lint_passes(helm: Helm, sets: tuple[str, ...]) -> None:
    out = helm("lint", "--strict", str(CHART), *[a for s in sets for a in ("--set", s)])
    assert "0 chart(s) failed" in out, out


def test_default_render_applies_on_the_apiserver(helm: Helm, k8s: Cluster) -> None:
    objs = render(helm)
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
    assert kinds == sorted([
        "ServiceAccount/bng-operator", "ClusterRole/bng-operator", "ClusterRoleBinding/bng-operator",
        "Deployment/bng-operator",
        "ServiceAccount/bng-agent", "ClusterRole/bng-agent", "ClusterRoleBinding/bng-agent",
        "Role/bng-agent", "RoleBinding/bng-agent", "DaemonSet/bng-agent", "Service/bng-hubble",
        "ValidatingAdmissionPolicy/bng-agent-node-restriction",
        "ValidatingAdmissionPolicyBinding/bng-agent-node-restriction",
        "ClusterKopfPeering/bng"])
    assert not any(o["kind"] == "ServiceMonitor" for o in objs)
    # the one Service: every agent's Hubble API, headless (one DNS record per agent)
    (hubble,) = [o for o in objs if o["kind"] == "Service"]
    assert hubble["spec"]["clusterIP"] == "None"
    assert hubble["spec"]["ports"] == [{"name": "hubble", "port": 4245, "targetPort": "hubble",
                                        "protocol": "TCP"}]
    out = dry_run(k8s, objs)
    assert "daemonset.apps/bng-agent created (server dry run)" in out, out
    # "configured" when an earlier test (the e2e operator site) made the peering object
    assert any(f"clusterkopfpeering.kopf.dev/bng {v} (server dry run)" in out
               for v in ("created", "configured", "unchanged")), out


# A cut-down ServiceMonitor CRD: the fields the chart uses, typed as in the Prometheus
# operator's CRD, so that a server dry run rejects a misspelt or mistyped field.
SERVICEMONITOR_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors,
          singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              required: [selector]
              properties:
                selector:
                  type: object
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                namespaceSelector:
                  type: object
                  properties:
                    any: {type: boolean}
                    matchNames: {type: array, items: {type: string}}
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: string}
                      path: {type: string}
                      interval:
                        type: string
                        pattern: 'DURATION'
""".replace("DURATION", "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                         "(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")


@pytest.fixture
def servicemonitor_crd(k8s: Cluster) -> Iterator[None]:
    k8s.kubectl("apply", "-f", "-", input=SERVICEMONITOR_CRD)
    try:
        k8s.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/servicemonitors.monitoring.coreos.com")
        yield
    finally:
        k8s.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "--wait=true",
                    "--timeout=60s")


def test_servicemonitor_render_applies_with_its_crd(helm: Helm, k8s: Cluster,
                                                    servicemonitor_crd: None) -> None:
    objs = render(helm, "serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom")
    for c, port in (("agent", 9641), ("operator", 9642)):
        svc = one(objs, "Service", f"bng-{c}-metrics")
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == c
        assert svc["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics",
                                         "protocol": "TCP"}]
        sm = one(objs, "ServiceMonitor", f"bng-{c}")
        assert sm["metadata"]["labels"]["release"] == "prom"
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    out = dry_run(k8s, objs)
    assert "servicemonitor.monitoring.coreos.com/bng-agent created (server dry run)" in out, out


# A cut-down PrometheusRule CRD, typed as in the Prometheus operator's, for the dry run.
PROMETHEUSRULE_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules,
          singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name]
                    properties:
                      name: {type: string, minLength: 1}
                      interval: {type: string}
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: {type: string}
                            record: {type: string}
                            expr: {x-kubernetes-int-or-string: true}
                            for: {type: string}
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
"""


@pytest.fixture
def prometheusrule_crd(k8s: Cluster) -> Iterator[None]:
    k8s.kubectl("apply", "-f", "-", input=PROMETHEUSRULE_CRD)
    try:
        k8s.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/prometheusrules.monitoring.coreos.com")
        yield
    finally:
        k8s.kubectl("delete", "crd", "prometheusrules.monitoring.coreos.com", "--wait=true",
                    "--timeout=60s")


def test_prometheusrule_is_the_rules_file(helm: Helm, k8s: Cluster,
                                          prometheusrule_crd: None) -> None:
    objs = render(helm, "prometheusRule.enabled=true", "prometheusRule.labels.release=prom")
    rule = one(objs, "PrometheusRule", "bng")
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == yaml.safe_load((CHART / "rules" / "bng-alerts.yaml").read_text())
    out = dry_run(k8s, [rule])
    assert "prometheusrule.monitoring.coreos.com/bng created (server dry run)" in out, out


def test_dashboards_are_configmaps_for_grafanas_sidecar(helm: Helm, k8s: Cluster) -> None:
    objs = render(helm, "dashboards.enabled=true", "dashboards.annotations.grafana_folder=bng")
    files = sorted((CHART / "dashboards").glob("*.json"))
    maps = [o for o in objs if o["kind"] == "ConfigMap"]
    assert len(files) == len(maps) == 5
    for f in files:
        cm = one(objs, "ConfigMap", f"bng-dashboard-{f.stem.removeprefix('bng-')}")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "bng"}
        assert list(cm["data"]) == [f.name]
        assert json.loads(cm["data"][f.name]) == json.loads(f.read_text())
    out = dry_run(k8s, maps)
    assert "configmap/bng-dashboard-overview created (server dry run)" in out, out


def test_agent_daemonset_is_unprivileged_with_only_its_capabilities(helm: Helm) -> None:
    ds = one(render(helm), "DaemonSet", "bng-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["nodeSelector"] == {"bng.dev/node": "true"}
    assert pod["serviceAccountName"] == "bng-agent"
    assert "hostPID" not in pod and "hostIPC" not in pod
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc.get("privileged", False) is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(
        ["BPF", "NET_ADMIN", "PERFMON", "NET_RAW", "NET_BIND_SERVICE"])
    assert "SYS_ADMIN" not in sc["capabilities"]["add"]
    # Only kernels < 5.11 need RLIMIT_MEMLOCK raised for BPF maps: a value adds SYS_RESOURCE.
    old_kernel = one(render(helm, "agent.memlockCapability=true"), "DaemonSet", "bng-agent")
    (c_old,) = old_kernel["spec"]["template"]["spec"]["containers"]
    assert sorted(c_old["securityContext"]["capabilities"]["add"]) == sorted(
        [*sc["capabilities"]["add"], "SYS_RESOURCE"])

    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    host = {v["hostPath"]["path"]: name for name, v in vols.items() if "hostPath" in v}
    assert set(host) == {"/sys/fs/bpf", "/lib/modules", "/usr/src", "/var/lib/bng"}
    assert mounts[host["/sys/fs/bpf"]]["mountPath"] == "/sys/fs/bpf"
    # Bidirectional needs a privileged container; the pins need no propagation back.
    assert mounts[host["/sys/fs/bpf"]].get("mountPropagation") in (None, "HostToContainer")
    for path in ("/lib/modules", "/usr/src"):
        assert mounts[host[path]]["readOnly"] is True, path
        assert mounts[host[path]]["mountPath"] == path
    assert vols[host["/var/lib/bng"]]["hostPath"]["type"] == "DirectoryOrCreate"

    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert [*c["command"], *c["args"]] == [
        "bng", "agent", "--node", "$(NODE_NAME)", "--namespace", NS, "--state-dir", "/var/lib/bng",
        "--bpf-dir", "/sys/fs/bpf/bng", "--metrics-port", "9641", "--xdp-mode", "native",
        "--subscriber-write-rate", "20", "--subscriber-ttl", "24h", "--accounting-interval", "5m",
        "--radius-acct-queue", "100000", "--radius-coa-port", "3799",
        "--hubble-listen", "0.0.0.0:4245", "--hubble-peer-address", "$(NODE_IP):4245",
        "--flows", "4096"]
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9641, "protocol": "TCP"},
                          {"name": "hubble", "containerPort": 4245, "protocol": "TCP"},
                          {"name": "radius-coa", "containerPort": 3799, "protocol": "UDP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_operator_deployment_args_follow_the_values(helm: Helm) -> None:
    dep = one(render(helm), "Deployment", "bng-operator")
    assert dep["spec"]["replicas"] == 1
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "ghcr.io/bng-dev/bng:0.1.0"
    assert [*c["command"], *c["args"]] == [
        "bng", "operator", "--peering", "bng", "--namespace", NS, "--node-label", "bng.dev/node=true",
        "--access-interface", "eth1", "--uplink-interface", "eth0", "--option82-untrusted", "drop",
        "--block-threshold", "0.8", "--metrics-port", "9642"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    objs = render(helm, "operator.replicas=3", "interfaces.access={eth2,eth3}",
                  "interfaces.uplink=bond0", "nodeLabel=edge.example/bng=yes",
                  "operator.blockThreshold=0.5", "agent.xdpMode=generic", "image.tag=dev",
                  "interfaces.option82.trusted={eth2}",
                  "interfaces.option82.trustedRelays={192.0.2.0/24}",
                  "interfaces.option82.untrusted=strip", "agent.eventLoopCPU=3",
                  "dhcp.commitAtOffer=true")
    dep = one(objs, "Deployment", "bng-operator")
    assert dep["spec"]["replicas"] == 3
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--node-label") + 1] == "edge.example/bng=yes"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--access-interface"] == ["eth2", "eth3"]
    assert args[args.index("--uplink-interface") + 1] == "bond0"
    assert args[args.index("--option82-trusted-interface") + 1] == "eth2"
    assert args[args.index("--option82-trusted-relay") + 1] == "192.0.2.0/24"
    assert args[args.index("--option82-untrusted") + 1] == "strip"
    assert args[args.index("--block-threshold") + 1] == "0.5"
    assert args[args.index("--event-loop-cpu") + 1] == "3" and "--commit-at-offer" in args
    ds = one(objs, "DaemonSet", "bng-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"edge.example/bng": "yes"}
    assert pod["containers"][0]["image"] == "ghcr.io/bng-dev/bng:dev"
    assert "generic" in pod["containers"][0]["args"]


@pytest.mark.parametrize("sets", [(), ("serviceMonitor.enabled=true", "prometheusRule.enabled=true",
                                         "dashboards.enabled=true")],
                         ids=["default", "monitoring"])
def test_rbac_is_least_privilege(helm: Helm, sets: tuple[str, ...]) -> None:
    objs = render(helm, *sets)
    assert_least_privilege(objs)
    bindings = [o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert len(bindings) == 3
    for b in bindings:
        assert b["roleRef"]["name"] == b["metadata"]["name"]
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": b["metadata"]["name"],
                                  "namespace": NS}]


# --- the kustomize base ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def kustomized(k8s: Cluster) -> list[Obj]:
    out = k8s.kubectl("kustomize", "--load-restrictor", "LoadRestrictionsNone", str(BASE)).stdout
    return objects(out)


def test_kustomize_base_applies_on_the_apiserver(k8s: Cluster, kustomized: list[Obj]) -> None:
    crds = {o["metadata"]["name"] for o in kustomized if o["kind"] == "CustomResourceDefinition"}
    assert crds == {objects(p.read_text())[0]["metadata"]["name"]
                    for p in (REPO / "crds").glob("*.yaml")}
    ns = one(kustomized, "Namespace", NS)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    out = dry_run(k8s, [o for o in kustomized if o["kind"] != "Namespace"])
    assert "deployment.apps/bng-operator" in out, out
    assert_least_privilege(kustomized)


def test_kustomize_base_equals_the_chart_defaults(helm: Helm, kustomized: list[Obj]) -> None:
    def key(o: Obj) -> str:
        return f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"

    chart = {key(o): o for o in render(helm)}
    for o in chart.values():
        for label in HELM_LABELS:
            o["metadata"].get("labels", {}).pop(label, None)
    base = {key(o): o for o in kustomized if o["kind"] not in ("CustomResourceDefinition",
                                                                "Namespace")}
    assert sorted(base) == sorted(chart)
    for k, o in chart.items():
        assert base[k] == o, f"config/base differs from the chart's default render in {k}"

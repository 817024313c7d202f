"""What each of bng's identities may do, as the real apiserver decides it (issue 14, point 6).

The chart's ServiceAccounts, RBAC and admission policy are applied to the test apiserver.
RBAC is checked with ``kubectl auth can-i --as`` for each identity; what RBAC cannot narrow
(an agent writing only for its own node, never a user's reservation) is checked with real
requests on real tokens, which the ValidatingAdmissionPolicy must refuse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bng_lab.k8s_site import AGENT_SA, NAMESPACE, OPERATOR_SA, K8sSite, wait_for
from tests.conftest import Cluster

NODES = ("id-a", "id-b")
AGENT = f"system:serviceaccount:{NAMESPACE}:{AGENT_SA}"
OPERATOR = f"system:serviceaccount:{NAMESPACE}:{OPERATOR_SA}"
POLICY = ("ippools", "subscriberclasses", "qospolicies", "natpools")

OBJECTS = "\n---\n".join([
    *(f"""apiVersion: v1
kind: Node
metadata: {{name: {n}, labels: {{bng.dev/node: "true"}}}}""" for n in NODES),
    *(f"""apiVersion: bng.dev/v1alpha1
kind: BNGNode
metadata: {{name: {n}}}
spec: {{nodeName: {n}, interfaces: {{access: [eth1]}}}}""" for n in NODES),
    f"""apiVersion: bng.dev/v1alpha1
kind: Subscriber
metadata: {{name: id-reserved, namespace: {NAMESPACE}}}
spec: {{identity: {{circuitId: biz-1/1/1}}, class: business, address: 198.51.100.10}}""",
    f"""apiVersion: bng.dev/v1alpha1
kind: Subscriber
metadata:
  name: id-report-b
  namespace: {NAMESPACE}
  labels: {{bng.dev/node: id-b, app.kubernetes.io/managed-by: bng-agent}}
spec: {{identity: {{mac: "02:00:00:00:0b:01"}}}}""",
])


def report(name: str, node: str, labels: bool = True) -> str:
    meta = (f"\n  labels: {{bng.dev/node: {node}, app.kubernetes.io/managed-by: bng-agent}}"
            if labels else "")
    return f"""apiVersion: bng.dev/v1alpha1
kind: Subscriber
metadata:
  name: {name}
  namespace: {NAMESPACE}{meta}
spec: {{identity: {{mac: "02:00:00:00:0a:01"}}}}
"""


@pytest.fixture(scope="module")
def site(k8s: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sSite]:
    s = K8sSite(k8s.cp, tmp_path_factory.mktemp("identities")).prepare()
    s.kubectl("apply", "-f", "-", input=OBJECTS)
    yield s
    s.close()
    s.kubectl("delete", "subscribers", "-n", NAMESPACE, "id-reserved", "id-report-b",
              "id-report-a", "id-unlabelled", "--ignore-not-found", "--wait=false", check=False)
    for n in NODES:
        s.kubectl("delete", "bngnode", n, "--ignore-not-found", "--wait=false", check=False)
        s.kubectl("delete", "node", n, "--ignore-not-found", "--wait=false", check=False)
        s.kubectl("delete", "pod", "-n", NAMESPACE, f"{AGENT_SA}-{n}", "--ignore-not-found",
                  "--wait=false", check=False)


# --- RBAC: who may do what at all -----------------------------------------------------------

CAN = [  # (identity, verb, resource, namespace or "" for cluster-wide, allowed)
    (AGENT, "get", "bngnodes", "", True),
    (AGENT, "watch", "bngnodes", "", True),
    (AGENT, "patch", "bngnodes/status", "", True),  # its own only: the admission policy
    *((AGENT, v, "bngnodes", "", False) for v in ("create", "update", "patch", "delete")),
    *((AGENT, "list", p, "", True) for p in POLICY),
    *((AGENT, v, p, "", False) for p in POLICY for v in ("create", "patch", "delete")),
    *((AGENT, v, "subscribers", NAMESPACE, True) for v in ("list", "create", "delete")),
    (AGENT, "patch", "subscribers/status", NAMESPACE, True),
    (AGENT, "create", "subscribers", "default", False),
    (AGENT, "create", "events", NAMESPACE, True),
    (AGENT, "get", "nodes", "", False),
    (AGENT, "get", "secrets", NAMESPACE, False),
    (AGENT, "create", "pods", NAMESPACE, False),
    (AGENT, "create", "serviceaccounts/token", NAMESPACE, False),
    (AGENT, "impersonate", "serviceaccounts", "", False),
    (OPERATOR, "watch", "nodes", "", True),
    (OPERATOR, "patch", "nodes", "", False),
    *((OPERATOR, v, "bngnodes", "", True) for v in ("create", "update", "delete")),
    (OPERATOR, "patch", "bngnodes/status", "", False),
    *((OPERATOR, "watch", p, "", True) for p in POLICY),
    (OPERATOR, "patch", "ippools/status", "", True),
    (OPERATOR, "patch", "natpools/status", "", True),  # the split of its addresses
    (OPERATOR, "patch", "natpools", "", True),  # kopf's finalizer: a deleted one is held
    (OPERATOR, "patch", "subscriberclasses", "", False),
    (OPERATOR, "create", "ippools", "", False),
    (OPERATOR, "delete", "subscriberclasses", "", False),
    (OPERATOR, "create", "subscribers", NAMESPACE, False),
    (OPERATOR, "patch", "subscribers/status", NAMESPACE, False),
    (OPERATOR, "patch", "clusterkopfpeerings", "", True),
    (OPERATOR, "get", "secrets", NAMESPACE, False),
    (OPERATOR, "create", "pods", NAMESPACE, False),
]


@pytest.mark.parametrize(("who", "verb", "resource", "ns", "allowed"), CAN,
                         ids=[f"{w.rsplit(':', 1)[1]}-{v}-{r}-{n or 'cluster'}"
                              for w, v, r, n, _ in CAN])
def test_rbac_allows_each_identity_what_it_uses_and_no_more(
        site: K8sSite, who: str, verb: str, resource: str, ns: str, allowed: bool) -> None:
    args = ["auth", "can-i", verb, resource.partition("/")[0], "--as", who]
    if "/" in resource:
        args += ["--subresource", resource.partition("/")[2]]
    args += ["-n", ns] if ns else ["--all-namespaces"]
    r = site.kubectl(*args, check=False)
    answer = r.stdout.strip()
    assert answer in ("yes", "no"), r.stderr
    assert (answer == "yes") is allowed, f"{who} {verb} {resource} in {ns or 'the cluster'}"


# --- the admission policy: an agent writes only for its own node ------------------------------


def as_identity(site: K8sSite, kubeconfig: Path, *args: str, input: str | None = None
                ) -> tuple[bool, str]:
    """Runs kubectl with ``kubeconfig``; (whether the apiserver accepted it, its words)."""
    r = site.kubectl("--kubeconfig", str(kubeconfig), *args, input=input, check=False)
    return r.returncode == 0, r.stdout + r.stderr


def status_patch(kind: str, name: str, body: dict[str, object]) -> list[str]:
    ns = ["-n", NAMESPACE] if kind == "subscriber" else []
    return ["patch", kind, name, *ns, "--subresource", "status", "--type", "merge",
            "-p", json.dumps({"status": body})]


@pytest.fixture(scope="module")
def agent_a(site: K8sSite) -> Path:
    """The agent of node id-a: its token is bound to a Pod on id-a. Returned once the
    admission policy refuses it something (the apiserver loads policies in the background)."""
    kubeconfig = site.token_kubeconfig(AGENT_SA, "id-a")
    wait_for("the admission policy in force", lambda: not as_identity(
        site, kubeconfig, *status_patch("bngnode", "id-b", {"leasesActive": 1}))[0], 30, 0.5)
    return kubeconfig


def test_an_agent_writes_the_status_of_its_own_bngnode_only(site: K8sSite, agent_a: Path
                                                           ) -> None:
    ok, out = as_identity(site, agent_a, *status_patch("bngnode", "id-a", {"leasesActive": 3}))
    assert ok, out
    ok, out = as_identity(site, agent_a, *status_patch("bngnode", "id-b", {"leasesActive": 3}))
    assert not ok and "may write only the status of BNGNode id-a" in out, out
    ok, out = as_identity(site, agent_a, "patch", "bngnode", "id-a", "--type", "merge",
                          "-p", '{"spec": {"maxLeases": 1}}')
    assert not ok and "forbidden" in out, out  # RBAC: no write of any BNGNode's spec


def test_an_agent_creates_and_deletes_only_its_own_subscriber_reports(
        site: K8sSite, agent_a: Path) -> None:
    ok, out = as_identity(site, agent_a, "create", "-f", "-", input=report("id-report-a", "id-a"))
    assert ok, out
    for name, node, labels in (("id-forged", "id-b", True), ("id-unlabelled", "id-a", False)):
        ok, out = as_identity(site, agent_a, "create", "-f", "-",
                              input=report(name, node, labels))
        assert not ok and "may create and delete only its own Subscriber reports" in out, out
    ok, out = as_identity(site, agent_a, "delete", "subscriber", "-n", NAMESPACE, "id-report-b")
    assert not ok and "DELETE of id-report-b refused" in out, out
    ok, out = as_identity(site, agent_a, "delete", "subscriber", "-n", NAMESPACE, "id-report-a")
    assert ok, out


def test_an_agent_reports_on_a_reservation_but_never_changes_it(site: K8sSite, agent_a: Path
                                                                ) -> None:
    ok, out = as_identity(site, agent_a, *status_patch(
        "subscriber", "id-reserved", {"state": "Bound", "node": "id-a"}))
    assert ok, out
    ok, out = as_identity(site, agent_a, *status_patch(
        "subscriber", "id-reserved", {"state": "Bound", "node": "id-b"}))
    assert not ok and "may report only subscribers on its own node" in out, out
    ok, out = as_identity(site, agent_a, "patch", "subscriber", "id-reserved", "-n", NAMESPACE,
                          "--type", "merge", "-p", '{"spec": {"address": "198.51.100.11"}}')
    assert not ok and "UPDATE of id-reserved refused" in out, out
    ok, out = as_identity(site, agent_a, "delete", "subscriber", "-n", NAMESPACE, "id-reserved")
    assert not ok and "DELETE of id-reserved refused" in out, out
    spec = site.get("subscriber", "-n", NAMESPACE, "id-reserved")["spec"]
    assert spec["address"] == "198.51.100.10"


def test_an_agent_token_bound_to_no_node_writes_nothing(site: K8sSite, agent_a: Path) -> None:
    unbound = site.token_kubeconfig(AGENT_SA)
    ok, out = as_identity(site, unbound, *status_patch("bngnode", "id-a", {"leasesActive": 1}))
    assert not ok and "not bound to a pod on a node" in out, out


def test_the_operator_token_cannot_write_subscribers(site: K8sSite) -> None:
    operator = site.token_kubeconfig(OPERATOR_SA)
    ok, out = as_identity(site, operator, "create", "-f", "-", input=report("id-op", "id-a"))
    assert not ok and "forbidden" in out, out
    ok, out = as_identity(site, operator, "get", "bngnodes")
    assert ok, out

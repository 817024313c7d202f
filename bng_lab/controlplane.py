"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, for tests and benches.

The binaries are built by ``make setup`` (``hack/kube/build.sh``) into
``~/.cache/bng/k8s-<version>/``. Each ControlPlane gets free ports and its own temporary
directory, writes a kubeconfig there, and kills both processes on ``stop()``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bng_lab.cache import built

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bng-test-admin-token"


# Writes to bng objects are logged (Metadata level), so tests can count them.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  resources: [{group: bng.dev}]
- level: None
"""


class ControlPlaneMissing(RuntimeError):
    """The binaries are not built: the message says how to get them."""


def find_binaries() -> tuple[Path, Path]:
    d = built("kube", "k8s-", ("kube-apiserver", "etcd"), ControlPlaneMissing)
    return d / "kube-apiserver", d / "etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    """etcd and kube-apiserver, started by ``start()`` and killed by ``stop()``."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bng-k8s-")))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""
    port: int = 0
    # Where kube-apiserver listens (port 0: a free one). A cluster with a kubelet (bng_lab.
    # cluster) listens on the `kubernetes` Service IP, where pods look for it.
    address: str = "127.0.0.1"
    # For real nodes: Node authorization, NodeRestriction, ServiceAccount tokens in pods, and
    # kubelets reached at their InternalIP (kubectl logs/exec).
    with_nodes: bool = False
    # More lines of the token file ("TOKEN,USER,UID,GROUP"), e.g. a kubelet's.
    tokens: tuple[str, ...] = ()
    _apiserver_argv: list[str] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def start(self, timeout: float = 90.0) -> ControlPlane:
        apiserver, etcd = find_binaries()
        etcd_client, etcd_peer = free_port(), free_port()
        api_port = self.port or free_port()
        self._keys()
        (self.workdir / "tokens.csv").write_text(
            "".join(f"{t}\n" for t in (f"{TOKEN},bng-admin,1,system:masters", *self.tokens)))
        (self.workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self._spawn("etcd", [
            str(etcd), "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync",  # test data: durability buys nothing, fsync costs seconds
            "--log-level", "warn",
        ])
        self._apiserver_argv = [
            str(apiserver),
            "--etcd-servers", f"http://127.0.0.1:{etcd_client}",
            "--bind-address", self.address, "--advertise-address", self.address,
            "--secure-port", str(api_port),
            "--cert-dir", str(self.workdir / "certs"),
            "--token-auth-file", str(self.workdir / "tokens.csv"),
            *(["--authorization-mode", "Node,RBAC", "--enable-admission-plugins",
               "NodeRestriction", "--kubelet-preferred-address-types", "InternalIP"]
              if self.with_nodes else
              ["--authorization-mode", "RBAC", "--disable-admission-plugins", "ServiceAccount"]),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(self.workdir / "sa.pub"),
            "--service-account-signing-key-file", str(self.workdir / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--enable-priority-and-fairness=false",
            "--audit-policy-file", str(self.workdir / "audit-policy.yaml"),
            "--audit-log-path", str(self.audit_log), "--audit-log-mode", "blocking",
            "--v", "1",
        ]
        self._spawn("kube-apiserver", self._apiserver_argv)
        self.port = api_port
        self.url = f"https://{self.address}:{api_port}"
        self._write_kubeconfig()
        self._wait_ready(timeout)
        return self

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def writes(self, group: str = "bng.dev") -> list[dict[str, object]]:
        """Every write (create, update, patch, delete) to ``group`` the apiserver has served,
        from its audit log, oldest first."""
        import json

        if not self.audit_log.exists():
            return []
        out = []
        for line in self.audit_log.read_text().splitlines():
            e = json.loads(line)
            ref = e.get("objectRef") or {}
            if e.get("stage") == "ResponseComplete" and ref.get("apiGroup") == group and \
                    e.get("verb") in ("create", "update", "patch", "delete"):
                out.append(e)
        return out

    def requests_by(self, user: str, since: float, group: str = "bng.dev") -> int:
        """Requests (reads and writes) of ``user`` to ``group`` the apiserver has served since
        ``since`` (unix time), from its audit log."""
        import json
        from datetime import datetime

        if not self.audit_log.exists():
            return 0
        n = 0
        for line in self.audit_log.read_text().splitlines():
            e = json.loads(line)
            if e.get("stage") != "ResponseComplete" or \
                    (e.get("user") or {}).get("username") != user or \
                    (e.get("objectRef") or {}).get("apiGroup") != group:
                continue
            at = datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00"))
            n += at.timestamp() >= since
        return n

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only (etcd keeps the data); ``start_apiserver`` brings it back
        on the same port, with the same certificates."""
        p = self.procs[1]
        p.send_signal(signal.SIGKILL)
        p.wait()

    def start_apiserver(self, timeout: float = 90.0) -> None:
        self._spawn("kube-apiserver", self._apiserver_argv)
        self.procs[1] = self.procs.pop()
        self._wait_ready(timeout)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self, name: str) -> str:
        p = self.workdir / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    # --- internals -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _keys(self) -> None:
        key = self.workdir / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out",
                        str(self.workdir / "sa.pub")], check=True, capture_output=True)

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig, "bng-admin", TOKEN)

    def write_kubeconfig(self, path: Path, user: str, token: str) -> Path:
        """A kubeconfig for this apiserver that authenticates with ``token``."""
        path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: bng-test
  cluster: {{server: "{self.url}", certificate-authority: "{self.workdir}/certs/apiserver.crt"}}
users:
- name: {user}
  user: {{token: {token}}}
contexts:
- name: bng-test
  context: {{cluster: bng-test, user: {user}}}
current-context: bng-test
""")
        path.chmod(0o600)
        return path

    def _wait_ready(self, timeout: float) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(f"{self.url}/readyz",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p, name in zip(self.procs, ("etcd", "kube-apiserver"), strict=False):
                if p.poll() is not None:
                    tail = self.log(name)[-3000:]
                    self.stop()
                    raise RuntimeError(f"{name} exited with {p.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        tail = self.log("kube-apiserver")[-3000:]
        self.stop()
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s:\n{tail}")

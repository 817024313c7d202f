"""A one-node Kubernetes cluster on this machine, with a real kubelet and container runtime:
the chart's pods run here as they would on an ISP's node (tests/cluster, ``make cluster``).

    kube-apiserver ── listens on 10.96.0.1:443, the `kubernetes` Service IP, a host address
    etcd, kube-controller-manager, kube-scheduler      (no kube-proxy: pods dial that IP)
    the node "bng-node" (InternalIP 172.30.255.1): kubelet + containerd + runc, in a mount
        namespace of their own, so that what they mount and write (/run, /var/lib, /var/log,
        and the sysctls the kubelet sets) stays out of the host's
    pods: hostNetwork (the agent), or a bridge "bng-cni0" (10.244.0.0/24; isGateway false,
        ipMasq false: the host does not forward, pods reach only the host's own addresses)

The binaries come from ``hack/kube/build.sh`` (cached), containerd, runc and the CNI plugins
from Debian; the images (bng and pause) from ``bng_lab.image``. One cluster runs per machine,
under WORKDIR: ``down()`` kills every process that names it, and everything in the kubelet's
cgroup, and removes the links, cgroups and files it made, also after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bng_lab import image
from bng_lab.cache import built
from bng_lab.controlplane import ControlPlane, ControlPlaneMissing, free_port
from bng_operator import netlink

WORKDIR = Path("/tmp/bng-cluster")
NODE = "bng-node"
SERVICE_IP = "10.96.0.1"  # the first address of --service-cluster-ip-range
NODE_IP = "172.30.255.1"
# The link holding SERVICE_IP and NODE_IP: a bridge without ports (this kernel may lack the
# dummy driver); its addresses are the host's own all the same.
HOST_LINK = "bng-svc0"
POD_BRIDGE, POD_GATEWAY, POD_SUBNET = "bng-cni0", "10.244.0.1/24", "10.244.0.0/24"
CGROUP_ROOT = "bng-cluster"  # the kubelet's cgroupRoot, in every v1 hierarchy
KUBELET_TOKEN = "bng-test-kubelet-token"
# The sysctls the kubelet sets to its liking (vm.overcommit_memory, kernel.panic, ...): in
# its mount namespace each is a file of ours, so the host's values stay as they were.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                   "kernel/keys/root_maxbytes")


class ClusterFailed(RuntimeError):
    """A part of the cluster did not come up: the message carries its log."""


def node_binaries() -> Path:
    return built("kube", "k8s-", ("kube-apiserver", "etcd", "kube-controller-manager",
                                  "kube-scheduler", "kubelet"), ControlPlaneMissing)


def _needs(*commands: str) -> None:
    missing = [c for c in commands if not shutil.which(c)]
    if missing:
        raise ClusterFailed(f"{', '.join(missing)} not found: `make setup` installs them "
                            "(Debian containerd, runc, containernetworking-plugins)")


@dataclass
class Cluster:
    """``up()`` starts everything; ``down()`` (or ``down_leftovers()``) removes it."""

    workdir: Path = WORKDIR
    cp: ControlPlane | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    holder: subprocess.Popen[bytes] | None = None
    bng_image: str = ""  # the tag of the bng image imported, once it is

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "control-plane" / "kubeconfig"

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd.sock"

    # --- up ------------------------------------------------------------------------------

    def up(self, timeout: float = 180) -> Cluster:
        _needs("containerd", "runc", "ctr", "unshare", "nsenter", "mount")
        if not Path("/usr/lib/cni/bridge").exists():
            raise ClusterFailed("/usr/lib/cni/bridge not found: `make setup` installs "
                                "containernetworking-plugins")
        binaries = node_binaries()
        if running():
            raise ClusterFailed(f"a cluster already runs here ({self.workdir}): use it, or "
                                "remove it with `make cluster-down`")
        down_leftovers(self.workdir)
        (self.workdir / "control-plane").mkdir(parents=True)
        try:
            self._host_network()
            self.cp = ControlPlane(workdir=self.workdir / "control-plane", address=SERVICE_IP,
                                   port=443, with_nodes=True,
                                   tokens=(f"{KUBELET_TOKEN},system:node:{NODE},2,"
                                           "system:nodes",)).start()
            self._controllers(binaries)
            self._node_namespace()
            self._containerd()
            self.import_image(image.pause_image())
            self._kubelet(binaries)
            self.wait_node_ready(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _host_network(self) -> None:
        netlink.add_bridge(HOST_LINK)
        netlink.add_address(HOST_LINK, f"{SERVICE_IP}/32")
        netlink.add_address(HOST_LINK, f"{NODE_IP}/32")
        # The pods' gateway is the host itself: they reach the apiserver on SERVICE_IP, a
        # local address, so nothing is forwarded.
        netlink.add_bridge(POD_BRIDGE)
        netlink.add_address(POD_BRIDGE, POD_GATEWAY)

    def _spawn(self, name: str, argv: list[str], mount_ns: bool = False) -> None:
        if mount_ns:
            assert self.holder is not None
            argv = ["nsenter", f"--target={self.holder.pid}", "--mount", "--", *argv]
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _controllers(self, binaries: Path) -> None:
        assert self.cp is not None
        cp = self.cp.workdir
        self._spawn("kube-controller-manager", [
            str(binaries / "kube-controller-manager"), "--kubeconfig", str(self.kubeconfig),
            "--root-ca-file", str(cp / "certs" / "apiserver.crt"),
            "--service-account-private-key-file", str(cp / "sa.key"),
            "--leader-elect=false", "--use-service-account-credentials=false",
            "--secure-port", str(free_port()), "--bind-address", "127.0.0.1",
            "--cert-dir", str(self.workdir / "kcm-certs"),
            "--flex-volume-plugin-dir", str(self.workdir / "volume-plugins"),
            "--controllers", "*,-bootstrapsigner,-tokencleaner",
            "--v", "1"])
        self._spawn("kube-scheduler", [
            str(binaries / "kube-scheduler"), "--kubeconfig", str(self.kubeconfig),
            "--leader-elect=false", "--secure-port", str(free_port()),
            "--bind-address", "127.0.0.1", "--v", "1"])

    def _node_namespace(self) -> None:
        """A process holding the node's mount namespace, where containerd and the kubelet run:
        mounts there never reach the host (slave of it), /run, /var/lib and /var/log are its
        own tmpfs, and the kubelet's sysctls are files under WORKDIR."""
        sysctls = self.workdir / "sysctls"
        for s in KUBELET_SYSCTLS:
            f = sysctls / s
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(Path("/proc/sys", s).read_text())
        ready = self.workdir / "node-ns.ready"
        script = "\n".join([
            "set -e",
            # As on a systemd host, mounts are shared (within this namespace: the host's stay
            # as they are); the runtime refuses HostToContainer volumes of private mounts.
            "mount --make-rshared /",
            "for d in /run /var/lib /var/log; do mount -t tmpfs -o mode=0755 bng-node $d; done",
            "mkdir -p /run/netns /var/lib/cni /var/log/pods",
            *(f"mount --bind {sysctls / s} /proc/sys/{s}" for s in KUBELET_SYSCTLS),
            f"touch {ready}",
            # The name carries WORKDIR, so that down() finds this process too.
            f'exec -a "bng-cluster-node {self.workdir}" sleep infinity',
        ])
        log = open(self.workdir / "node-ns.log", "wb")  # noqa: SIM115 - lives with the process
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "bash", "-c", script],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait("the node's mount namespace", ready.exists, self.holder, "node-ns", 10)

    def _containerd(self) -> None:
        cni = self.workdir / "cni"
        cni.mkdir()
        (cni / "10-bng-pods.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "bng-pods",
            "plugins": [{"type": "bridge", "bridge": POD_BRIDGE, "isGateway": False,
                         "ipMasq": False,
                         "ipam": {"type": "host-local", "ranges": [[{
                             "subnet": POD_SUBNET, "gateway": POD_GATEWAY.split("/")[0]}]],
                             "routes": [{"dst": "0.0.0.0/0",
                                         "gw": POD_GATEWAY.split("/")[0]}]}}],
        }, indent=1))
        sock = self.containerd_socket
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (self.workdir / "containerd.toml").write_text(f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[{cri}]
  sandbox_image = "{image.PAUSE_TAG}"
  # The machine's bounding set may lack CAP_SYS_RESOURCE: runc then cannot lower a
  # container's oom_score_adj below its own, and every sandbox fails to start.
  restrict_oom_score_adj = true
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni}"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
""")
        self._spawn("containerd", ["containerd", "--config",
                                   str(self.workdir / "containerd.toml")], mount_ns=True)
        self._wait("containerd", lambda: self._ctr("version", check=False).returncode == 0,
                   self.procs[-1], "containerd", 30)

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io",
                            *args], capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise ClusterFailed(f"ctr {' '.join(args)}: {r.stderr}")
        return r

    def import_image(self, archive: Path) -> None:
        """Load a docker-archive into the node's containerd, as a registry pull would."""
        self._ctr("images", "import", str(archive))

    def tag_image(self, source: str, target: str) -> None:
        self._ctr("images", "tag", "--force", source, target)

    def _kubelet(self, binaries: Path) -> None:
        assert self.cp is not None
        for h in Path("/sys/fs/cgroup").iterdir():  # the kubelet wants its root to exist
            if (h / "cgroup.procs").exists():
                (h / CGROUP_ROOT).mkdir(exist_ok=True)
        kubeconfig = self.cp.write_kubeconfig(self.workdir / "kubelet.kubeconfig",
                                              f"system:node:{NODE}", KUBELET_TOKEN)
        config = self.workdir / "kubelet.yaml"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": free_port(), "readOnlyPort": 0, "healthzPort": 0,
            # apiserver -> kubelet (logs, exec) is the admin's; no webhook round trips.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # The machine's cgroups are v1 controllers plus a cgroup2 at .../unified.
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}",
            "failSwapOn": False,
            # No iptables chains on the host (KUBE-FIREWALL's conntrack rule would wake
            # conntrack for every packet of the machine, benchmarks included).
            "makeIPTablesUtilChains": False,
            "podLogsDir": "/var/log/pods",
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "resolvConf": "/etc/resolv.conf",
            # A test machine's disk and memory are shared with everything else: evict late.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "nodeStatusUpdateFrequency": "5s", "syncFrequency": "10s",
        }, indent=1))
        self._spawn("kubelet", [
            str(binaries / "kubelet"), "--config", str(config),
            "--kubeconfig", str(kubeconfig), "--root-dir", str(self.workdir / "kubelet"),
            "--cert-dir", str(self.workdir / "kubelet-certs"),
            "--hostname-override", NODE, "--node-ip", NODE_IP, "--v", "1"], mount_ns=True)

    def wait_node_ready(self, timeout: float) -> None:
        def ready() -> bool:
            r = self.kubectl("get", "node", NODE, "-o", "json", check=False)
            if r.returncode != 0:
                return False
            conds = json.loads(r.stdout)["status"].get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

        self._wait(f"node {NODE} Ready", ready, self.procs[-1], "kubelet", timeout)

    def _wait(self, what: str, check: object, proc: subprocess.Popen[bytes] | None,
              log: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            if proc is not None and proc.poll() is not None:
                raise ClusterFailed(f"{what}: {log} exited with {proc.returncode}:\n"
                                    f"{self.log(log)[-3000:]}")
            if time.monotonic() > deadline:
                raise ClusterFailed(f"{what}: not within {timeout}s; {log}'s log:\n"
                                    f"{self.log(log)[-3000:]}")
            time.sleep(0.5)

    def log(self, name: str) -> str:
        p = self.workdir / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        from bng_lab.k8s_site import kubectl_binary

        kubectl = kubectl_binary()
        if not kubectl:
            raise ClusterFailed("kubectl not found: run `make setup`")
        r = subprocess.run([kubectl, "--kubeconfig", str(self.kubeconfig), *args],
                           capture_output=True, text=True, input=input, timeout=timeout)
        if check and r.returncode != 0:
            raise ClusterFailed(f"kubectl {' '.join(args)} failed:\n{r.stderr}")
        return r

    # --- down ----------------------------------------------------------------------------

    def down(self) -> None:
        down_leftovers(self.workdir)
        self.procs.clear()
        self.holder = None
        self.cp = None


def running(workdir: Path = WORKDIR) -> bool:
    """Whether a cluster's apiserver under ``workdir`` is alive (not a crash's leftovers)."""
    return any("kube-apiserver" in cmd for _, cmd in _processes_naming(workdir))


def _processes_naming(workdir: Path) -> list[tuple[int, str]]:
    out = []
    needle = str(workdir)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if needle in cmd:
                out.append((int(d.name), cmd))
    return out


def _cgroup_dirs() -> list[Path]:
    """The kubelet's cgroup trees, one per v1 hierarchy (and the unified one), deepest
    first."""
    out: list[Path] = []
    for h in Path("/sys/fs/cgroup").iterdir():
        root = h / CGROUP_ROOT
        if root.is_dir():
            out += sorted((p for p in root.rglob("*") if p.is_dir()),
                          key=lambda p: len(p.parts), reverse=True)
            out.append(root)
    return out


def _kill_cgroups() -> None:
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError):
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def down_leftovers(workdir: Path = WORKDIR) -> None:
    """Remove a cluster under ``workdir``, running or crashed: its processes (the kubelet
    first, so that it restarts nothing), the pods' processes, its links, cgroups and files."""
    for name in ("kubelet", "kube-controller-manager", "kube-scheduler"):
        for pid, cmd in _processes_naming(workdir):
            if name in cmd.split(" ", 1)[0]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        _kill_cgroups()
        procs = _processes_naming(workdir)
        for pid, _ in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not procs or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for _ in range(50):  # rmdir fails while a killed process is still exiting
        left = [d for d in _cgroup_dirs() if not _rmdir(d)]
        if not left:
            break
        time.sleep(0.1)
    for link in (HOST_LINK, POD_BRIDGE):
        netlink.remove_link(link)
    shutil.rmtree(workdir, ignore_errors=True)


def _rmdir(d: Path) -> bool:
    try:
        d.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False

"""bng installed with Helm on the one-node cluster (``bng_lab.cluster``), with real
subscribers behind the node: ``bng lab --kubernetes`` (``make cluster``) and tests/cluster.

The node's access interface is a veth in the host's own namespace (the node's); its peer
leads to an access switch namespace with an access node inserting option 82 and dhclient
subscribers behind it. The uplink is a veth to an "internet" namespace. The chart's values
name both, and put the agent's pins and lease store where ``close()`` removes them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bng_lab import chart, image
from bng_lab.cluster import NODE, Cluster, down_leftovers
from bng_lab.controlplane import REPO, free_port
from bng_lab.netlab import NetLab, remove_leftovers
from bng_lab.site import Site
from bng_operator import netlink

PREFIX = "bngk8s"
RELEASE = "bng"
NS = chart.NAMESPACE


def lines(n: int) -> dict[int, tuple[str, str]]:
    """What the access node inserts for port i: the samples' residential lines."""
    return {i: (f"olt1/1/{i}", f"res-{1000 + i}") for i in range(n)}


@dataclass
class ClusterSite:
    cluster: Cluster
    workdir: Path
    lab: NetLab = field(default_factory=lambda: NetLab(prefix=PREFIX))
    site: Site | None = None
    uplink: str = ""
    metrics_port: int = 0
    dhclients: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def values(self) -> Path:
        return self.workdir / "values.yaml"

    @property
    def bpf_dir(self) -> Path:
        return Path("/sys/fs/bpf") / self.lab.tag  # the chart mounts the host's bpffs

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def build(self, subscribers: int) -> ClusterSite:
        """The node's network and the chart's values for it."""
        site = self.site = Site(self.lab, self.workdir, config=[]).build(
            subscribers=subscribers, in_root=True, option82=lines(subscribers))
        inet = self.lab.namespace("inet")
        self.uplink = f"bu{self.lab.tag.removeprefix(self.lab.prefix)}"[:15]
        self.lab.link(None, self.uplink, inet, "eth0")
        repository, tag = self.cluster.bng_image.rsplit(":", 1)
        self.metrics_port = free_port()
        self.values.write_text(yaml.safe_dump({
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "interfaces": {"access": [site.access], "uplink": self.uplink,
                           "option82": {"trusted": [site.access]}},
            "operator": {"metricsPort": free_port()},
            "agent": {"stateDir": str(self.state_dir), "bpfDir": str(self.bpf_dir),
                      "metricsPort": self.metrics_port, "hubblePort": 0, "radiusCoaPort": 0,
                      "subscriberWriteRate": 50},
        }))
        return self

    def helm(self, *args: str) -> str:
        return chart.helm("--kubeconfig", str(self.cluster.kubeconfig), *args,
                          home=self.workdir / "helm")

    def install(self) -> None:
        """What docs/deploy.md tells a user to do: a namespace that admits the agent, a
        labelled node, ``helm install``."""
        c = self.cluster
        c.kubectl("create", "namespace", NS)
        c.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=privileged")
        c.kubectl("label", "node", NODE, "bng.dev/node=true")
        self.helm("install", RELEASE, str(chart.CHART), "-n", NS, "-f", str(self.values))

    def apply_samples(self) -> None:
        self.cluster.kubectl("apply", "-f", str(REPO / "config" / "samples"))

    def start_dhclients(self, every: int | None = None) -> None:
        """dhclient on every subscriber: renewing each ``every`` seconds, else as a CPE does."""
        from bng_lab import clients

        assert self.site is not None
        for ns in self.site.subscribers:
            if every:
                self.dhclients.append(clients.dhclient_renewing(ns, "eth0", self.workdir, every))
            else:
                self.dhclients.append(self.lab.popen(
                    ns, "dhclient", "-d", "-lf", str(self.workdir / f"dhclient-{ns}.leases"),
                    "-pf", str(self.workdir / f"dhclient-{ns}.pid"), "eth0",
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", "pods", "-n", NS, "-l", selector, "-o", "json").stdout
        return list(json.loads(out)["items"])

    def close(self) -> None:
        """Uninstall, and take away what the chart leaves by design (docs/deploy.md)."""
        for p in self.dhclients:
            p.kill()
            p.wait()
        self.dhclients.clear()
        with contextlib.suppress(RuntimeError):  # a cluster already gone
            self.helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", "--wait")
        if self.site is not None:
            self.fastpath_remove()
            self.site.close()
        shutil.rmtree(self.bpf_dir, ignore_errors=True)

    def fastpath_remove(self) -> subprocess.CompletedProcess[str]:
        """``bng fastpath-remove`` for the node's interfaces, as the uninstall docs say."""
        assert self.site is not None
        return subprocess.run([sys.executable, "-m", "bng_operator", "fastpath-remove",
                               "--interface", self.site.access, "--uplink", self.uplink,
                               "--bpf-dir", str(self.bpf_dir)],
                              capture_output=True, text=True, timeout=60)


# --- bng lab --kubernetes -----------------------------------------------------------------------


def run(subscribers: int = 5) -> int:
    """The cluster, bng installed by its chart and the samples, ``subscribers`` dhclients;
    shows ``kubectl get subscribers`` until Ctrl-C, then removes everything."""
    down()
    print("building the bng image and starting a one-node cluster (kubelet, containerd) ...")
    archive, _ = image.bng_image()
    cluster = Cluster().up()
    workdir = Path(tempfile.mkdtemp(prefix="bng-cluster-lab-"))
    cs = ClusterSite(cluster, workdir)
    try:
        cluster.import_image(archive)
        cluster.bng_image = image.bng_image()[1]
        cs.build(subscribers)
        cs.install()
        cs.apply_samples()
        cs.start_dhclients()
        print(f"kubectl --kubeconfig {cluster.kubeconfig} get pods,subscribers -A")
        while True:
            out = cluster.kubectl("get", "pods,subscribers", "-n", NS, check=False)
            sys.stdout.write("\033[H\033[2J" + out.stdout + out.stderr +
                             f"\nkubeconfig: {cluster.kubeconfig}. Ctrl-C to stop.\n")
            sys.stdout.flush()
            time.sleep(2)
    except KeyboardInterrupt:
        print("\nstopping the cluster ...")
    finally:
        cs.close()
        cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def down() -> int:
    """Remove what a crashed ``bng lab --kubernetes`` or cluster test left behind: the
    cluster, the labs' namespaces, and beside them the agents' pins and IFBs."""
    gone = remove_leftovers(PREFIX, only_dead=True)
    down_leftovers()
    dead = re.compile(rf"^(?:{PREFIX}|bngu-bt)(\d+)-")
    for pins in Path("/sys/fs/bpf").glob(f"{PREFIX}*"):
        m = dead.match(pins.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(pins, ignore_errors=True)
    for link in netlink.list_links():
        m = dead.match(link)
        if m and link.startswith("bngu-") and not _alive(int(m.group(1))):
            netlink.remove_link(link)
    if gone:
        print(f"removed {len(gone)} namespaces: {', '.join(gone)}")
    return 0


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()

"""The cluster tier: a one-node Kubernetes cluster with a real kubelet, containerd and runc
(bng_lab.cluster), and the bng image built here (bng_lab.image), imported into its runtime."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bng_lab import image
from bng_lab.cluster import KUBELET_SYSCTLS, Cluster, ClusterFailed
from bng_lab.controlplane import ControlPlaneMissing


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[Cluster]:
    """The cluster, up, with the bng image of this checkout in its runtime (``.bng_image``)."""
    if os.geteuid() != 0:
        pytest.fail("the cluster tier needs root (a kubelet, containerd): run `sudo make test`",
                    pytrace=False)
    before = _host()
    try:
        archive, tag = image.bng_image()
        cluster = Cluster().up()
    except (ClusterFailed, ControlPlaneMissing, image.ImageBuildFailed) as e:
        pytest.fail(str(e), pytrace=False)
    try:
        cluster.import_image(archive)
        cluster.bng_image = tag
        yield cluster
    finally:
        cluster.down()
    assert _host() == before, "the cluster changed the host's sysctls or firewall"


def _host() -> dict[str, str]:
    """What a kubelet would change on the host if let: the sysctls it sets, and iptables/
    nftables rules."""
    out = {s: Path("/proc/sys", s).read_text() for s in KUBELET_SYSCTLS}
    nft = subprocess.run(["nft", "-s", "list", "ruleset"], capture_output=True, text=True)
    out["nft"] = nft.stdout
    return out

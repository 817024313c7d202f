"""The agent in Kubernetes mode reads its BNGNode, the policy and reservations from the
real apiserver, and serves DHCP from them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.messages import relay82
from bng_lab.netlab import NetLab
from bng_lab.site import Site
from bng_operator.agent.dhcp.codec import Opt
from tests.conftest import Cluster
from tests.e2e.conftest import DEFAULT_CLASS, SAMPLES


@pytest.fixture
def site(netlab: NetLab, tmp_path: Path, bpffs: Path) -> Iterator[Site]:
    s = Site(netlab, tmp_path, [], node="edge-k8s").build(subscribers=2, in_root=True)
    yield s
    s.close()  # the agent, and what it made beside the lab in this namespace (its IFB)


def bngnode(name: str, access: str) -> str:
    """A BNGNode as the operator writes it, serving ``access``; its interfaces block last."""
    return f"""apiVersion: bng.dev/v1alpha1
kind: BNGNode
metadata: {{name: {name}}}
spec:
  nodeName: {name}
  interfaces:
    access: [{access}]
"""


def test_agent_serves_from_objects_in_the_apiserver(k8s: Cluster, site: Site,
                                                     tmp_path: Path) -> None:
    k8s.kubectl("apply", "-f", str(SAMPLES))
    node = bngnode("edge-k8s", site.access) + f"    option82: {{trusted: [{site.access}]}}\n"
    k8s.kubectl("apply", "-f", "-", input=node + "---\n" + DEFAULT_CLASS)
    try:
        site.start_agent("--kubeconfig", str(k8s.kubeconfig))
        plain = clients.dhclient(site.subscribers[0], "eth0", tmp_path)
        acme = clients.udhcpc(site.subscribers[1], "eth0", tmp_path,
                              {Opt.RELAY_AGENT: relay82("biz-olt1-1/1/7")})
        assert ipaddress.ip_address(plain.address) in ipaddress.ip_network("100.64.0.0/20")
        assert plain.dns == ("192.0.2.53", "192.0.2.54")
        assert acme.address == "198.51.100.10"  # reservation read from the Subscriber object
        assert "source apiserver" in site.log()
    finally:
        k8s.kubectl("delete", "bngnode", "edge-k8s", "--ignore-not-found")
        k8s.kubectl("delete", "subscriberclass", "default", "--ignore-not-found")


def test_an_agent_started_before_its_bngnode_waits_for_it(k8s: Cluster, site: Site) -> None:
    """The DaemonSet starts the agent as soon as the node is labelled; the operator writes the
    node's BNGNode a moment later. The agent waits, not ready, and says why, rather than
    exiting into a crash loop; then it serves."""
    site.node = "late-node"
    with pytest.raises(TimeoutError):
        site.start_agent("--kubeconfig", str(k8s.kubeconfig), timeout=5)
    assert site.agent is not None and site.agent.poll() is None, site.log()
    assert "no BNGNode named 'late-node'" in site.log()
    assert "waiting for the operator to write it" in site.log()
    k8s.kubectl("apply", "-f", str(SAMPLES))
    try:
        k8s.kubectl("apply", "-f", "-", input=bngnode("late-node", site.access))
        site.wait_ready(timeout=60)
        assert "Traceback" not in site.log()
    finally:
        k8s.kubectl("delete", "bngnode", "late-node", "--ignore-not-found")


def test_missing_bngnode_in_files_is_a_clear_error(site: Site) -> None:
    site.node = "no-such-node"
    with pytest.raises(RuntimeError) as e:
        site.start_agent("--config", str(SAMPLES))
    assert "no BNGNode named 'no-such-node'" in str(e.value)
    assert "Traceback" not in str(e.value)

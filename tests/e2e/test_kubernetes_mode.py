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


def test_agent_serves_from_objects_in_the_apiserver(k8s: Cluster, site: Site,
                                                     tmp_path: Path) -> None:
    k8s.kubectl("apply", "-f", str(SAMPLES))
    node = f"""apiVersion: bng.dev/v1alpha1
kind: BNGNode
metadata: {{name: edge-k8s}}
spec:
  nodeName: edge-k8s
  interfaces: {{access: [{site.access}], option82: {{trusted: [{site.access}]}}}}
"""
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


def test_missing_bngnode_is_a_clear_error(k8s: Cluster, site: Site) -> None:
    site.node = "no-such-node"
    with pytest.raises(RuntimeError) as e:
        site.start_agent("--kubeconfig", str(k8s.kubeconfig))
    assert "no BNGNode named 'no-such-node'" in str(e.value)
    assert "Traceback" not in str(e.value)

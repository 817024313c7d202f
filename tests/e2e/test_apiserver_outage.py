"""The apiserver goes away for 60 s: DHCP goes on from the node's blocks and lease store,
and the Subscriber objects catch up when it is back. A control plane of its own, so that
stopping it cannot disturb other tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bng_lab import clients
from bng_lab.controlplane import ControlPlane, ControlPlaneMissing
from bng_lab.k8s_site import K8sSite, wait_for
from bng_lab.site import Site

REPO = Path(__file__).resolve().parents[2]
OUTAGE = 60.0
RENEW_EVERY = 2


@pytest.fixture
def site(tmp_path: Path, bpffs: Path, _netlab_leftovers: None) -> Iterator[K8sSite]:
    try:
        cp = ControlPlane().start()
    except ControlPlaneMissing as e:
        pytest.fail(str(e), pytrace=False)
    s = K8sSite(cp, tmp_path)
    try:
        s.kubectl("apply", "-f", str(REPO / "crds"))
        s.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        s.prepare()
        s.add_node("edge-c", 3, {i: (f"olt-c-{i}", f"res-2{i}") for i in range(3)})
        s.apply_samples()
        s.start_operator()
        s.start_agents()
        yield s
    finally:
        s.close()
        cp.stop()


def bound_on(s: K8sSite, address: str) -> bool:
    return any((o.get("status") or {}).get("address") == address and
               o["status"].get("state") == "Bound" and o["status"].get("node") == "edge-c"
               for o in s.subscribers())


def test_dhcp_outlives_a_60s_apiserver_outage_and_subscribers_catch_up(site: K8sSite) -> None:
    node: Site = site.nodes["edge-c"]
    procs = [clients.dhclient_renewing(ns, "eth0", node.workdir, RENEW_EVERY)
             for ns in node.subscribers[:2]]
    try:
        leases = [wait_for(f"lease of {ns}", lambda ns=ns: clients.lease_history(ns, node.workdir),
                           30)[-1]["fixed-address"] for ns in node.subscribers[:2]]
        for a in leases:
            wait_for(f"Subscriber {a}", lambda a=a: bound_on(site, a), 10, 0.3)
        acks = [len(clients.dhclient_acks(ns, node.workdir)) for ns in node.subscribers[:2]]

        site.cp.stop_apiserver()
        down = time.monotonic()
        newcomer = clients.dhclient(node.subscribers[2], "eth0", node.workdir)  # a new lease
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
        after = [len(clients.dhclient_acks(ns, node.workdir)) for ns in node.subscribers[:2]]
        # every client kept renewing (every 2 s; a third of them is plenty of margin)
        assert all(b - a >= OUTAGE / RENEW_EVERY / 3 for a, b in zip(acks, after, strict=True)), \
            (acks, after)
        m = node.metrics()
        assert m["bng_kube_reachable"] == 0
        assert m['bng_kube_pending_updates{queue="events"}'] >= 1  # the newcomer waits

        site.cp.start_apiserver()
        wait_for("the newcomer's Subscriber written", lambda: bound_on(site, newcomer.address),
                 30, 0.5)
        assert all(bound_on(site, a) for a in leases)
        assert node.metrics()["bng_kube_reachable"] == 1
        assert "Traceback" not in node.log()
    finally:
        for p in procs:
            p.terminate()
            p.wait()

"""The operator against the real apiserver, no network: BNGNodes follow the labelled Nodes,
refused pools get a condition and an Event, and a pool with leases is held by its finalizer
until the nodes drain it or the force annotation lets it go; a NATPool, until no node
translates to its addresses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bng_lab.k8s_site import K8sSite, wait_for
from tests.conftest import Cluster


@pytest.fixture
def site(k8s: Cluster, tmp_path: Path) -> Iterator[K8sSite]:
    s = K8sSite(k8s.cp, tmp_path).prepare()
    for n in ("op-a", "op-b"):
        s.kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n"
                  "  labels: {bng.dev/node: 'true'}\n")
    s.kubectl("apply", "-f", "-", input=POOL)
    s.start_operator("--access-interface", "eth9")
    yield s
    s.close()
    for kind, name in (("natpool", "op-nat"), ("subscriberclass", "op-nat-class"),
                       ("ippool", "op-pool"), ("ippool", "op-pool-2"), ("node", "op-a"),
                       ("node", "op-b"), ("bngnode", "op-a"), ("bngnode", "op-b")):
        s.kubectl("patch", kind, name, "--type", "merge", "-p", '{"metadata":{"finalizers":null}}',
                  check=False)
        s.kubectl("delete", kind, name, "--ignore-not-found", "--wait=false", check=False)


POOL = """apiVersion: bng.dev/v1alpha1
kind: IPPool
metadata: {name: op-pool}
spec:
  subnets: [{cidr: 10.77.0.0/22, gateway: 10.77.0.1}]
  blockSize: 24
"""


def get(s: K8sSite, *args: str) -> Any:
    r = s.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def condition(obj: Any, type: str) -> tuple[str, str] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions", []):
        if c["type"] == type:
            return c["status"], c["reason"]
    return None


def test_bngnodes_follow_the_labelled_nodes(site: K8sSite) -> None:
    node = wait_for("BNGNode op-a", lambda: get(site, "bngnode", "op-a"), 20, 0.2)
    assert node["spec"]["interfaces"]["access"] == ["eth9"]
    assert node["metadata"]["ownerReferences"][0]["kind"] == "Node"
    blocks = [b for p in node["spec"]["pools"] for b in p["blocks"]]
    other = wait_for("BNGNode op-b", lambda: get(site, "bngnode", "op-b"), 20, 0.2)
    assert blocks and not set(blocks) & {b for p in other["spec"]["pools"] for b in p["blocks"]}
    assert "op-pool" in [p["name"] for p in node["spec"]["pools"]]
    rv = node["metadata"]["resourceVersion"]
    site.kubectl("label", "node", "op-b", "bng.dev/node-")
    wait_for("stale BNGNode deleted", lambda: get(site, "bngnode", "op-b") is None, 20, 0.2)
    after = get(site, "bngnode", "op-a")
    if after["metadata"]["resourceVersion"] != rv:  # no no-op write: a write changed the spec,
        # and only as it must: op-a took the public addresses op-b left (a NATPool whose
        # class serves them both, such as the samples' cgnat when an earlier test applied it)
        def public(n: Any) -> dict[str, set[str]]:
            return {p["name"]: set(p["addresses"]) for p in n["spec"].get("natPools", [])}

        assert {k: v for k, v in after["spec"].items() if k != "natPools"} == \
            {k: v for k, v in node["spec"].items() if k != "natPools"}
        mine, grown = public(node), public(after)
        assert grown.keys() == mine.keys() and all(mine[k] < grown[k] for k in mine), grown
    pool = get(site, "ippool", "op-pool")
    assert condition(pool, "Ready") == ("True", "Serving")
    assert pool["status"]["observedGeneration"] == pool["metadata"]["generation"]
    # op-b left holding no leases: its block went back to the pool
    assert {b["node"] for b in pool["status"]["blocks"]} == {"op-a"}


def test_an_overlapping_pool_is_refused_with_a_condition_and_an_event(site: K8sSite) -> None:
    site.kubectl("apply", "-f", "-", input=POOL.replace("op-pool", "op-pool-2").replace(
        "10.77.0.0/22", "10.77.2.0/23").replace("10.77.0.1", "10.77.2.1"))
    wait_for("Overlaps condition", lambda: condition(get(site, "ippool", "op-pool-2"), "Ready")
             == ("False", "Overlaps"), 20, 0.2)
    events = wait_for("Warning event", lambda: [
        e for e in get(site, "events", "-n", "default")["items"]
        if e["involvedObject"]["name"] == "op-pool-2" and e["reason"] == "Overlaps"], 10, 0.2)
    assert events[0]["type"] == "Warning"
    assert "10.77.0.0/22" in events[0]["message"]


def test_a_pool_with_leases_is_held_until_forced(site: K8sSite) -> None:
    wait_for("BNGNode op-a", lambda: get(site, "bngnode", "op-a"), 20, 0.2)
    pools = get(site, "bngnode", "op-a")["spec"]["pools"]
    block = next(p for p in pools if p["name"] == "op-pool")["blocks"][0]
    # what op-a's agent would report: 3 leases in its block
    site.kubectl("patch", "bngnode", "op-a", "--subresource", "status", "--type", "merge", "-p",
                 json.dumps({"status": {"blocks": [{"pool": "op-pool", "cidr": block,
                                                    "leases": 3, "size": 254}]}}))
    wait_for("leases counted", lambda: (get(site, "ippool", "op-pool")["status"]
                                        .get("allocated") == 3), 20, 0.2)
    site.kubectl("delete", "ippool", "op-pool", "--wait=false")
    wait_for("Deleting condition", lambda: condition(get(site, "ippool", "op-pool"), "Ready")
             == ("False", "Deleting"), 20, 0.2)
    pool = get(site, "ippool", "op-pool")
    assert "3 leases still held" in next(c["message"] for c in pool["status"]["conditions"]
                                         if c["type"] == "Ready")
    assert "bng.dev/leases" in pool["metadata"]["finalizers"]
    served = [p["name"] for p in get(site, "bngnode", "op-a")["spec"].get("pools", [])]
    assert "op-pool" not in served  # no longer served: no new leases, clients move
    site.kubectl("annotate", "ippool", "op-pool", "bng.dev/force-delete=true")
    wait_for("pool gone", lambda: get(site, "ippool", "op-pool") is None, 30, 0.3)


NAT = """apiVersion: bng.dev/v1alpha1
kind: NATPool
metadata: {name: op-nat}
spec:
  addresses: [198.51.100.64/30]
---
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {name: op-nat-class}
spec:
  priority: 10
  match: {remoteId: "^op-"}
  identity: remote-id
  pool: op-pool
  natPool: op-nat
"""


def nat_addresses(s: K8sSite, node: str) -> list[str]:
    spec = (get(s, "bngnode", node) or {}).get("spec", {})
    return next((p["addresses"] for p in spec.get("natPools", []) if p["name"] == "op-nat"), [])


def report(s: K8sSite, node: str, nat: list[dict[str, Any]]) -> None:
    """What the node's agent would write: it applied its spec, and these blocks are in use."""
    gen = get(s, "bngnode", node)["metadata"]["generation"]
    s.kubectl("patch", "bngnode", node, "--subresource", "status", "--type", "merge", "-p",
              json.dumps({"status": {"observedGeneration": gen, "nat": nat}}))


def test_a_nat_pool_is_held_until_its_nodes_release_its_blocks(site: K8sSite) -> None:
    site.kubectl("apply", "-f", "-", input=NAT)
    mine = wait_for("op-a's public addresses", lambda: nat_addresses(site, "op-a"), 20, 0.2)
    report(site, "op-a", [{"pool": "op-nat", "address": mine[0], "blocksUsed": 2,
                           "blocksTotal": 126}])
    wait_for("blocks counted", lambda: (get(site, "natpool", "op-nat").get("status") or {})
             .get("blocksUsed") == 2, 20, 0.2)
    site.kubectl("delete", "natpool", "op-nat", "--wait=false")
    wait_for("Deleting condition", lambda: condition(get(site, "natpool", "op-nat"), "Ready")
             == ("False", "Deleting"), 20, 0.2)
    pool = get(site, "natpool", "op-nat")
    assert "bng.dev/leases" in pool["metadata"]["finalizers"]
    assert "op-a" in next(c["message"] for c in pool["status"]["conditions"]
                          if c["type"] == "Ready")
    # no node is given it any more; its class says why
    wait_for("taken from the specs", lambda: not nat_addresses(site, "op-a")
             and not nat_addresses(site, "op-b"), 20, 0.2)
    assert condition(get(site, "subscriberclass", "op-nat-class"), "Ready") == \
        ("False", "MissingReference")
    # held while op-a's agent, on its new spec, still reports a block
    report(site, "op-a", [{"pool": "op-nat", "address": mine[0], "blocksUsed": 1,
                           "blocksTotal": 126}])
    with pytest.raises(TimeoutError):
        wait_for("pool gone", lambda: get(site, "natpool", "op-nat") is None, 12, 0.5)
    report(site, "op-a", [])  # released (and logged) on the node
    wait_for("pool gone", lambda: get(site, "natpool", "op-nat") is None, 40, 0.5)

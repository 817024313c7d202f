"""The operator splits a NATPool between nodes, against the real apiserver: disjoint shares
whose union is the pool, a node that joins gets addresses the others do not use, and the
NATPool status adds up what the BNGNodes report. The test writes BNGNode status as the
nodes' agents would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bng_lab.k8s_site import K8sSite, wait_for
from tests.conftest import Cluster
from tests.k8s.test_operator_apiserver import condition, get

NODES = ("nat-a", "nat-b", "nat-c")
PUBLIC = [f"198.18.0.{i}" for i in range(16)]
PER = (65535 - 1024 + 1) // 512

POLICY = """apiVersion: bng.dev/v1alpha1
kind: IPPool
metadata: {name: nat-inside}
spec:
  subnets: [{cidr: 10.78.0.0/22, gateway: 10.78.0.1}]
  blockSize: 24
---
apiVersion: bng.dev/v1alpha1
kind: NATPool
metadata: {name: nat-public}
spec:
  addresses: [198.18.0.0/28]
  timeouts: {hold: 0s}
---
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {name: nat-home}
spec:
  pool: nat-inside
  natPool: nat-public
"""


def node(s: K8sSite, name: str) -> None:
    s.kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n"
              "  labels: {bng.dev/node: 'true'}\n")


@pytest.fixture
def site(k8s: Cluster, tmp_path: Path) -> Iterator[K8sSite]:
    s = K8sSite(k8s.cp, tmp_path).prepare()
    for n in NODES[:2]:
        node(s, n)
    s.kubectl("apply", "-f", "-", input=POLICY)
    s.start_operator("--access-interface", "eth9")
    yield s
    s.close()
    for kind, name in (("subscriberclass", "nat-home"), ("natpool", "nat-public"),
                       ("ippool", "nat-inside"), *(("node", n) for n in NODES),
                       *(("bngnode", n) for n in NODES)):
        s.kubectl("patch", kind, name, "--type", "merge", "-p", '{"metadata":{"finalizers":null}}',
                  check=False)
        s.kubectl("delete", kind, name, "--ignore-not-found", "--wait=false", check=False)


def public(s: K8sSite, name: str) -> list[str] | None:
    """The addresses of nat-public in the BNGNode's spec; None while it has none."""
    n = get(s, "bngnode", name)
    pools = [p for p in ((n or {}).get("spec") or {}).get("natPools", [])
             if p["name"] == "nat-public"]
    return pools[0]["addresses"] if pools and pools[0].get("addresses") else None


def report(s: K8sSite, name: str, used: dict[str, int]) -> None:
    """What the node's agent writes: the spec it applied, and blocks per public address."""
    gen = get(s, "bngnode", name)["metadata"]["generation"]
    nat = [{"pool": "nat-public", "address": a, "blocksUsed": n, "blocksTotal": PER}
           for a, n in used.items()]
    s.kubectl("patch", "bngnode", name, "--subresource", "status", "--type", "merge", "-p",
              json.dumps({"status": {"observedGeneration": gen, "nat": nat}}))


def split(s: K8sSite, names: tuple[str, ...]) -> dict[str, list[str]] | None:
    got = {n: public(s, n) for n in names}
    return got if all(got.values()) else None  # type: ignore[return-value]


def test_two_nodes_get_disjoint_shares_whose_union_is_the_pool(site: K8sSite) -> None:
    shares = wait_for("both nodes' addresses", lambda: split(site, NODES[:2]), 20, 0.2)
    a, b = shares["nat-a"], shares["nat-b"]
    assert len(a) == len(b) == 8 and not set(a) & set(b)
    assert sorted(a + b) == sorted(PUBLIC)
    bn = get(site, "bngnode", "nat-a")
    assert "nat-home" in [c["name"] for c in bn["spec"]["classes"]]
    pool = wait_for("NATPool status", lambda: (lambda p: p if condition(p, "Ready") else None)(
        get(site, "natpool", "nat-public")), 20, 0.2)
    assert condition(pool, "Ready") == ("True", "Serving")
    assert condition(pool, "Exhausted") == ("False", "BlocksAvailable")
    st = pool["status"]
    assert st["blocksTotal"] == 16 * PER
    assert st["observedGeneration"] == pool["metadata"]["generation"]
    assert {n["node"]: n["addresses"] for n in st["nodes"]} == shares


def test_a_node_that_joins_gets_what_the_others_do_not_use(site: K8sSite) -> None:
    before = wait_for("both nodes' addresses", lambda: split(site, NODES[:2]), 20, 0.2)
    # nat-a's agent holds port blocks on every address it has; nat-b has no agent
    # reporting, so it uses nothing but what its spec names
    report(site, "nat-a", {a: 2 for a in before["nat-a"]})
    wait_for("usage counted", lambda: (get(site, "natpool", "nat-public")["status"]
                                      .get("blocksUsed") == 16), 20, 0.2)
    node(site, "nat-c")

    def settled() -> dict[str, list[str]] | None:
        now = split(site, NODES)
        st = get(site, "natpool", "nat-public")["status"]
        return now if now and not any(n.get("releasing") for n in st["nodes"]) else None

    # nat-b hands over three idle addresses (16 = 6 + 5 + 5: it keeps its share of 5);
    # nat-a gives none, however far over its share: every one of its addresses is in use.
    after = wait_for("nat-c's addresses", settled, 30, 0.2)
    assert after["nat-a"] == before["nat-a"]
    assert len(after["nat-b"]) == 5 and set(after["nat-b"]) < set(before["nat-b"])
    assert set(after["nat-c"]) == set(before["nat-b"]) - set(after["nat-b"])
    every = [x for v in after.values() for x in v]
    assert sorted(every) == sorted(PUBLIC) and len(every) == len(set(every))
    # the status adds up what the nodes report, per node
    report(site, "nat-c", {after["nat-c"][0]: 7})
    pool = wait_for("nat-c's blocks counted", lambda: (lambda p: p if p["status"].get(
        "blocksUsed") == 23 else None)(get(site, "natpool", "nat-public")), 20, 0.2)
    assert {n["node"]: (n["blocksUsed"], n["blocksTotal"]) for n in pool["status"]["nodes"]} \
        == {"nat-a": (16, 8 * PER), "nat-b": (0, 5 * PER), "nat-c": (7, 3 * PER)}
    assert condition(pool, "Ready") == ("True", "Serving")


def test_a_pool_too_small_for_its_nodes_says_so(site: K8sSite) -> None:
    wait_for("both nodes' addresses", lambda: split(site, NODES[:2]), 20, 0.2)
    site.kubectl("patch", "natpool", "nat-public", "--type", "merge",
                 "-p", '{"spec": {"addresses": ["198.18.0.5"]}}')

    def one_served() -> Any:  # the other node's spec may still show its old share a moment
        got = {n: public(site, n) for n in NODES[:2]}
        return got if sorted(map(bool, got.values())) == [False, True] and \
            [v for v in got.values() if v] == [["198.18.0.5"]] else None

    got = wait_for("one node keeps the one address", one_served, 20, 0.2)
    pool = wait_for("TooSmall", lambda: (lambda p: p if condition(p, "Ready") == (
        "False", "TooSmall") else None)(get(site, "natpool", "nat-public")), 20, 0.2)
    assert condition(pool, "Exhausted") == ("True", "NoFreeAddress")
    starved = next(n for n, v in got.items() if not v)
    assert "nat-home" not in [c["name"] for c in get(site, "bngnode", starved)["spec"]["classes"]]
    events = wait_for("Warning event", lambda: [
        e for e in get(site, "events", "-n", "default")["items"]
        if e["involvedObject"]["name"] == "nat-public" and e["reason"] == "TooSmall"], 10, 0.2)
    assert starved in events[0]["message"]

"""A site of namespaces with a running agent, configured from the samples plus extras."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bng_lab.netlab import NetLab
from bng_lab.radius import SECRET, FreeRadius
from bng_lab.site import Site
from tests.cases import NODE, SAMPLES

# Plain clients (no option 82) land in the residential pool; relayed ones by giaddr.
# The residential pool cut to five addresses (a /29 less network, gateway, broadcast): five
# subscribers fill it, a sixth is refused.
TINY_POOL = """apiVersion: bng.dev/v1alpha1
kind: IPPool
metadata: {name: residential}
spec:
  subnets: [{cidr: 100.64.0.0/29, gateway: 100.64.0.1}]
  blockSize: 29
  leaseTime: 1h
  dns: [192.0.2.53]
"""

DEFAULT_CLASS = """
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {name: default}
spec: {priority: 10000, pool: residential}
"""
RELAYED_CLASS = """
apiVersion: bng.dev/v1alpha1
kind: SubscriberClass
metadata: {name: relayed}
spec:
  priority: 500
  match: {relays: [198.51.100.0/24]}
  pool: business
"""


def wait(what: str, pred: Callable[[], object], timeout: float = 30) -> None:
    """Until ``pred()`` is true, polling; fails the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def committing_node() -> str:
    """The sample BNGNode with spec.commitAtOffer on (XDP ACKs new clients' REQUESTs)."""
    return (SAMPLES / NODE).read_text() + "  commitAtOffer: true\n"


def ping(site: Site, i: int, to: str, tries: int = 1) -> bool:
    """Whether subscriber ``i`` gets an answer from ``to`` within ``tries`` pings of 1 s."""
    for _ in range(tries):
        r = site.lab.run(site.subscribers[i], "ping", "-c", "1", "-W", "1", to, check=False)
        if r.returncode == 0:
            return True
    return False


def stored_leases(site: Site, columns: str, where: str = "") -> list[tuple[Any, ...]]:
    """Rows of the site's lease store: ``SELECT columns FROM leases [WHERE where]``."""
    db = sqlite3.connect(site.state_dir / f"leases-{site.node}.sqlite")
    try:
        return db.execute(f"SELECT {columns} FROM leases" +
                          (f" WHERE {where}" if where else "")).fetchall()
    finally:
        db.close()


def wait_natted(site: Site, sessions: int) -> None:
    """Until NAT translates on the uplink and ``sessions`` sessions got their blocks. The
    samples NAT the residential class: traffic started before NAT is attached (its first
    start compiles for seconds) leaves un-NATed, and breaks when NAT takes it over."""
    wait("NAT translating on uplink0",
         lambda: any("NAT translating on uplink0" in str(e.get("msg"))
                     for e in site.log_events()), timeout=120)
    wait(f"{sessions} sessions with a NAT block",
         lambda: site.metrics().get('bng_nat_block_events_total{event="allocated",'
                                    'pool="cgnat"}', 0) >= sessions)


@contextlib.contextmanager
def radius_served(site: Site, tmp_path: Path, port: int, users: str,
                  acct_port: int | None = None) -> Iterator[FreeRadius]:
    """FreeRADIUS in the node's namespace answering on ``port`` from ``users``, and the
    agent reading the servers' secret from a file (--secrets-dir); both stopped after."""
    secrets = tmp_path / "secrets" / "radius"
    secrets.mkdir(parents=True)
    (secrets / "secret").write_text(SECRET + "\n")
    fr = FreeRadius(port, users, namespace=site.bng, acct_port=acct_port).start()
    try:
        site.start_agent("--secrets-dir", str(tmp_path / "secrets"))
        yield fr
    finally:
        site.stop_agent()
        fr.close()


@pytest.fixture
def make_site(netlab: NetLab, tmp_path: Path, bpffs: Path) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def make(subscribers: int = 3, relay: bool = False, extra: str = DEFAULT_CLASS,
             replace: dict[str, str] | None = None,
             option82: dict[int, tuple[str, str]] | None = None) -> Site:
        cfg = tmp_path / "config"
        cfg.mkdir()
        for f in SAMPLES.glob("*.yaml"):
            shutil.copy(f, cfg)
        for name, text in (replace or {}).items():
            (cfg / name).write_text(text)
        (cfg / "zz-test-extra.yaml").write_text(extra)
        site = Site(netlab, tmp_path, [cfg]).build(subscribers, relay, option82=option82)
        sites.append(site)
        return site

    yield make
    for s in sites:
        s.stop_agent()

"""``bng lab``: a small ISP site on this machine, with a live table of its subscribers.

A bng node, an access node (OLT) inserting option 82, and N subscriber namespaces running
real dhclient, served by the agent in standalone mode from config/samples/.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

from bng_lab.netlab import NetLab, remove_leftovers, unmount_bpffs
from bng_lab.site import Site, subscriber_mac

PREFIX = "bnglab"
SAMPLES = Path(__file__).resolve().parents[1] / "config" / "samples"


def lines_of(i: int) -> tuple[str, str]:
    """The option 82 an access node would insert for port i: every fifth port is a business
    port (identified by circuit-id), the rest residential lines (by remote-id)."""
    if i % 5 == 2:
        return f"biz-olt1-1/1/{i}", ""
    return f"olt1/1/{i}", f"res-{1000 + i}"


def table(db: Path, site: Site) -> str:
    rows = []
    if db.exists():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT identity, mac, address, class, state, expires "
                               "FROM leases ORDER BY address").fetchall()
        except sqlite3.OperationalError:
            rows = []
        con.close()
    now = time.time()
    by_mac = {subscriber_mac(i): ns.rsplit("-", 1)[-1] for i, ns in enumerate(site.subscribers)}
    out = [f"{'NS':4} {'IDENTITY':26} {'MAC':17} {'ADDRESS':15} {'CLASS':12} {'STATE':8} EXPIRES"]
    for identity, mac, address, cls, state, expires in rows:
        left = int(expires - now)
        out.append(f"{by_mac.get(mac, '?'):4} {identity[:26]:26} {mac:17} "
                   f"{IPv4Address(address)!s:15} {cls or '-':12} {state:8} "
                   f"{f'in {left // 60}m{left % 60:02d}s' if left > 0 else 'expired'}")
    try:
        m = site.metrics()
        acks = sum(v for k, v in m.items() if k.startswith("bng_dhcp_requests_total")
                   and 'result="ack"' in k)
        drops = sum(v for k, v in m.items() if k.startswith("bng_dhcp_drops_total{"))
        out.append(f"\n{len(rows)} leases, {int(m.get('bng_leases_active', 0))} active; "
                   f"{int(acks)} ACKs, {int(drops)} drops. Ctrl-C to stop.")
    except Exception:  # the table is still worth showing while the agent restarts
        out.append("\n(agent metrics unavailable)")
    return "\n".join(out)


def run(subscribers: int = 20, config: list[Path] | None = None) -> int:
    remove_leftovers(PREFIX, only_dead=False)
    workdir = Path(tempfile.mkdtemp(prefix="bng-lab-"))
    lab = NetLab(prefix=PREFIX)
    site = Site(lab, workdir, config or [SAMPLES])
    try:
        print(f"building {subscribers} subscribers, an access node and a bng node ...")
        site.build(subscribers, option82={i: lines_of(i) for i in range(subscribers)})
        site.start_agent("--log-format", "json")
        for ns in site.subscribers:  # dhclient stays running and renews, as a CPE does
            lab.popen(ns, "dhclient", "-nw", "-lf", str(workdir / f"{ns}.leases"),
                      "-pf", str(workdir / f"{ns}.pid"), "eth0")
        print(f"agent log: {site.log_path}")
        db = site.state_dir / f"leases-{site.node}.sqlite"
        while True:
            sys.stdout.write("\033[H\033[2J" + table(db, site) + "\n")
            sys.stdout.flush()
            time.sleep(2)
    except KeyboardInterrupt:
        print("\nstopping the lab ...")
    finally:
        site.close()
        unmount_bpffs()
    return 0


def down() -> int:
    gone = remove_leftovers(PREFIX, only_dead=False) + remove_leftovers()
    unmount_bpffs()
    print(f"removed {len(gone)} namespaces" + (f": {', '.join(gone)}" if gone else ""))
    return 0

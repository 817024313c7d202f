"""The ``bng`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from bng_operator import __version__
from bng_operator.agent.dataplane import DEFAULT_PIN_ROOT
from bng_operator.api.bngnode import FAST_PATH_AUTHORITY, MAX_CPU, MAX_LEASES_PER_NODE
from bng_operator.api.common import DEFAULT_NAMESPACE, rfc3339


def _duration(seconds: float) -> str:
    """A default in the flags' own syntax (10m, not 600.0)."""
    s = int(seconds)
    return f"{s // 60}m" if s % 60 == 0 else f"{s}s"

def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return n


def _cpu(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_CPU:
        raise argparse.ArgumentTypeError(f"{text}: want a CPU number, 0 to {MAX_CPU}")
    return n


def _coa_client(text: str) -> tuple[str, Any]:
    """``ADDRESS=SECRET[/KEY]``: a CoA/Disconnect client and its Secret reference."""
    from bng_operator.api.radius import SecretRef

    address, _, ref = text.partition("=")
    name, _, key = ref.partition("/")
    try:
        ipaddress.IPv4Address(address)
        return address, SecretRef(name=name, key=key or "secret")
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: want ADDRESS=SECRET[/KEY] ({e})") from e


def _generated(args: argparse.Namespace, command: str, what: str, rendered: dict[str, str],
               separator: str, extra_glob: str = "") -> int:
    """Print ``rendered`` (file name -> text), or --write it to a directory, or --check
    that directory holds exactly it (files matching ``extra_glob`` and not rendered count as
    stale too)."""
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (args.write / name).write_text(text)
        print(f"wrote {len(rendered)} {what} to {args.write}/", file=sys.stderr)
    elif args.check:
        stale = [n for n, t in rendered.items()
                 if not (args.check / n).exists() or (args.check / n).read_text() != t]
        if extra_glob:
            stale += sorted(p.name for p in args.check.glob(extra_glob)
                            if p.name not in rendered)
        if stale:
            print(f"out of date: {', '.join(stale)}; run: bng {command} --write "
                  f"{args.check}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(separator.join(rendered.values()))
    return 0


def _cmd_crds(args: argparse.Namespace) -> int:
    from bng_operator.api.crd import crd_file_name, crds, render_yaml

    return _generated(args, "crds", "CRDs", {crd_file_name(c): render_yaml(c) for c in crds()},
                      "---\n")


def _cmd_dashboards(args: argparse.Namespace) -> int:
    from bng_operator.dashboards import render  # needs the dev dependency grafana-foundation-sdk

    return _generated(args, "dashboards", "dashboards", render(), "\n", extra_glob="*.json")


def _cmd_validate(args: argparse.Namespace) -> int:
    from bng_operator.api.documents import load, yaml_files

    objects, errors = load(yaml_files(args.paths))
    for e in errors:
        print(e, file=sys.stderr)
    if not args.quiet:
        for o in objects:
            print(f"ok  {o.kind}/{o.name}")
    return 1 if errors else 0


def _cmd_agent(args: argparse.Namespace) -> int:
    import asyncio

    from bng_operator import logs
    from bng_operator.agent.report.kube import ReportSettings
    from bng_operator.agent.runtime import AgentSettings, run_agent
    from bng_operator.agent.sources import FileSource, KubeSource, Source
    from bng_operator.api.common import parse_duration

    logs.setup(args.log_level, args.log_format)
    try:
        report = ReportSettings(rate=args.subscriber_write_rate,
                                ttl=parse_duration(args.subscriber_ttl),
                                accounting_interval=parse_duration(args.accounting_interval))
        authority = parse_duration(args.fast_path_authority)
    except ValueError as e:
        print(f"bng agent: {e}", file=sys.stderr)
        return 2
    if authority <= 0:
        print("bng agent: --fast-path-authority must be positive", file=sys.stderr)
        return 2
    if report.rate <= 0:
        print("bng agent: --subscriber-write-rate must be positive", file=sys.stderr)
        return 2
    source: Source
    if args.config:
        source = FileSource(args.config)
    else:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        source = KubeSource(args.node, args.kubeconfig, args.namespace,
                            cache=args.state_dir / f"objects-{args.node}.json")
    settings = AgentSettings(node=args.node, state_dir=args.state_dir,
                             metrics_host=args.metrics_host, metrics_port=args.metrics_port,
                             fast_path=not args.no_fast_path, bpf_pin_root=args.bpf_dir,
                             xdp_mode=args.xdp_mode, rx_vlan_offload=args.rx_vlan_offload,
                             qos=not args.no_qos and not args.no_fast_path,
                             nat=not args.no_nat,
                             namespace=args.namespace, report=report,
                             fast_path_authority=authority, secrets_dir=args.secrets_dir,
                             radius_acct_queue=args.radius_acct_queue,
                             radius_coa_address=args.radius_coa_address,
                             radius_coa_port=args.radius_coa_port,
                             radius_coa_clients=tuple(args.radius_coa_client or ()),
                             hubble_listen=args.hubble_listen,
                             hubble_peer_address=args.hubble_peer_address,
                             flows_kept=args.flows, flows_linger=args.flows_linger)
    return asyncio.run(run_agent(settings, source))


def _cmd_operator(args: argparse.Namespace) -> int:
    from bng_operator import logs
    from bng_operator.api.common import parse_duration
    from bng_operator.operator.main import OperatorSettings, run
    from bng_operator.operator.reconcile import Settings, parse_label
    from bng_operator.policy.render import NodeDefaults

    logs.setup(args.log_level, args.log_format)
    try:
        label = parse_label(args.node_label)
    except ValueError as e:
        print(f"bng operator: --node-label: {e}", file=sys.stderr)
        return 2
    if not 0 < args.block_threshold <= 1:
        print("bng operator: --block-threshold must be in (0, 1]", file=sys.stderr)
        return 2
    try:
        authority = parse_duration(args.fast_path_authority)
    except ValueError as e:
        print(f"bng operator: --fast-path-authority: {e}", file=sys.stderr)
        return 2
    for cidr in args.option82_trusted_relay or ():
        try:
            ipaddress.IPv4Network(cidr)
        except ValueError as e:
            print(f"bng operator: --option82-trusted-relay: {e}", file=sys.stderr)
            return 2
    defaults = NodeDefaults(access=tuple(args.access_interface or ["eth1"]),
                            uplink=args.uplink_interface, max_leases=args.max_leases,
                            option82_trusted=tuple(args.option82_trusted_interface or ()),
                            option82_relays=tuple(args.option82_trusted_relay or ()),
                            option82_untrusted=args.option82_untrusted,
                            commit_at_offer=args.commit_at_offer,
                            event_loop_cpu=args.event_loop_cpu)
    return run(OperatorSettings(
        reconcile=Settings(node_label=label, defaults=defaults,
                           block_threshold=args.block_threshold,
                           fast_path_authority=authority),
        kubeconfig=args.kubeconfig, peering=args.peering, priority=args.priority,
        metrics_host=args.metrics_host, metrics_port=args.metrics_port))


def _cmd_status(args: argparse.Namespace) -> int:
    import urllib.error

    from bng_operator.status import fetch, render

    try:
        st = fetch(args.metrics)
    except (urllib.error.URLError, OSError) as e:
        print(f"no agent answers at {args.metrics}: {e}", file=sys.stderr)
        return 2
    print(render(st))
    return 0 if st.ready else 1


def _cmd_observe(args: argparse.Namespace) -> int:
    from bng_operator.agent.observe.client import (
        as_json,
        compact,
        flows,
        request,
        site_servers,
    )

    servers = list(args.server or [])
    if args.site:
        host, _, port = args.site.rpartition(":")
        try:
            servers += site_servers(host or args.site, int(port or 4245))
        except OSError as e:
            print(f"cannot resolve {args.site}: {e}", file=sys.stderr)
            return 2
    if not servers:
        print("no agent to ask: give --server HOST:PORT (repeatable) or --site", file=sys.stderr)
        return 2
    req = request(args.last, args.follow, args.verdict or [], args.ip or [], args.port or [])
    show = as_json if args.output == "json" else compact
    try:
        for r in flows(servers, req):
            print(show(r), flush=True)
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _cmd_fastpath_remove(args: argparse.Namespace) -> int:
    from bng_operator.agent.dataplane import nat, qos
    from bng_operator.agent.dataplane.fastpath import remove
    from bng_operator.agent.qos.feature import ifb_name

    qos.remove(args.bpf_dir, [(i, ifb_name(i)) for i in args.interface])
    nat.remove(args.bpf_dir, args.uplink)
    remove(args.bpf_dir, [(i, None) for i in args.interface], args.xdp_mode)
    print(f"detached the fast path and shaping from {', '.join(args.interface) or 'no interface'}"
          f"{' and NAT from ' + ', '.join(args.uplink) if args.uplink else ''}"
          f"; removed {args.bpf_dir}")
    return 0


def _cmd_nat_lookup(args: argparse.Namespace) -> int:
    import time
    from datetime import datetime

    from bng_operator.agent.nat.log import lookup

    try:
        public = ipaddress.IPv4Address(args.public)
        at = time.time() if args.at is None else datetime.fromisoformat(
            args.at.replace("Z", "+00:00")).timestamp()
    except ValueError as e:
        print(f"bng nat lookup: {e}", file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:
        print("bng nat lookup: PORT must be 1-65535", file=sys.stderr)
        return 2
    files = [args.file] if args.file else sorted(args.state_dir.glob("nat-*.sqlite"))
    if not files or not all(f.exists() for f in files):
        print(f"bng nat lookup: no NAT file ({args.file or args.state_dir / 'nat-*.sqlite'}); "
              "give --file or --state-dir", file=sys.stderr)
        return 2
    answers = [a for f in files for a in lookup(f, public, args.port, at)]
    if args.json:
        print(json.dumps([_answer(a) for a in answers]))
    elif not answers:
        print(f"nobody had {public}:{args.port} at {rfc3339(at)} (as far as {', '.join(map(str, files))} "
              "knows)")
    for a in answers if not args.json else ():
        print(f"{public}:{args.port} at {rfc3339(at)}: {a.inside} "
              f"({a.subscriber or 'see the lease log for this inside address'}) "
              f"pool {a.pool}, {a.mode}, ports {a.ports}, since {rfc3339(a.since)}"
              f"{', until ' + rfc3339(a.until) if a.until else ''}"
              f"{', mac ' + a.mac if a.mac else ''}"
              f"{', circuit-id ' + a.circuit_id if a.circuit_id else ''}"
              f"{', remote-id ' + a.remote_id if a.remote_id else ''}")
    return 0 if answers else 1


def _answer(a: Any) -> dict[str, Any]:
    return {"public": str(a.public), "port": a.port, "at": rfc3339(a.at), "pool": a.pool,
            "inside": str(a.inside), "mode": a.mode, "subscriber": a.subscriber, "mac": a.mac,
            "circuitId": a.circuit_id, "remoteId": a.remote_id, "ports": a.ports,
            "since": rfc3339(a.since), "until": rfc3339(a.until) if a.until else None}


def _cmd_lab(args: argparse.Namespace) -> int:
    try:
        from bng_lab import cluster_lab, lab
    except ImportError:  # the image ships the product only
        print("bng lab: the lab (package bng_lab) is not installed here; run it from a "
              "checkout: make lab", file=sys.stderr)
        return 2

    if args.kubernetes:
        return cluster_lab.down() if args.down else cluster_lab.run(args.subscribers or 5)
    return lab.down() if args.down else lab.run(args.subscribers or 20, args.config)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bng",
        description="bng: a Kubernetes-native, eBPF-accelerated Broadband Network Gateway.",
        epilog="Docs: README.md. Custom resources: `kubectl explain ippool.spec` once the CRDs "
               "are applied (`bng crds | kubectl apply -f -`).",
    )
    p.add_argument("--version", action="version", version=f"bng {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser("crds", help="print the CustomResourceDefinitions (generated from the API)",
                       description="Print, write or check the CRDs generated from bng_operator/api.")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--write", type=Path, metavar="DIR", help="write one file per CRD into DIR")
    g.add_argument("--check", type=Path, metavar="DIR",
                   help="exit 1 when the files in DIR differ from the models")
    c.set_defaults(func=_cmd_crds)

    c = sub.add_parser("dashboards", help="print the Grafana dashboards (dev: needs "
                       "grafana-foundation-sdk)",
                       description="Print, write or check the Grafana dashboards generated by "
                                   "bng_operator/dashboards.py.")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--write", type=Path, metavar="DIR", help="write one JSON file per dashboard")
    g.add_argument("--check", type=Path, metavar="DIR",
                   help="exit 1 when the files in DIR differ from the generator")
    c.set_defaults(func=_cmd_dashboards)

    v = sub.add_parser("validate", help="check bng objects in YAML files before applying them",
                       description="Validate IPPool, SubscriberClass, ... documents with the same "
                                   "rules the apiserver enforces. Exit 1 on any error.")
    v.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    v.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    v.set_defaults(func=_cmd_validate)

    a = sub.add_parser(
        "agent", help="run the node agent (DHCP server, dataplane)",
        description="Run the agent of one node. Standalone: --config FILE|DIR (the same objects "
                    "as in Kubernetes, from YAML). Kubernetes: the node's BNGNode and policy "
                    "from the apiserver (in-cluster, or --kubeconfig). SIGHUP reloads the config.")
    a.add_argument("--node", required=True, help="name of this node's BNGNode")
    a.add_argument("--config", type=Path, action="append", metavar="PATH",
                   help="standalone mode: YAML file or directory (repeatable)")
    a.add_argument("--kubeconfig", help="Kubernetes mode outside a cluster")
    a.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="namespace of Subscriber objects")
    a.add_argument("--state-dir", type=Path, default=Path("/var/lib/bng"),
                   help="where the lease store lives (default: %(default)s)")
    a.add_argument("--secrets-dir", type=Path, default=Path("/etc/bng/secrets"),
                   help="standalone mode: RADIUS secrets, as <name>/<key> files (the layout of "
                        "a mounted Secret; default: %(default)s). Kubernetes mode reads the "
                        "Secrets of --namespace")
    a.add_argument("--radius-acct-queue", type=int, default=100_000, metavar="RECORDS",
                   help="RADIUS accounting records kept (on disk) until a server acknowledges "
                        "them; when full, Interim-Updates are dropped first, counted in "
                        "bng_radius_acct_dropped_total (default: %(default)s)")
    a.add_argument("--radius-coa-port", type=int, default=3799, metavar="PORT",
                   help="the RADIUS CoA/Disconnect listener (RFC 5176), opened when a class "
                        "uses RADIUS; 0: none (default: %(default)s)")
    a.add_argument("--radius-coa-address", default="0.0.0.0", metavar="ADDRESS",
                   help="the address it listens on (default: %(default)s)")
    a.add_argument("--radius-coa-client", type=_coa_client, action="append",
                   metavar="ADDRESS=SECRET[/KEY]",
                   help="a CoA/Disconnect client besides the classes' RADIUS servers (which "
                        "are clients with their own secrets), its secret read as theirs: the "
                        "Secret SECRET, key KEY (default: secret); repeatable")
    a.add_argument("--metrics-host", default="0.0.0.0")
    a.add_argument("--metrics-port", type=int, default=9641,
                   help="/metrics, /healthz, /readyz (default: %(default)s)")
    a.add_argument("--hubble-listen", default="0.0.0.0:4245", metavar="HOST:PORT|unix:///PATH",
                   help="Hubble's Observer API, for `hubble observe --server` and "
                        "hubble-relay; '' serves none (default: %(default)s)")
    a.add_argument("--hubble-peer-address", default="", metavar="HOST:PORT",
                   help="the address hubble-relay dials for this node (default: the node's "
                        "name and the --hubble-listen port)")
    a.add_argument("--flows", type=_positive_int, default=4096,
                   help="flows kept in memory for `hubble observe` (default: %(default)s)")
    a.add_argument("--flows-linger", type=float, default=300.0, metavar="SECONDS",
                   help="how long the programs go on reporting flows after the last observer "
                        "left (default: %(default)s)")
    a.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    a.add_argument("--log-format", default="json", choices=["json", "text"])
    a.add_argument("--no-fast-path", action="store_true",
                   help="serve DHCP from userspace only, with no XDP program")
    a.add_argument("--bpf-dir", type=Path, default=DEFAULT_PIN_ROOT,
                   help="where the fast path's program and maps are pinned (default: %(default)s)")
    a.add_argument("--xdp-mode", default="native", choices=["native", "generic"],
                   help="XDP in the driver (native) or after the stack allocates an skb")
    a.add_argument("--no-qos", action="store_true",
                   help="no shaping: leave the access interfaces' qdiscs alone")
    a.add_argument("--no-nat", action="store_true",
                   help="no NAT44: leave the uplink alone (sessions of NAT classes then get "
                        "no translation)")
    a.add_argument("--rx-vlan-offload", default="disable", choices=["disable", "keep"],
                   help="an access NIC that strips VLAN tags hides them from XDP: turn that "
                        "off where the fast path attaches, or keep it and warn (tagged "
                        "subscribers then miss the fast path) (default: %(default)s)")
    a.add_argument("--fast-path-authority", default=_duration(FAST_PATH_AUTHORITY),
                   metavar="DURATION",
                   help="the XDP program answers for this long after the agent's last "
                        "heartbeat, then passes everything to the slow path; set the operator's "
                        "the same (default: %(default)s)")
    k = a.add_argument_group("Kubernetes mode: Subscriber objects")
    k.add_argument("--subscriber-write-rate", type=float, default=20.0, metavar="PER_SECOND",
                   help="at most this many apiserver writes per second (default: %(default)s)")
    k.add_argument("--subscriber-ttl", default="24h", metavar="DURATION",
                   help="delete released/expired Subscribers after this (default: %(default)s)")
    k.add_argument("--accounting-interval", default="5m", metavar="DURATION",
                   help="refresh bound Subscribers' lease end this often (default: %(default)s)")
    a.set_defaults(func=_cmd_agent)

    o = sub.add_parser(
        "operator", help="run the operator (policy -> per-node BNGNode, address blocks)",
        description="Watch IPPool, SubscriberClass, QoSPolicy, NATPool and the labelled Nodes; "
                    "write one BNGNode per node with its address blocks, and the pools' "
                    "status. Replicas elect one active instance through kopf peering.")
    o.add_argument("--kubeconfig", help="outside a cluster (default: in-cluster)")
    o.add_argument("--node-label", default="bng.dev/node=true",
                   help="Nodes that run bng: key=value or key (default: %(default)s)")
    o.add_argument("--access-interface", action="append", metavar="IFNAME",
                   help="access interface of every node (repeatable; default eth1); a node's "
                        "annotation bng.dev/access-interfaces overrides it")
    o.add_argument("--uplink-interface", metavar="IFNAME",
                   help="uplink of every node; annotation bng.dev/uplink-interface overrides it")
    o.add_argument("--option82-trusted-interface", action="append", metavar="IFNAME",
                   help="access interface whose access node inserts option 82 (RFC 3046): it "
                        "is believed there (repeatable; a node's annotation "
                        "bng.dev/option82-trusted-interfaces overrides it)")
    o.add_argument("--option82-trusted-relay", action="append", metavar="CIDR",
                   help="relay agents (giaddr) whose option 82 is believed (repeatable)")
    o.add_argument("--option82-untrusted", default="drop", choices=["drop", "strip"],
                   help="a request carrying option 82 from anywhere else: dropped, or served "
                        "as if it had none (default: %(default)s)")
    o.add_argument("--max-leases", type=int, default=MAX_LEASES_PER_NODE,
                   help="per node: sizes lease store and maps (default: %(default)s)")
    o.add_argument("--commit-at-offer", action="store_true",
                   help="per node: commit new clients' leases at OFFER, so that the XDP fast "
                        "path ACKs their REQUEST (BNGNode spec.commitAtOffer)")
    o.add_argument("--event-loop-cpu", type=_cpu, metavar="CPU",
                   help="per node: the CPU each agent's process (its event loop) runs on; its "
                        "helper processes run on its other CPUs (BNGNode spec.eventLoopCPU; "
                        "default: the kernel places them)")
    o.add_argument("--block-threshold", type=float, default=0.8,
                   help="a node whose blocks are this full gets another (default: %(default)s)")
    o.add_argument("--fast-path-authority", default=_duration(FAST_PATH_AUTHORITY),
                   metavar="DURATION",
                   help="the agents' --fast-path-authority: a departed node's blocks are held "
                        "this much longer than its longest lease (default: %(default)s)")
    o.add_argument("--peering", default="bng", help="ClusterKopfPeering name (default: bng)")
    o.add_argument("--priority", type=int,
                   help="peering priority (default: random, so one replica is active)")
    o.add_argument("--namespace", default=DEFAULT_NAMESPACE, help=argparse.SUPPRESS)
    o.add_argument("--metrics-host", default="0.0.0.0")
    o.add_argument("--metrics-port", type=int, default=9642)
    o.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    o.add_argument("--log-format", default="json", choices=["json", "text"])
    o.set_defaults(func=_cmd_operator)

    st = sub.add_parser("status", help="one node's health at a glance, from its agent's "
                        "/metrics and /readyz (exit 1: not ready)")
    st.add_argument("--metrics", default="http://127.0.0.1:9641",
                    help="the agent's metrics endpoint (default: %(default)s)")
    st.set_defaults(func=_cmd_status)

    ob = sub.add_parser("observe", help="flows of several agents, merged by time (Hubble's "
                        "API; `hubble observe --server` for one)")
    ob.add_argument("--server", action="append", metavar="HOST:PORT",
                    help="an agent's Hubble API; repeatable")
    ob.add_argument("--site", metavar="NAME[:PORT]",
                    help="every agent behind this DNS name (the chart's headless Service "
                         "bng-hubble.<namespace>)")
    ob.add_argument("--last", type=int, default=20, help="the last N flows of all agents")
    ob.add_argument("-f", "--follow", action="store_true", help="then stream new flows")
    ob.add_argument("--verdict", action="append", choices=["FORWARDED", "DROPPED",
                                                           "TRANSLATED"])
    ob.add_argument("--ip", action="append", help="source or destination address or CIDR")
    ob.add_argument("--port", action="append", type=int, help="source or destination port")
    ob.add_argument("-o", "--output", choices=["compact", "json"], default="compact")
    ob.set_defaults(func=_cmd_observe)

    r = sub.add_parser(
        "fastpath-remove", help="detach the XDP fast path and shaping, unpin their maps "
                                "(uninstall)",
        description="The agent leaves the fast path and shaping attached when it exits, so "
                    "DHCP renewals and shaping go on across restarts and upgrades. This takes "
                    "them away for good: the XDP program, the tc classifiers, the HTB roots "
                    "and the IFBs.")
    r.add_argument("--interface", action="append", default=[], metavar="IFNAME",
                   help="access interface to detach from (repeatable)")
    r.add_argument("--uplink", action="append", default=[], metavar="IFNAME",
                   help="uplink to take NAT from (repeatable)")
    r.add_argument("--bpf-dir", type=Path, default=DEFAULT_PIN_ROOT)
    r.add_argument("--xdp-mode", default="native", choices=["native", "generic"])
    r.set_defaults(func=_cmd_fastpath_remove)

    n = sub.add_parser("nat", help="NAT44: who had a public address and port",
                       description="Questions for the NAT's block log.")
    nsub = n.add_subparsers(dest="nat_command", metavar="COMMAND", required=True)
    nl = nsub.add_parser(
        "lookup", help="which subscriber had PUBLIC_IP:PORT at a time (the abuse desk's "
                       "question)",
        description="Reads the block log (port-block mode) and the formula log "
                    "(deterministic mode) of the NAT file. Exit 0: answered; 1: nobody.")
    nl.add_argument("public", metavar="PUBLIC_IP")
    nl.add_argument("port", type=int, metavar="PORT")
    nl.add_argument("--at", metavar="TIME",
                    help="ISO 8601 time, e.g. 2026-12-02T07:30:00Z (default: now)")
    nl.add_argument("--state-dir", type=Path, default=Path("/var/lib/bng"),
                    help="the agent's state directory: every nat-NODE.sqlite in it "
                         "(default: %(default)s)")
    nl.add_argument("--file", type=Path, help="one NAT file")
    nl.add_argument("--json", action="store_true", help="print the answers as JSON")
    nl.set_defaults(func=_cmd_nat_lookup)

    lb = sub.add_parser(
        "lab", help="run a small ISP site on this machine (root)",
        description="Build a bng node, an access node inserting option 82 and N subscriber "
                    "network namespaces running dhclient; serve them with the agent in "
                    "standalone mode and show a live table of subscribers. Ctrl-C tears it "
                    "all down.")
    lb.add_argument("--subscribers", type=int, metavar="N",
                    help="dhclient subscribers (default: 20; with --kubernetes 5)")
    lb.add_argument("--config", type=Path, action="append", metavar="PATH",
                    help="standalone config (default: config/samples/)")
    lb.add_argument("--kubernetes", action="store_true",
                    help="instead: a one-node Kubernetes cluster (kubelet, containerd) with "
                         "bng installed by its Helm chart from an image built here, and the "
                         "samples applied (make cluster)")
    lb.add_argument("--down", action="store_true", help="only remove what a crashed lab left")
    lb.set_defaults(func=_cmd_lab)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

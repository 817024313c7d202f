"""The ``bng`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bng_operator import __version__


def _cmd_crds(args: argparse.Namespace) -> int:
    from bng_operator.api.crd import crd_file_name, crds, render_yaml

    rendered = {crd_file_name(c): render_yaml(c) for c in crds()}
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (args.write / name).write_text(text)
        print(f"wrote {len(rendered)} CRDs to {args.write}/", file=sys.stderr)
    elif args.check:
        stale = [n for n, t in rendered.items()
                 if not (args.check / n).exists() or (args.check / n).read_text() != t]
        if stale:
            print(f"out of date: {', '.join(stale)}; run: bng crds --write {args.check}",
                  file=sys.stderr)
            return 1
    else:
        sys.stdout.write("---\n".join(rendered.values()))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from bng_operator.api.documents import load, yaml_files

    objects, errors = load(yaml_files(args.paths))
    for e in errors:
        print(e, file=sys.stderr)
    if not args.quiet:
        for o in objects:
            print(f"ok  {o.kind}/{o.name}")
    return 1 if errors else 0


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

    v = sub.add_parser("validate", help="check bng objects in YAML files before applying them",
                       description="Validate IPPool, SubscriberClass, ... documents with the same "
                                   "rules the apiserver enforces. Exit 1 on any error.")
    v.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    v.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    v.set_defaults(func=_cmd_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

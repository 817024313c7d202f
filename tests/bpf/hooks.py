"""What sits on an interface's tc hooks, for the tests of the data paths' classifiers."""

from __future__ import annotations

import subprocess


def tcx_programs(ns: str, dev: str) -> dict[str, list[int]]:
    """The ids of the programs on ``dev``'s tcx hooks, by direction, in the order they run."""
    from bng_operator import netlink
    from bng_operator.agent.dataplane.loader import TCX_ATTACH_TYPES, tcx_program_ids

    index = netlink.interface_info(dev, ns)[0]
    with netlink.in_netns(ns):
        return {d: tcx_program_ids(index, t) for d, t in TCX_ATTACH_TYPES.items()}


def qdiscs(ns: str, dev: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev],
                          capture_output=True, text=True, check=True).stdout


def add_clsact(ns: str, dev: str) -> None:
    """What an older agent (cls_bpf on clsact) left: would run ours a second time."""
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "clsact"],
                   check=True)

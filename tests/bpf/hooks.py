"""What sits on an interface's tc hooks, for the tests of the data paths' classifiers."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


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


class DataPath(Protocol):
    """What the tcx lifecycle check needs of a data path (QosPath, NatPath)."""

    generation: str
    pin_dir: Path | None

    def attached(self, ifname: str, ns: str | None = None) -> bool: ...
    def remove_other_generations(self) -> list[str]: ...
    def close(self) -> None: ...


def check_pinned_links(ns: str, root: Path, kind: str, make: Callable[[int], DataPath],
                       attach: Callable[[DataPath], None],
                       programs: Callable[[DataPath], dict[str, int]],
                       remove: Callable[[], None], first: str) -> None:
    """On a0 in ``ns``: ``make(0)``'s programs go on as tcx links, pinned (an older agent's
    clsact goes once they are on); they outlive the path; ``make(0)`` again adopts them;
    ``make(1)``, another generation, swaps its programs into them and sweeps the old pins;
    ``remove()`` takes them off and ``root/kind`` away. ``first``: the name tools see on
    egress."""
    from bng_operator.agent.dataplane import classifiers

    shutil.rmtree(root, ignore_errors=True)  # a crashed run's
    add_clsact(ns, "a0")
    paths: list[DataPath] = []
    try:
        p = make(0)
        paths.append(p)
        attach(p)
        ids = {d: [i] for d, i in programs(p).items()}
        assert tcx_programs(ns, "a0") == ids
        assert p.attached("a0", ns) and "clsact" not in qdiscs(ns, "a0")
        assert classifiers.tc_program_name("a0", "egress", ns) == first
        assert p.pin_dir is not None and (p.pin_dir / "tcx_a0_egress").exists()
        p.close()  # the agent stops: the pinned links stay
        assert tcx_programs(ns, "a0") == ids

        again = make(0)  # restarted: adopts them
        paths.append(again)
        assert again.attached("a0", ns)
        attach(again)
        assert tcx_programs(ns, "a0") == ids

        new = make(1)  # another generation
        paths.append(new)
        assert new.generation != p.generation and not new.attached("a0", ns)
        attach(new)  # swaps its programs into the old links: never a moment without
        assert tcx_programs(ns, "a0") == {d: [i] for d, i in programs(new).items()}
        assert new.remove_other_generations() == [p.generation]
        assert new.attached("a0", ns)  # pinned by the new generation now

        remove()
        assert tcx_programs(ns, "a0") == {"ingress": [], "egress": []}
        assert not new.attached("a0", ns) and not (root / kind).exists()
    finally:
        for path in paths:
            path.close()
        shutil.rmtree(root, ignore_errors=True)

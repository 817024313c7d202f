"""A data path's tc programs on interfaces' hooks, for the access data path (QoS) and NAT.

They are tcx links (Linux 6.6+): a bpf() link per hook, pinned as ``tcx_<interface>_<direction>``
in the generation's pin directory, where a restarted agent adopts it and a new generation
swaps its program in place (BPF_LINK_UPDATE), so the hook never goes empty. Unpinned (no pin
directory) a link lives as long as its ``Classifiers``. A tcx link runs its program without
cls_bpf's classifier calls (each call and return pays a speculation thunk on some CPUs).

On a kernel without tcx the programs are cls_bpf filters on a clsact qdisc. With tcx any
clsact qdisc on the interface is removed once ours are on: a cls_bpf program left there by an
older agent would run after ours whenever ours said "next".
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bng_operator import netlink
from bng_operator.agent.dataplane.loader import (
    TCX_ATTACH_TYPES,
    attach_tcx,
    detach_link,
    link_program_id,
    pin_fd,
    pinned_fd,
    program_id,
    program_name,
    tcx_program_ids,
    update_link,
)

# direction ("ingress" or "egress") -> (the program's function name, its fd)
Programs = dict[str, tuple[str, int]]


class Classifiers:
    """The tc programs of one generation of a data path, on the interfaces it attaches to;
    ``pin_dir``: that generation's pin directory (its siblings are the other generations)."""

    def __init__(self, pin_dir: Path | None) -> None:
        self.pin_dir = pin_dir
        self._links: dict[tuple[str | None, str], int] = {}  # unpinned tcx links, ours

    def attach(self, ifname: str, programs: Programs, ns: str | None = None) -> None:
        """Each program on its hook of ``ifname``, kept if already there."""
        index = netlink.interface_info(ifname, ns)[0]
        hooks = {self._attach_tcx(ifname, index, direction, fn, fd, ns)
                 for direction, (fn, fd) in programs.items()}
        if hooks == {True}:
            netlink.remove_clsact(ifname, ns)  # after ours are on: never a moment without

    def _attach_tcx(self, ifname: str, index: int, direction: str, fn: str, prog_fd: int,
                    ns: str | None) -> bool:
        """``prog_fd`` on ``ifname``'s ``direction`` as a tcx link: the one pinned for it (by
        this generation or an older one: its program swapped in place), else a new one. On
        a kernel without tcx, on clsact instead; False then."""
        attach_type = TCX_ATTACH_TYPES[direction]
        name = f"tcx_{ifname}_{direction}"
        with netlink.in_netns(ns):
            on_hook = set(tcx_program_ids(index, attach_type))
            held = self._links.get((ns, name))
            if held is not None and link_program_id(held) in on_hook:
                if link_program_id(held) != program_id(prog_fd):
                    update_link(held, prog_fd)
                return True
            if held is not None:  # off its hook (the interface was made again): gone
                os.close(self._links.pop((ns, name)))
            if self.pin_dir is not None and self._adopt_link(name, on_hook, prog_fd):
                return True
            fd = attach_tcx(prog_fd, index, attach_type)
        if fd is None:
            netlink.attach_tc(ifname, prog_fd, direction, fn, ns)  # type: ignore[arg-type]
            return False
        if self.pin_dir is None:
            self._links[(ns, name)] = fd
            return True
        try:
            pin_fd(fd, self.pin_dir / name)
        finally:
            os.close(fd)  # the pin holds it
        return True

    def _adopt_link(self, name: str, on_hook: set[int], prog_fd: int) -> bool:
        """Take over the link pinned as ``name`` by this generation or an older one, if it
        is still on its hook: this program in it, pinned here (the old pin goes with its
        generation's sweep). Stale pins (the interface was made again) are removed."""
        assert self.pin_dir is not None
        mine = self.pin_dir / name
        for pin in sorted(self.pin_dir.parent.glob(f"*/{name}"), key=lambda p: p != mine):
            fd = pinned_fd(pin)
            if fd is None:
                continue
            try:
                if link_program_id(fd) not in on_hook:
                    pin.unlink(missing_ok=True)
                    continue
                if link_program_id(fd) != program_id(prog_fd):
                    update_link(fd, prog_fd)
                if pin != mine:
                    pin_fd(fd, mine)
                return True
            finally:
                os.close(fd)
        return False

    @staticmethod
    def attached(ifname: str, programs: Programs, ns: str | None = None) -> bool:
        """Whether these programs classify ``ifname``: first on its tcx hooks (by program
        id: naming one by its id needs CAP_SYS_ADMIN, which the agent lacks), else on its
        clsact hooks (by name)."""
        index = netlink.interface_info(ifname, ns)[0]
        with netlink.in_netns(ns):
            first = {d: tcx_program_ids(index, TCX_ATTACH_TYPES[d])[:1] for d in programs}
        if any(first.values()):
            return all(first[d] == [program_id(fd)] for d, (_, fd) in programs.items())
        return all(netlink.tc_program_name(ifname, d, ns) == fn  # type: ignore[arg-type]
                   for d, (fn, _) in programs.items())

    def close(self) -> None:
        """Free this process's handles: unpinned tcx links go; pinned ones and clsact
        filters stay."""
        for fd in self._links.values():
            os.close(fd)
        self._links.clear()


def detach(pins: Path, ifname: str, ns: str | None = None) -> None:
    """Take the programs off ``ifname``: the tcx links pinned for it in any generation
    under ``pins`` (now, even if a process still holds one), and its clsact qdisc."""
    for pin in pins.glob(f"*/tcx_{ifname}_*"):
        fd = pinned_fd(pin)
        if fd is not None:
            try:
                detach_link(fd)
            finally:
                os.close(fd)
        pin.unlink(missing_ok=True)
    with contextlib.suppress(netlink.InterfaceMissing):
        netlink.remove_clsact(ifname, ns)


def tc_program_name(ifname: str, direction: str, ns: str | None = None) -> str | None:
    """The name of the program classifying ``ifname``'s ``direction``: the first on its
    tcx hook (the one whose verdict counts), else the clsact filter's; None: neither.
    Naming a tcx program needs CAP_SYS_ADMIN (for tools and tests)."""
    index = netlink.interface_info(ifname, ns)[0]
    with netlink.in_netns(ns):
        ids = tcx_program_ids(index, TCX_ATTACH_TYPES[direction])
        if ids:
            return program_name(ids[0])
    return netlink.tc_program_name(ifname, direction, ns)  # type: ignore[arg-type]

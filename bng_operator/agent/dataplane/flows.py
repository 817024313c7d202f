"""The flow events' ring buffer (bpf/lib/flow.h): pinned above the program generations, so
every program (fast path, access data path, NAT) writes into the same one, whichever
loaded first; and ``flow_ctl``, through which the agent tells them someone is watching.

``KernelFlows`` opens (or adopts) both through bpf/flows.c, which holds nothing else, and
reads the events on a thread of its own.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from bng_operator.agent.dataplane.loader import BPF_DIR, BPFObject, DataplaneError, bpf_mount_of

SOURCE = Path(BPF_DIR) / "flows.c"
FLOW_MAPS = ("flow_events", "flow_ctl")
FLOW_RING_PAGES = 256  # mirrors lib/flow.h
FLOW_READ_MS = 50  # mirrors lib/flow.h

log = logging.getLogger("bng.agent.observe")


def flow_pins(pin_root: Path) -> dict[str, Path]:
    """Where the flow maps are pinned: above every generation and feature."""
    return {m: pin_root / m for m in FLOW_MAPS}


class KernelFlows:
    """The programs' flow events: ``on_event`` gets each one's raw bytes, on the reader's
    thread, while ``watch(True)`` is in force."""

    def __init__(self, pin_root: Path | None, on_event: Callable[[bytes], None]) -> None:
        if pin_root is not None and bpf_mount_of(pin_root) is None:
            raise DataplaneError(f"{pin_root} is not on a bpf filesystem")
        if pin_root is not None:
            pin_root.mkdir(parents=True, exist_ok=True)
        self.obj = BPFObject(SOURCE, pins=flow_pins(pin_root) if pin_root else None)
        self._ctl = self.obj.map("flow_ctl")
        self._on_event = on_event
        self._stop = threading.Event()
        self.failed = 0  # events the callback failed on

        def on_ring(_ctx: object, data: int, size: int) -> int:
            try:
                self._on_event(ctypes.string_at(data, size))
            except Exception:  # one bad event must not stop the reader
                self.failed += 1
                log.debug("flow event not decoded", exc_info=True)
            return 0

        self._cb = on_ring  # BCC keeps a reference, but so do we: it is called from C
        self.obj.map("flow_events").open_ring_buffer(on_ring)
        self._thread = threading.Thread(target=self._read, name="bng-flows", daemon=True)
        self._thread.start()

    def watch(self, on: bool) -> None:
        """Tell the programs whether to emit events."""
        key = self._ctl.Key(0)
        leaf = self._ctl[key]
        leaf.observers = int(on)
        self._ctl[key] = leaf

    def lost(self) -> int:
        """Events the programs could not write: the ring was full (the reader fell behind)."""
        return int(self._ctl[self._ctl.Key(0)].lost)

    def _read(self) -> None:
        # The programs wake nobody (BPF_RB_NO_WAKEUP: a wake-up per event would cost more
        # than the event); the ring is drained on a clock instead.
        while not self._stop.wait(FLOW_READ_MS / 1000):
            self.obj.bpf.ring_buffer_consume()
        self.obj.bpf.ring_buffer_consume()

    def close(self) -> None:
        """Stop reading; events stop too (the programs keep the pinned maps)."""
        self._stop.set()
        self._thread.join(timeout=2)
        self.watch(False)
        self.obj.close(keep=True)

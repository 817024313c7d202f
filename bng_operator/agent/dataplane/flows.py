"""The flow log (bpf/lib/flow.h): pinned above the program generations, so every program
(fast path, access data path, NAT) writes into the same one, whichever loaded first; and
``flow_ctl``, through which the agent tells them someone is watching.

``KernelFlows`` opens (or adopts) them through bpf/flows.c, which holds nothing else, and
reads the events on a thread of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from bng_operator.agent.dataplane.cpulog import CpuLog, possible_cpus
from bng_operator.agent.dataplane.loader import BPF_DIR, BPFObject, DataplaneError, bpf_mount_of

SOURCE = Path(BPF_DIR) / "flows.c"
FLOW_MAPS = ("flow_heads", "flow_log", "flow_ctl")
FLOW_LOG_LEN = 4096  # mirrors lib/flow.h: events a CPU
FLOW_READ_MS = 50  # mirrors lib/flow.h

log = logging.getLogger("bng.agent.observe")


def flow_pins(pin_root: Path) -> dict[str, Path]:
    """Where the flow maps are pinned: above every generation and feature."""
    return {m: pin_root / m for m in FLOW_MAPS}


def flow_log(obj: BPFObject) -> CpuLog[bytes]:
    """The flow log of ``obj`` (a program that includes lib/flow.h): each event's bytes, as
    observe.flow.from_kernel reads them."""
    return CpuLog(obj.map("flow_heads"), obj.map("flow_log"), possible_cpus(), FLOW_LOG_LEN,
                  bytes)


def in_time_order(events: list[bytes]) -> list[bytes]:
    """Events of several CPUs' logs merged by their time (each event starts with its
    jiffies); a CPU's own stay in the order written."""
    return sorted(events, key=lambda e: int.from_bytes(e[:8], "little"))


class KernelFlows:
    """The programs' flow events: ``on_event`` gets each one's raw bytes, on the reader's
    thread, while ``watch(True)`` is in force."""

    def __init__(self, pin_root: Path | None, on_event: Callable[[bytes], None]) -> None:
        if pin_root is not None and bpf_mount_of(pin_root) is None:
            raise DataplaneError(f"{pin_root} is not on a bpf filesystem")
        if pin_root is not None:
            pin_root.mkdir(parents=True, exist_ok=True)
            # The ring buffer of agents before the flow log: nothing writes it any more.
            (pin_root / "flow_events").unlink(missing_ok=True)
        self.obj = BPFObject(SOURCE, pins=flow_pins(pin_root) if pin_root else None)
        self._ctl = self.obj.map("flow_ctl")
        self._log = flow_log(self.obj)
        self._on_event = on_event
        self._stop = threading.Event()
        self.failed = 0  # events the callback failed on
        self._thread = threading.Thread(target=self._read, name="bng-flows", daemon=True)
        self._thread.start()

    def watch(self, on: bool) -> None:
        """Tell the programs whether to emit events."""
        key = self._ctl.Key(0)
        leaf = self._ctl[key]
        leaf.observers = int(on)
        self._ctl[key] = leaf

    def lost(self) -> int:
        """Events overwritten in the flow log before they were read (the reader fell
        behind), since this reader started."""
        return self._log.lost

    def _drain(self) -> None:
        for raw in in_time_order(self._log.drain()):
            try:
                self._on_event(raw)
            except Exception:  # one bad event must not stop the reader
                self.failed += 1
                log.debug("flow event not decoded", exc_info=True)

    def _read(self) -> None:
        # The programs wake nobody (a wake-up per event would cost more than the event);
        # the log is read on a clock instead.
        while not self._stop.wait(FLOW_READ_MS / 1000):
            self._drain()
        self._drain()

    def close(self) -> None:
        """Stop reading; events stop too (the programs keep the pinned maps)."""
        self._stop.set()
        self._thread.join(timeout=2)
        self.watch(False)
        self._log.close()
        self.obj.close(keep=True)

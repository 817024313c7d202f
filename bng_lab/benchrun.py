"""What every benchmark under bench/ does around its measurements: unwind on SIGTERM (so its
finally blocks remove the namespaces and servers it made), and say how far it has got."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType


def unwind_on_sigterm() -> None:
    """A SIGTERM ends this process through its finally blocks; a child pyroute2 forked
    (NetNS) exits at once, as pyroute2 stops it."""
    main = os.getpid()

    def terminate(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main:
            os._exit(128 + signum)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def progress() -> Callable[..., None]:
    """A ``say(*x)`` that prints to stderr with the seconds since now."""
    began = time.monotonic()

    def say(*x: object) -> None:
        print(f"[{time.monotonic() - began:6.1f} s]", *x, file=sys.stderr, flush=True)

    return say

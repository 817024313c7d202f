"""One agent per node: an exclusive lock on its state directory and on its BPF directory.

A second agent with either directory would write to the first one's lease store or fight
over its pinned maps. ``flock`` on the directories themselves works on bpffs too (it has no
regular files), and the kernel drops the locks when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from bng_operator.agent.config import ConfigError


class Locks:
    def __init__(self) -> None:
        self._fds: list[int] = []

    def hold(self, directory: Path, what: str) -> None:
        """Lock ``directory`` (``what`` names it in the error), or raise ConfigError."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another bng agent is running with {what} {directory}: one "
                              "agent per node; stop it first, or give this one a directory "
                              "of its own") from None
        self._fds.append(fd)

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

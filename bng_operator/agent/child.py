"""The agent's helper processes (the lease writer, the RADIUS transport): each a Python
module run with one end of a socket pair, in a session of its own, dying with the agent."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STOP_WAIT = 5.0  # seconds a helper gets to end after it was killed


@dataclass
class Child:
    """A helper's process and the agent's end of its socket (non-blocking)."""

    name: str
    proc: subprocess.Popen[bytes]
    sock: socket.socket

    @classmethod
    def start(cls, name: str, module: str, args: list[str], buffer: int) -> Child:
        """Run ``python -m module FD AGENT_PID *args`` with ``FD`` its end of a stream
        socket pair holding ``buffer`` bytes each way."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        ours.setblocking(False)
        try:
            # a session of its own: a signal to the agent's process group (a service
            # manager's SIGTERM) is the agent's to act on; the helper ends with its socket
            proc = subprocess.Popen(
                [sys.executable, "-m", module, str(theirs.fileno()), str(os.getpid()), *args],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(name, proc, ours)

    def stop(self, wait: float) -> int | None:
        """Close the agent's end (the helper ends once it has done what it was sent), wait
        up to ``wait`` seconds, then kill it; its exit code."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.sock.close()
        try:
            return self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        try:
            return self.proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:  # in the kernel's hands (D state): let it be
            log.error("%s (pid %d) does not end", self.name, self.proc.pid)
            return None


def die_with(agent: int) -> bool:
    """In a helper: be killed when the agent (pid ``agent``) dies. False: it has already."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == agent  # else the agent died before the line above

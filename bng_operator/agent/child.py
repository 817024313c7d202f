"""The agent's helper processes (the lease writer, the RADIUS transport): each a Python
module run with one end of a socket pair, in a session of its own, dying with the agent."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from bng_operator.agent import placement, syscalls

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STOP_WAIT = 5.0  # seconds a helper gets to end after it was killed


@dataclass
class Child:
    """A helper's process and the agent's end of its socket (non-blocking), which
    ``attach`` puts on an event loop: what ``send`` is given goes out without blocking or
    giving up the GIL, buffered while the socket is full, and what comes in is appended to
    ``inbox`` for the owner to take frames from (``frames``)."""

    name: str
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    buffer: int  # bytes its socket holds each way: the most one send hands it
    loop: asyncio.AbstractEventLoop | None = None  # the one that watches the socket
    out: bytearray = field(default_factory=bytearray)  # not taken by the socket yet
    inbox: bytearray = field(default_factory=bytearray)  # read, not taken as frames yet
    writing: bool = False  # waiting for the socket to take more
    _receiver: syscalls.Receiver = field(default_factory=lambda: syscalls.Receiver(1 << 16))
    _on_data: Callable[[], None] = lambda: None
    _on_lost: Callable[[str], None] = lambda why: None
    # The CPUs helpers run on (BNGNode spec.eventLoopCPU; agent/placement.py); None: the
    # agent's. The helpers not stopped yet, by pid, to place them again when that changes.
    cpus: ClassVar[frozenset[int] | None] = None
    running: ClassVar[weakref.WeakValueDictionary[int, Child]] = weakref.WeakValueDictionary()

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
        if cls.cpus is not None:
            with contextlib.suppress(OSError):  # said by the placement (agent/placement.py)
                placement.place(proc.pid, cls.cpus)
        child = cls.running[proc.pid] = cls(name, proc, ours, buffer)
        return child

    def attach(self, loop: asyncio.AbstractEventLoop, on_data: Callable[[], None],
               on_lost: Callable[[str], None]) -> None:
        """Watch the socket on ``loop``: ``on_data()`` after data came into ``inbox``,
        ``on_lost(why)`` once the helper exited or its socket failed (then call ``stop``)."""
        self.loop, self._on_data, self._on_lost = loop, on_data, on_lost
        loop.add_reader(self.sock.fileno(), self._readable)

    def send(self, data: bytes | bytearray) -> None:
        """Queue ``data`` and hand the socket what it takes now; the rest when it is
        writable again."""
        self.out += data
        self._send()

    def _send(self) -> None:
        out = self.out
        while out:
            try:
                n = syscalls.send(self.sock.fileno(), bytes(out[:self.buffer]))
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                self._on_lost("it exited")
                return
            except OSError as e:
                self._on_lost(f"sending to it failed: {e}")
                return
            del out[:n]
        assert self.loop is not None
        if out and not self.writing:
            self.writing = True
            self.loop.add_writer(self.sock.fileno(), self._send)
        elif not out and self.writing:
            self.writing = False
            self.loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        """Read what waits; what came before the helper's end goes to ``on_data`` before
        ``on_lost`` hears of the end (answers it gave before it died are answers)."""
        got, lost = False, None
        while True:
            try:
                data = self._receiver.receive(self.sock.fileno())
            except ConnectionResetError:  # it died with a frame of ours unread
                data = b""
            except OSError as e:
                lost = f"reading from it failed: {e}"
                break
            if data is None:
                break
            if not data:
                lost = "it exited"
                break
            self.inbox += data
            got = True
            if len(data) < self._receiver.size:  # a stream socket: that was all it had
                break
        if got:
            self._on_data()
        if lost is not None and self.sock.fileno() != -1:  # not stopped by on_data
            self._on_lost(lost)

    def frames(self, header: struct.Struct, length_at: int) -> Iterator[tuple[tuple[int, ...],
                                                                             bytes]]:
        """Take the whole frames from ``inbox``: each a header (field ``length_at`` the
        body's length in bytes) and its body."""
        inbox = self.inbox
        while len(inbox) >= header.size:
            head = header.unpack_from(inbox)
            end = header.size + head[length_at]
            if len(inbox) < end:
                return
            body = bytes(inbox[header.size:end])
            del inbox[:end]
            yield head, body

    def detach(self) -> None:
        """Stop watching the socket (on its loop, if that still runs) and drop what was not
        sent or taken."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.sock.fileno())
            if self.writing:
                loop.remove_writer(self.sock.fileno())
        self.writing = False
        self.out.clear()
        self.inbox.clear()

    def stop(self, wait: float) -> int | None:
        """Stop watching the socket, close the agent's end (the helper ends once it has done
        what it was sent), wait up to ``wait`` seconds, then kill it; its exit code."""
        self.running.pop(self.proc.pid, None)
        self.detach()
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

"""Send and receive on non-blocking sockets without giving up the GIL.

Python's socket methods give up the GIL around every system call. On the event loop under
load, another thread (a worker the loop just handed something to) takes it meanwhile, and
the loop waits to get it back: cProfile put a DHCP reply's ``socket.send`` at 89 us on the
loop at 700 new sessions/s, against ~10 us for the system call itself. These calls pass
MSG_DONTWAIT, so they never sleep; ctypes' PyDLL keeps the GIL through them.
"""

from __future__ import annotations

import ctypes
import errno
import os

MSG_DONTWAIT = 0x40
# The agent's GIL switch interval (CPython's default: 5 ms). The loop now gives the GIL up
# rarely under load, so a worker that needs it (the lease store's writer, between its
# SQLite calls) waits for the interval each time: with 5 ms a commit took tens of ms, and
# REQUEST-ACK's p50 at 80% of the peak went from ~6 to 87 ms.
GIL_SWITCH_INTERVAL = 0.001
LIBC = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL is kept through each call

_send = LIBC.send
_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_send.restype = ctypes.c_ssize_t
_recv = LIBC.recv
_recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_recv.restype = ctypes.c_ssize_t


def _error() -> OSError:
    e = ctypes.get_errno()
    return OSError(e, os.strerror(e))  # the subclass of e: BlockingIOError for EAGAIN, ...


def send(fd: int, data: bytes) -> int:
    """send(2) of ``data`` on the connected or bound socket ``fd``, never waiting. Raises
    OSError (BlockingIOError when the socket's buffer is full)."""
    n = _send(fd, data, len(data), MSG_DONTWAIT)
    if n < 0:
        raise _error()
    return int(n)


class Receiver:
    """recv(2) into a buffer of its own, never waiting."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = ctypes.create_string_buffer(size)
        self._view = memoryview(self._buf).cast("B")

    def receive(self, fd: int) -> bytes | None:
        """The next datagram waiting on ``fd`` (cut to ``size``); None: none waits. Raises
        OSError for an error the socket reports (an ICMP error on a connected UDP socket)."""
        n = _recv(fd, self._buf, self.size, MSG_DONTWAIT)
        if n < 0:
            if ctypes.get_errno() in (errno.EAGAIN, errno.EINTR):
                return None
            raise _error()
        return bytes(self._view[:n])

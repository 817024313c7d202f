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
from collections.abc import Sequence

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


_sendmmsg = LIBC.sendmmsg
_sendmmsg.restype = ctypes.c_int


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


class _BytesIovec(ctypes.Structure):
    """An iovec whose base is set from a bytes object (no copy; the structure keeps it)."""

    _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]


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


class Sender:
    """sendmmsg(2) on a connected socket, never waiting: one system call for a batch of
    datagrams (each send of a datagram to a local peer also runs its receipt and wakes the
    peer; in a batch the peer wakes once)."""

    def __init__(self, n: int = 64) -> None:
        self.n = n
        self._iovs = (_BytesIovec * n)()
        self._msgs = (Mmsghdr * n)()
        for i in range(n):
            h = self._msgs[i].hdr
            h.iov = ctypes.cast(ctypes.pointer(self._iovs[i]), ctypes.POINTER(Iovec))
            h.iovlen = 1

    def send(self, fd: int, datagrams: Sequence[bytes]) -> list[tuple[int, OSError]]:
        """Send ``datagrams`` on ``fd``, in order. Returns the ones not sent, by index, with
        why: one the kernel refuses (an ICMP error the socket reports, say) is passed over;
        when the socket's buffer is full, so are all after it."""
        failed: list[tuple[int, OSError]] = []
        done = 0
        while done < len(datagrams):
            n = min(self.n, len(datagrams) - done)
            for i in range(n):
                d = datagrams[done + i]
                self._iovs[i].base, self._iovs[i].len = d, len(d)
            got = _sendmmsg(fd, self._msgs, n, MSG_DONTWAIT)
            if got > 0:
                done += got
                continue
            e = _error()
            if isinstance(e, BlockingIOError) or e.errno == errno.ENOBUFS:
                failed.extend((i, e) for i in range(done, len(datagrams)))
                break
            failed.append((done, e))
            done += 1
        return failed


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

"""send(2)/recv(2) through ctypes with the GIL kept: what Python's socket methods do, errors
included."""

from __future__ import annotations

import socket

import pytest

from bng_operator.agent import syscalls


def test_a_datagram_goes_and_comes_back_whole_and_nothing_waiting_is_none() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        r = syscalls.Receiver(64)
        assert r.receive(b.fileno()) is None
        assert syscalls.send(a.fileno(), b"\x00hello\xff") == 7
        assert r.receive(b.fileno()) == b"\x00hello\xff"
        syscalls.send(a.fileno(), b"x" * 100)  # longer than the buffer: cut, as recv cuts
        assert r.receive(b.fileno()) == b"x" * 64
        assert r.receive(b.fileno()) is None


def test_a_full_socket_raises_blocking_io_error_and_never_waits() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, pytest.raises(BlockingIOError):
        for _ in range(100_000):
            syscalls.send(a.fileno(), b"x" * 1024)


def test_errors_the_socket_reports_are_os_errors() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))  # nobody listens: the kernel answers port unreachable
        syscalls.send(s.fileno(), b"ping")
        with pytest.raises(ConnectionRefusedError):
            syscalls.Receiver(16).receive(s.fileno())
    with pytest.raises(OSError):
        syscalls.send(-1, b"x")

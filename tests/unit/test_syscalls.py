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


def test_a_batch_goes_in_one_call_in_order_also_past_the_batch_size() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        sent = [bytes([i]) * (i + 1) for i in range(10)]
        assert syscalls.Sender(4).send(a.fileno(), sent) == []  # three calls: 4, 4, 2
        r = syscalls.Receiver(64)
        assert [r.receive(b.fileno()) for _ in range(10)] == sent
        assert r.receive(b.fileno()) is None


def test_a_full_socket_fails_the_rest_of_the_batch_and_never_waits() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        failed = syscalls.Sender().send(a.fileno(), [b"x" * 1024] * 100_000)
        assert failed and all(isinstance(e, BlockingIOError) for _, e in failed)
        first = failed[0][0]
        assert [i for i, _ in failed] == list(range(first, 100_000))


def test_a_datagram_the_kernel_refuses_is_passed_over() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        syscalls.send(s.fileno(), b"ping")  # nobody listens: port unreachable, pending
        failed = syscalls.Sender().send(s.fileno(), [b"a", b"b"])
        assert [(i, type(e)) for i, e in failed] == [(0, ConnectionRefusedError)]
    assert [i for i, _ in syscalls.Sender().send(-1, [b"x", b"y"])] == [0, 1]

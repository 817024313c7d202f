"""The test apiserver, reachable from inside a network namespace, over loopbacks only.

The apiserver listens on the root namespace's 127.0.0.1. An agent in a node's namespace
has its own loopback, so a thread of this process opens a listening socket *inside* that
namespace (setns on its own thread, then back) on the apiserver's port, and pipes each
connection to the real one. The same kubeconfig then works in every namespace.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from bng_lab.netlab import in_netns


def listen_in(netns: str, port: int) -> socket.socket:
    """A TCP socket listening on 127.0.0.1:``port`` inside ``netns``."""
    out: list[socket.socket | BaseException] = []

    def work() -> None:  # setns changes only this thread's namespace; the thread then ends
        try:
            with in_netns(netns):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen(64)
                out.append(s)
        except BaseException as e:  # handed to the caller's thread
            out.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _pipe(a: socket.socket, b: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := a.recv(65536):
            b.sendall(data)
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


@dataclass
class KubeProxy:
    """Forwards 127.0.0.1:``port`` in ``netns`` to 127.0.0.1:``port`` here, until ``close``."""

    netns: str
    port: int
    _listener: socket.socket | None = None
    _conns: list[socket.socket] = field(default_factory=list)

    def start(self) -> KubeProxy:
        self._listener = listen_in(self.netns, self.port)
        threading.Thread(target=self._accept, daemon=True, name=f"kubeproxy-{self.netns}").start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                inner, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                outer = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                outer.settimeout(None)
            except OSError:  # the apiserver is down: the client sees a reset, as it would
                inner.close()
                continue
            self._conns += [inner, outer]
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.close()
        self._conns.clear()

"""The agent's side of a helper's socket (agent/child.py): what the helper answered before it
ended is handed over before its end is."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess

import pytest

from bng_operator.agent.child import Child

pytestmark = pytest.mark.unit

REPLY = struct.Struct("<QI")  # as the lease writer's: a number, then a body's length


@pytest.mark.parametrize("reset", [False, True])
def test_answers_read_with_the_end_of_the_helper_are_kept(reset: bool) -> None:
    # Found by review: answers filling exactly the receive buffer, then the helper's end in
    # the same wake-up: the end was reported and the answers dropped with the inbox.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    c = Child("test helper", subprocess.Popen(["true"]), ours, 1 << 16)
    seen: list[int] = []
    events: list[str] = []

    def on_data() -> None:
        for (last, _), _body in c.frames(REPLY, 1):
            seen.append(last)
        events.append("data")

    def on_lost(why: str) -> None:
        events.append(f"lost: {why}")
        c.stop(5.0)

    loop = asyncio.new_event_loop()
    try:
        c.attach(loop, on_data, on_lost)
        body = b"e" * (2048 - REPLY.size)
        theirs.sendall(b"".join(REPLY.pack(i, len(body)) + body for i in range(1, 33)))
        if reset:
            ours.send(b"x")  # unread by the helper: its close resets the connection
        theirs.close()
        c._readable()
    finally:
        loop.close()
    assert seen == list(range(1, 33))
    assert events == ["data", "lost: it exited"]

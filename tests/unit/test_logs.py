"""Log set-up: audit trails are written whatever the log level; the rest follows it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from contextlib import redirect_stderr

import pytest

from bng_operator import logs

pytestmark = pytest.mark.unit
KNOBS = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in logs.AUDIT_LOGGERS}
    knobs = {k: getattr(logging, k) for k in KNOBS}
    yield
    for k, v in knobs.items():
        setattr(logging, k, v)
    root.handlers[:] = handlers
    root.setLevel(level)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)


@pytest.mark.parametrize(("level", "written"), [
    ("error", ["bng.audit", "bng.nat.blocks"]),
    ("warning", ["bng.audit", "bng.nat.blocks"]),
    ("info", ["bng.agent", "bng.audit", "bng.nat.blocks"]),
    ("debug", ["bng.agent", "bng.audit", "bng.nat.blocks", "bng.nat.blocks"]),
])
def test_audit_lines_are_written_at_every_level(level: str, written: list[str]) -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        logs.setup(level)  # the handler takes sys.stderr as it is now
        logging.getLogger("bng.agent").info("serving")
        logging.getLogger("bng.audit").info("allocate", extra={"audit": {"event": "allocate"}})
        logging.getLogger("bng.nat.blocks").info("{}")
        logging.getLogger("bng.nat.blocks").debug("detail")
    lines = [json.loads(line) for line in err.getvalue().splitlines()]
    assert [r["logger"] for r in lines] == written
    audit = next(r for r in lines if r["logger"] == "bng.audit")
    assert audit["event"] == "allocate"


class _Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_lines_logged_on_the_event_loop_are_written_together_within_a_turn() -> None:
    err = _Writes()
    with redirect_stderr(err):
        logs.setup("info")
    log = logging.getLogger("bng.audit")

    async def run() -> tuple[str, str, int]:
        log.info("allocate", extra={"audit": {"event": "allocate", "address": "100.64.0.1"}})
        log.info("release", extra={"audit": {"event": "release", "address": "100.64.0.1"}})
        before = err.getvalue()
        await asyncio.sleep(0)  # a turn of the loop
        return before, err.getvalue(), err.writes

    before, after, writes = asyncio.run(run())
    assert before == ""
    assert [json.loads(line)["event"] for line in after.splitlines()] == ["allocate", "release"]
    assert writes == 1
    logging.getLogger("bng.agent").info("no loop here")  # written at once
    assert json.loads(err.getvalue().splitlines()[-1])["msg"] == "no loop here"


def test_flush_writes_what_waits_at_once_and_nothing_is_lost_at_exit() -> None:
    err = _Writes()
    with redirect_stderr(err):
        logs.setup("info")

    async def run() -> str:
        logging.getLogger("bng.audit").info("allocate", extra={"audit": {"event": "allocate"}})
        logs.flush()  # what the lease store does before it sends a batch
        return err.getvalue()

    assert json.loads(asyncio.run(run()))["event"] == "allocate"

    async def last_words() -> tuple[bool, bool]:
        logging.getLogger("bng.agent").error("going down")
        pending = "going down" not in err.getvalue()
        logging.shutdown()  # at exit, before the loop's next turn
        return pending, "going down" in err.getvalue()

    assert asyncio.run(last_words()) == (True, True)


@pytest.mark.parametrize("created", [[1_796_454_112.25, 1_796_454_112.75, 1_796_454_113.5],
                                     [59.999, 60.001, 0.5]])
def test_each_line_carries_its_own_time_though_the_second_is_formatted_once(
        created: list[float]) -> None:
    f = logs.JSONFormatter()
    for t in created:
        r = logging.LogRecord("bng.audit", logging.INFO, "", 0, "allocate", None, None)
        r.created, r.msecs = t, (t - int(t)) * 1000
        want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(r.msecs):03d}Z"
        assert json.loads(f.format(r))["time"] == want

"""Log set-up: audit trails are written whatever the log level; the rest follows it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import redirect_stderr

import pytest

from bng_operator import logs

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in logs.AUDIT_LOGGERS}
    yield
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

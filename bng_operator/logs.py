"""Structured JSON logs: one object per line, audit events carry their fields at top level."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

_ENCODER = json.JSONEncoder(default=str)  # json.dumps(default=...) makes one per call


class JSONFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # one tuple: read and replaced whole

    def format(self, record: logging.LogRecord) -> str:
        second, stamp = self._second
        if second != int(record.created):  # a line per new session: formatted once a second
            second = int(record.created)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, stamp)
        out: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            out.update(audit)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


# Audit trails, written whatever --log-level says: who held an address (RFC 6888 REQ-12 for
# NAT blocks) must not depend on how chatty the operator asked the rest of the log to be.
AUDIT_LOGGERS = ("bng.audit", "bng.nat.blocks")


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """One line per record. Records logged on an event loop's thread are gathered and
    written together, once per turn of the loop (or at ``flush()``): a write gives up the
    GIL, and under load the loop then waited up to the switch interval to win it back from
    the QoS worker, once per new session (its audit line). Other threads write at once."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._lines: list[str] = []  # non-empty: a flush is due on the loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().emit(record)
            return
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if len(self._lines) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the gathered lines (and flush the stream)."""
        lines, self._lines = self._lines, []
        with self.lock:  # type: ignore[union-attr]
            if lines and self.stream:
                try:
                    self.stream.write("\n".join(lines) + self.terminator)
                except Exception:
                    sys.stderr.write(f"--- {len(lines)} log lines could not be written\n")
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()


def flush() -> None:
    """Write what the root logger's handlers gathered (before an ACK leaves: the audit line
    of its lease goes first)."""
    for h in logging.getLogger().handlers:
        h.flush()


def setup(level: str = "info", fmt: str = "json") -> None:
    # What no line of ours shows, not gathered for every record (logging's documented
    # optimisations): the caller's file and line, thread, process and multiprocessing names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LineHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in AUDIT_LOGGERS:
        logging.getLogger(name).setLevel(min(logging.INFO, root.level))

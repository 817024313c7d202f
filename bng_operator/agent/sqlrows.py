"""SQLite statements of many rows each.

Each statement run from Python gives the GIL up while SQLite works and must win it back
from the busy event loop afterwards (up to the switch interval). A row at a time costs that
once a row; a statement of many rows, once.
"""

from __future__ import annotations

import sqlite3

Statement = tuple[str, tuple[object, ...]]


def rows_per_statement(db: sqlite3.Connection, columns: int, most: int = 500) -> int:
    """How many rows of ``columns`` values one statement may carry on ``db``."""
    return max(1, min(most, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // columns))


def many_rows(out: list[Statement], sql: str, one: str, rows: list[tuple[object, ...]],
              per: int) -> None:
    """Append ``sql`` for ``rows``, ``per`` at a time: its "{}" becomes a row's placeholders
    (``one``) once per row, comma-separated. Rows keep their order."""
    for i in range(0, len(rows), per):
        chunk = rows[i:i + per]
        out.append((sql.format(",".join([one] * len(chunk))),
                    tuple(v for row in chunk for v in row)))

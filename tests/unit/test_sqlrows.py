"""Statements of many rows: their size within SQLite's bound, their rows in order."""

from __future__ import annotations

import sqlite3

import pytest

from bng_operator.agent.sqlrows import Statement, many_rows, rows_per_statement


@pytest.mark.parametrize(("limit", "columns", "want"), [
    (999, 19, 52),  # SQLite before 3.32
    (32766, 19, 500),  # bounded by ``most`` too
    (999, 2, 499),
    (10, 19, 1),  # never none
])
def test_rows_per_statement_keeps_within_the_connections_bound(
        limit: int, columns: int, want: int) -> None:
    db = sqlite3.connect(":memory:")
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    assert rows_per_statement(db, columns) == want
    db.close()


def test_many_rows_chunks_in_order() -> None:
    out: list[Statement] = []
    many_rows(out, "INSERT INTO t VALUES {}", "(?,?)", [(i, str(i)) for i in range(5)], 2)
    assert out == [("INSERT INTO t VALUES (?,?),(?,?)", (0, "0", 1, "1")),
                   ("INSERT INTO t VALUES (?,?),(?,?)", (2, "2", 3, "3")),
                   ("INSERT INTO t VALUES (?,?)", (4, "4"))]
    many_rows(out, "x {}", "?", [], 2)
    assert len(out) == 3

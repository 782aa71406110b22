"""Storage programs: transactions written once, run by either backend.

A *program* is a generator function that yields queries and receives their
results; it holds no connection and does no I/O. The SQLite driver runs it
synchronously in its writer thread, the PostgreSQL driver awaits each query on
one pooled connection; both wrap the whole program in one transaction. Writing
each transaction once is what lets both backends pass one contract suite.

SQL is written in PostgreSQL's dialect with `$n` parameters; the SQLite driver
translates the few constructs that differ (`= ANY($n)` over a list,
`FOR UPDATE`, `$n` placeholders).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence, TypeVar

T = TypeVar("T")

#: A `$n` parameter of the PostgreSQL dialect programs are written in.
PARAM = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class Query:
    sql: str
    args: tuple
    mode: str  # fetch | fetchrow | fetchval | execute | executemany | write_all


Program = Generator[Query, Any, T]
ProgramFn = Callable[..., Program]


def fetch(sql: str, *args) -> Query:
    """All rows (mapping access by column name)."""
    return Query(sql, args, "fetch")


def fetchrow(sql: str, *args) -> Query:
    """The first row or None."""
    return Query(sql, args, "fetchrow")


def fetchval(sql: str, *args) -> Query:
    """The first column of the first row, or None."""
    return Query(sql, args, "fetchval")


def execute(sql: str, *args) -> Query:
    """Run a statement; the result is the number of rows it touched."""
    return Query(sql, args, "execute")


def executemany(sql: str, rows: Sequence[Sequence[Any]]) -> Query:
    return Query(sql, (list(rows),), "executemany")


def write_all(*queries: Query) -> Query:
    """Several `executemany` writes whose order does not matter (they touch
    different rows), applied together: one round trip on PostgreSQL."""
    return Query("", queries, "write_all")


def rowcount_from_status(status: str) -> int:
    """asyncpg returns a command tag ("UPDATE 3"); the count is its last word."""
    tail = status.rsplit(" ", 1)[-1] if status else ""
    return int(tail) if tail.isdigit() else 0

"""PostgreSQL backend (asyncpg pool): production and multi-node.

Each write program runs in one transaction on one pooled connection. Balance
batches lock their accounts with `SELECT ... FOR UPDATE` in id order, so
several ocsd nodes can share the database without lost updates or deadlocks;
a serialization failure or deadlock (which only the operator's own concurrent
SQL could cause) re-runs the whole program, which is safe because programs
are pure functions of what they read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from typing import Any

import asyncpg

from ..config import hide_url_password
from ..errors import Conflict, StoreUnavailable, ValidationError
from ..logs import Throttled
from .sql import PARAM, ProgramFn, Query, fetch, rowcount_from_status

log = logging.getLogger("ocs.store")

_RETRIES = 5
_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)
_CONNECTION_OR_SERVER_ERRORS = (*_CONNECTION_ERRORS, asyncpg.PostgresError)
# A pooled connection whose server went away (a restart, a failover, a DBA's
# pg_terminate_backend) fails its next use, or leaves asyncpg's protocol in a
# state it refuses to use (InternalClientError). A slow server (a timeout) is
# not a dead connection: asking again would only wait again.
_DEAD = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
         asyncpg.AdminShutdownError, asyncpg.InternalClientError)
_BROKEN = (*_CONNECTION_ERRORS, asyncpg.InternalClientError)


class _PoolFloorLine(logging.Filter):
    """asyncpg's pool logs a traceback each time it fails to reopen its minimum of
    connections (the server down, or no primary during a failover); it retries
    after 1, 2, 4 ... 60 s. One line says the same: what failed, and why."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            said = record.getMessage().removesuffix("; retrying")
            record.msg = "PostgreSQL connection pool: %s (%s: %s); retrying with back-off"
            record.args = (said[:1].lower() + said[1:], type(exc).__name__, _why(exc))
            record.exc_info, record.exc_text = None, None
        return True


_POOL_FLOOR_LINE = _PoolFloorLine()
_READ_ONLY = Throttled(log)  # a fenced primary refuses every write: say so once a minute


def _why(exc: BaseException) -> str:
    """An error in words: a timeout's own text is empty."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out waiting for the server"
    if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        return "no host of the DSN takes writes now (each is a standby or read-only)"
    return str(exc) or type(exc).__name__


def _discard(conn) -> None:
    """Close a connection found broken, so the pool opens a new one in its place
    (asyncpg may have taken a lost connection back already)."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass


class PostgresDriver:
    dialect = "postgres"

    def __init__(self, dsn: str, *, min_size: int = 2, max_size: int = 10,
                 schema: str | None = None, command_timeout: float = 10.0,
                 connect_timeout: float = 5.0, acquire_timeout: float | None = None):
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.schema = schema
        self.command_timeout = command_timeout
        self.connect_timeout = connect_timeout
        # How long a transaction waits for a free pooled connection: as long as a
        # statement may run. Without a bound, a pool that every caller holds
        # (or that lost connections) would queue requests forever, unanswered.
        self.acquire_timeout = command_timeout if acquire_timeout is None else acquire_timeout
        self._in_use = 0  # callers holding or awaiting a pooled connection
        self.pool: asyncpg.Pool | None = None

    def describe(self) -> str:
        # Never show a password that may be in the DSN.
        return "postgres:" + hide_url_password(self.dsn)

    async def open(self) -> None:
        pool_log = logging.getLogger("asyncpg.pool")
        if _POOL_FLOOR_LINE not in pool_log.filters:
            pool_log.addFilter(_POOL_FLOOR_LINE)
        settings = {"application_name": "ocsd"}
        if self.schema:
            settings["search_path"] = self.schema
        try:
            self.pool = await asyncpg.create_pool(
                self.dsn, min_size=self.min_size, max_size=self.max_size,
                command_timeout=self.command_timeout, timeout=self.connect_timeout,
                server_settings=settings, reset=_keep_session, **self._target())
        except _CONNECTION_OR_SERVER_ERRORS as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL ({self.describe()}): "
                                   f"{_why(exc)}") from exc

    def _target(self) -> dict:
        """Connect only to a server that takes writes: with several hosts in the DSN
        (a primary and its standbys, as Patroni or repmgr run them), each new
        connection tries them in turn and keeps the primary, also the one promoted
        after a failover. libpq's default, any server, would settle on a standby
        listed first. A DSN's own target_session_attrs (or PGTARGETSESSIONATTRS)
        is kept as it says."""
        if "target_session_attrs" in self.dsn or os.environ.get("PGTARGETSESSIONATTRS"):
            return {}
        return {"target_session_attrs": "read-write"}

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def run(self, program: ProgramFn, *args, write: bool = True,
                  quick: bool = False) -> Any:
        """Run `program(*args)` on one pooled connection, in one transaction for
        writes. (`quick` only matters to the embedded backend.)"""
        if self.pool is None:
            raise StoreUnavailable("postgres store is closed")
        for attempt in range(_RETRIES):
            try:
                async with self._acquire() as conn:
                    transaction = conn.transaction() if write else None
                    try:
                        if transaction is None:
                            return await self._drive(conn, program(*args))
                        await transaction.start()
                    except _DEAD as exc:
                        # A read, or BEGIN, failed: nothing was changed, so a fresh
                        # connection may try again.
                        _discard(conn)
                        if attempt == _RETRIES - 1:
                            raise StoreUnavailable(f"postgres: {_why(exc)}") from exc
                        log.info("PostgreSQL connection lost (%s); retrying on a new one", exc)
                        continue
                    try:
                        result = await self._drive(conn, program(*args))
                    except BaseException as exc:
                        try:
                            await transaction.rollback()
                        except Exception:  # noqa: BLE001 - the first error is the one to report
                            _discard(conn)
                        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
                            _discard(conn)  # its server is no primary now: find the one that is
                        raise
                    await transaction.commit()  # lost here: committed or not, unknown
                    return result
            except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as exc:
                if attempt == _RETRIES - 1:
                    raise StoreUnavailable(f"postgres: {_why(exc)}") from exc
                log.warning("retrying transaction after %s", type(exc).__name__)
                await asyncio.sleep(0.005 * (attempt + 1))
            except asyncpg.ReadOnlySQLTransactionError as exc:
                # A primary fenced for a switchover (default_transaction_read_only), or
                # a DSN that lets connections settle on a standby. Nothing was written:
                # a new connection may find the primary.
                if attempt == _RETRIES - 1:
                    raise StoreUnavailable(f"postgres: the server is read-only: {exc}") from exc
                _READ_ONLY.warning("read-only", "PostgreSQL server read-only (%s); retrying on "
                                   "a new connection, which looks for the primary", exc)
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(_unique_message(exc)) from exc
            except asyncpg.ForeignKeyViolationError as exc:
                raise ValidationError("refers to a record that does not exist") from exc
            except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError,
                    asyncpg.DataError) as exc:
                raise ValidationError(str(exc)) from exc
            except _BROKEN as exc:
                raise StoreUnavailable(f"postgres: {_why(exc)}") from exc
            except asyncpg.PostgresError as exc:
                raise StoreUnavailable(f"postgres: {_why(exc)}") from exc
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def _acquire(self):
        # While fewer callers than pool_max hold or await a connection, one is sure
        # to come soon: no timer to arm (asyncpg's acquire timeout costs 5 us).
        bounded = self._in_use >= self.max_size
        self._in_use += 1
        try:
            try:
                conn = await self.pool.acquire(
                    timeout=self.acquire_timeout if bounded else None)
            except asyncio.TimeoutError:
                raise StoreUnavailable(
                    f"no PostgreSQL connection free within {self.acquire_timeout:g}s (all "
                    f"{self.max_size} of [store] pool_max busy)") from None
            try:
                yield conn
            finally:
                await self.pool.release(conn)
        finally:
            self._in_use -= 1

    async def fetch_now(self, sql: str, *args) -> list:
        """The rows of one point lookup (see SqliteDriver.fetch_now)."""
        def program():
            return (yield fetch(sql, *args))
        return await self.run(program, write=False)

    @staticmethod
    async def _drive(conn: asyncpg.Connection, gen) -> Any:
        try:
            query: Query = next(gen)
            while True:
                query = gen.send(await _execute(conn, query))
        except StopIteration as stop:
            return stop.value
        finally:
            gen.close()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's RESET ALL / UNLISTEN round trip: programs
    set no session state (their locks are transaction-scoped), and asyncpg still
    ends any open transaction itself."""


async def _execute(conn: asyncpg.Connection, q: Query) -> Any:
    if q.mode == "write_all":
        await _write_all(conn, [each for each in q.args if each.args[0]])
        return None
    if q.mode == "fetch":
        return await conn.fetch(q.sql, *q.args)
    if q.mode == "fetchrow":
        return await conn.fetchrow(q.sql, *q.args)
    if q.mode == "fetchval":
        return await conn.fetchval(q.sql, *q.args)
    if q.mode == "executemany":
        rows = q.args[0]
        if rows:
            bulk = await _bulk_form(conn, q.sql)
            if bulk is None:
                await conn.executemany(q.sql, rows)
            else:
                await conn.execute(bulk, *zip(*rows))
        return None
    return rowcount_from_status(await conn.execute(q.sql, *q.args))


async def _write_all(conn: asyncpg.Connection, queries: list[Query]) -> None:
    """Several bulk writes as one statement of data-modifying CTEs: one round trip.
    They touch different rows (write_all's contract), which is what PostgreSQL
    requires of sub-statements that run on one snapshot."""
    forms = [await _bulk_form(conn, q.sql) for q in queries]
    if len(queries) < 2 or None in forms:
        for q in queries:
            await _execute(conn, q)
        return
    parts, args = [], []
    for i, (q, form) in enumerate(zip(queries, forms)):
        offset = len(args)
        parts.append(f"w{i} AS ({PARAM.sub(lambda m: f'${int(m[1]) + offset}', form)})")
        args.extend(zip(*q.args[0]))
    await conn.execute("WITH " + ", ".join(parts) + " SELECT 1", *args)


# executemany sends one execution per row, and PostgreSQL's per-execution cost
# dominates a balance batch; the same statement over arrays (unnest) is one
# execution. Three shapes are rewritten: INSERT ... VALUES ($1, ..., $n) [rest],
# UPDATE t SET a = $2, b = b + $3, ... WHERE id = $1, and DELETE FROM t WHERE
# a = $1 AND ...
# Rows of one batch never repeat an ON CONFLICT key (the engine keys its
# writes), which INSERT ... SELECT needs.
_INSERT = re.compile(r"^(INSERT INTO \w+ \([^)]*\)) VALUES \(([$\d, ]+)\)(.*)$", re.S)
_UPDATE = re.compile(r"^UPDATE (\w+) SET ((?:\w+ = (?:\w+ \+ )?\$\d+(?:, )?)+) WHERE id = \$1$")
_DELETE = re.compile(r"^DELETE FROM (\w+) WHERE ((?:\w+ = \$\d+(?: AND )?)+)$")
_bulk_forms: dict[str, str | None] = {}


async def _bulk_form(conn: asyncpg.Connection, sql: str) -> str | None:
    if sql in _bulk_forms:
        return _bulk_forms[sql]
    form = None
    insert, update, delete = _INSERT.match(sql), _UPDATE.match(sql), _DELETE.match(sql)
    params = insert.group(2).replace(" ", "").split(",") if insert else []
    if (insert and params == [f"${i}" for i in range(1, len(params) + 1)]) or update or delete:
        types = [t.name for t in (await conn.prepare(sql)).get_parameters()]
        arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
        cols = ", ".join(f"c{i}" for i in range(1, len(types) + 1))
        if insert:
            form = f"{insert.group(1)} SELECT * FROM unnest({arrays}){insert.group(3)}"
        elif delete:
            table = delete.group(1)
            where = " AND ".join(f"{table}.{col} = u.c{p[1:]}" for col, p in
                                 (c.split(" = ") for c in delete.group(2).split(" AND ")))
            form = f"DELETE FROM {table} USING unnest({arrays}) AS u({cols}) WHERE {where}"
        else:
            sets = [a.split(" = ") for a in update.group(2).split(", ")]
            form = (f"UPDATE {update.group(1)} SET "
                    + ", ".join(f"{col} = " + PARAM.sub(r"u.c\1", value)
                                for col, value in sets)
                    + f" FROM unnest({arrays}) AS u({cols}) WHERE {update.group(1)}.id = u.c1")
    _bulk_forms[sql] = form
    return form


_KEY = re.compile(r"Key \(([^)]+)\)")


def _unique_message(exc: asyncpg.UniqueViolationError) -> str:
    m = _KEY.search(getattr(exc, "detail", "") or "")
    column = m.group(1).split(",")[0].strip() if m else (exc.constraint_name or "value")
    table = getattr(exc, "table_name", None)
    return f"{table}.{column} already exists" if table else f"{column} already exists"

"""SQLite backend: the embedded default for a single edge host.

One writer connection runs every write program as one
`BEGIN IMMEDIATE ... COMMIT`; one reader connection in its own thread serves
reads. WAL mode lets the readers see committed data while the writer works.
Point lookups on the request path (`quick=True`: a row by key, an account's
buckets) run on a third connection directly in the event loop: they take
microseconds, and a thread hop would cost more than the query.

Writes run in the writer's thread, except the request path's (`quick=True`:
the balance batches). Their statements run in the event loop, which does not
wait on anything while they run, and only the COMMIT, the part that waits for
the disk, goes to the writer's thread. Running the statements in the thread
cost more than the statements themselves: sqlite releases the interpreter lock
around every statement, and the event loop took it back each time, two thread
switches per statement. A quick write never waits for the database lock in the
event loop either: when another process holds it, the batch runs in the
writer's thread instead, which waits up to the busy timeout.
`synchronous=FULL` (the default here) makes a commit survive power loss, not
only a crash of the process: an Accounting-Response must never be sent for a
record a power cut can take back.

The write-ahead log is copied back into the database file by a checkpointer
thread on its own connection, not by the commit that happens to cross the
threshold: a checkpoint takes tens of milliseconds, and inside the writer it
held up every request queued behind that commit.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import Conflict, StoreUnavailable, ValidationError
from .sql import PARAM, Program, ProgramFn, Query

log = logging.getLogger("ocs.store")

_ANY = re.compile(r"=\s*ANY\(\$(\d+)\)")
_FOR_UPDATE = re.compile(r"\s+FOR UPDATE(\s+SKIP LOCKED)?\b")


def _dialect(sql: str, any_as: str) -> str:
    return PARAM.sub(r"?\1", _FOR_UPDATE.sub("", _ANY.sub(any_as, sql)))


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """PostgreSQL-dialect SQL as SQLite understands it (an `= ANY($n)` list is
    bound as JSON and read with json_each)."""
    return _dialect(sql, r"IN (SELECT value FROM json_each($\1))")


@functools.lru_cache(maxsize=512)
def translate_single(sql: str) -> str:
    """`translate`, for arguments whose every `= ANY($n)` list has one element: a
    plain `= ?n`, which SQLite answers from the index without building a json_each
    table (a batch of one request locks one account, reads one session)."""
    return _dialect(sql, r"= $\1")


@functools.lru_cache(maxsize=512)
def _any_params(sql: str) -> frozenset[int]:
    """The parameters of `sql` used once, and there as `= ANY($n)`."""
    return frozenset(n for n in map(int, _ANY.findall(sql))
                     if len(re.findall(rf"\${n}(?!\d)", sql)) == 1)


def _arg(value: Any) -> Any:
    if isinstance(value, (list, tuple, set)):
        return json.dumps(list(value))
    return value


class SqliteDriver:
    dialect = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000):
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._wpool = ThreadPoolExecutor(1, thread_name_prefix="ocs-sqlite-w")
        self._rpool = ThreadPoolExecutor(1, thread_name_prefix="ocs-sqlite-r")
        self._checkpointer: threading.Thread | None = None
        self._stopping = threading.Event()
        # Held from a write's BEGIN until its COMMIT (or ROLLBACK) has returned,
        # wherever those run: the writer connection holds one transaction at a time.
        self._wlock = asyncio.Lock()

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_ms / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        return conn

    async def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
            loop = asyncio.get_running_loop()
            self._writer = await loop.run_in_executor(self._wpool, self._connect)
            self._writer.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
            self._reader = await loop.run_in_executor(self._rpool, self._connect)
            self._inline = self._connect()
            checkpoints = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open sqlite database {self.path}: {exc}") from exc
        self._stopping.clear()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, args=(checkpoints,),
                                              name="ocs-sqlite-ckpt", daemon=True)
        self._checkpointer.start()

    CHECKPOINT_EVERY = 5.0  # seconds

    def _checkpoint_loop(self, conn: sqlite3.Connection) -> None:
        """Copy committed pages from the write-ahead log into the database file,
        without ever waiting for (or holding up) the writer or the readers."""
        try:
            while not self._stopping.wait(self.CHECKPOINT_EVERY):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("sqlite checkpoint failed (retried): %s", exc)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # writer closed
        except sqlite3.Error as exc:
            log.warning("sqlite final checkpoint failed: %s", exc)
        finally:
            conn.close()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            async with self._wlock:
                await loop.run_in_executor(self._wpool, self._writer.close)
                self._writer = None
        if self._reader is not None:
            await loop.run_in_executor(self._rpool, self._reader.close)
            self._reader = None
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        self._wpool.shutdown(wait=True)
        self._rpool.shutdown(wait=True)
        if self._checkpointer is not None:
            self._stopping.set()
            await loop.run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None

    async def run(self, program: ProgramFn, *args, write: bool = True,
                  quick: bool = False) -> Any:
        """Run `program(*args)` in one transaction (writes) or on a reader (reads).

        `quick` reads (point lookups by key) run inline on the event loop;
        `quick` writes run their statements there and commit in the writer's thread.
        """
        if not write:
            if quick:
                if self._inline is None:
                    raise StoreUnavailable("sqlite store is closed")
                return self._run_sync(self._inline, program(*args), False)
            if self._reader is None:
                raise StoreUnavailable("sqlite store is closed")
            return await self._in_thread(self._rpool, self._run_sync, self._reader,
                                         program(*args), False)
        gen = program(*args)  # a program called wrongly fails here, holding nothing
        await self._wlock.acquire()
        # From here the lock is released by whatever ends the transaction.
        conn = self._writer
        if conn is None:
            self._wlock.release()
            gen.close()
            raise StoreUnavailable("sqlite store is closed")
        if quick:
            began = False
            try:
                began = self._begin_now(conn)
                value = self._steps(conn, gen) if began else None
            except BaseException:
                if began:
                    _rollback(conn)  # _steps rolls back its own failures; this is the rest
                self._wlock.release()
                raise
            if began:
                await self._in_writer(self._commit, conn)
                return value
        return await self._in_writer(self._run_sync, conn, gen, True)

    async def fetch_now(self, sql: str, *args) -> list:
        """The rows of one point lookup, read inline (a `quick` read without the
        program around it: on the Access-Request path that wrapping cost a quarter
        of the read)."""
        conn = self._inline
        if conn is None:
            raise StoreUnavailable("sqlite store is closed")
        try:
            return _execute(conn, Query(sql, args, "fetch"))
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc

    async def _in_thread(self, pool: ThreadPoolExecutor, fn, *args) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except RuntimeError as exc:  # executor shut down while stopping
            raise StoreUnavailable(f"sqlite store is closed: {exc}") from exc

    async def _in_writer(self, fn, *args) -> Any:
        """Run `fn` in the writer's thread and release the write lock when it has
        returned, even if the caller is cancelled meanwhile: the next transaction
        must not begin on the connection while this one is still committing."""
        loop = asyncio.get_running_loop()
        try:
            done: Future = self._wpool.submit(fn, *args)
        except RuntimeError as exc:  # executor shut down while stopping
            if self._writer is not None and self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            self._wlock.release()
            raise StoreUnavailable(f"sqlite store is closed: {exc}") from exc
        done.add_done_callback(lambda _: loop.call_soon_threadsafe(self._wlock.release))
        return await asyncio.shield(asyncio.wrap_future(done))

    def _begin_now(self, conn: sqlite3.Connection) -> bool:
        """BEGIN IMMEDIATE without waiting: False if another connection holds the lock."""
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise _map_error(exc) from exc
            log.debug("sqlite database locked by another connection; writing from the thread")
            return False
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        return True

    @staticmethod
    def _commit(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _map_error(exc) from exc

    @staticmethod
    def _run_sync(conn: sqlite3.Connection, gen: Program, write: bool) -> Any:
        if write:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                gen.close()
                raise _map_error(exc) from exc
        value = SqliteDriver._steps(conn, gen)
        if write:
            SqliteDriver._commit(conn)
        return value

    @staticmethod
    def _steps(conn: sqlite3.Connection, gen: Program) -> Any:
        """Run a program's statements; on any failure roll back what they did."""
        try:
            query = next(gen)
            while True:
                query = gen.send(_execute(conn, query))
        except StopIteration as stop:
            return stop.value
        except BaseException as exc:
            gen.close()
            _rollback(conn)
            if isinstance(exc, sqlite3.Error):
                raise _map_error(exc) from exc
            raise


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("sqlite rollback failed")


def _execute(conn: sqlite3.Connection, q: Query) -> Any:
    if q.mode == "write_all":
        for each in q.args:
            _execute(conn, each)
        return None
    sql = translate(q.sql)
    if q.mode == "executemany":
        # Rows are scalars (programs build them; lists only appear as ANY($n)
        # arguments of single statements): no per-value conversion here.
        if q.args[0]:
            conn.executemany(sql, q.args[0])
        return None
    args = q.args
    if any(isinstance(v, (list, tuple, set)) for v in args):
        lists = [(i, v) for i, v in enumerate(args, 1) if isinstance(v, (list, tuple, set))]
        if all(len(v) == 1 and i in _any_params(q.sql) for i, v in lists):
            sql = translate_single(q.sql)
            args = tuple(next(iter(v)) if isinstance(v, (list, tuple, set)) else v
                         for v in args)
        else:
            args = tuple(_arg(v) for v in args)
    cur = conn.execute(sql, args)
    if q.mode == "fetch":
        return cur.fetchall()
    if q.mode == "fetchrow":
        return cur.fetchone()
    if q.mode == "fetchval":
        row = cur.fetchone()
        return None if row is None else row[0]
    return cur.rowcount


_UNIQUE = re.compile(r"UNIQUE constraint failed: (\S+)")


def _map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.IntegrityError):
        text = str(exc)
        m = _UNIQUE.search(text)
        if m:
            column = m.group(1).split(",")[0]
            return Conflict(f"{column} already exists")
        if "FOREIGN KEY" in text:
            return ValidationError("refers to a record that does not exist")
        return ValidationError(text)
    return StoreUnavailable(f"sqlite: {exc}")

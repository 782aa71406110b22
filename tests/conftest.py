"""Shared fixtures: real PostgreSQL and Redis (see tests/services.py), and a
`store` fixture that runs each test once per backend."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import sys
import threading

import asyncpg
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ocs.store import Store, make_driver  # noqa: E402
from tests import services  # noqa: E402

# A test still running this long before its timeout (pyproject: timeout) prints
# where each of its asyncio tasks waits: the timeout's own dump shows threads only,
# and a hung test is usually one coroutine waiting for another.
HANG_REPORT_BEFORE_TIMEOUT = 30.0


def _report_tasks(nodeid: str, after: float) -> None:
    # From a timer thread while the test's loop is stuck; only reads the tasks.
    out = sys.__stderr__
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    print(f"\n=== {nodeid} still running after {after:.0f}s: {len(tasks)} asyncio task(s)",
          file=out)
    for task in tasks:
        try:
            task.print_stack(file=out)
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not fail the run
            print(f"  {task!r}: stack unavailable ({exc})", file=out)
    out.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    timeout = float(item.config.getini("timeout") or 0)
    after = timeout - HANG_REPORT_BEFORE_TIMEOUT
    timer = None
    if after > 0:
        timer = threading.Timer(after, _report_tasks, args=(item.nodeid, after))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_dsn():
    try:
        dsn, stop = services.find_postgres()
    except services.ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield dsn
    if stop:
        stop()


@pytest.fixture(scope="session")
def redis_url():
    try:
        url, stop = services.find_redis()
    except services.ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield url
    if stop:
        stop()


@pytest.fixture(scope="session")
def cluster_redis():
    """A Redis Cluster of three primaries, started from the installed redis-server for
    the run (each test uses keys of its own prefix)."""
    try:
        servers = services.ClusterRedis()
    except services.ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield servers
    servers.stop()


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema(pg_dsn):
    """A fresh, empty PostgreSQL schema for one test; dropped afterwards."""
    schema = "ocs_t_" + secrets.token_hex(6)
    await _admin(pg_dsn, f"CREATE SCHEMA {schema}")
    yield schema
    await _admin(pg_dsn, f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=BACKENDS)
def store_target(request, tmp_path):
    """(url, driver options) of an empty store on the parametrized backend."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path}/ocs.db", {}
    return pg_store_target(request, request.getfixturevalue("pg_dsn"))


def pg_store_target(request, dsn: str) -> tuple[str, dict]:
    """(url, driver options) of a fresh PostgreSQL schema, dropped after the test."""
    schema = "ocs_t_" + secrets.token_hex(6)
    asyncio.run(_admin(dsn, f"CREATE SCHEMA {schema}"))
    request.addfinalizer(lambda: asyncio.run(_admin(dsn, f"DROP SCHEMA {schema} CASCADE")))
    return dsn, {"schema": schema}


@pytest.fixture
async def store(store_target):
    url, options = store_target
    st = Store(make_driver(url, **options))
    await st.open(migrate_schema=True)
    yield st
    await st.close()

"""Shared fixtures: real PostgreSQL and Redis (see tests/services.py), and a
`store` fixture that runs each test once per backend."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys

import asyncpg
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ocs.store import Store, make_driver  # noqa: E402
from tests import services  # noqa: E402

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

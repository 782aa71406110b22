"""A throwaway PostgreSQL schema for one benchmark run."""

from __future__ import annotations

import contextlib
import secrets
from typing import AsyncIterator

import asyncpg


@contextlib.asynccontextmanager
async def throwaway_schema(dsn: str) -> AsyncIterator[str]:
    """Create an empty schema, yield its name, drop it (and everything in it) after."""
    schema = "ocs_bench_" + secrets.token_hex(4)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield schema
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()

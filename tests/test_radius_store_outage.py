"""RFC 2866 §2 under failure: while the database is unreachable ocsd sends no
Accounting-Response at all (the NAS retries or fails over), and once it is back
the retransmitted interim is charged exactly once.

The daemon runs on PostgreSQL in a database of its own; the outage is real:
the database stops accepting connections and the daemon's are terminated.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg

from ocs.model import Kind
from tests.radius_harness import SECRET, RadiusOcsd

EUR = 1_000_000


async def _admin(dsn: str, *sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


def admin(dsn: str, *sql: str) -> None:
    asyncio.run(_admin(dsn, *sql))


def database_url(dsn: str, name: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


def test_no_accounting_response_while_the_store_is_down(tmp_path, pg_dsn):
    db = "ocs_outage_" + secrets.token_hex(4)
    admin(pg_dsn, f"CREATE DATABASE {db}")
    url = database_url(pg_dsn, db)
    kill = (f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{db}' AND pid <> pg_backend_pid()")
    rad = RadiusOcsd(tmp_path, store_url=url, extra_store="pool_min = 1\npool_max = 2\n"
                                                          "command_timeout = 2")

    async def seed(store):
        await store.create_nas(name="local", address="127.0.0.1", secret=SECRET)
        plan = await store.create_plan(name="bytes", currency="EUR", allowances=[
            {"kind": "octets", "units": 10_000_000, "validity_days": 30}])
        a = await store.create_account(name="outage", currency="EUR", billing="prepaid",
                                       opening_balance=EUR)
        await store.create_subscriber(account_id=a.id, username="outage", password="pw",
                                      plan_id=plan.id)
        return a.id

    try:
        account = rad.seed(seed)
        rad.start()
        base = 'User-Name = "outage", Acct-Session-Id = "o-1", '
        code, _ = rad.radclient("acct", base + "Acct-Status-Type = Start")
        assert code == "Accounting-Response"

        admin(pg_dsn, f"ALTER DATABASE {db} ALLOW_CONNECTIONS false", kill)
        interim = base + ("Acct-Status-Type = Interim-Update, Acct-Input-Octets = 4000, "
                          "Acct-Output-Octets = 1000, Acct-Session-Time = 60")
        code, _ = rad.radclient("acct", interim, timeout=3.0, retries=1)
        assert code is None, "an Accounting-Response was sent for a charge not stored"
        assert rad.dropped("store_unavailable") >= 1
        rad.wait_log(r"no answer to accounting from local: store unavailable")

        admin(pg_dsn, f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        deadline = time.monotonic() + 20
        while True:  # the NAS keeps retransmitting the same interim until it is answered
            code, _ = rad.radclient("acct", interim, timeout=2.0, retries=1)
            if code == "Accounting-Response" or time.monotonic() > deadline:
                break
        assert code == "Accounting-Response"
        # ...and the interim is charged once, however many times it was sent.
        code, _ = rad.radclient("acct", interim)
        assert code == "Accounting-Response"
        assert rad.buckets(account)["octets"] == 10_000_000 - 5000

        async def ledger(store):
            return [e for e in await store.ledger(account, limit=100)
                    if e.kind is Kind.OCTETS and e.entry_type.value == "debit"]
        assert [e.amount for e in rad.seed(ledger)] == [-5000]
    finally:
        rad.stop()
        admin(pg_dsn, f"ALTER DATABASE {db} ALLOW_CONNECTIONS true", kill,
              f"DROP DATABASE IF EXISTS {db}")

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
from tests.radius_harness import SECRET, A, Code, RadiusOcsd, acct_packet, codec

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


def test_a_nul_in_text_attributes_is_answered_on_postgres(tmp_path, pg_dsn):
    """PostgreSQL stores no NUL in a string. A NAS that NUL-terminates its strings, or
    sends one inside (a session id, a user name), is answered as any other: the NUL
    terminator dropped, any other NUL read as U+FFFD. Before, the charge failed in
    the database ('store unavailable': no answer, retransmitted for ever) and the
    Access-Request with an internal error."""
    db = "ocs_nul_" + secrets.token_hex(4)
    admin(pg_dsn, f"CREATE DATABASE {db}")
    rad = RadiusOcsd(tmp_path, store_url=database_url(pg_dsn, db))

    async def seed(store):
        await store.create_nas(name="local", address="127.0.0.1", secret=SECRET)
        plan = await store.create_plan(name="bytes", currency="EUR", allowances=[
            {"kind": "octets", "units": 10 * 2**30, "validity_days": 30}])
        a = await store.create_account(name="nul", currency="EUR", billing="prepaid",
                                       opening_balance=EUR)
        await store.create_subscriber(account_id=a.id, username="nul", password="pw-nul-1",
                                      plan_id=plan.id, max_sessions=0)

    try:
        rad.seed(seed)
        rad.start()
        for ident, (user, session) in enumerate(((b"nul\x00", b"s-1\x00"),  # terminated
                                                 (b"nul", b"s\x00-2"),      # inside
                                                 (b"n\x00ul", b"s-3"))):
            reply = rad.send_raw(acct_packet([
                (A.USER_NAME, user), (A.ACCT_STATUS_TYPE, codec.u32(1)),
                (A.ACCT_SESSION_ID, session)], ident=ident))
            assert reply is not None and codec.decode(reply).code == Code.ACCOUNTING_RESPONSE
        status, body = rad.api("GET", "/v1/sessions?status=active")
        assert status == 200, body
        assert {s["id"] for s in body["items"]} == {"radius:local:s-1", "radius:local:s\ufffd-2"}
        status, body = rad.api("GET", "/v1/accounting/unmatched")  # "n\ufffdul" is nobody
        assert status == 200, body
        assert [u["identity"] for u in body["items"]] == ["username=n\ufffdul"], body
        code, attrs = rad.radclient("auth", 'User-Name = "nul", User-Password = "pw-nul-1", '
                                            'Message-Authenticator = 0x00')
        assert code == "Access-Accept", attrs
        auth = codec.new_authenticator()
        for ident, user in ((60, b"nul\x00"), (61, b"n\x00ul")):
            data = codec.encode_request(Code.ACCESS_REQUEST, ident, [
                (A.USER_NAME, user),
                (A.USER_PASSWORD, codec.hide_password(b"pw-nul-1", SECRET.encode(), auth))],
                SECRET.encode(), authenticator=auth, message_authenticator=True)
            reply = codec.decode(rad.send_raw(data, port="auth"))
            assert reply.code == (Code.ACCESS_ACCEPT if user == b"nul\x00" else
                                  Code.ACCESS_REJECT), user
        assert rad.dropped("internal_error") == 0 and rad.dropped("store_unavailable") == 0
    finally:
        rad.stop()
        admin(pg_dsn, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

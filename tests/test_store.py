"""The Store contract: records, lookups and errors, identical on both backends."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from ocs import passwords
from ocs.errors import Conflict, MigrationError, NotFound, ValidationError
from ocs.model import Kind, PeerKind, Role, Session, now_us
from ocs.store import Store, make_driver
from ocs.store import migrate
from ocs.store.sql import execute, fetch, fetchval

EUR = 1_000_000


async def test_schema_is_at_the_latest_version_and_migrate_is_idempotent(store):
    assert await store.schema_version() == migrate.LATEST
    assert await store.migrate() == []


async def test_opening_an_unmigrated_store_says_what_to_do(store_target):
    url, options = store_target
    fresh = Store(make_driver(url, **options))
    with pytest.raises(MigrationError, match="ocsctl db migrate"):
        await fresh.open()


async def test_accounts_round_trip_and_names_are_unique(store):
    a = await store.create_account(name="acme", currency="eur", billing="postpaid",
                                   credit_limit=100 * EUR, language="de")
    got = await store.get_account(a.id)
    assert (got.name, got.currency, got.billing.value, got.credit_limit, got.floor) == \
        ("acme", "EUR", "postpaid", 100 * EUR, -100 * EUR)
    assert (await store.find_account("acme")).id == a.id
    with pytest.raises(Conflict, match="name"):
        await store.create_account(name="acme", currency="EUR", billing="prepaid")
    with pytest.raises(NotFound):
        await store.get_account(424242)
    updated = await store.update_account(a.id, credit_limit=5 * EUR)
    assert updated.credit_limit == 5 * EUR and updated.updated_at >= a.updated_at
    suspended = await store.set_account_status(a.id, "suspended")
    assert suspended.status.value == "suspended"
    assert [x.id for x in await store.list_accounts(status="suspended")] == [a.id]
    with pytest.raises(ValidationError, match="cannot change"):
        await store.update_account(a.id, balance=5)


async def test_reseller_hierarchy_references_must_exist(store):
    parent = await store.create_account(name="reseller", currency="EUR", billing="postpaid")
    child = await store.create_account(name="end-user", currency="EUR", billing="prepaid",
                                       parent_id=parent.id)
    assert child.parent_id == parent.id
    with pytest.raises(ValidationError):
        await store.create_account(name="orphan", currency="EUR", billing="prepaid",
                                   parent_id=999_999)


async def test_subscribers_are_found_by_every_identity(store):
    a = await store.create_account(name="acme", currency="EUR", billing="prepaid")
    s = await store.create_subscriber(account_id=a.id, username="alice", msisdn="41790000001",
                                      imsi="228010000000009", sip_user="2001", password="pw",
                                      framed_ip="10.0.0.7")
    for kw in (dict(username="alice"), dict(msisdn="41790000001"),
               dict(imsi="228010000000009"), dict(sip_user="2001"), dict(framed_ip="10.0.0.7")):
        assert (await store.find_subscriber(**kw)).id == s.id
    with pytest.raises(NotFound, match="username=bob"):
        await store.find_subscriber(username="bob")
    with pytest.raises(ValidationError):
        await store.find_subscriber()


async def test_subscriber_found_by_session_and_current_framed_ip(store):
    a = await store.create_account(name="acme", currency="EUR", billing="prepaid")
    s = await store.create_subscriber(account_id=a.id, username="carol")
    now = now_us()
    await store.upsert_session(Session(
        id="nas1:abc", account_id=a.id, subscriber_id=s.id, proto="radius", nas="nas1",
        nas_session_id="abc", framed_ip="100.64.0.9", status="active", last_seq=0,
        started_at=now, updated_at=now, ended_at=None, attrs={"nas_port": 7}))
    assert (await store.find_subscriber(session="nas1:abc")).id == s.id
    assert (await store.find_subscriber(session="abc")).id == s.id
    assert (await store.find_subscriber(framed_ip="100.64.0.9")).id == s.id
    session = await store.get_session("nas1:abc")
    assert session.attrs == {"nas_port": 7}
    assert await store.count_sessions() == {"radius": 1}
    with pytest.raises(ValidationError, match="active session"):
        await store.delete_subscriber(s.id)


async def test_active_sessions_of_a_subscriber_are_counted_up_to_a_limit(store):
    a = await store.create_account(name="multi", currency="EUR", billing="prepaid")
    s = await store.create_subscriber(account_id=a.id, username="dave")
    other = await store.create_subscriber(account_id=a.id, username="erin")
    now = now_us()
    for i, (who, status) in enumerate([(s, "active"), (s, "active"), (s, "closed"),
                                       (s, "active"), (other, "active")]):
        await store.upsert_session(Session(
            id=f"nas1:{i}", account_id=a.id, subscriber_id=who.id, proto="radius",
            nas="nas1", nas_session_id=str(i), framed_ip=None, status=status, last_seq=0,
            started_at=now, updated_at=now, ended_at=None, attrs={}))
    assert await store.active_sessions(s.id, limit=10) == 3
    assert await store.active_sessions(s.id, limit=2) == 2
    assert await store.active_sessions(other.id, limit=10) == 1
    # The same count, read with the balance in one statement.
    plain = await store.balance(a.id)
    both = await store.balance(a.id, sessions_of=(s.id, 10))
    assert both["active_sessions"] == 3 and "active_sessions" not in plain
    assert both["buckets"] == plain["buckets"] and both["available"] == plain["available"]
    assert (await store.balance(a.id, sessions_of=(s.id, 2)))["active_sessions"] == 2
    assert (await store.balance(a.id, sessions_of=(other.id, 5)))["active_sessions"] == 1


async def test_identities_are_unique_and_one_is_required(store):
    a = await store.create_account(name="acme", currency="EUR", billing="prepaid")
    await store.create_subscriber(account_id=a.id, msisdn="41790000001")
    with pytest.raises(Conflict, match="msisdn"):
        await store.create_subscriber(account_id=a.id, msisdn="41790000001")
    with pytest.raises(ValidationError, match="at least one"):
        await store.create_subscriber(account_id=a.id)
    with pytest.raises(NotFound):
        await store.create_subscriber(account_id=999_999, username="ghost")


async def test_password_material_is_hashed_and_never_public(store):
    a = await store.create_account(name="acme", currency="EUR", billing="prepaid")
    s = await store.create_subscriber(account_id=a.id, username="dave", password="s3cret!")
    assert s.password_hash != "s3cret!" and passwords.verify_password("s3cret!", s.password_hash)
    assert s.nt_hash == passwords.nt_hash("s3cret!")
    assert "s3cret" not in repr(s) and "password_hash" not in s.public()
    changed = await store.update_subscriber(s.id, password="other")
    assert passwords.verify_password("other", changed.password_hash)
    assert not passwords.verify_password("s3cret!", changed.password_hash)


async def test_plan_allowances_become_buckets_with_ledger_entries(store):
    plan = await store.create_plan(
        name="data-10g", currency="EUR", recurring_fee=15 * EUR,
        allowances=[{"kind": "octets", "units": 10 * 2**30, "validity_days": 30}],
        speed_profile={"down_kbps": 20000, "up_kbps": 5000},
        fair_usage={"threshold_octets": 8 * 2**30,
                    "throttle_profile": {"down_kbps": 1000, "up_kbps": 512}})
    assert plan.allowances[0].units == 10 * 2**30
    assert plan.fair_usage.throttle_profile.down_kbps == 1000
    a = await store.create_account(name="acme", currency="EUR", billing="prepaid")
    await store.create_subscriber(account_id=a.id, plan_id=plan.id, username="erin")
    octets = [b for b in await store.buckets(a.id) if b.kind is Kind.OCTETS]
    assert [b.balance for b in octets] == [10 * 2**30]
    assert octets[0].valid_to - octets[0].valid_from == 30 * 86_400_000_000
    assert (await store.ledger_sums(a.id))[octets[0].id] == 10 * 2**30
    assert (await store.find_plan("data-10g")).id == plan.id
    with pytest.raises(Conflict):
        await store.create_plan(name="data-10g", currency="EUR")


async def test_nas_records_keep_their_secret_private(store):
    nas = await store.create_nas(name="bras-1", address="192.0.2.10", secret="x" * 20,
                                 vendor="mikrotik", control={"ssh": False})
    assert nas.kind is PeerKind.NAS and nas.coa_port == 3799
    assert nas.require_message_authenticator == "yes"
    assert "secret" not in nas.public() and "x" * 20 not in repr(nas)
    assert [n.name for n in await store.list_nas()] == ["bras-1"]
    updated = await store.update_nas(nas.id, coa_port=1700)
    assert updated.coa_port == 1700 and updated.control == {"ssh": False}
    with pytest.raises(Conflict):
        await store.create_nas(name="bras-2", address="192.0.2.10", secret="y" * 20)
    await store.delete_nas(nas.id)
    with pytest.raises(NotFound):
        await store.get_nas(nas.id)


async def test_cdrs_and_audit_are_listed_newest_first(store):
    a = await store.create_account(name="acme", currency="EUR", billing="prepaid")
    for i in range(3):
        await store.add_cdr(account_id=a.id, kind="seconds", started_at=i, ended_at=i + 60,
                            units=60, cost=EUR, currency="EUR", session=f"s{i}",
                            details={"called": "4420"})
    cdrs = await store.list_cdrs(account_id=a.id)
    assert [c.session for c in cdrs] == ["s2", "s1", "s0"]
    assert cdrs[0].details == {"called": "4420"}
    assert [c.session for c in await store.list_cdrs(before_id=cdrs[0].id, limit=1)] == ["s1"]
    await store.add_audit(actor="ops", role="operator", action="POST /v1/x", status=201,
                          request={"a": 1})
    (entry,) = await store.list_audit()
    assert (entry.actor, entry.status, entry.request) == ("ops", 201, {"a": 1})


async def test_api_tokens_are_stored_hashed(store):
    token, secret = await store.create_token("ops", Role.OPERATOR)
    assert (await store.verify_token(secret)).name == "ops"
    assert await store.verify_token(secret + "x") is None
    assert [t.name for t in await store.list_tokens()] == ["ops"]
    await store.delete_token("ops")
    assert await store.verify_token(secret) is None


async def test_bulk_import_is_all_or_nothing(store):
    plan = await store.create_plan(name="basic", currency="EUR", allowances=[
        {"kind": "octets", "units": 1000, "validity_days": 30}])
    rows = [dict(line=i + 2, account=f"acct{i % 3}", currency="EUR", billing="prepaid",
                 plan="basic", username=f"user{i}", password="pw", opening_balance=EUR)
            for i in range(10)]
    assert await store.import_subscribers(rows) == 10
    assert len(await store.list_subscribers()) == 10
    a0 = await store.find_account("acct0")
    assert (await store.balance(a0.id))["balance"] == EUR
    assert all(s.plan_id == plan.id for s in await store.list_subscribers())
    # acct0 has users 0, 3, 6, 9: one allowance each, every one a ledger credit.
    octets = [b for b in await store.buckets(a0.id) if b.kind is Kind.OCTETS]
    assert [b.balance for b in octets] == [1000] * 4
    sums = await store.ledger_sums(a0.id)
    assert all(sums[b.id] == b.balance for b in await store.buckets(a0.id))
    assert {e.reason for e in await store.ledger(a0.id) if e.kind is Kind.OCTETS} == \
        {"plan basic allowance"}
    again = [dict(line=2, account="acct9", currency="EUR", billing="prepaid",
                  username="fresh"),
             dict(line=3, account="acct9", currency="EUR", billing="prepaid",
                  username="user1")]  # duplicate username: the whole import fails
    with pytest.raises(Conflict):
        await store.import_subscribers(again)
    with pytest.raises(NotFound):
        await store.find_account("acct9")
    with pytest.raises(NotFound):
        await store.find_subscriber(username="fresh")


async def test_a_new_plan_is_an_event_for_enforcement(store):
    a = await store.create_account(name="acme", currency="EUR", billing="prepaid")
    basic = await store.create_plan(name="basic", currency="EUR")
    fast = await store.create_plan(name="fast", currency="EUR")
    s = await store.create_subscriber(account_id=a.id, username="u1", plan_id=basic.id)
    await store.update_subscriber(s.id, max_sessions=2)  # not a plan change: no event
    await store.update_subscriber(s.id, plan_id=fast.id)
    (event,) = await store.events(account_id=a.id)
    assert (event["type"], event["subscriber_id"], event["plan_id"],
            event["previous_plan_id"]) == ("plan_changed", s.id, fast.id, basic.id)
    with pytest.raises(NotFound):
        await store.update_subscriber(999_999, plan_id=fast.id)


async def test_sqlite_wal_is_checkpointed_while_running_and_empty_after_close(tmp_path):
    """Checkpoints run beside the writer (never inside a commit): while running the
    write-ahead log is copied back into the database file, and after a clean stop
    the file alone holds everything (what a backup of it copies)."""
    import asyncio
    import os
    import sqlite3

    path = tmp_path / "ocs.db"
    driver = make_driver(f"sqlite:{path}")
    driver.CHECKPOINT_EVERY = 0.05
    store = Store(driver)
    await store.open(migrate_schema=True)
    a = await store.create_account(name="wal", currency="EUR", billing="prepaid")
    for i in range(50):
        await store.credit(a.id, 1_000, ref=f"wal-{i}")
    await asyncio.sleep(0.3)

    def in_file_alone() -> int:  # the database file, ignoring any write-ahead log
        db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return db.execute("SELECT count(*) FROM ledger WHERE account_id = ?",
                              (a.id,)).fetchone()[0]
        finally:
            db.close()
    assert in_file_alone() == 50
    await store.credit(a.id, 1_000, ref="wal-last")
    await store.close()
    assert not os.path.exists(f"{path}-wal") or os.path.getsize(f"{path}-wal") == 0
    assert in_file_alone() == 51


async def test_sqlite_charging_waits_for_another_process_holding_the_lock(tmp_path, caplog):
    """A balance batch never waits for the database lock inside the event loop:
    while another connection (an operator's sqlite3 shell, say) holds the write
    lock, the daemon keeps running and the batch commits once the lock is free.
    A commit that took over a second is logged: every request in it waited."""
    import sqlite3

    path = tmp_path / "ocs.db"
    store = Store(make_driver(f"sqlite:{path}"))
    await store.open(migrate_schema=True)
    try:
        a = await store.create_account(name="locked", currency="EUR", billing="prepaid")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        credit = asyncio.create_task(store.credit(a.id, 5 * EUR, ref="while-locked"))
        ticks = 0
        for _ in range(20):  # the loop keeps turning while the batch waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not credit.done()
        await asyncio.sleep(1.0)
        other.execute("COMMIT")
        other.close()
        with caplog.at_level(logging.WARNING, logger="ocs.store"):
            result = await asyncio.wait_for(credit, 10)
        assert result.ok
        assert re.search(r"a balance batch of 1 took \d\.\d s to commit", caplog.text), \
            caplog.text
        assert (await store.balance(a.id))["balance"] == 5 * EUR
        await store.credit(a.id, 1 * EUR, ref="after")  # the inline path again
        assert (await store.balance(a.id))["balance"] == 6 * EUR
    finally:
        await store.close()


# A scratch table for the driver tests below.
def _create_t():
    yield execute("CREATE TABLE t (v INTEGER)")


@pytest.fixture
async def scratch_sqlite(tmp_path):
    """A bare SQLite driver with the scratch table."""
    driver = make_driver(f"sqlite:{tmp_path / 'ocs.db'}")
    await driver.open()
    await driver.run(_create_t)
    yield driver
    await asyncio.wait_for(driver.close(), 10)  # a writer lock never released hangs here


def _insert_t(v):
    yield execute("INSERT INTO t (v) VALUES ($1)", v)


def _total_t():
    return (yield fetchval("SELECT sum(v) FROM t"))


async def test_sqlite_a_write_cancelled_while_committing_keeps_the_writer_usable(
        scratch_sqlite):
    """The write lock is held until the COMMIT has returned in the writer's thread,
    even when the caller is cancelled meanwhile: the next write must not begin a
    transaction on the connection while the previous one is still committing."""
    import time

    driver = scratch_sqlite
    commit = driver._commit

    def slow_commit(conn):
        time.sleep(0.3)
        commit(conn)
    driver._commit = slow_commit

    first = asyncio.create_task(driver.run(_insert_t, 1, quick=True))
    await asyncio.sleep(0.1)  # statements done, COMMIT sleeping in the thread
    first.cancel()
    driver._commit = commit
    await driver.run(_insert_t, 2, quick=True)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await driver.run(_total_t, write=False) == 3  # both committed


async def test_sqlite_a_write_that_cannot_begin_leaves_the_writer_usable(scratch_sqlite):
    """An error from BEGIN itself (not a busy lock: a disk error, say) fails that
    write and releases the write lock for the next one."""
    import sqlite3

    from ocs.errors import StoreUnavailable

    driver = scratch_sqlite
    begin = driver._begin_now

    def broken(conn):
        raise sqlite3.OperationalError("disk I/O error")
    driver._begin_now = broken

    with pytest.raises((StoreUnavailable, sqlite3.OperationalError)):
        await asyncio.wait_for(driver.run(_insert_t, 1, quick=True), 5)
    driver._begin_now = begin
    await asyncio.wait_for(driver.run(_insert_t, 2, quick=True), 5)
    assert await driver.run(_total_t, write=False) == 2


async def test_point_lookups_on_a_closed_store_say_so(store_target):
    """A request that looks something up after the store closed (shutdown, outage)
    gets StoreUnavailable, the error every front-end answers with silence."""
    from ocs.errors import StoreUnavailable
    url, options = store_target
    st = Store(make_driver(url, **options))
    await st.open(migrate_schema=True)
    a = await st.create_account(name="gone", currency="EUR", billing="prepaid")
    assert (await st.get_account(a.id)).name == "gone"
    await st.close()
    with pytest.raises(StoreUnavailable):
        await st.get_account(a.id)
    with pytest.raises(StoreUnavailable):
        await st.buckets(a.id)


async def test_sqlite_a_program_called_wrongly_leaves_the_writer_usable(scratch_sqlite):
    """A programming error in how a write is called fails that write only: the
    write lock is not kept, and no transaction is left open on the connection."""
    driver = scratch_sqlite
    for quick in (True, False):
        with pytest.raises(TypeError):
            await asyncio.wait_for(driver.run(_insert_t, quick=quick), 5)  # v missing
    await asyncio.wait_for(driver.run(_insert_t, 1, quick=True), 5)
    await asyncio.wait_for(driver.run(_insert_t, 2), 5)
    assert await driver.run(_total_t, write=False) == 3


async def test_a_sessions_ledger_is_found_through_the_accounts_it_charged(store):
    """The ledger is indexed by account only: a session's entries are found under
    the accounts its session, charging and reservation rows name, whatever the
    session's state, and that lookup never scans the whole ledger."""
    from ocs.store.store import ledger_query

    eur = 1_000_000
    a = await store.create_account(name="la", currency="EUR", billing="prepaid",
                                   opening_balance=10 * eur)
    b = await store.create_account(name="lb", currency="EUR", billing="prepaid",
                                   opening_balance=10 * eur)
    await store.reserve(a.id, "led-open", eur, seq=1)          # held only
    await store.commit(a.id, "led-open", eur // 4, seq=2, reserve=eur)
    await store.reserve(b.id, "led-done", eur, seq=1)
    await store.commit(b.id, "led-done", eur // 2, seq=2, final=True)   # closed
    await store.commit(b.id, "led-other", eur // 10, seq=1, final=True)

    open_ = await store.ledger(session="led-open")
    assert [(e.account_id, e.amount) for e in open_] == [(a.id, -eur // 4)]
    done = await store.ledger(session="led-done")
    assert [(e.account_id, e.amount) for e in done] == [(b.id, -eur // 2)]
    assert await store.ledger(session="led-none") == []
    assert [e.amount for e in await store.ledger(b.id, session="led-other")] == [-eur // 10]

    for sql, args in (ledger_query(session="s"), ledger_query(7, session="s"),
                      ledger_query(7, before_id=9)):
        if store.driver.dialect == "sqlite":
            plan = " | ".join(r["detail"] for r in await store._all(
                "EXPLAIN QUERY PLAN " + sql, *args))
            assert "SCAN ledger" not in plan, plan
        else:  # tables this small are scanned anyway: is there an indexed plan at all?
            def explain(sql=sql, args=args):
                yield execute("SET LOCAL enable_seqscan = off")
                return (yield fetch("EXPLAIN (COSTS OFF) " + sql, *args))
            plan = " | ".join(r[0] for r in await store.driver.run(explain))
            assert "Seq Scan on ledger" not in plan, plan


async def test_a_cancelled_transaction_raises_cancellation_not_a_store_error(store):
    """Cancelling a task in the middle of a transaction cancels it: whatever the
    driver's clean-up of the interrupted statement raises (asyncpg refuses to roll
    back over a statement still running) must not turn the cancellation into a
    StoreUnavailable, which loops that retry on store errors would swallow, never
    stopping. (On the embedded store the statements, which cannot be interrupted,
    finish in the writer's thread.) The store stays usable afterwards."""
    slow = ("SELECT pg_sleep(5)" if store.driver.dialect == "postgres" else
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000)"
            " SELECT count(*) FROM c")

    def program():
        yield execute("UPDATE provisioning SET version = version + 1 WHERE id = 1")
        return (yield fetchval(slow))

    # Cancelled well inside the slow statement: PostgreSQL's sleeps 5 s; SQLite's
    # counts for about a second here (20 times the wait below).
    started_within = 0.3 if store.driver.dialect == "postgres" else 0.05
    for write in (True, False):
        task = asyncio.create_task(store.driver.run(program, write=write))
        await asyncio.sleep(started_within)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    a = await store.create_account(name="after-cancel", currency="EUR", billing="prepaid",
                                   opening_balance=1_000)
    assert (await store.balance(a.id))["balance"] == 1_000


async def test_postgres_waits_a_bounded_time_for_a_free_connection(pg_dsn, pg_schema):
    """When every pooled connection is busy, a transaction waits at most the acquire
    timeout and fails with a clear StoreUnavailable (the request goes unanswered and
    the client retries) instead of queueing forever; the pool serves again after."""
    import time

    from ocs.errors import StoreUnavailable
    from ocs.store.postgres import PostgresDriver

    driver = PostgresDriver(pg_dsn, min_size=1, max_size=1, schema=pg_schema,
                            acquire_timeout=0.3)
    await driver.open()
    try:
        def sleeper():
            return (yield fetchval("SELECT pg_sleep(1.0)::text"))

        def one():
            return (yield fetchval("SELECT 1"))
        busy = asyncio.create_task(driver.run(sleeper, write=False))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"no PostgreSQL connection free within "
                                                   r"0\.3s \(all 1 of \[store\] pool_max busy\)"):
            await driver.run(one, write=False)
        assert time.monotonic() - started < 0.9  # not after the sleeper released it
        await busy
        assert await driver.run(one, write=False) == 1
        assert driver._in_use == 0
    finally:
        await driver.close()


async def test_postgres_writes_follow_a_switchover_to_the_promoted_standby():
    """A switchover as operators run one: the primary is fenced (read-only for every
    session, connections kept), then the standby promoted. The store's pooled
    connections to the old primary refuse writes; each is dropped on its first
    refusal and the write runs again on a new connection, which settles on the
    new primary (DSN: both hosts, the standby first). Balances carry over."""
    import asyncpg

    from ocs.errors import StoreUnavailable
    from tests.services import ReplicatedPostgres

    pair = await asyncio.to_thread(ReplicatedPostgres)
    store = Store(make_driver(pair.dsn, pool_min=3, pool_max=3))
    try:
        await store.open(migrate_schema=True)
        a = await store.create_account(name="switch", currency="EUR", billing="prepaid",
                                       opening_balance=5_000)
        old, new = pair.primary, pair.standby
        fence = await asyncpg.connect(old.dsn)
        await fence.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await fence.execute("SELECT pg_reload_conf()")
        await fence.close()
        await asyncio.sleep(0.3)  # the reload reaches every session
        with pytest.raises(StoreUnavailable, match="no host of the DSN takes writes"):
            await store.credit(a.id, 1_000, reason="during the fence")
        await asyncio.to_thread(new.promote)
        alone = await asyncpg.connect(new.dsn)  # no standby follows it: commit alone
        await alone.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        await alone.execute("SELECT pg_reload_conf()")
        await alone.close()
        for n in range(3):  # more writes than pooled connections
            await store.credit(a.id, 1_000, reason=f"after the promotion {n}")
        assert (await store.balance(a.id))["balance"] == 8_000
        check = await asyncpg.connect(new.dsn)
        try:
            assert not await check.fetchval("SELECT pg_is_in_recovery()")
            assert await check.fetchval("SELECT count(*) FROM ledger WHERE account_id = $1",
                                        a.id) == 4  # the opening balance and three
        finally:
            await check.close()
    finally:
        await store.close()
        await asyncio.to_thread(pair.stop)


async def test_unmatched_accounting_keeps_the_latest_report_of_each_session(store):
    async def report(seq, at, *, units, closed=False, attrs=None, session="radius:nas1:u1"):
        await store.record_unmatched(session=session, proto="radius", nas=session.split(":")[1],
                                     nas_session_id=session.rsplit(":", 1)[1],
                                     identity="username=ghost", closed=closed,
                                     units=units, attrs=attrs or {}, seq=seq, at=at)

    await report(10, 1_000, units={"data": 100}, attrs={"Framed-IP-Address": "10.0.0.9"})
    await report(30, 3_000, units={"data": 900}, closed=True,
                 attrs={"Acct-Terminate-Cause": "User-Request"})
    await report(20, 2_000, units={"data": 500})  # an interim that arrived late
    await report(5, 4_000, units={"data": 7}, session="radius:nas2:u2")
    (u1,) = await store.list_unmatched(nas="nas1")
    assert (u1.status, u1.units, u1.seq, u1.reports) == ("closed", {"data": 900}, 30, 3)
    assert (u1.first_at, u1.last_at) == (1_000, 3_000)
    assert u1.attrs == {"Acct-Terminate-Cause": "User-Request"}
    assert [u.session for u in await store.list_unmatched()] == ["radius:nas2:u2",
                                                                 "radius:nas1:u1"]
    assert [u.session for u in await store.list_unmatched(status="active")] == \
        ["radius:nas2:u2"]
    await store.delete_unmatched("radius:nas1:u1")
    with pytest.raises(NotFound):
        await store.delete_unmatched("radius:nas1:u1")
    assert [u.session for u in await store.list_unmatched()] == ["radius:nas2:u2"]


async def test_unmatched_accounting_written_concurrently_is_all_kept(store):
    """Reports arriving together are committed in batches: none lost, each counted."""
    await asyncio.gather(*(
        store.record_unmatched(session=f"radius:nas3:c{i % 5}", proto="radius", nas="nas3",
                               nas_session_id=f"c{i % 5}", identity=f"username=u{i % 5}",
                               closed=False, units={"data": i}, attrs={}, seq=i, at=i)
        for i in range(20)))
    got = {u.session: u for u in await store.list_unmatched(nas="nas3")}
    assert sorted(got) == [f"radius:nas3:c{k}" for k in range(5)]
    for k in range(5):
        entry = got[f"radius:nas3:c{k}"]
        assert (entry.reports, entry.units, entry.seq) == (4, {"data": 15 + k}, 15 + k)


async def test_unmatched_accounting_is_forgotten_after_its_retention(store):
    day = 86_400 * 1_000_000
    for name, at in (("old", now_us() - 100 * day), ("recent", now_us() - day)):
        await store.record_unmatched(session=f"radius:nas4:{name}", proto="radius",
                                     nas="nas4", nas_session_id=name, identity="username=x",
                                     closed=True, units={"data": 1}, attrs={}, seq=1, at=at)
    assert await store.purge_unmatched(90 * 86_400) == 1
    assert [u.nas_session_id for u in await store.list_unmatched(nas="nas4")] == ["recent"]


async def test_supervision_purge_also_forgets_stale_unmatched_accounting(store):
    from ocs.components import Context, Supervision
    from ocs.config import from_dict
    from ocs.metrics import Metrics
    config = from_dict({"store": {"unmatched_retention_days": 2}}, source="test")
    for name, age_days in (("stale", 3), ("fresh", 1)):
        await store.record_unmatched(
            session=f"radius:nas5:{name}", proto="radius", nas="nas5", nas_session_id=name,
            identity="username=y", closed=False, units={"data": 1}, attrs={}, seq=1,
            at=now_us() - age_days * 86_400 * 1_000_000)
    supervision = Supervision(Context(config=config, config_path="test", metrics=Metrics(),
                                      store=store))
    assert await supervision.purge_once() >= 1
    assert [u.nas_session_id for u in await store.list_unmatched(nas="nas5")] == ["fresh"]


def test_sqlite_any_lists_of_one_element_bind_as_plain_equality():
    """A batch of one request asks `= ANY($n)` with one element: SQLite gets
    `= ?n` (no json_each table); other lists, and a list that is a value rather
    than an ANY argument, keep the JSON form, and every form finds the same rows."""
    import sqlite3

    from ocs.store.sql import execute, fetch, fetchval
    from ocs.store.sqlite import _any_params, _execute, translate_single

    assert translate_single("SELECT * FROM t WHERE id = ANY($1) AND tag =ANY($2) "
                            "ORDER BY id FOR UPDATE") == \
        "SELECT * FROM t WHERE id = ?1 AND tag = ?2 ORDER BY id"
    assert _any_params("SELECT * FROM t WHERE id = ANY($1) AND tag = ANY($2)") == {1, 2}
    assert _any_params("SELECT * FROM t WHERE id = ANY($1) OR doc = $1") == set()
    assert _any_params("SELECT * FROM t WHERE id = ANY($1) AND x = $10") == {1}

    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, tag TEXT, doc TEXT)")
    _execute(conn, execute("INSERT INTO t (id, tag, doc) VALUES ($1, $2, $3)", 1, "a", ["x"]))
    _execute(conn, execute("INSERT INTO t (id, tag, doc) VALUES ($1, $2, $3)", 2, "b", []))
    assert _execute(conn, fetchval("SELECT doc FROM t WHERE id = $1", 1)) == '["x"]'

    def ids(*args):
        rows = _execute(conn, fetch("SELECT id FROM t WHERE id = ANY($1) AND tag = ANY($2) "
                                    "ORDER BY id", *args))
        return [r["id"] for r in rows]
    assert ids([1], ["a"]) == [1]
    assert ids({2}, ("b",)) == [2]
    assert ids([1], ["b"]) == []
    assert ids([1, 2], ["a"]) == [1]
    assert ids([1, 2], ["a", "b"]) == [1, 2]
    assert ids([], ["a"]) == []

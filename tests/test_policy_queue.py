"""The action queue's contract, on the store table (SQLite, PostgreSQL) and on Redis
Streams: idempotent enqueueing, the per-NAS limit across workers, a dead
worker's actions taken over after the lease, back-off, dead letters and
their revival, superseding, listings and counts."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis

from ocs.config import RedisConfig
from ocs.model import Session, now_us
from ocs.store import Store, make_driver
from policy import decide
from policy.model import Target
from policy.redis_queue import StreamQueue
from policy.store_queue import StoreQueue
from tests.conftest import _admin

QUEUES = ["sqlite", "postgres", "redis", "redis-cluster"]


@pytest.fixture(params=QUEUES)
def queue_target(request, tmp_path):
    """(kind, store url, driver options, redis url or None)."""
    kind = request.param
    if kind == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        schema = "ocs_t_" + secrets.token_hex(6)
        asyncio.run(_admin(dsn, f"CREATE SCHEMA {schema}"))
        request.addfinalizer(lambda: asyncio.run(_admin(dsn, f"DROP SCHEMA {schema} CASCADE")))
        return kind, dsn, {"schema": schema}, None
    url = request.getfixturevalue("redis_url") if kind == "redis" else None
    if kind == "redis-cluster":
        url = request.getfixturevalue("cluster_redis").nodes
    return kind, f"sqlite:{tmp_path}/q.db", {"sqlite_synchronous": "NORMAL"}, url


@pytest.fixture
async def make_queue(queue_target):
    """make_queue(owner, per_nas=..., lease=...) -> a started queue of this test's kind;
    queues made in one test share the same store (and Redis keys): several nodes."""
    kind, store_url, options, url = queue_target
    store = Store(make_driver(store_url, **options))
    await store.open(migrate_schema=True)
    made = []
    prefix = f"ocs-qt-{secrets.token_hex(4)}:"

    async def make(owner: str, *, per_nas: int = 10, lease: float = 30.0):
        if kind.startswith("redis"):
            where = {"cluster_nodes": url} if kind == "redis-cluster" else {"url": url}
            q = StreamQueue(RedisConfig(**where, key_prefix=prefix), store, owner=owner,
                            per_nas=per_nas, lease=lease)
        else:
            q = StoreQueue(store, owner=owner, per_nas=per_nas, lease=lease)
        await q.start()
        made.append(q)
        return q
    make.store = store
    yield make
    for q in made:
        await q.stop()
    await store.close()
    if url:  # (the queue's keys share one hash tag: one node of a cluster holds them)
        r = (redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(*n.split(":"))
                                               for n in url])
             if kind == "redis-cluster" else redis.Redis.from_url(url))
        for key in r.scan_iter(match=f"{prefix}*"):
            r.delete(key)
        r.close()


def decision(session: str, action: str = "disconnect", *, generation: int = 1,
             nas: str = "bras-1", backends=(("coa", None),)) -> decide.Decision:
    target = Target(session=session, proto="radius", nas=nas, nas_session_id=session)
    return decide.Decision(session, 7, nas, action, "exhausted", now_us(),
                           {"fallback_disconnect": True, "target": target.to_dict()},
                           tuple((b, a or action) for b, a in backends), generation)


async def test_commit_is_idempotent_and_records_the_state(make_queue):
    q = await make_queue("n1")
    d = decision("s1")
    assert await q.commit([(d, "ev-1")], now_us()) == [d]
    # The same decision again (a redelivered event): the state moved on, nothing new.
    assert await q.commit([(d, "ev-1")], now_us()) == []
    state = (await q.states(["s1", "nobody"]))
    assert list(state) == ["s1"] and state["s1"].generation == 1
    assert state["s1"].params["event_id"] == "ev-1"
    # Queueing the recorded decision's actions again is a no-op.
    assert await q.requeue(d.actions(now_us())) == 0
    taken = await q.take(10)
    assert [(a.session, a.action, a.backend, a.attempts) for a in taken] == [
        ("s1", "disconnect", "coa", 0)]
    assert await q.take(10) == []
    assert (await q.counts())["running"] == 1
    await q.done(taken[0], "ack")
    assert await q.counts() == {"pending": 0, "running": 0, "dead": 0}
    done = await q.listing(("done",))
    assert [(e["session"], e["result"]) for e in done] == [("s1", "ack")]


async def test_per_nas_limit_holds_across_workers(make_queue):
    a = await make_queue("node-a", per_nas=2)
    b = await make_queue("node-b", per_nas=2)
    decisions = [decision(f"s{i}") for i in range(5)] + [decision("other", nas="bras-2")]
    await a.commit([(d, None) for d in decisions], now_us())
    first = await a.take(10)
    second = await b.take(10)
    by_nas = [x.nas for x in first + second]
    assert by_nas.count("bras-1") == 2 and by_nas.count("bras-2") == 1
    # A slot frees when an action finishes.
    done = next(x for x in first + second if x.nas == "bras-1")
    await (a if done in first else b).done(done, "ack")
    third = []
    for _ in range(20):   # the Redis queue parks what waits for a NAS slot a moment
        third += await b.take(10)
        if third:
            break
        await asyncio.sleep(0.05)
    assert [x.nas for x in third] == ["bras-1"]


async def test_a_dead_workers_actions_are_taken_over_after_the_lease(make_queue):
    dead = await make_queue("crashed", lease=1.0)
    alive = await make_queue("survivor", lease=1.0)
    await dead.commit([(decision("s-lost"), None)], now_us())
    assert [x.session for x in await dead.take(5)] == ["s-lost"]
    assert await alive.take(5) == []
    await asyncio.sleep(1.2)
    taken = await alive.take(5)
    assert [x.session for x in taken] == ["s-lost"]
    await alive.done(taken[0], "ack")
    assert (await alive.counts())["running"] == 0


async def test_retry_waits_for_its_delay_then_dead_letter_and_revive(make_queue):
    q = await make_queue("n1")
    await q.commit([(decision("s-r"), None)], now_us())
    (a,) = await q.take(5)
    await q.retry(a, 0.4, "timeout", "no answer")
    assert await q.take(5) == []
    pending = await q.listing(("pending",))
    assert pending[0]["result"] == "timeout" and pending[0]["last_error"] == "no answer"
    await asyncio.sleep(0.5)
    (a,) = await q.take(5)
    assert a.attempts == 1
    await q.bury(a, "nak", "CoA-NAK (Administratively-Prohibited)")
    dead = await q.listing(("dead",))
    assert dead[0]["attempts"] == 2 and "Administratively" in dead[0]["last_error"]
    assert (await q.counts())["dead"] == 1
    assert await q.revive("999999") is None and await q.revive("not-an-id") is None
    assert await q.revive(str(2**70)) is None and await q.revive("1-2-3") is None
    revived = await q.revive(dead[0]["id"])
    assert revived["status"] == "pending" and revived["attempts"] == 0
    (a,) = await q.take(5)
    assert a.session == "s-r" and a.attempts == 0
    assert (await q.counts())["dead"] == 0


async def test_a_newer_decision_supersedes_and_replace_falls_back(make_queue):
    q = await make_queue("n1")
    first = decision("s-x", "throttle")
    await q.commit([(first, None)], now_us())
    second = decision("s-x", "restore", generation=2)
    assert await q.commit([(second, None)], now_us()) == [second]
    # A decision made from a stale state loses the race: nothing of it is queued.
    assert await q.commit([(decision("s-x", "disconnect", generation=2), None)],
                          now_us()) == []
    taken = await q.take(5)
    if any(x.generation == 1 for x in taken):   # the Redis queue leaves it to the worker
        old = next(x for x in taken if x.generation == 1)
        assert (await q.states(["s-x"]))["s-x"].generation == 2
        await q.supersede(old)
    newest = next(x for x in taken if x.generation == 2)
    assert newest.action == "restore"
    fb = decide.fallback(newest, "coa refused restore")
    assert await q.replace(newest, "nak", "refused", fb)
    assert (await q.states(["s-x"]))["s-x"].action == "disconnect"
    (again,) = await q.take(5)
    assert (again.action, again.generation) == ("disconnect", 3)
    listed = await q.listing(("replaced",))
    assert [(e["action"], e["result"]) for e in listed] == [("restore", "nak")]


async def test_purge_forgets_finished_actions_and_closed_sessions(make_queue):
    q = await make_queue("n1")
    store = make_queue.store
    acct = await store.create_account(name="p", currency="EUR", billing="prepaid")
    sub = await store.create_subscriber(account_id=acct.id, username="p1")
    now = now_us()
    await store.upsert_session(Session(id="s-p", account_id=acct.id, subscriber_id=sub.id,
                                       proto="radius", nas="bras-1", nas_session_id="p",
                                       framed_ip=None, status="closed", last_seq=0,
                                       started_at=now, updated_at=now, ended_at=now, attrs={}))
    await q.commit([(decision("s-p"), None)], now_us())
    (a,) = await q.take(5)
    await q.done(a, "ack")
    assert await q.purge(now_us() + 1) >= 2
    assert await q.listing(("done",)) == [] and await q.states(["s-p"]) == {}


async def test_a_backlog_on_one_nas_does_not_starve_the_others(make_queue):
    q = await make_queue("n1", per_nas=1)
    await q.commit([(decision(f"busy{i}"), None) for i in range(30)], now_us())
    await q.commit([(decision("quiet", nas="bras-9"), None)], now_us())
    taken = []
    for _ in range(20):
        taken += await q.take(2)
        if {x.nas for x in taken} == {"bras-1", "bras-9"}:
            break
        await asyncio.sleep(0.05)
    assert sorted(x.nas for x in taken) == ["bras-1", "bras-9"]

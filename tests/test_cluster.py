"""The cross-node state adapter (ocs.cluster): one contract, run on the
in-process twin and on a real Redis, plus what only Redis can show (two nodes
sharing state, the key layout, outages and recovery)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster as RedisClusterClient
from redis.crc import key_slot

from ocs.cluster import (DIAMETER_PEERS, CallNotServed, ClusterError, ClusterUnavailable,
                         NodeUnreachable, build, connect)
from ocs.config import RedisConfig
from ocs.errors import StoreUnavailable, ValidationError
from tests import services


async def _drop_keys(url: str | list[str], prefix: str) -> None:
    """Delete the keys under `prefix` on the Redis at `url`, or on the Redis Cluster
    of these seed nodes (one key at a time: they lie in many slots)."""
    if isinstance(url, list):
        client = RedisClusterClient(startup_nodes=[ClusterNode(*n.split(":")) for n in url])
        try:
            async for key in client.scan_iter(match=prefix + "*", count=1000):
                await client.delete(key)
        finally:
            await client.aclose()
        return
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i:i + 500])
    finally:
        await client.aclose()


class Nodes:
    """Makes Cluster objects ("nodes") sharing one key prefix; cleans up. `url` is
    the Redis the keys are in; `where` what the nodes are told (by default the URL;
    with Sentinel, the Sentinels)."""

    def __init__(self, url: str, where: dict | None = None):
        self.url = url
        self.where = where if where is not None else {"url": url}
        self.prefix = f"ocs-test-{secrets.token_hex(6)}:"
        self.made = []

    async def __call__(self, node: str = "node-a", **config):
        cluster = await connect(RedisConfig(**self.where, key_prefix=self.prefix, **config),
                                node=node)
        self.made.append(cluster)
        return cluster

    async def close(self):
        for cluster in self.made:
            await cluster.stop()
        if self.url:
            await _drop_keys(self.url, self.prefix)


@pytest.fixture(scope="module")
def sentinel_redis():
    """A Redis primary and replica watched by a Sentinel, for this module's tests."""
    servers = services.SentinelRedis()
    yield servers
    servers.stop()


def sentinel_config(servers: services.SentinelRedis) -> dict:
    return {"sentinels": [servers.sentinel], "sentinel_master": servers.MASTER}


@pytest.fixture(params=["local", "redis", "sentinel", "cluster"])
def backend(request):
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url")
    if request.param == "sentinel":
        return "redis", request.getfixturevalue("sentinel_redis")
    if request.param == "cluster":
        return "redis", request.getfixturevalue("cluster_redis")
    return "local", ""


@pytest.fixture
async def nodes(backend):
    where = backend[1]
    if isinstance(where, services.SentinelRedis):  # the keys are on its primary
        made = Nodes(where.primary.url, sentinel_config(where))
    elif isinstance(where, services.ClusterRedis):
        made = Nodes(where.nodes, {"cluster_nodes": where.nodes})
    else:
        made = Nodes(where)
    yield made
    await made.close()


@pytest.fixture
async def cluster(nodes):
    return await nodes()


@pytest.fixture
async def redis_nodes(redis_url):
    made = Nodes(redis_url)
    yield made
    await made.close()


# ================================================================ lifecycle
async def test_backend_follows_config(backend, cluster):
    assert cluster.kind == backend[0]
    assert await cluster.ping() is True
    assert cluster.node == "node-a"


async def test_stopped_adapter_refuses_then_restarts(cluster):
    await cluster.sessions.put("s1", {"n": 1}, 30)
    await cluster.stop()
    for call in (cluster.ping(), cluster.sessions.get("s1"), cluster.dedup.claim("k"),
                 cluster.events.publish({"type": "x"})):
        with pytest.raises(ClusterUnavailable):
            await call
    await cluster.start()
    assert (await cluster.sessions.get("s1"))["n"] == 1


async def test_consumer_blocked_during_stop_is_released(cluster):
    await cluster.events.ensure_group("policy")
    waiter = asyncio.create_task(cluster.events.consume("policy", "w1", block_ms=5000))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await cluster.stop()
    with pytest.raises(ClusterUnavailable):
        await asyncio.wait_for(waiter, 3)
    assert time.monotonic() - started < 2
    # Started again, a blocked consumer waits for the next event as before.
    await cluster.start()
    waiter = asyncio.create_task(cluster.events.consume("policy", "w1", block_ms=2000))
    await asyncio.sleep(0.1)
    event_id = await cluster.events.publish({"type": "after-restart"})
    assert await asyncio.wait_for(waiter, 3) == [(event_id, {"type": "after-restart"})]


# ================================================================ session directory
async def test_session_round_trip_records_the_node(nodes):
    cluster = await nodes("edge-1")
    record = {"account": 42, "cc_request_number": 3, "class": "c0ffee",
              "reservation": {"units": 600, "kind": "seconds"}}
    await cluster.sessions.put("acct-sess-1", record, 30)
    got = await cluster.sessions.get("acct-sess-1")
    assert got == {**record, "node": "edge-1"}
    got["cc_request_number"] = 99  # a copy: mutating it changes nothing stored
    assert (await cluster.sessions.get("acct-sess-1"))["cc_request_number"] == 3
    await cluster.sessions.put("acct-sess-1", {"cc_request_number": 4, "node": "spoofed"}, 30)
    assert await cluster.sessions.get("acct-sess-1") == {"cc_request_number": 4,
                                                         "node": "edge-1"}
    assert await cluster.sessions.get("never-seen") is None
    assert await cluster.sessions.count() == 1


async def test_session_of_an_account_found_with_or_without_the_account(cluster):
    await cluster.sessions.put("gy;1;42", {"rg": 10}, 30, account_id=42)
    assert (await cluster.sessions.get("gy;1;42"))["rg"] == 10
    assert (await cluster.sessions.get("gy;1;42", account_id=42))["rg"] == 10
    assert await cluster.sessions.get("gy;1;42", account_id=43) is None
    assert await cluster.sessions.touch("gy;1;42", 30) is True
    assert await cluster.sessions.touch("gy;1;42", 30, account_id=43) is False
    assert await cluster.sessions.count() == 1
    assert await cluster.sessions.delete("gy;1;42", account_id=43) is False
    assert await cluster.sessions.delete("gy;1;42") is True
    assert await cluster.sessions.get("gy;1;42") is None
    assert await cluster.sessions.get("gy;1;42", account_id=42) is None
    assert await cluster.sessions.count() == 0
    assert await cluster.sessions.delete("gy;1;42") is False

    await cluster.sessions.put("gy;2;42", {"rg": 20}, 30, account_id=42)
    assert await cluster.sessions.delete("gy;2;42", account_id=42) is True
    assert await cluster.sessions.get("gy;2;42") is None


async def test_sessions_expire_unless_touched(cluster):
    await cluster.sessions.put("kept", {"n": 1}, 0.3)
    await cluster.sessions.put("kept-acct", {"n": 2}, 0.3, account_id=7)
    await cluster.sessions.put("dropped", {"n": 3}, 0.3)
    assert await cluster.sessions.count() == 3
    await asyncio.sleep(0.15)
    assert await cluster.sessions.touch("kept", 1.0) is True
    assert await cluster.sessions.touch("kept-acct", 1.0) is True  # found through the index
    await asyncio.sleep(0.25)
    assert (await cluster.sessions.get("kept"))["n"] == 1
    assert (await cluster.sessions.get("kept-acct"))["n"] == 2
    assert await cluster.sessions.get("dropped") is None
    assert await cluster.sessions.touch("dropped", 1.0) is False
    assert await cluster.sessions.count() == 2


async def test_session_bad_input_is_refused_and_stores_nothing(cluster):
    with pytest.raises(ValidationError, match="session record is not JSON-serializable"):
        await cluster.sessions.put("s", {"octets": {1, 2}}, 30)
    with pytest.raises(ValidationError, match="must be a dict"):
        await cluster.sessions.put("s", ["not", "a", "dict"], 30)
    for ttl in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl"):
            await cluster.sessions.put("s", {}, ttl)
    with pytest.raises(ValueError, match="session_id"):
        await cluster.sessions.put("", {}, 30)
    assert await cluster.sessions.count() == 0


# ================================================================ duplicate cache
async def test_claim_is_won_exactly_once_by_200_concurrent_claimers(cluster):
    keys = [f"radius:10.0.0.1:1813:{n}:{secrets.token_hex(16)}" for n in range(3)]
    attempts = [keys[i % 3] for i in range(600)]
    results = await asyncio.gather(*(cluster.dedup.claim(k, 30) for k in attempts))
    for key in keys:
        assert sum(r for k, r in zip(attempts, results) if k == key) == 1


async def test_answer_is_cached_for_duplicates_then_expires(cluster):
    key = "diameter:pgw1:hbh=77:e2e=1234"
    assert await cluster.dedup.claim(key, 30) is True
    assert await cluster.dedup.get(key) is None  # claimed, still being processed
    assert await cluster.dedup.claim(key, 30) is False
    answer = bytes([1, 0, 0, 20]) + os.urandom(16)
    await cluster.dedup.store(key, answer, 0.3)
    assert await cluster.dedup.get(key) == answer
    assert await cluster.dedup.claim(key, 30) is False
    await asyncio.sleep(0.35)
    assert await cluster.dedup.get(key) is None
    assert await cluster.dedup.claim(key, 30) is True


async def test_an_answer_stored_after_a_short_claim_lives_its_own_lifetime(cluster):
    """Claim for 0.2 s, store the answer for 0.6 s: the claim's deadline must not
    take the answer with it, and the answer must still go when its own ends."""
    key = "radius:10.0.0.1:1812:4:9:00ff"
    assert await cluster.dedup.claim(key, 0.2) is True
    await cluster.dedup.store(key, b"answer", 0.6)
    await asyncio.sleep(0.35)
    await cluster.dedup.claim("radius:other", 30)  # any write sweeps what expired
    assert await cluster.dedup.get(key) == b"answer"
    await asyncio.sleep(0.35)
    await cluster.dedup.claim("radius:another", 30)
    assert await cluster.dedup.get(key) is None
    assert await cluster.dedup.claim(key, 30) is True


async def test_claims_and_answers_lapse_after_their_ttls_from_config(nodes):
    """A claim lives dedup_claim_ttl (a node that died mid-request holds back the
    retransmissions only that long); an answer lives dedup_ttl."""
    cluster = await nodes(dedup_ttl=0.6, dedup_claim_ttl=0.2)
    assert await cluster.dedup.claim("radius:a") is True
    assert await cluster.dedup.claim("radius:a") is False
    await asyncio.sleep(0.25)
    assert await cluster.dedup.claim("radius:a") is True
    await cluster.dedup.store("radius:a", b"answer")
    await asyncio.sleep(0.3)
    assert await cluster.dedup.get("radius:a") == b"answer"  # past the claim's ttl
    await asyncio.sleep(0.35)
    assert await cluster.dedup.get("radius:a") is None


async def test_release_lets_a_retransmission_be_processed(cluster):
    assert await cluster.dedup.claim("radius:r", 30) is True
    assert await cluster.dedup.release("radius:r") is True
    assert await cluster.dedup.claim("radius:r", 30) is True  # the retransmission wins
    await cluster.dedup.store("radius:r", b"\x05answer", 30)
    assert await cluster.dedup.release("radius:r") is False  # never drops an answer
    assert await cluster.dedup.get("radius:r") == b"\x05answer"
    assert await cluster.dedup.release("radius:unknown") is False
    with pytest.raises(TypeError):
        await cluster.dedup.store("radius:r", "text is not bytes", 30)
    with pytest.raises(ValueError):
        await cluster.dedup.claim("", 30)


# ================================================================ event stream
async def test_publish_consume_ack_and_pending(cluster):
    events = [{"type": "exhausted", "account": 42, "session": f"s{i}", "at": 1_700_000_000_000_000}
              for i in range(5)]
    ids = [await cluster.events.publish(e) for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert len(set(ids)) == 5
    await cluster.events.ensure_group("policy")  # created after: still sees them (start "0")
    await cluster.events.ensure_group("policy")  # idempotent
    got = await cluster.events.consume("policy", "w1", count=10, block_ms=0)
    assert got == list(zip(ids, events))
    assert await cluster.events.pending("policy") == 5
    assert await cluster.events.consume("policy", "w1", block_ms=0) == []
    assert await cluster.events.ack("policy", ids[:3]) == 3
    assert await cluster.events.ack("policy", ids[:3]) == 0
    assert await cluster.events.pending("policy") == 2
    assert await cluster.events.pending("no-such-group") == 0
    assert await cluster.events.length() == 5
    # Another group gets its own copy of every event.
    assert [i for i, _ in await cluster.events.consume("audit", "a1", block_ms=0)] == ids


async def test_group_created_at_dollar_sees_only_new_events(cluster):
    await cluster.events.publish({"type": "old"})
    await cluster.events.ensure_group("fresh", start="$")
    new_id = await cluster.events.publish({"type": "new"})
    assert await cluster.events.consume("fresh", "w", block_ms=0) == [(new_id, {"type": "new"})]


async def test_two_consumers_share_a_group_without_duplicates(cluster):
    ids = await cluster.events.publish_many([{"type": "threshold", "n": n} for n in range(200)])
    await cluster.events.ensure_group("policy")

    async def worker(name):
        seen = []
        while True:
            batch = await cluster.events.consume("policy", name, count=7, block_ms=0)
            if not batch:
                return seen
            seen.extend(i for i, _ in batch)
            await cluster.events.ack("policy", [i for i, _ in batch])
            await asyncio.sleep(0)  # "processing"

    one, two = await asyncio.gather(worker("w1"), worker("w2"))
    assert one and two
    assert not set(one) & set(two)
    assert sorted(one + two) == sorted(ids) and len(one + two) == 200
    assert await cluster.events.pending("policy") == 0


async def test_handled_means_the_group_took_and_acknowledged_everything_up_to_it(cluster):
    """What the event relay waits for before it marks an event published: the
    group (or, asked for none, every group) was delivered the entry and all before
    it, and acknowledged them."""
    events = cluster.events
    first, second = await events.publish_many([{"type": "a"}, {"type": "b"}])
    assert await events.handled(second) is False  # no consumer yet
    await events.ensure_group("policy")
    await events.ensure_group("audit")
    (got, _), = await events.consume("policy", "w1", count=1, block_ms=0)
    assert got == first
    assert await events.handled(first, group="policy") is False  # delivered, pending
    await events.ack("policy", [first])
    assert await events.handled(first, group="policy") is True
    assert await events.handled(second, group="policy") is False  # not delivered yet
    assert await events.handled(first) is False                   # "audit" took nothing
    assert await events.handled(first, group="nobody") is False
    ((got, _),) = await events.consume("policy", "w1", block_ms=0)
    await events.ack("policy", [got])
    assert await events.handled(second, group="policy") is True


async def test_a_redis_that_lost_the_stream_says_so(redis_nodes):
    """Redis restarted without persistence: the stream, its groups and its epoch are
    gone. An entry published before is reported lost (None), not "not yet", even
    once new entries with later ids were delivered past it."""
    cluster = await redis_nodes()
    events = cluster.events
    await events.ensure_group("policy")
    (old,) = await events.publish_many([{"type": "topped_up"}])
    await _drop_keys(redis_nodes.url, redis_nodes.prefix)  # what a restart leaves
    assert await events.handled(old, group="policy") is None
    (lost,) = await events.publish_many([{"type": "plan_changed"}])
    await _drop_keys(redis_nodes.url, redis_nodes.prefix)
    await events.ensure_group("policy")
    newer = await events.publish_many([{"type": "x"}])
    for entry_id, _ in await events.consume("policy", "w1", block_ms=0):
        await events.ack("policy", [entry_id])
    assert await events.handled(newer[0], group="policy") is True
    assert await events.handled(lost, group="policy") is None  # a new epoch


async def test_dead_consumers_events_are_reclaimed_after_idle(cluster):
    events = [{"type": "suspended", "account": n} for n in range(3)]
    ids = await cluster.events.publish_many(events)
    await cluster.events.ensure_group("policy")
    assert len(await cluster.events.consume("policy", "dies", block_ms=0)) == 3  # never acks
    assert await cluster.events.reclaim("policy", "survivor", min_idle_ms=300) == []
    await asyncio.sleep(0.35)
    taken = await cluster.events.reclaim("policy", "survivor", min_idle_ms=300)
    assert taken == list(zip(ids, events))
    assert await cluster.events.pending("policy") == 3
    # Reclaiming resets the idle time: nobody else takes them from the survivor now.
    assert await cluster.events.reclaim("policy", "third", min_idle_ms=300) == []
    assert await cluster.events.ack("policy", ids) == 3
    assert await cluster.events.pending("policy") == 0
    await asyncio.sleep(0.35)
    assert await cluster.events.reclaim("policy", "third", min_idle_ms=300) == []
    assert await cluster.events.reclaim("no-such-group", "third", min_idle_ms=0) == []


async def test_reclaim_count_bounds_each_takeover(cluster):
    ids = await cluster.events.publish_many([{"n": n} for n in range(25)])
    await cluster.events.consume("policy", "dies", count=100, block_ms=0)
    first = await cluster.events.reclaim("policy", "b", min_idle_ms=0, count=10)
    second = await cluster.events.reclaim("policy", "c", min_idle_ms=50, count=100)
    assert [i for i, _ in first] == ids[:10]
    assert second == []  # the rest idle for less than 50 ms
    await asyncio.sleep(0.06)
    rest = await cluster.events.reclaim("policy", "c", min_idle_ms=50, count=100)
    assert [i for i, _ in rest] == ids  # the first ten idle long enough again too


async def test_blocking_consume_wakes_on_publish(cluster):
    await cluster.events.ensure_group("policy")
    started = time.monotonic()
    assert await cluster.events.consume("policy", "w", block_ms=150) == []
    assert 0.13 <= time.monotonic() - started < 1.0

    waiter = asyncio.create_task(cluster.events.consume("policy", "w", block_ms=5000))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    event_id = await cluster.events.publish({"type": "restored", "account": 9})
    assert await asyncio.wait_for(waiter, 3) == [(event_id, {"type": "restored", "account": 9})]
    assert time.monotonic() - started < 1.0


async def test_consume_creates_a_missing_group(cluster, caplog):
    event_id = await cluster.events.publish({"type": "x"})
    with caplog.at_level(logging.WARNING, logger="ocs.cluster"):
        assert await cluster.events.consume("new-group", "w", block_ms=0) == [(event_id,
                                                                                {"type": "x"})]
    assert "new-group" in caplog.text and "missing" in caplog.text


async def test_stream_length_is_bounded_by_maxlen(nodes, caplog):
    cluster = await nodes(stream_maxlen=1000)
    await cluster.events.ensure_group("slow")
    await cluster.events.consume("slow", "w", count=10, block_ms=0)  # published below: none yet
    first = await cluster.events.publish_many([{"n": n} for n in range(10)])
    assert len(await cluster.events.consume("slow", "w", count=10, block_ms=0)) == 10
    for start in range(10, 2510, 500):
        await cluster.events.publish_many([{"n": n} for n in range(start, start + 500)])
    length = await cluster.events.length()
    assert 1000 <= length < 1000 + 200, length  # MAXLEN ~: whole internal nodes only
    oldest = await cluster.events.consume("late", "w", count=1, block_ms=0)
    assert oldest[0][1]["n"] == 2510 - length  # the oldest went first
    # The ten pending events were trimmed before being acked: dropped and said so.
    assert await cluster.events.pending("slow") == 10
    with caplog.at_level(logging.WARNING, logger="ocs.cluster"):
        assert await cluster.events.reclaim("slow", "w2", min_idle_ms=0) == []
    assert await cluster.events.pending("slow") == 0
    assert "10 pending event(s) of group slow were trimmed" in caplog.text
    assert first[0] not in [i for i, _ in oldest]


async def test_bad_events_are_refused(cluster):
    with pytest.raises(ValidationError, match="event is not JSON-serializable"):
        await cluster.events.publish({"at": object()})
    with pytest.raises(ValidationError, match="event must be a dict"):
        await cluster.events.publish_many([{"ok": 1}, "not an event"])
    with pytest.raises(ValueError, match="block_ms"):
        await cluster.events.consume("g", "w", block_ms=-1)
    with pytest.raises(ValueError, match="count"):
        await cluster.events.consume("g", "w", count=0)
    with pytest.raises(ValueError, match="start"):
        await cluster.events.ensure_group("g", start="yesterday")
    assert await cluster.events.length() == 0


# ================================================================ calls between nodes
async def test_a_call_is_answered_by_the_node_serving_it(backend, nodes):
    a = await nodes("node-a")
    b = await nodes("node-b")
    seen = []

    async def where(body):
        seen.append(body)
        if body.get("fail"):
            raise RuntimeError("the peer is gone")
        return {"by": "node-b", **body}

    b.calls.serve("where", where)
    a.calls.serve("where", lambda body: asyncio.sleep(0, {"by": "node-a"}))
    assert await a.calls.call("node-a", "where", {}, 2) == {"by": "node-a"}
    if backend[0] == "local":  # one node: there is no other to call
        with pytest.raises(NodeUnreachable, match=r"node node-b is not running: without "
                                                  r"\[redis\] this node \(node-a\) is"):
            await a.calls.call("node-b", "where", {"n": 1}, 2)
        with pytest.raises(CallNotServed, match="node node-a does not serve other calls"):
            await a.calls.call("node-a", "other", {}, 2)
        return
    assert await a.calls.call("node-b", "where", {"n": 1}, 5) == {"by": "node-b", "n": 1}
    assert seen == [{"n": 1}]
    with pytest.raises(NodeUnreachable, match="failed the where call: RuntimeError: the peer"):
        await a.calls.call("node-b", "where", {"fail": True}, 5)
    with pytest.raises(CallNotServed, match="node-b does not serve other calls"):
        await a.calls.call("node-b", "other", {}, 5)
    # A call to itself is answered as another node's would be, failures included.
    a.calls.serve("where", where)
    with pytest.raises(NodeUnreachable, match="node-a failed the where call: RuntimeError"):
        await a.calls.call("node-a", "where", {"fail": True}, 5)
    started = time.monotonic()
    with pytest.raises(NodeUnreachable, match="node node-c is not running"):
        await a.calls.call("node-c", "where", {}, 30)  # no such node: told at once
    assert time.monotonic() - started < 2


async def test_many_calls_at_once_hold_no_connection_each(backend, nodes, monkeypatch):
    """A burst of slow calls (a mass suspension of Gy sessions connected to another
    node) outnumbering the connection pool is answered in full, and the node's
    event consumer keeps reading meanwhile: no call waits on a connection of its
    own longer than a connection may be waited for."""
    from ocs.cluster import redis_backend
    from ocs.cluster.redis_backend import BLOCKING_POOL_SIZE
    monkeypatch.setattr(redis_backend, "DEFAULT_TIMEOUT", 0.5)
    a = await nodes("node-a")
    # One node (no Redis) has no other to call: it calls itself.
    b, callee = (a, "node-a") if backend[0] == "local" else (await nodes("node-b"), "node-b")

    async def slow_echo(body):
        await asyncio.sleep(1.0)  # longer than a connection is waited for
        return body

    b.calls.serve("echo", slow_echo)
    await a.events.ensure_group("policy")
    consumer = asyncio.create_task(a.events.consume("policy", "c1", block_ms=5000))
    n = 3 * BLOCKING_POOL_SIZE
    answers = await asyncio.gather(*(a.calls.call(callee, "echo", {"n": i}, 10)
                                     for i in range(n)))
    assert answers == [{"n": i} for i in range(n)]
    event_id = await b.events.publish({"type": "meanwhile"})
    assert await asyncio.wait_for(consumer, 5) == [(event_id, {"type": "meanwhile"})]


async def test_a_call_to_a_node_that_was_down_is_not_run_after_its_caller_gave_up(
        redis_nodes):
    a = await redis_nodes("node-a")
    b = await redis_nodes("node-b")
    runs = []

    async def count(body):
        runs.append(body["n"])
        return {}

    b.calls.serve("count", count)
    await b.calls.stop()  # it stops answering, its record still listed (a node that hangs)
    await b.calls.begin()
    b.calls._listener.cancel()
    with pytest.raises(NodeUnreachable, match="did not answer within 0.3s"):
        await a.calls.call("node-b", "count", {"n": 1}, 0.3)
    await b.stop()
    with pytest.raises(NodeUnreachable, match="node node-b is not running"):
        await a.calls.call("node-b", "count", {"n": 1}, 30)
    await b.start()  # finds the call in its list, past its deadline: dropped
    assert await a.calls.call("node-b", "count", {"n": 2}, 5) == {}
    await asyncio.sleep(0.3)
    assert runs == [2]


async def test_running_nodes_are_listed_until_they_stop(backend, nodes):
    import socket
    a = await nodes("node-a")
    listed = await a.calls.nodes()
    assert [n["node"] for n in listed] == ["node-a"]
    assert (listed[0]["host"], listed[0]["pid"]) == (socket.gethostname(), os.getpid())
    assert "token" not in listed[0] and time.time() - 60 < listed[0]["started_at"] < time.time() + 1
    if backend[0] == "local":
        return
    b = await nodes("node-b")
    for _ in range(100):
        if len(await a.calls.nodes()) == 2:
            break
        await asyncio.sleep(0.02)
    assert [n["node"] for n in await a.calls.nodes()] == ["node-a", "node-b"]
    await b.stop()  # leaves the list at once
    assert [n["node"] for n in await a.calls.nodes()] == ["node-a"]


async def test_two_processes_with_one_node_name_are_reported(redis_nodes, redis_url,
                                                             monkeypatch, caplog):
    """Copying one configuration to every node, node_name included, is a mistake a
    log line must name; the record a crashed run left behind is not."""
    from ocs.cluster import redis_backend
    monkeypatch.setattr(redis_backend, "HEARTBEAT", 0.05)
    monkeypatch.setattr(redis_backend, "HEARTBEAT_TTL", 0.2)
    client = aioredis.Redis.from_url(redis_url)
    try:  # a previous run of "phoenix" that died a moment ago
        await client.set(redis_nodes.prefix + "node:phoenix",
                         '{"token":"old","node":"phoenix","pid":1}', px=200)
    finally:
        await client.aclose()
    with caplog.at_level(logging.WARNING, logger="ocs.cluster"):
        phoenix = await redis_nodes("phoenix")
        await redis_nodes("twin")
        await redis_nodes("twin")
        await asyncio.sleep(0.8)
    warned = [r.getMessage() for r in caplog.records if "another ocsd" in r.getMessage()]
    assert warned and all(m.startswith("another ocsd runs as node 'twin' too (on ")
                          for m in warned), warned
    assert "give each node its own [daemon] node_name" in warned[0]
    assert [(n["node"], n["pid"]) for n in await phoenix.calls.nodes()] == [
        ("phoenix", os.getpid()), ("twin", os.getpid())]


# ================================================================ Redis only
async def test_two_nodes_share_sessions_claims_and_events(redis_nodes):
    a = await redis_nodes("node-a")
    b = await redis_nodes("node-b")
    await a.sessions.put("sess-9", {"seq": 1}, 30, account_id=9)
    assert await b.sessions.get("sess-9") == {"seq": 1, "node": "node-a"}
    await b.sessions.put("sess-9", {"seq": 2}, 30, account_id=9)  # fail-over to node b
    assert await a.sessions.get("sess-9") == {"seq": 2, "node": "node-b"}
    assert await a.sessions.count() == await b.sessions.count() == 1

    key = "radius:10.1.1.1:1813:7:" + secrets.token_hex(16)
    results = await asyncio.gather(*(n.dedup.claim(key, 30) for n in [a, b] * 100))
    assert sum(results) == 1
    winner, loser = (a, b) if any(results[0::2]) else (b, a)
    assert await loser.dedup.release(key) is False  # cannot drop the other node's claim
    assert await loser.dedup.claim(key, 30) is False
    await winner.dedup.store(key, b"accounting-response", 30)
    assert await loser.dedup.get(key) == b"accounting-response"

    ids = await a.events.publish_many([{"n": n} for n in range(4)])
    await b.events.ensure_group("policy")
    assert len(await a.events.consume("policy", "on-a", count=2, block_ms=0)) == 2  # a dies
    assert [i for i, _ in await b.events.consume("policy", "on-b", block_ms=0)] == ids[2:]
    assert await b.events.ack("policy", ids[2:]) == 2
    await asyncio.sleep(0.12)
    assert [i for i, _ in await b.events.reclaim("policy", "on-b", 100)] == ids[:2]


async def test_redis_key_layout_keeps_an_account_in_one_slot(redis_nodes, redis_url):
    cluster = await redis_nodes()
    p = redis_nodes.prefix
    await cluster.sessions.put("sess-1", {}, 30, account_id=42)
    await cluster.sessions.put("sess-2", {}, 30, account_id=42)
    await cluster.sessions.put("sess-3", {}, 30)
    await cluster.dedup.claim("radius:k", 30)
    await cluster.events.publish({"type": "x"})
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = {k async for k in client.scan_iter(match=p + "*")}
        assert keys == {p + "sess:{acct:42}:sess-1", p + "sess:{acct:42}:sess-2",
                        p + "sidx:sess-1", p + "sidx:sess-2", p + "sess:sess-3",
                        p + "dup:radius:k", p + "events", p + "node:node-a"}
        assert key_slot((p + "sess:{acct:42}:sess-1").encode()) == \
            key_slot((p + "sess:{acct:42}:sess-2").encode()) == key_slot(b"acct:42")
        assert await client.type(p + "events") == "stream"
        for key in keys - {p + "events"}:
            assert 0 < await client.pttl(key) <= 30_000
    finally:
        await client.aclose()


async def test_foreign_stream_entry_does_not_wedge_the_group(redis_nodes, redis_url, caplog):
    cluster = await redis_nodes()
    client = aioredis.Redis.from_url(redis_url)
    try:
        bad = (await client.xadd(redis_nodes.prefix + "events", {"foo": "bar"})).decode()
    finally:
        await client.aclose()
    good = await cluster.events.publish({"type": "ok"})
    with caplog.at_level(logging.WARNING, logger="ocs.cluster"):
        got = await cluster.events.consume("policy", "w", block_ms=0)
    assert got[0][0] == bad and got[0][1]["_invalid"] == "not an ocsd event"
    assert got[1] == (good, {"type": "ok"})
    assert f"entry {bad} is not an ocsd event" in caplog.text
    assert await cluster.events.ack("policy", [bad, good]) == 2


async def test_connect_to_absent_redis_fails_clearly_without_the_password(caplog):
    url = f"redis://:hunter2-very-secret@127.0.0.1:{services.free_port()}/0"
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="ocs.cluster"):
        with pytest.raises(ClusterUnavailable) as err:
            await connect(RedisConfig(url=url), node="n1", timeout=1.0)
    assert time.monotonic() - started < 3
    assert isinstance(err.value, StoreUnavailable)
    assert "redis://:***@127.0.0.1" in str(err.value)
    assert "hunter2" not in str(err.value) and "hunter2" not in caplog.text
    assert build(RedisConfig(url=url), node="n1").describe().startswith("redis://:***@")


@pytest.fixture(scope="module")
def redis_tls():
    made = services.RedisTLS()
    yield made
    made.stop()


def _tls_servers(kind: str, tls: services.RedisTLS):
    """(servers, [redis] keys naming them) of one kind, TLS only."""
    if kind == "redis":
        server = services.ThrowawayRedis(tls=tls)
        return server, {"url": server.url}
    if kind == "sentinel":
        servers = services.SentinelRedis(tls=tls)
        return servers, {"url": "rediss:///0", **sentinel_config(servers)}
    servers = services.ClusterRedis(tls=tls)
    return servers, {"url": "rediss://", "cluster_nodes": servers.nodes}


@pytest.mark.parametrize("kind", ["redis", "sentinel", "cluster"])
async def test_redis_over_tls_in_each_mode_and_a_certificate_it_cannot_trust(kind, redis_tls,
                                                                             caplog):
    """A Redis (or its Sentinel, or a cluster) that takes only TLS, and asks for a
    client certificate: with url = rediss://... and the CA and client
    certificate of [redis], the node shares sessions, claims and events there.
    Checked against another CA, the connection fails at start, saying why."""
    servers, where = await asyncio.to_thread(_tls_servers, kind, redis_tls)
    try:
        config = RedisConfig(**where, **redis_tls.config(), key_prefix="ocs-tls:")
        node = await connect(config, node="node-a", timeout=2.0)
        assert node.describe().startswith("rediss://") or node.describe().endswith(" over TLS")
        try:
            await node.sessions.put("s1", {"n": 1}, 60, account_id=1)
            assert (await node.sessions.get("s1", account_id=1))["n"] == 1
            assert await node.dedup.claim("k", 5) is True
            assert await node.dedup.claim("k", 5) is False
            entry = await node.events.publish({"type": "over-tls"})
            got = await node.events.consume("policy", "w", block_ms=0)
            assert [e for e, _ in got] == [entry]
        finally:
            await node.stop()
        stranger = await asyncio.to_thread(services.RedisTLS)
        try:
            wrong = RedisConfig(**where, **{**redis_tls.config(), "tls_ca": stranger.ca})
            with caplog.at_level(logging.WARNING, logger="ocs.cluster"):
                with pytest.raises(ClusterUnavailable) as err:
                    await connect(wrong, node="node-b", timeout=2.0)
            assert "certificate verify failed" in str(err.value) + caplog.text, str(err.value)
        finally:
            stranger.stop()
    finally:
        await asyncio.to_thread(servers.stop)


@pytest.fixture
def throwaway_redis():
    servers = []

    def start(port=None, monkeypatch=None):
        # With a port: a new server on the port the client already knows.
        servers.append(services.ThrowawayRedis(port))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()  # also the killed ones: their directories


async def test_redis_going_away_and_coming_back(throwaway_redis, monkeypatch, caplog):
    server = throwaway_redis()
    cluster = await connect(RedisConfig(url=server.url, key_prefix="ocs:"), node="n1",
                            timeout=1.0)
    try:
        await cluster.sessions.put("s1", {"n": 1}, 60)
        await cluster.events.ensure_group("policy")
        server.stop()

        with caplog.at_level(logging.INFO, logger="ocs.cluster"):
            calls = [cluster.ping(), cluster.sessions.get("s1"), cluster.dedup.claim("k", 5),
                     cluster.events.publish({"type": "x"}),
                     cluster.events.consume("policy", "w", block_ms=100)]
            for call in calls:
                started = time.monotonic()
                with pytest.raises(ClusterUnavailable, match="unavailable") as err:
                    await call
                assert isinstance(err.value, StoreUnavailable)
                assert time.monotonic() - started < 2
            outage_lines = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(outage_lines) == 1 and outage_lines[0].levelno == logging.WARNING

            throwaway_redis(server.port, monkeypatch)  # an empty Redis on the same port
            assert await cluster.ping() is True
            assert "reachable again" in caplog.text
        assert await cluster.sessions.get("s1") is None  # that Redis kept nothing
        await cluster.sessions.put("s1", {"n": 2}, 60)
        assert (await cluster.sessions.get("s1"))["n"] == 2
        assert await cluster.dedup.claim("k", 5) is True
        event_id = await cluster.events.publish({"type": "y"})
        # The consumer group vanished with the data; consume recreates it.
        assert await cluster.events.consume("policy", "w", block_ms=0) == [
            (event_id, {"type": "y"})]
    finally:
        await cluster.stop()


async def test_sentinel_failover_moves_the_nodes_to_the_promoted_replica(caplog):
    """With [redis] sentinels the nodes ask the Sentinels where the primary is. It
    dies; while the Sentinel promotes its replica, calls fail fast as unavailable
    (logged once), then they reach the new primary on their own, with what it
    had replicated. The Sentinel asks for a password (sentinel_password); the log
    names the Sentinels, never the password."""
    password = "sentinel-" + secrets.token_hex(4)
    servers = await asyncio.to_thread(services.SentinelRedis, password)
    config = RedisConfig(**sentinel_config(servers), key_prefix="ocs:",
                         sentinel_password=password)
    assert config.describe() == f"sentinel primary 'ocs-primary' via {servers.sentinel}"
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match=rf"no Sentinel names a primary 'ocs-primary' "
                                                 rf"\({servers.sentinel}: .*authenticated"):
        await connect(RedisConfig(**sentinel_config(servers)), node="no-password",
                      timeout=1.0)
    assert time.monotonic() - started < 2  # said at once, not after retries
    a = await connect(config, node="node-a", timeout=1.0)
    b = await connect(config, node="node-b", timeout=1.0)
    try:
        await a.sessions.put("s1", {"n": 1}, 60)
        await a.events.ensure_group("policy")
        first = await a.events.publish({"type": "before"})
        primary = aioredis.Redis.from_url(servers.primary.url)
        assert await primary.execute_command("WAIT", 1, 5000) == 1  # the replica has it
        await primary.aclose()
        with caplog.at_level(logging.INFO, logger="ocs.cluster"):
            failing_over = asyncio.create_task(asyncio.to_thread(servers.fail_over))
            outages = 0
            while not failing_over.done():
                try:
                    await b.ping()
                except ClusterUnavailable:
                    outages += 1
                await asyncio.sleep(0.05)
            await failing_over
            assert outages > 0
            assert await b.ping() is True and await a.ping() is True
        text = caplog.text
        assert "unavailable" in text and "reachable again" in text
        assert servers.sentinel in text and password not in text
        assert (f"redis primary 'ocs-primary' is 127.0.0.1:{servers.primary.port} "
                f"(failed over from 127.0.0.1:{servers.replica.port})") in text
        assert (await b.sessions.get("s1"))["n"] == 1  # on the promoted replica
        assert await b.dedup.claim("k", 5) is True and await a.dedup.claim("k", 5) is False
        second = await b.events.publish({"type": "after"})
        got = await a.events.consume("policy", "w", block_ms=0)
        assert [e for e, _ in got] == [first, second]
    finally:
        await a.stop()
        await b.stop()
        await asyncio.to_thread(servers.stop)


async def test_a_connection_to_a_demoted_primary_moves_to_the_new_one_in_the_same_call(
        sentinel_redis):
    """The node's pooled connections are open to a primary that is then demoted to a
    replica (and its clients not cut). The first write on each is refused as
    read-only; the connection is made again to where the Sentinels now say the
    primary is, and the call succeeds. (redis-py alone reconnects to the address
    the connection had, the demoted one, and fails the call.)"""
    servers = sentinel_redis
    made = Nodes(servers.primary.url, sentinel_config(servers))
    try:
        node = await made()
        await asyncio.gather(*[node.sessions.put(f"s{k}", {"n": k}, 60) for k in range(8)])
        await asyncio.to_thread(servers.swap_by_hand)
        made.url = servers.primary.url
        for k in range(8):  # each pooled connection meets the demoted primary once
            assert await node.dedup.claim(f"after-{k}", 5) is True
            await node.sessions.put(f"after-{k}", {"n": k}, 60)
        assert (await node.sessions.get("after-7"))["n"] == 7
    finally:
        await made.close()


async def test_a_redis_cluster_failover_moves_the_node_to_the_promoted_replica(caplog):
    """A Redis Cluster with a replica for each primary. The primary serving a
    session's slot dies; until the cluster promotes its replica, calls on that
    slot fail fast as unavailable, then they reach the new primary on their own,
    with what it had replicated. Other slots are served throughout."""
    servers = await asyncio.to_thread(services.ClusterRedis, 1)
    config = RedisConfig(cluster_nodes=servers.nodes, key_prefix="ocs:")
    node = await connect(config, node="node-a", timeout=1.0)
    try:
        for k in range(30):  # spread over the three primaries
            await node.sessions.put(f"s{k}", {"n": k}, 60, account_id=k)
        await asyncio.to_thread(servers.wait_replicated)
        victim = await asyncio.to_thread(servers.kill_primary_of, node.keys.session("s0", 0))
        with caplog.at_level(logging.INFO, logger="ocs.cluster"):
            recovered = asyncio.create_task(asyncio.to_thread(servers.settled))
            outages, served = 0, set()
            while True:
                try:
                    await node.sessions.put("s0", {"n": 100}, 60, account_id=0)
                    break
                except ClusterUnavailable:
                    outages += 1
                for k in range(1, 30):  # meanwhile the other primaries' slots
                    try:
                        if (await node.sessions.get(f"s{k}", account_id=k))["n"] == k:
                            served.add(k)
                    except ClusterUnavailable:
                        pass
                await asyncio.sleep(0.1)
            await recovered
        assert outages > 0 and len(served) >= 10, (victim, outages, served)
        assert "unavailable" in caplog.text and "reachable again" in caplog.text
        assert (await node.sessions.get("s0"))["n"] == 100
        assert [(await node.sessions.get(f"s{k}"))["n"] for k in range(1, 30)] == \
            list(range(1, 30))
    finally:
        await node.stop()
        await asyncio.to_thread(servers.stop)


def _pooled_connections(client) -> list:
    """The idle connections of a node's client: its pool's, or each cluster node's."""
    manager = getattr(client, "nodes_manager", None)
    if manager is None:
        return list(client.connection_pool._available_connections)
    return [c for node in manager.nodes_cache.values() for c in node._free]


@pytest.mark.parametrize("kind", ["redis", "sentinel", "cluster"])
def test_a_connection_that_closed_between_commands_is_made_again_under_uvloop(
        kind, request, monkeypatch):
    """Under uvloop, the daemon's event loop, writing on a connection whose transport
    has closed raises RuntimeError rather than the OSError redis-py handles (seen
    when a Redis died during a failover, just as a connection to it was made: the
    request failed with a traceback). A call on such a connection is sent again on
    a fresh one and succeeds: whether the transport closed as the connection was
    made (before its first command, CLIENT SETNAME) or between two commands."""
    import uvloop
    from redis.asyncio.connection import Connection

    made_so_far = Connection._connect
    cut = {"next": 0}

    async def connect_then_lose_it(self):
        await made_so_far(self)
        if cut["next"]:
            cut["next"] -= 1
            self._writer.transport.abort()

    monkeypatch.setattr(Connection, "_connect", connect_then_lose_it)

    if kind == "redis":
        made = Nodes(request.getfixturevalue("redis_url"))
    elif kind == "sentinel":
        servers = request.getfixturevalue("sentinel_redis")
        made = Nodes(servers.primary.url, sentinel_config(servers))
    else:
        seeds = request.getfixturevalue("cluster_redis").nodes
        made = Nodes(seeds, {"cluster_nodes": seeds})

    async def scenario():
        try:
            node = await made()
            for k in range(8):
                await node.sessions.put(f"s{k}", {"n": k}, 60, account_id=k)
            closed = _pooled_connections(node._link.client)
            assert closed
            for connection in closed:
                connection._writer.transport.abort()
            await asyncio.sleep(0)
            for k in range(8):
                assert await node.dedup.claim(f"after-{k}", 5) is True
                assert (await node.sessions.get(f"s{k}", account_id=k))["n"] == k
            cut["next"] = 1  # a new node's first connection: lost before its first command
            fresh = await made("node-b")
            await fresh.sessions.put("b", {"n": 1}, 60, account_id=1)
            assert cut["next"] == 0 and (await node.sessions.get("b", account_id=1))["n"] == 1
        finally:
            await made.close()

    uvloop.run(scenario())


async def test_stalled_redis_times_out_instead_of_hanging(throwaway_redis):
    server = throwaway_redis()
    cluster = await connect(RedisConfig(url=server.url), node="n1", timeout=0.5)
    try:
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(ClusterUnavailable):
                await cluster.dedup.claim("radius:stall", 5)
            assert time.monotonic() - started < 1.5
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await cluster.dedup.claim("radius:after", 5) is True
    finally:
        await cluster.stop()


async def test_misuse_of_redis_keys_is_a_cluster_error_not_an_outage(redis_nodes, redis_url):
    cluster = await redis_nodes()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(redis_nodes.prefix + "events", "not a stream")
    finally:
        await client.aclose()
    with pytest.raises(ClusterError) as err:
        await cluster.events.publish({"type": "x"})
    assert not isinstance(err.value, ClusterUnavailable)
    assert "WRONGTYPE" in str(err.value)


def test_in_process_expiry_keeps_one_heap_entry_per_rewritten_key_and_sweeps_it():
    from ocs.cluster.local import _Expiring
    e = _Expiring()
    for i in range(100):  # claimed, answered, rewritten: one heap entry all along
        e.set_for("k", i, 0.05 + i * 0.001)
    assert len(e._heap) == 1
    time.sleep(0.1)
    assert len(e) == 1 and e.get("k") == 99  # the first deadline passed, not the last
    time.sleep(0.1)
    assert len(e) == 0 and e._heap == []


async def test_peers_of_every_node_list_a_node_whose_answer_is_not_a_peer_list(redis_nodes,
                                                                               store):
    """`GET /v1/diameter/peers?nodes=all` on node A: what other nodes answer is
    checked (another version may answer otherwise); a node whose answer is no
    list of peers is named under `unreachable` with the reason, never a 500."""
    from types import SimpleNamespace

    from tests.test_api_harness import start_api, stop_api

    def answering(body):
        async def handler(_):
            return body
        return handler

    a = await redis_nodes("node-a")
    peer = {"origin_host": "pgw1.example", "origin_realm": "example", "address": "192.0.2.7",
            "local_address": "192.0.2.1", "transport": "tcp", "state": "open",
            "watchdog": "okay", "connected_at": 1700000000.0, "product_name": "pgw",
            "vendor_id": 10415, "origin_state_id": 7, "applications": [4]}
    answers = {"node-b": {"items": [peer]}, "node-c": {"peers": []},
               "node-d": {"items": ["pgw1"]}, "node-e": {"items": [{"origin_host": 5}]},
               "node-f": {"items": 3}}
    for name, body in answers.items():
        (await redis_nodes(name)).calls.serve(DIAMETER_PEERS, answering(body))
    api, _ = await start_api(store, context=SimpleNamespace(cluster=a, diameter=None))
    try:
        _, token = await store.create_token("viewer", "read-only")
        r = await api.client(token).get("/v1/diameter/peers?nodes=all")
    finally:
        await stop_api(api)
    assert r.status == 200, r.text
    page = r.json
    assert [(p["node"], p["origin_host"], p["connected_at"][:4]) for p in page["items"]] == [
        ("node-b", "pgw1.example", "2023")]
    problems = {p["node"]: p["error"] for p in page["unreachable"]}
    assert problems.pop("node-a") == "Diameter is not running there"
    assert sorted(problems) == ["node-c", "node-d", "node-e", "node-f"]
    assert all(e.startswith("its answer is not a list of peers: ") for e in problems.values()), \
        problems

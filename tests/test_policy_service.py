"""Enforcement from charging event to the NAS's CoA port, on both store backends:
the decision per plan, the durable queue, the RFC 5176 client with its
retransmissions, fall-back, retries, dead letters and the audit log.

The NAS side is a real UDP socket speaking RFC 5176 (tests/policy_harness.py);
what is asserted is what reached it, what the store and audit log say, and the
metrics an operator alerts on."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace

import pytest
import redis

from ocs.model import now_us
from ocs.store import Store, make_driver
from policy.service import PolicyService
from tests.policy_harness import DaeNas, close_session, context, policy_config, seed, until

#: Store backend and queue mode: the store queue on both backends, the Redis
#: Streams queue (multi-node mode) beside PostgreSQL.
MODES = ["sqlite-store", "postgres-store", "postgres-redis"]

THROTTLE = {"on_exhausted": "throttle", "throttle_profile": {"down_kbps": 256, "up_kbps": 128},
            "on_restored": "restore"}


def event(etype: str, account_id: int, session: str | None = None, **extra) -> dict:
    at = extra.pop("at", now_us())
    return {"id": f"test|{etype}|{session}|{at}", "type": etype, "account_id": account_id,
            "session": session, "service": "data", "at": at, **extra}


@pytest.fixture(params=MODES)
def mode(request):
    backend, queue = request.param.split("-")
    target = request.getfixturevalue("store_target_" + backend)
    options = {"queue": queue}
    if queue == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = f"ocs-pt-{secrets.token_hex(4)}:"
        options["redis"] = {"url": url, "key_prefix": prefix}

        def clean():
            r = redis.Redis.from_url(url)
            for key in r.scan_iter(match=f"{prefix}*"):
                r.delete(key)
            r.close()
        request.addfinalizer(clean)
    return target, options


@pytest.fixture
def store_target_sqlite(tmp_path):
    return f"sqlite:{tmp_path}/ocs.db", {}


@pytest.fixture
def store_target_postgres(pg_dsn, request):
    from tests.conftest import pg_store_target
    return pg_store_target(request, pg_dsn)


@pytest.fixture
async def store(mode):
    (url, options), _ = mode
    st = Store(make_driver(url, **options))
    await st.open(migrate_schema=True)
    yield st
    await st.close()


@pytest.fixture
def config(mode):
    """policy_config(**overrides) in this test's queue mode."""
    _, options = mode

    def make(**policy):
        return policy_config(queue=options["queue"], redis=options.get("redis"), **policy)
    return make


@pytest.fixture
async def nas():
    n = await DaeNas().start()
    yield n
    n.stop()


async def running(store, config):
    ctx = await context(store, config)
    svc = PolicyService(ctx)
    await svc.start()
    ctx.policy = svc
    return ctx, svc


async def stopped(ctx, svc):
    await svc.stop()
    await ctx.cluster.stop()


def metric(ctx, name: str, **labels) -> float:
    value = ctx.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_exhausted_balance_throttles_by_coa_then_top_up_restores(store, nas, config):
    info = await seed(store, nas_port=nas.port, policy=THROTTLE)
    sid = info["sessions"][0]
    ctx, svc = await running(store, config())
    try:
        await ctx.cluster.events.publish(event("exhausted", info["account"].id, sid))
        got = await nas.wait(1)
        assert len(got) == 1
        coa = got[0]
        assert coa.code == 43 and coa.valid  # CoA-Request, signed, Message-Authenticator
        assert coa.attrs["User-Name"] == "alice"
        assert coa.attrs["Acct-Session-Id"] == "alice-0"
        assert coa.attrs["Framed-IP-Address"] == "10.20.0.5"
        assert coa.attrs["Mikrotik-Rate-Limit"] == "128k/256k"   # rx/tx = up/down
        assert abs(coa.attrs["Event-Timestamp"] - now_us() / 1e6) < 5
        # The same event again (redelivery) and another interim's exhaustion: no new CoA.
        await ctx.cluster.events.publish(event("exhausted", info["account"].id, sid))
        await asyncio.sleep(0.4)
        assert len(nas.received) == 1
        # Top-up: the plan's own speed comes back.
        await ctx.cluster.events.publish(event("topped_up", info["account"].id, None,
                                               available=10_000_000))
        got = await nas.wait(2)
        assert len(got) == 2 and got[1].attrs["Mikrotik-Rate-Limit"] == "5000k/20000k"
        async def both_done():
            done = await svc.listing(("done",))
            return done if len(done) == 2 else None
        done = await until(both_done)
        assert {(d["action"], d["result"]) for d in done} == {("throttle", "ack"),
                                                             ("restore", "ack")}
        audit = await store.list_audit(actor="policy")
        assert [a.action for a in audit][:2] == ["policy restore via coa",
                                                 "policy throttle via coa"]
        first = audit[1]
        assert first.status == 200 and first.target == f"session:{sid}"
        assert first.request["request"]["code"] == "CoA-Request"
        assert first.request["answer"]["code"] == "CoA-ACK"
        assert first.request["latency_ms"] > 0
        assert metric(ctx, "ocs_policy_actions_total", action="throttle", backend="coa",
                      result="ack") == 1
        assert metric(ctx, "ocs_policy_events_total", type="exhausted",
                      decision="unchanged") == 1
    finally:
        await stopped(ctx, svc)


async def test_disconnect_is_confirmed_by_the_stop(store, nas, config):
    info = await seed(store, nas_port=nas.port, policy={"on_suspended": "disconnect"},
                      sessions=2)
    ctx, svc = await running(store, config())
    try:
        await store.set_account_status(info["account"].id, "suspended", reason="unpaid")
        await ctx.cluster.events.publish((await store.events(limit=1))[0])
        got = await nas.wait(2)
        assert sorted(r.attrs["Acct-Session-Id"] for r in got) == ["alice-0", "alice-1"]
        assert all(r.code == 40 for r in got)   # Disconnect-Request
        # The NAS's Stop arrives for one session only.
        await close_session(store, info["sessions"][0])
        await until(lambda: metric(ctx, "ocs_policy_confirmations_total",
                                   result="confirmed") == 1)
        await until(lambda: metric(ctx, "ocs_policy_confirmations_total",
                                   result="unconfirmed") == 1, timeout=4)
        results = {d["session"]: d["result"] for d in await svc.listing(("done",))}
        assert results == {info["sessions"][0]: "confirmed",
                           info["sessions"][1]: "unconfirmed"}
    finally:
        await stopped(ctx, svc)


async def test_coa_nak_falls_back_to_disconnect_when_the_plan_allows(store, nas, config):
    nas.answer = lambda r: ("nak", [401]) if r.code == 43 else ("ack", [])
    info = await seed(store, nas_port=nas.port, policy=THROTTLE)
    sid = info["sessions"][0]
    ctx, svc = await running(store, config())
    try:
        await ctx.cluster.events.publish(event("exhausted", info["account"].id, sid))
        got = await nas.wait(2)
        assert [r.code for r in got] == [43, 40]
        assert got[1].attrs["Acct-Session-Id"] == "alice-0"
        assert metric(ctx, "ocs_policy_error_causes_total", nas="bras-1",
                      cause="Unsupported-Attribute") == 1
        replaced = await until(lambda: svc.listing(("replaced",)))
        assert replaced[0]["action"] == "throttle" and replaced[0]["result"] == "nak"
        assert "Unsupported-Attribute" in replaced[0]["last_error"]
        state = (await svc.queue.states([sid]))[sid]
        assert state.action == "disconnect"
    finally:
        await stopped(ctx, svc)


async def test_coa_nak_without_fallback_is_dead_lettered(store, nas, config):
    nas.answer = lambda r: ("nak", [501])
    info = await seed(store, nas_port=nas.port,
                      policy={**THROTTLE, "fallback_disconnect": False})
    ctx, svc = await running(store, config())
    try:
        await ctx.cluster.events.publish(event("exhausted", info["account"].id,
                                               info["sessions"][0]))
        dead = await until(lambda: svc.listing(("dead",)))
        assert dead and dead[0]["action"] == "throttle"
        assert "Administratively-Prohibited" in dead[0]["last_error"]
        assert len(nas.received) == 1          # a refusal is final: not retried
        await svc.refresh_gauges()
        assert metric(ctx, "ocs_policy_dead_letters") == 1
        # An operator retries it once the NAS is fixed.
        nas.answer = lambda r: ("ack", [])
        revived = await svc.retry(dead[0]["id"])
        assert revived["status"] == "pending" and revived["attempts"] == 0
        await nas.wait(2)
        assert await until(lambda: svc.listing(("done",)))
        await svc.refresh_gauges()
        assert metric(ctx, "ocs_policy_dead_letters") == 0
    finally:
        await stopped(ctx, svc)


async def test_silent_nas_gets_retransmissions_then_retries_then_dead_letter(store, nas,
                                                                            config):
    nas.answer = lambda r: ("drop", [])
    info = await seed(store, nas_port=nas.port, policy={"on_exhausted": "disconnect"})
    ctx, svc = await running(store, config(max_attempts=2))
    try:
        await ctx.cluster.events.publish(event("exhausted", info["account"].id,
                                               info["sessions"][0]))
        dead = await until(lambda: svc.listing(("dead",)), timeout=10)
        assert dead and dead[0]["attempts"] == 2 and dead[0]["result"] == "timeout"
        # Each attempt: 1 send + 2 retransmissions of the same octets (RFC 5080).
        assert len(nas.received) == 6
        first, second = nas.received[:3], nas.received[3:]
        assert len({r.raw for r in first}) == 1 and len({r.raw for r in second}) == 1
        assert first[0].identifier == first[2].identifier
        gaps = [b.at - a.at for a, b in zip(first, first[1:])]
        assert 0.15 < gaps[0] < 0.45 and gaps[1] > 0.32   # IRT 0.2, then about twice it
        audit = [a for a in await store.list_audit(actor="policy")
                 if a.action == "policy disconnect via coa"]
        assert [a.status for a in audit] == [504, 504]
        assert [a.request["attempt"] for a in audit] == [2, 1]
        assert metric(ctx, "ocs_policy_dead_lettered_total", action="disconnect",
                      backend="coa") == 1
    finally:
        await stopped(ctx, svc)


async def test_a_session_whose_stop_arrives_between_attempts_is_not_pursued(store, nas,
                                                                             config):
    """The NAS does not answer the Disconnect-Request; before the next attempt the
    session's own Stop arrives. Nothing more is sent: the action is done ("gone")
    rather than retried until it is dead-lettered. A session closed here without
    its Stop (idle, Accounting-On) may still run on the NAS and is still acted on."""
    nas.answer = lambda r: ("drop", [])
    info = await seed(store, nas_port=nas.port, policy={"on_exhausted": "disconnect"},
                      sessions=2)
    ctx, svc = await running(store, config(max_attempts=3, backoff_initial=0.5,
                                           backoff_max=0.5))
    try:
        stopped_sid, idle_sid = info["sessions"]
        for sid in info["sessions"]:
            await ctx.cluster.events.publish(event("exhausted", info["account"].id, sid))
        await until(lambda: len(nas.received) >= 6, timeout=5)  # first attempt of each
        await close_session(store, stopped_sid)                 # its Stop
        s = await store.get_session(idle_sid)
        await store.upsert_session(replace(s, status="closed", ended_at=now_us(),
                                           attrs={**s.attrs, "closed_by": "supervision"}))
        done = await until(lambda: svc.listing(("done",)), timeout=6)
        assert [(d["session"], d["result"]) for d in done] == [(stopped_sid, "gone")]
        dead = await until(lambda: svc.listing(("dead",)), timeout=10)
        assert [(d["session"], d["attempts"]) for d in dead] == [(idle_sid, 3)]
        sent = {}
        for r in nas.received:
            sent[r.attrs["Acct-Session-Id"]] = sent.get(r.attrs["Acct-Session-Id"], 0) + 1
        assert sent == {"alice-0": 3, "alice-1": 9}  # one attempt; three attempts
        assert metric(ctx, "ocs_policy_actions_total", action="disconnect", backend="coa",
                      result="gone") == 1
    finally:
        await stopped(ctx, svc)


async def test_session_gone_on_the_nas_counts_as_done(store, nas, config):
    nas.answer = lambda r: ("nak", [503])
    info = await seed(store, nas_port=nas.port, policy={"on_exhausted": "disconnect"})
    ctx, svc = await running(store, config())
    try:
        await ctx.cluster.events.publish(event("exhausted", info["account"].id,
                                               info["sessions"][0]))
        done = await until(lambda: svc.listing(("done",)))
        assert done[0]["result"] in ("gone", "confirmed", "unconfirmed")
        assert len(nas.received) == 1
    finally:
        await stopped(ctx, svc)


async def test_an_answer_signed_the_freeradius_way_is_taken(store, nas, config):
    """A NAS built on FreeRADIUS's libraries computes the Message-Authenticator of its
    Disconnect-ACK over a zero Authenticator, not the request's (RFC 5176 §3.5): its
    ACK is taken at the first attempt, not retransmitted to until given up."""
    nas.sign_over = "zeros"
    info = await seed(store, nas_port=nas.port, policy={"on_exhausted": "disconnect"})
    ctx, svc = await running(store, config(max_attempts=1))
    try:
        await ctx.cluster.events.publish(event("exhausted", info["account"].id,
                                               info["sessions"][0]))
        done = await until(lambda: svc.listing(("done",)), timeout=6)
        assert done[0]["result"] in ("ack", "confirmed", "unconfirmed")
        assert len(nas.received) == 1 and nas.received[0].valid
        assert metric(ctx, "ocs_policy_actions_total", action="disconnect", backend="coa",
                      result="ack") == 1
    finally:
        await stopped(ctx, svc)


async def test_wrong_secret_answers_are_ignored(store, nas, config):
    nas.secret = "not-the-secret-we-share-with-it"
    nas.answer_invalid = True   # it answers, signed with its own (wrong) secret
    info = await seed(store, nas_port=nas.port, policy={"on_exhausted": "disconnect"})
    ctx, svc = await running(store, config(max_attempts=1))
    try:
        await ctx.cluster.events.publish(event("exhausted", info["account"].id,
                                               info["sessions"][0]))
        dead = await until(lambda: svc.listing(("dead",)), timeout=6)
        assert dead[0]["result"] == "timeout"
        assert nas.received and not any(r.valid for r in nas.received)
    finally:
        await stopped(ctx, svc)


async def test_a_decision_recorded_but_not_queued_is_queued_when_the_event_returns(
        store, nas, config):
    """A crash after the state was saved and before the actions were queued (the Redis
    queue writes them in two steps): the unacknowledged event comes back, the decision
    step finds its own state, and the actions are queued then (idempotently)."""
    from policy import decide, state
    from tests.policy_harness import reload
    info = await seed(store, nas_port=nas.port, policy=THROTTLE)
    sid = info["sessions"][0]
    ctx, svc = await running(store, config())
    try:
        await reload(ctx)
        ev = event("exhausted", info["account"].id, sid)
        session = await store.get_session(sid)
        sub, plan = await svc._subscriber_plan(session)
        d = decide.decide(ev, session, plan, None, svc.nas(session.nas),
                          svc.target(session, sub))
        await store.driver.run(state.save_states_program, [(d, ev["id"])], now_us())
        assert nas.received == [] and await svc.listing(("pending", "running")) == []
        await ctx.cluster.events.publish(ev)     # redelivered
        got = await nas.wait(1)
        assert len(got) == 1 and got[0].attrs["Mikrotik-Rate-Limit"] == "128k/256k"
        await ctx.cluster.events.publish(ev)     # and again: still one CoA
        await asyncio.sleep(0.4)
        assert len(nas.received) == 1
    finally:
        await stopped(ctx, svc)

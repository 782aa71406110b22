"""Charging scenarios without any protocol, on both backends.

Each test drives the core with protocol-neutral requests the way a PGW or a
NAS would, and checks what the subscriber and the operator would see:
grants, final-unit actions, balances, CDRs and events.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from ocs.charging import (ChargeRequest, ChargingCore, EventRelay, FlatPrices, Identity,
                          RequestKind, ResultCode, ServiceUsage)
from ocs.config import ChargingConfig
from ocs.errors import NotFound
from ocs.model import Kind, now_us
from ocs.pricing import LinearPrice
from tests.test_balance import assert_ledger_matches

EUR = 1_000_000
MB = 1_000_000
PRICES = FlatPrices(
    by_kind={Kind.OCTETS: LinearPrice(price=10_000, per=MB),          # 0.01 EUR per MB
             Kind.SECONDS: LinearPrice(price=EUR, per=60, first=60, next=60)},  # 1 EUR/min
    by_service={"event:sms": LinearPrice(price=EUR // 10)},          # 0.10 per SMS
    unrateable=frozenset({"voice:999"}))
CONFIG = ChargingConfig(default_quota={"octets": 100 * MB, "seconds": 120, "events": 1})


@pytest.fixture
async def core(store):
    c = ChargingCore(store, PRICES, CONFIG)
    await c.reload()
    return c


async def subscriber(store, *, balance=10 * EUR, billing="prepaid", credit_limit=0,
                     username="alice", plan=None, **account):
    a = await store.create_account(name=f"acct-{username}", currency="EUR", billing=billing,
                                   credit_limit=credit_limit, opening_balance=balance, **account)
    s = await store.create_subscriber(account_id=a.id, username=username,
                                      plan_id=plan.id if plan else None)
    return a, s


def req(kind, seq, *services, session="sess-1", user="alice", **kw):
    return ChargeRequest(identity=Identity(username=user), session_id=session, kind=kind,
                         seq=seq, services=tuple(services), timestamp=now_us(), **kw)


def data(used=0, requested=None, service="rg:10"):
    return ServiceUsage(service, Kind.OCTETS, used=used, requested=requested, rating_group=10)


def voice(used=0, requested=None, destination="41791234567"):
    return ServiceUsage("voice", Kind.SECONDS, used=used, requested=requested,
                        destination=destination)


async def test_prepaid_data_session_to_exhaustion(core, store):
    plan = await store.create_plan(name="prepaid-data", currency="EUR",
                                   final_unit={"action": "redirect",
                                               "redirect_url": "http://topup.example/"})
    await core.reload()
    a, s = await subscriber(store, balance=3 * EUR, plan=plan)  # buys 300 MB
    d = await core.charge(req(RequestKind.INITIAL, 0, data()))
    g = d.grant("rg:10")
    assert d.result is ResultCode.SUCCESS and g.granted == 100 * MB and g.final_unit is None
    assert g.validity_time == 3600 and g.threshold == 20 * MB
    d = await core.charge(req(RequestKind.UPDATE, 1, data(used=100 * MB)))
    assert d.grant("rg:10").granted == 100 * MB and d.cost == EUR
    d = await core.charge(req(RequestKind.UPDATE, 2, data(used=150 * MB)))
    g = d.grant("rg:10")
    # 2 EUR spent, 1 EUR left buys only 50 MB more: the last grant carries the action.
    assert g.granted == 50 * MB and g.final_unit.action == "redirect"
    assert g.final_unit.redirect_url == "http://topup.example/"
    d = await core.charge(req(RequestKind.UPDATE, 3, data(used=50 * MB)))
    g = d.grant("rg:10")
    assert d.result is ResultCode.CREDIT_LIMIT_REACHED and g.granted == 0
    assert g.final_unit.action == "redirect" and "exhausted" in d.events
    assert d.balance == 0
    d = await core.charge(req(RequestKind.TERMINATE, 4, data(used=0)))
    assert d.result is ResultCode.SUCCESS
    (cdr,) = await store.list_cdrs(session="sess-1")
    assert (cdr.units, cdr.cost, cdr.service) == (300 * MB, 3 * EUR, "rg:10")
    assert (await store.get_session("sess-1")).status == "closed"
    await assert_ledger_matches(store, a.id)


async def test_two_concurrent_voice_calls_never_overdraw(core, store):
    a, s = await subscriber(store, balance=5 * EUR)  # five minutes in all
    results = await asyncio.gather(
        core.charge(req(RequestKind.INITIAL, 0, voice(requested=240), session="call-a")),
        core.charge(req(RequestKind.INITIAL, 0, voice(requested=240), session="call-b")))
    granted = sorted(d.grant("voice").granted for d in results)
    assert sum(granted) == 300 and granted == [60, 240]
    # Both calls talk through their grants and ask for more: nothing is left.
    more = await asyncio.gather(*[
        core.charge(req(RequestKind.UPDATE, 1, voice(used=g, requested=60),
                        session=d_session))
        for g, d_session in zip([d.grant("voice").granted for d in results],
                                ["call-a", "call-b"])])
    assert all(d.grant("voice").granted == 0 for d in more)
    assert (await store.balance(a.id))["balance"] == 0
    await assert_ledger_matches(store, a.id)


async def test_postpaid_up_to_the_credit_limit(core, store):
    a, s = await subscriber(store, balance=0, billing="postpaid", credit_limit=2 * EUR)
    d = await core.charge(req(RequestKind.INITIAL, 0, data(requested=500 * MB)))
    assert d.grant("rg:10").granted == 200 * MB and d.grant("rg:10").final_unit is None
    d = await core.charge(req(RequestKind.UPDATE, 1, data(used=200 * MB, requested=10 * MB)))
    assert d.result is ResultCode.CREDIT_LIMIT_REACHED
    assert (await store.balance(a.id))["balance"] == -2 * EUR


async def test_bundle_is_drained_before_money(core, store):
    plan = await store.create_plan(name="bundle", currency="EUR", allowances=[
        {"kind": "octets", "units": 150 * MB, "validity_days": 30}])
    await core.reload()
    a, s = await subscriber(store, balance=10 * EUR, plan=plan)
    await core.charge(req(RequestKind.INITIAL, 0, data(requested=100 * MB)))
    d = await core.charge(req(RequestKind.UPDATE, 1, data(used=100 * MB, requested=100 * MB)))
    assert d.cost == 0  # the allowance paid
    d = await core.charge(req(RequestKind.TERMINATE, 2, data(used=100 * MB)))
    assert d.cost == 50 * 10_000  # 50 MB beyond the 150 MB bundle at 0.01/MB
    bal = await store.balance(a.id)
    assert bal["balance"] == 10 * EUR - EUR // 2
    assert [b.balance for b in bal["buckets"] if b.kind is Kind.OCTETS] == []


async def test_repeated_update_returns_the_first_decision_and_charges_once(core, store):
    a, s = await subscriber(store)
    await core.charge(req(RequestKind.INITIAL, 0, data()))
    first = await core.charge(req(RequestKind.UPDATE, 1, data(used=80 * MB)))
    again = await core.charge(req(RequestKind.UPDATE, 1, data(used=80 * MB)))
    assert again.replayed and not first.replayed
    assert again.grant("rg:10") == first.grant("rg:10") and again.cost == first.cost
    assert (await store.balance(a.id))["balance"] == 10 * EUR - 80 * 10_000


async def test_a_repeated_number_with_other_services_is_answered_without_charging(core, store):
    # A client that reuses a request number for different content gets the first
    # answer for what that request had, a refusal for the rest, and no charge.
    a, s = await subscriber(store)
    await core.charge(req(RequestKind.INITIAL, 0, data()))
    first = await core.charge(req(RequestKind.UPDATE, 1, data(used=MB)))
    balance = (await store.balance(a.id))["balance"]
    other = data(used=5 * MB, service="rg:20")
    again = await core.charge(req(RequestKind.UPDATE, 1, data(used=MB), other))
    assert again.replayed and again.grant("rg:10") == first.grant("rg:10")
    assert again.grant("rg:20").result is ResultCode.RATING_FAILED
    assert again.grant("rg:20").granted == 0 and again.cost == first.cost
    fewer = await core.charge(req(RequestKind.UPDATE, 1, other))  # one service, not the first
    assert fewer.replayed and fewer.grant("rg:20").result is ResultCode.RATING_FAILED
    assert (await store.balance(a.id))["balance"] == balance


async def test_a_late_cumulative_interim_charges_nothing_and_stores_no_result(core, store):
    """A NAS's interims carry the session's totals: the charging record alone makes a
    replay harmless, so none of them stores its result (one row less per interim)."""
    from tests.test_balance import event_types
    a, s = await subscriber(store, low_balance_threshold=9 * EUR)
    await core.charge(req(RequestKind.INITIAL, 0, data(), cumulative=True))
    first = await core.charge(req(RequestKind.UPDATE, 1, data(used=150 * MB), cumulative=True))
    await core.charge(req(RequestKind.UPDATE, 2, data(used=200 * MB), cumulative=True))
    # Retransmitted to another node, or after a restart: applied again, charges nothing.
    for seq, used in ((2, 200 * MB), (1, 150 * MB)):
        again = await core.charge(req(RequestKind.UPDATE, seq, data(used=used),
                                      cumulative=True))
        assert again.result is ResultCode.SUCCESS and again.cost == 0
        assert again.grant("rg:10").granted == first.grant("rg:10").granted
    assert (await store.balance(a.id))["balance"] == 10 * EUR - 200 * 10_000
    assert await event_types(store, a.id) == ["low_balance"]
    stored = {r["op_key"] for r in await store._all(
        "SELECT op_key FROM operations WHERE account_id = $1", a.id)}
    assert stored == {"request|sess-1|0"}
    await core.charge(req(RequestKind.TERMINATE, 3, data(used=250 * MB), cumulative=True))
    assert (await store.balance(a.id))["balance"] == 10 * EUR - 250 * 10_000
    (cdr,) = await store.list_cdrs(session="sess-1")
    assert cdr.units == 250 * MB
    await assert_ledger_matches(store, a.id)


async def test_silent_session_is_released_and_closed_by_supervision(store):
    quick = ChargingCore(store, PRICES, CONFIG.model_copy(update={
        "validity_time": 10, "reservation_grace": 0, "idle_timeout": 60}))
    a, s = await subscriber(store)
    await quick.charge(req(RequestKind.INITIAL, 0, data(requested=100 * MB)))
    await quick.charge(req(RequestKind.UPDATE, 1, data(used=10 * MB, requested=100 * MB)))
    assert (await store.balance(a.id))["reserved"] == EUR
    # The session goes silent: make its last request and reservation look old.
    old = now_us() - 3600 * 1_000_000

    def age(table, column):
        from ocs.store.sql import execute

        def program():  # an out-of-band write: bump the versions, as the store's own do
            yield execute("UPDATE accounts SET version = version + 1")
            return (yield execute(f"UPDATE {table} SET {column} = $1", old))
        return store.driver.run(program)
    await age("reservations", "expires_at")
    await age("sessions", "updated_at")
    report = await quick.supervise()
    assert report == {"released_units": 100 * MB, "closed_sessions": 1}
    assert (await store.balance(a.id))["reserved"] == 0
    (cdr,) = await store.list_cdrs(session="sess-1")
    assert cdr.units == 10 * MB and cdr.details["closed_by"] == "supervision"
    assert await quick.supervise() == {"released_units": 0, "closed_sessions": 0}


async def test_supervision_clears_a_backlog_of_idle_sessions_in_one_run(store):
    """A NAS that vanished leaves more idle sessions than one page: one supervision
    run closes them all and releases every reservation."""
    import asyncio
    quick = ChargingCore(store, PRICES, CONFIG.model_copy(update={"idle_timeout": 60}))
    a, s = await subscriber(store, balance=100 * EUR)
    n = quick.SUPERVISION_PAGE + 100
    decisions = await asyncio.gather(*(
        quick.charge(req(RequestKind.INITIAL, 0, data(requested=MB), session=f"idle-{i}"))
        for i in range(n)))
    assert all(d.result is ResultCode.SUCCESS for d in decisions)
    assert (await store.balance(a.id))["reserved"] == n * 10_000

    def program():  # make them all silent for an hour (an out-of-band write)
        from ocs.store.sql import execute
        yield execute("UPDATE accounts SET version = version + 1")
        yield execute("UPDATE sessions SET updated_at = $1", now_us() - 3600 * 1_000_000)
    await store.driver.run(program)
    report = await quick.supervise()
    assert report["closed_sessions"] == n
    assert (await store.balance(a.id))["reserved"] == 0
    assert await store.list_sessions(status="active") == []
    assert (await quick.supervise())["closed_sessions"] == 0


async def test_radius_sessions_can_go_stale_sooner_than_others(core, store):
    """`supervise(idle={"radius": s})`: a RADIUS session silent for s seconds (its NAS
    missed that many interims) is closed, while a Diameter session as silent stays
    until idle_timeout, which its Validity-Time and Tcc allow for."""
    a, s = await subscriber(store)
    await core.charge(req(RequestKind.INITIAL, 0, data(), session="r-1", proto="radius",
                          cumulative=True))
    await core.charge(req(RequestKind.INITIAL, 0, data(), session="d-1", proto="diameter"))
    await _silence(store, 700)
    assert (await core.supervise(idle={"radius": 600}))["closed_sessions"] == 1
    assert (await store.get_session("r-1")).status == "closed"
    assert (await store.get_session("d-1")).status == "active"
    await _silence(store, CONFIG.idle_timeout)
    assert (await core.supervise(idle={"radius": 600}))["closed_sessions"] == 1
    assert (await store.get_session("d-1")).status == "closed"


async def test_unknown_subscriber_suspended_account_and_rating_failure(core, store):
    d = await core.charge(req(RequestKind.INITIAL, 0, data(), user="nobody"))
    assert d.result is ResultCode.UNKNOWN_SUBSCRIBER and d.services == ()
    a, s = await subscriber(store)
    d = await core.charge(req(RequestKind.INITIAL, 0, voice(destination="999"),
                              ServiceUsage("voice:999", Kind.SECONDS, destination="999")))
    assert d.grant("voice").result is ResultCode.SUCCESS
    assert d.grant("voice:999").result is ResultCode.RATING_FAILED
    assert d.result is ResultCode.SUCCESS
    await store.set_account_status(a.id, "suspended")
    d = await core.charge(req(RequestKind.INITIAL, 0, data(), session="sess-2"))
    assert d.result is ResultCode.SERVICE_DENIED and "suspended_seen" in d.events


async def test_update_for_an_unknown_session(core, store):
    await subscriber(store)
    d = await core.charge(req(RequestKind.UPDATE, 3, data(used=MB), session="ghost",
                              require_session=True))
    assert d.result is ResultCode.UNKNOWN_SESSION
    # Without the requirement (a RADIUS interim whose Start was lost) it is charged.
    d = await core.charge(req(RequestKind.UPDATE, 3, data(used=MB), session="ghost-2"))
    assert d.result is ResultCode.SUCCESS and d.cost == 10_000
    assert (await store.get_session("ghost-2")).status == "active"


async def test_session_record_keeps_its_start_and_merges_attributes(core, store):
    await subscriber(store)
    first = await core.charge(req(RequestKind.INITIAL, 0, data(), attrs={"nas_port": 7},
                                  framed_ip="100.64.0.1"))
    started = (await store.get_session("sess-1")).started_at
    await core.charge(req(RequestKind.UPDATE, 1, data(used=MB), attrs={"called": "apn"}))
    s = await store.get_session("sess-1")
    assert s.started_at == started and s.framed_ip == "100.64.0.1"
    assert s.attrs == {"nas_port": 7, "called": "apn"} and s.last_seq == 1
    await core.charge(req(RequestKind.TERMINATE, 2, data(used=MB)))
    late = await core.charge(req(RequestKind.UPDATE, 1, data(used=MB), session="sess-1"))
    assert late.replayed  # a retransmitted interim after the stop changes nothing
    stray = await core.charge(req(RequestKind.UPDATE, 5, data(used=MB)))
    assert (await store.get_session("sess-1")).status == "closed"  # not reopened
    assert first.result is stray.result is ResultCode.SUCCESS


async def test_session_record_follows_its_address_and_status_across_updates(core, store):
    _, sub = await subscriber(store)
    await core.charge(req(RequestKind.INITIAL, 0, data(), attrs={"n": 0}))
    for seq, ip in ((1, None), (2, "100.64.0.2"), (3, None), (4, "100.64.0.3")):
        await core.charge(req(RequestKind.UPDATE, seq, data(used=MB), attrs={"n": seq},
                              framed_ip=ip))
        s = await store.get_session("sess-1")
        assert s.attrs == {"n": seq} and s.last_seq == seq and s.status == "active"
        assert s.framed_ip == {1: None, 2: "100.64.0.2", 3: "100.64.0.2", 4: "100.64.0.3"}[seq]
    # The indexed lookups see the stored values.
    assert (await store.find_subscriber(framed_ip="100.64.0.3")).id == sub.id
    with pytest.raises(NotFound):
        await store.find_subscriber(framed_ip="100.64.0.2")
    assert [x.id for x in await store.list_sessions(status="active")] == ["sess-1"]
    await core.charge(req(RequestKind.TERMINATE, 5, data(used=MB), attrs={"n": 5}))
    s = await store.get_session("sess-1")
    assert s.status == "closed" and s.attrs == {"n": 5} and s.ended_at is not None
    assert await store.list_sessions(status="active") == []
    assert [x.id for x in await store.list_sessions(status="closed")] == ["sess-1"]


async def test_sessions_are_listed_by_the_start_of_their_id(core, store):
    """`id_prefix` picks the sessions of one NAS behind a shared entry; characters
    that are wildcards in SQL patterns are plain characters here."""
    await subscriber(store)
    for sid in ("r:px/bras-a:1", "r:px/bras-a:2", "r:px/bras-b:1", "r:px/bras_a:1",
                "r:px/bras%a:1"):
        await core.charge(req(RequestKind.INITIAL, 0, data(), session=sid))
    ids = lambda xs: sorted(x.id for x in xs)  # noqa: E731
    assert ids(await store.list_sessions(id_prefix="r:px/bras-a:")) == [
        "r:px/bras-a:1", "r:px/bras-a:2"]
    assert ids(await store.list_sessions(id_prefix="r:px/bras_a:")) == ["r:px/bras_a:1"]
    assert ids(await store.list_sessions(id_prefix="r:px/bras%")) == ["r:px/bras%a:1"]
    assert len(await store.list_sessions(id_prefix="r:px/")) == 5
    assert await store.list_sessions(id_prefix="r:px/bras-c:") == []


async def test_usage_beyond_range_is_not_charged(core, store):
    a, _ = await subscriber(store)
    await core.charge(req(RequestKind.INITIAL, 0, data()))
    before = (await store.balance(a.id))["available"]
    d = await core.charge(req(RequestKind.UPDATE, 1, data(used=2**60)))
    assert d.result is ResultCode.RATING_FAILED and d.cost == 0
    assert (await store.balance(a.id))["available"] == before
    d = await core.charge(req(RequestKind.UPDATE, 2, data(used=MB)))
    assert d.result is ResultCode.SUCCESS and d.cost == 10_000


async def test_event_direct_debit_and_refund(core, store):
    a, s = await subscriber(store, balance=EUR // 4)
    sms = ServiceUsage("event:sms", Kind.EVENTS, used=2)
    d = await core.charge(req(RequestKind.EVENT, 0, sms, session="sms-1"))
    assert d.result is ResultCode.SUCCESS and d.cost == EUR // 5
    (cdr,) = await store.list_cdrs(session="sms-1")  # an event is rated at once
    assert (cdr.service, cdr.units, cdr.cost) == ("event:sms", 2, EUR // 5)
    d = await core.charge(req(RequestKind.EVENT, 0, sms, session="sms-2"))
    assert d.result is ResultCode.CREDIT_LIMIT_REACHED and d.cost == 0
    assert await store.list_cdrs(session="sms-2") == []  # refused: nothing to bill
    refund = req(RequestKind.REFUND, 0, ServiceUsage("event:sms", Kind.EVENTS, used=1),
                 session="sms-1r")
    d = await core.charge(refund)
    assert d.result is ResultCode.SUCCESS
    assert (await store.balance(a.id))["balance"] == EUR // 4 - EUR // 5 + EUR // 10
    again = await core.charge(refund)  # the same request again: the same answer, once
    assert again.replayed and again.result is ResultCode.SUCCESS
    assert again.services == d.services and again.cost == d.cost
    assert (await store.balance(a.id))["balance"] == EUR // 4 - EUR // 5 + EUR // 10


async def test_fair_usage_threshold_event_once_per_period(core, store):
    plan = await store.create_plan(name="fup", currency="EUR", fair_usage={
        "threshold_octets": 150 * MB, "throttle_profile": {"down_kbps": 1000, "up_kbps": 256}})
    await core.reload()
    await subscriber(store, plan=plan)
    await core.charge(req(RequestKind.INITIAL, 0, data()))
    d1 = await core.charge(req(RequestKind.UPDATE, 1, data(used=100 * MB)))
    d2 = await core.charge(req(RequestKind.UPDATE, 2, data(used=100 * MB)))
    d3 = await core.charge(req(RequestKind.UPDATE, 3, data(used=100 * MB)))
    assert ("fair_usage" in d1.events, "fair_usage" in d2.events,
            "fair_usage" in d3.events) == (False, True, False)


async def test_cumulative_counters_from_interims(core, store):
    a, s = await subscriber(store)
    await core.charge(req(RequestKind.INITIAL, 0, data(), cumulative=True))
    await core.charge(req(RequestKind.UPDATE, 1, data(used=30 * MB), cumulative=True))
    late = await core.charge(req(RequestKind.UPDATE, 2, data(used=20 * MB), cumulative=True))
    assert late.cost == 0  # an interim older than the one already charged
    await core.charge(req(RequestKind.TERMINATE, 3, data(used=50 * MB), cumulative=True))
    (cdr,) = await store.list_cdrs(session="sess-1")
    assert cdr.units == 50 * MB and cdr.cost == 50 * 10_000


async def test_events_reach_the_stream_through_the_outbox(core, store):
    from ocs.cluster import build
    from ocs.config import RedisConfig
    cluster = build(RedisConfig(), node="n1")
    await cluster.start()
    relay = EventRelay(store, cluster.events.publish_many, interval=0.05)
    core_with_relay = ChargingCore(store, PRICES, CONFIG, on_events=relay.notify)
    await relay.start()
    try:
        await cluster.events.ensure_group("policy")
        await subscriber(store, balance=0)
        d = await core_with_relay.charge(req(RequestKind.INITIAL, 0, data()))
        assert d.result is ResultCode.CREDIT_LIMIT_REACHED
        got = []
        for _ in range(50):
            got += await cluster.events.consume("policy", "w1", block_ms=100)
            if got:
                break
        assert [e["type"] for _, e in got] == ["exhausted"]
        assert got[0][1]["session"] == "sess-1"
        for _ in range(50):  # marked published right after the stream took it
            if not await store.unpublished_events():
                break
            await asyncio.sleep(0.02)
        assert await store.unpublished_events() == []
    finally:
        await relay.stop()
        await cluster.stop()


async def test_in_process_stream_events_count_as_published_once_policy_handled_them(store):
    """The in-process stream dies with the process. There an event is marked
    published only once the consumer acknowledged it; killed before that (a new
    process: a new stream and relay on the same store), it is published again,
    and handled then. Within one process it is published once."""
    from ocs.cluster import build
    from ocs.config import RedisConfig

    async def process():
        cluster = build(RedisConfig(), node="n1")
        await cluster.start()
        events = cluster.events
        assert events.durable is False
        return cluster, EventRelay(store, events.publish_many, handled=events.handled)

    empty = await store.create_account(name="dry", currency="EUR", billing="prepaid")
    await store.reserve(empty.id, "s1", EUR)  # refused: an "exhausted" event in the outbox
    first, relay = await process()
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0  # not published twice by one process
    await first.events.ensure_group("policy")
    (entry_id, event), = await first.events.consume("policy", "w1", block_ms=0)
    assert event["type"] == "exhausted"
    await relay.relay_once()
    assert [e["id"] for _, e in await store.unpublished_events()] == [event["id"]]
    await first.stop()  # killed before the consumer acknowledged it

    second, relay = await process()
    assert await relay.relay_once() == 1
    await second.events.ensure_group("policy")
    (again_id, again), = await second.events.consume("policy", "w1", block_ms=0)
    assert again["id"] == event["id"]
    await second.events.ack("policy", [again_id])
    await relay.relay_once()
    assert await store.unpublished_events() == []
    await second.stop()


async def test_a_stuck_policy_does_not_make_the_relay_hold_events_without_end(store):
    """policy/ handles nothing: the relay follows at most `max_waiting` published
    events; the oldest are let go, unmarked in the outbox, and a restart publishes
    every one of them again."""
    from ocs.cluster import build
    from ocs.config import RedisConfig
    cluster = build(RedisConfig(), node="n1")
    await cluster.start()

    async def never(entry_id):
        return False
    relay = EventRelay(store, cluster.events.publish_many, batch=2, handled=never,
                       max_waiting=3)
    for n in range(5):  # five refused reservations: five "exhausted" events
        empty = await store.create_account(name=f"dry{n}", currency="EUR", billing="prepaid")
        await store.reserve(empty.id, f"s{n}", EUR)
    assert await relay.relay_once() == 5
    assert relay._waiting <= 3 and len(relay._unhandled) == 2
    assert len(await store.unpublished_events()) == 5  # none marked
    assert await relay.relay_once() == 0  # the let-go ones are not sent again meanwhile
    await cluster.stop()
    again = EventRelay(store, cluster.events.publish_many)  # the next start
    await cluster.start()
    assert await again.relay_once() == 5
    assert await store.unpublished_events() == []
    await cluster.stop()


async def test_redis_stream_events_lost_by_a_redis_restart_are_published_again(store,
                                                                                redis_url):
    """A Redis without persistence restarts empty. An event it held that policy had
    not handled yet is published again by the relay, which marks it published only
    once the policy group acknowledged it."""
    import secrets
    import redis.asyncio as aioredis
    from ocs.cluster import connect
    from ocs.config import RedisConfig
    prefix = f"ocs-relay-{secrets.token_hex(4)}:"
    cluster = await connect(RedisConfig(url=redis_url, key_prefix=prefix), node="n1")
    events = cluster.events
    relay = EventRelay(store, events.publish_many,
                       handled=lambda entry: events.handled(entry, group="policy"))
    r = aioredis.Redis.from_url(redis_url)
    try:
        empty = await store.create_account(name="dry", currency="EUR", billing="prepaid")
        await store.reserve(empty.id, "s1", EUR)  # refused: an "exhausted" event
        await events.ensure_group("policy")
        assert await relay.relay_once() == 1
        await relay.relay_once()
        assert len(await store.unpublished_events()) == 1  # not handled yet
        for key in await r.keys(prefix + "*"):  # Redis restarted without persistence
            await r.delete(key)
        await relay.relay_once()  # sees the loss: published again
        await events.ensure_group("policy")
        ((entry, event),) = await events.consume("policy", "w1", block_ms=0)
        assert event["type"] == "exhausted"
        await relay.relay_once()
        assert len(await store.unpublished_events()) == 1
        await events.ack("policy", [entry])
        await relay.relay_once()
        assert await store.unpublished_events() == []
    finally:
        for key in await r.keys(prefix + "*"):
            await r.delete(key)
        await r.aclose()
        await cluster.stop()


async def test_authorize_sizes_the_session_without_reserving(core, store):
    from ocs.charging import Identity
    plan = await store.create_plan(name="voice-bundle", currency="EUR", allowances=[
        {"kind": "seconds", "units": 90, "validity_days": 30}])
    await core.reload()
    a, s = await subscriber(store, balance=5 * EUR // 2, plan=plan)
    auth = await core.authorize(Identity(username="alice"), voice())
    # 90 s of bundle, then money at 1 EUR/min (60/60) rated on the whole session: the
    # minute the bundle ended in is already counted, so 2.50 EUR buys minutes 3 and 4.
    assert auth.result is ResultCode.SUCCESS and auth.max_units == 240
    assert (await store.balance(a.id))["reserved"] == 0
    assert (await core.authorize(Identity(username="nobody"))).result \
        is ResultCode.UNKNOWN_SUBSCRIBER
    empty_a, _ = await subscriber(store, balance=0, username="broke")
    assert (await core.authorize(Identity(username="broke"), data())).result \
        is ResultCode.CREDIT_LIMIT_REACHED
    await store.set_account_status(a.id, "suspended")
    core.forget()  # the daemon does this after every change through its API
    assert (await core.authorize(Identity(username="alice"))).result \
        is ResultCode.SERVICE_DENIED


async def test_lookup_cache_sees_changes_made_elsewhere_within_its_interval(store):
    core = ChargingCore(store, PRICES, CONFIG.model_copy(update={"cache_ttl": 0.2}))
    a, s = await subscriber(store)
    assert (await core.authorize(Identity(username="alice"))).result is ResultCode.SUCCESS
    other = ChargingCore(store, PRICES, CONFIG)  # as if another node, or ocsctl
    await store.set_account_status(a.id, "suspended")
    await store.update_subscriber(s.id, username="alice2")
    await asyncio.sleep(0.25)
    assert (await core.authorize(Identity(username="alice"))).result \
        is ResultCode.UNKNOWN_SUBSCRIBER
    assert (await core.authorize(Identity(username="alice2"))).result \
        is ResultCode.SERVICE_DENIED
    assert (await other.authorize(Identity(username="alice2"))).result \
        is ResultCode.SERVICE_DENIED


async def test_lookup_cache_holds_within_its_interval_and_is_forgotten_on_change(store):
    cached = ChargingCore(store, PRICES, CONFIG.model_copy(update={"cache_ttl": 60}))
    a, s = await subscriber(store)
    assert (await cached.authorize(Identity(username="alice"))).result is ResultCode.SUCCESS
    await store.set_account_status(a.id, "suspended")
    # Within the TTL authorisation still sees the cached account...
    assert (await cached.authorize(Identity(username="alice"))).result is ResultCode.SUCCESS
    # ...but no grant is given: the transaction reads the status itself.
    d = await cached.charge(req(RequestKind.INITIAL, 0, data()))
    assert d.result is ResultCode.SERVICE_DENIED
    cached.forget()  # what the daemon does after a change through its API
    assert (await cached.authorize(Identity(username="alice"))).result \
        is ResultCode.SERVICE_DENIED


async def test_a_bucket_filtered_by_destination_prefix_pays_only_that_range(core, store):
    a, s = await subscriber(store, balance=10 * EUR)
    await store.credit(a.id, 300, kind=Kind.SECONDS, service="voice:4179*", name="mobile CH")
    to_mobile = await core.charge(req(RequestKind.EVENT, 0, voice(used=120,
                                                                   destination="+41791234567"),
                                      session="c1"))
    to_uk = await core.charge(req(RequestKind.EVENT, 0, voice(used=120,
                                                               destination="004420712345"),
                                  session="c2"))
    assert to_mobile.cost == 0 and to_uk.cost == 2 * EUR
    left = [b.balance for b in (await store.balance(a.id))["buckets"] if b.kind is Kind.SECONDS]
    assert left == [180]
    auth = await core.authorize(Identity(username="alice"), voice(destination="41795550000"))
    assert auth.max_units == 180 + 480  # the bucket, then the 8.00 left at 1.00/min


async def test_tariff_tiers_count_the_billing_period_across_sessions(store):
    """A usage rate with tier_scope "period" prices the subscriber's month, not each
    session: 2 sessions of 80 MB with the first 100 MB at 0.02/MB and the rest at
    0.01/MB cost 1.60 + 1.00, not 1.60 twice; the rate used (with the exchange
    rate to the account's currency) is kept on each rated CDR."""
    from ocs.charging.tariffs import PlanTariffs
    from ocs.rating import ExchangeRate, TariffBook, TariffDefinition, Tier, UsageRate, compile
    defn = TariffDefinition(
        name="data-tiers", currency="EUR",
        usage_rates=(UsageRate("rg:10", Kind.OCTETS,
                               (Tier(100 * MB, 20_000), Tier(None, 10_000)), unit=MB,
                               tier_scope="period"),
                     UsageRate("rg:20", Kind.OCTETS,
                               (Tier(100 * MB, 20_000), Tier(None, 10_000)), unit=MB)),
        exchange_rates=(ExchangeRate("EUR", "CHF", 1_000_000_000, 0),))
    book = TariffBook({"data-tiers": compile(defn)})
    core = ChargingCore(store, PlanTariffs(book), CONFIG)
    plan = await store.create_plan(name="tiered", currency="CHF", tariff="data-tiers")
    a = await store.create_account(name="t", currency="CHF", billing="prepaid",
                                   opening_balance=10 * EUR)
    await store.create_subscriber(account_id=a.id, username="tiers", plan_id=plan.id)
    costs = []
    for n in (1, 2):
        for service in ("rg:10", "rg:20"):
            r = await core.charge(req(RequestKind.EVENT, 0, ServiceUsage(service, Kind.OCTETS,
                                                                         used=80 * MB),
                                      session=f"s{n}-{service}", user="tiers"))
            costs.append(r.cost)
    # rg:10 counts the month: 80 MB at 0.02, then 20 MB at 0.02 + 60 MB at 0.01.
    # rg:20 counts each session: 80 MB at 0.02 both times.
    assert costs == [1_600_000, 1_600_000, 1_000_000, 1_600_000]
    (cdr,) = await store.list_cdrs(session="s2-rg:10")
    how = cdr.details["rating:rg:10"]
    assert how["tariff"] == "data-tiers" and how["currency"] == "CHF"
    assert how["fx"]["from"] == "EUR" and how["fx"]["to"] == "CHF"


async def test_an_interim_arriving_after_the_stop_holds_nothing(core, store):
    """UDP reorders: the interim sent before the Stop may arrive after it. It charges
    nothing new (the Stop's totals cover it) and must not reserve for a dead session."""
    a, s = await subscriber(store)
    await core.charge(req(RequestKind.INITIAL, 0, data(), cumulative=True))
    await core.charge(req(RequestKind.UPDATE, 1, data(used=10 * MB), cumulative=True))
    await core.charge(req(RequestKind.TERMINATE, 3, data(used=30 * MB), cumulative=True))
    late = await core.charge(req(RequestKind.UPDATE, 2, data(used=20 * MB), cumulative=True))
    assert late.cost == 0 and late.grant("rg:10").granted == 0
    assert await store.reservations(account_id=a.id) == []
    position = await store.balance(a.id)
    assert position["reserved"] == 0 and position["balance"] == 10 * EUR - 30 * 10_000
    assert len(await store.list_cdrs(session="sess-1")) == 1


async def _silence(store, seconds: int) -> None:
    """Make every session look silent for `seconds` (an out-of-band write)."""
    from ocs.store.sql import execute

    def program():
        yield execute("UPDATE accounts SET version = version + 1")
        yield execute("UPDATE sessions SET updated_at = updated_at - $1", seconds * 1_000_000)
    await store.driver.run(program)


def later(request: ChargeRequest, seconds: int) -> ChargeRequest:
    return replace(request, timestamp=request.timestamp + seconds * 1_000_000)


async def test_a_session_id_reused_while_its_first_run_looks_open(core, store):
    """A NAS that crashed sends no Stop and no Accounting-On, and may hand out the same
    Acct-Session-Id again. Its new Start, later than the silent run's start, ends that
    run with what it reported (its CDR, its holds given back), and the new run's
    counters, from zero again, are charged in full."""
    a, s = await subscriber(store)
    await core.charge(req(RequestKind.INITIAL, 0, data(), cumulative=True))
    await core.charge(req(RequestKind.UPDATE, 1, data(used=30 * MB), cumulative=True))
    await _silence(store, 600)
    start = later(req(RequestKind.INITIAL, 10, data(), cumulative=True), 600)
    assert (await core.charge(start)).result is ResultCode.SUCCESS
    assert [c.units for c in await store.list_cdrs(session="sess-1")] == [30 * MB]
    (cdr,) = await store.list_cdrs(session="sess-1")
    assert cdr.details["closed_by"] == "session id reused"
    again = await core.charge(later(req(RequestKind.UPDATE, 11, data(used=5 * MB),
                                        cumulative=True), 900))
    assert again.cost == 5 * 10_000
    await core.charge(later(req(RequestKind.TERMINATE, 12, data(used=8 * MB),
                                cumulative=True), 1000))
    assert sorted(c.units for c in await store.list_cdrs(session="sess-1")) == [8 * MB, 30 * MB]
    position = await store.balance(a.id)
    assert position["reserved"] == 0 and position["balance"] == 10 * EUR - 38 * 10_000
    await assert_ledger_matches(store, a.id)


async def test_a_late_start_of_the_same_run_is_no_new_run(core, store):
    """Reports a NAS buffered come in any order: a Start older than the interim that
    opened the session, or one right behind it (a NAS that does not say how late it
    is), belongs to the same run, and nothing is charged twice."""
    a, s = await subscriber(store)
    interim = req(RequestKind.UPDATE, 1, data(used=30 * MB), cumulative=True)
    await core.charge(interim)
    await _silence(store, 600)
    await core.charge(later(req(RequestKind.INITIAL, 0, data(), cumulative=True), -300))
    await core.charge(later(req(RequestKind.UPDATE, 2, data(used=40 * MB),
                                cumulative=True), 300))
    assert (await store.balance(a.id))["balance"] == 10 * EUR - 40 * 10_000
    b, t = await subscriber(store, username="bob")
    await core.charge(req(RequestKind.UPDATE, 1, data(used=30 * MB), user="bob",
                          session="sess-2", cumulative=True))
    await core.charge(later(req(RequestKind.INITIAL, 0, data(), user="bob", session="sess-2",
                                cumulative=True), 60))  # right behind it, "later"
    await core.charge(later(req(RequestKind.UPDATE, 2, data(used=40 * MB), user="bob",
                                session="sess-2", cumulative=True), 300))
    assert (await store.balance(b.id))["balance"] == 10 * EUR - 40 * 10_000
    assert await store.list_cdrs(session="sess-1") == []
    assert await store.list_cdrs(session="sess-2") == []


async def test_a_session_id_reused_after_its_stop_is_a_new_session(core, store):
    """A NAS that restarts may hand out an Acct-Session-Id again: the new session's
    cumulative counters start from zero, so its usage is charged in full."""
    a, s = await subscriber(store)
    await core.charge(req(RequestKind.INITIAL, 0, data(), cumulative=True))
    await core.charge(req(RequestKind.TERMINATE, 2, data(used=30 * MB), cumulative=True))
    await core.charge(req(RequestKind.INITIAL, 10, data(), cumulative=True))
    again = await core.charge(req(RequestKind.UPDATE, 11, data(used=5 * MB), cumulative=True))
    assert again.grant("rg:10").granted > 0 and again.cost == 5 * 10_000
    await core.charge(req(RequestKind.TERMINATE, 12, data(used=8 * MB), cumulative=True))
    assert sorted(c.units for c in await store.list_cdrs(session="sess-1")) == [8 * MB, 30 * MB]
    position = await store.balance(a.id)
    assert position["reserved"] == 0 and position["balance"] == 10 * EUR - 38 * 10_000

"""Balance operations on both backends: what an account holder would see.

Every test runs once on SQLite and once on PostgreSQL (the `store` fixture).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from ocs.balance import Outcome
from ocs.model import Kind, now_us
from ocs.pricing import LinearPrice

EUR = 1_000_000
PER_MB = LinearPrice(price=10_000, per=1_000_000)  # 0.01 EUR per MB, billed per octet


async def account(store, balance=10 * EUR, billing="prepaid", credit_limit=0, name="acme"):
    return await store.create_account(name=name, currency="EUR", billing=billing,
                                      credit_limit=credit_limit, opening_balance=balance)


async def assert_ledger_matches(store, account_id):
    """Invariant 3: every bucket's balance is the sum of its ledger entries."""
    sums = await store.ledger_sums(account_id)
    for b in await store.buckets(account_id, include_empty=True):
        assert b.balance == sums.get(b.id, 0), f"bucket {b.id}: {b.balance} != ledger"
    held = {}
    for r in await store.reservations(account_id=account_id):
        for bucket_id, amount in r.holds:
            held[bucket_id] = held.get(bucket_id, 0) + amount
    for b in await store.buckets(account_id, include_empty=True):
        assert b.reserved == held.get(b.id, 0), f"bucket {b.id}: reserved drifted"


async def test_opening_balance_is_a_ledger_credit(store):
    a = await account(store)
    bal = await store.balance(a.id)
    assert bal["balance"] == 10 * EUR and bal["available"] == 10 * EUR
    (entry,) = await store.ledger(a.id)
    assert entry.amount == 10 * EUR and entry.entry_type.value == "credit"
    await assert_ledger_matches(store, a.id)


async def test_reserve_holds_money_and_release_gives_it_back(store):
    a = await account(store)
    r = await store.reserve(a.id, "s1", 3 * EUR, seq=1)
    assert r.outcome is Outcome.OK and r.granted == 3 * EUR
    assert (await store.balance(a.id))["available"] == 7 * EUR
    assert (await store.balance(a.id))["balance"] == 10 * EUR  # nothing spent yet
    rel = await store.release(a.id, "s1")
    assert rel.released == 3 * EUR
    assert (await store.balance(a.id))["available"] == 10 * EUR
    await assert_ledger_matches(store, a.id)


async def test_reserve_grants_what_the_balance_allows(store):
    a = await account(store, balance=2 * EUR)
    # 1 GB at 0.01 EUR/MB costs 10 EUR; 2 EUR buys 200 MB.
    r = await store.reserve(a.id, "s1", 1_000_000_000, kind=Kind.OCTETS, price=PER_MB)
    assert r.outcome is Outcome.OK and r.granted == 200_000_000
    assert (await store.balance(a.id))["available"] == 0
    refused = await store.reserve(a.id, "s2", 1_000, kind=Kind.OCTETS, price=PER_MB)
    assert refused.outcome is Outcome.INSUFFICIENT and refused.granted == 0


async def test_min_units_refuses_a_too_small_grant(store):
    a = await account(store, balance=EUR // 2)
    voice = LinearPrice(price=EUR, per=60, first=60, next=60)  # 1 EUR/min, 60/60
    r = await store.reserve(a.id, "call", 600, kind=Kind.SECONDS, price=voice, min_units=60)
    assert r.outcome is Outcome.INSUFFICIENT
    assert (await store.balance(a.id))["available"] == EUR // 2


async def test_commit_charges_usage_and_reserves_the_next_grant(store):
    a = await account(store)
    await store.reserve(a.id, "s1", 100_000_000, kind=Kind.OCTETS, price=PER_MB, seq=1)
    c = await store.commit(a.id, "s1", 50_000_000, kind=Kind.OCTETS, price=PER_MB, seq=2,
                           reserve=100_000_000)
    assert c.outcome is Outcome.OK
    assert c.charged == 50_000_000 and c.cost == EUR // 2 and c.granted == 100_000_000
    bal = await store.balance(a.id)
    assert bal["balance"] == 10 * EUR - EUR // 2
    assert bal["reserved"] == EUR
    final = await store.commit(a.id, "s1", 10_000_000, kind=Kind.OCTETS, price=PER_MB, seq=3,
                               final=True)
    assert final.cost == EUR // 10 and final.granted == 0
    bal = await store.balance(a.id)
    assert bal["balance"] == 10 * EUR - EUR // 2 - EUR // 10 and bal["reserved"] == 0
    assert not await store.reservations(session="s1")
    await assert_ledger_matches(store, a.id)


async def test_replayed_commit_changes_nothing(store):
    a = await account(store)
    await store.reserve(a.id, "s1", 100_000_000, kind=Kind.OCTETS, price=PER_MB, seq=1)
    first = await store.commit(a.id, "s1", 30_000_000, kind=Kind.OCTETS, price=PER_MB, seq=2,
                               reserve=50_000_000)
    before = await store.balance(a.id)
    entries = len(await store.ledger(a.id, limit=1000))
    again = await store.commit(a.id, "s1", 30_000_000, kind=Kind.OCTETS, price=PER_MB, seq=2,
                               reserve=50_000_000)
    assert again.replayed and not first.replayed
    assert (again.cost, again.charged, again.granted) == (first.cost, first.charged,
                                                          first.granted)
    after = await store.balance(a.id)
    assert (after["balance"], after["reserved"]) == (before["balance"], before["reserved"])
    assert len(await store.ledger(a.id, limit=1000)) == entries
    await assert_ledger_matches(store, a.id)


async def test_reported_usage_beyond_the_balance_is_charged_and_flagged(store):
    a = await account(store, balance=EUR)
    await store.reserve(a.id, "s1", 100_000_000, kind=Kind.OCTETS, price=PER_MB, seq=1)
    # The NAS reports 300 MB although only 100 MB (1 EUR) was granted.
    c = await store.commit(a.id, "s1", 300_000_000, kind=Kind.OCTETS, price=PER_MB, seq=2,
                           final=True)
    assert c.cost == 3 * EUR and c.below_floor == 2 * EUR
    assert (await store.balance(a.id))["balance"] == -2 * EUR
    # Nothing more can be reserved while below the floor.
    r = await store.reserve(a.id, "s2", 1, kind=Kind.OCTETS, price=PER_MB)
    assert r.outcome is Outcome.INSUFFICIENT
    await assert_ledger_matches(store, a.id)


async def test_postpaid_reserves_down_to_the_credit_limit(store):
    a = await account(store, balance=0, billing="postpaid", credit_limit=50 * EUR)
    r = await store.reserve(a.id, "s1", 80 * EUR)
    assert r.granted == 50 * EUR
    c = await store.commit(a.id, "s1", 50 * EUR, seq=1, final=True)
    assert c.below_floor == 0
    assert (await store.balance(a.id))["balance"] == -50 * EUR
    assert (await store.reserve(a.id, "s2", 1)).outcome is Outcome.INSUFFICIENT


async def test_buckets_drain_before_money_by_priority_then_expiry(store):
    a = await account(store)
    later = now_us() + 10 * 86_400_000_000
    sooner = now_us() + 86_400_000_000
    late = await store.credit(a.id, 1000, kind=Kind.OCTETS, valid_to=later, priority=10)
    soon = await store.credit(a.id, 1000, kind=Kind.OCTETS, valid_to=sooner, priority=10)
    c = await store.commit(a.id, "s1", 2500, kind=Kind.OCTETS, price=LinearPrice(price=1),
                           seq=1, final=True)
    main = (await store.buckets(a.id))[-1]
    assert c.draws == ((soon.bucket_id, 1000), (late.bucket_id, 1000), (main.id, 500))
    assert c.cost == 500


async def test_service_filtered_bucket_only_pays_its_service(store):
    a = await account(store, balance=0)
    await store.credit(a.id, 600, kind=Kind.SECONDS, service="voice-national")
    other = await store.reserve(a.id, "s1", 60, kind=Kind.SECONDS, service="voice-intl",
                                price=LinearPrice(price=EUR, per=60))
    assert other.outcome is Outcome.INSUFFICIENT
    mine = await store.reserve(a.id, "s2", 60, kind=Kind.SECONDS, service="voice-national")
    assert mine.granted == 60


async def test_expired_bucket_is_not_spent(store):
    a = await account(store, balance=0)
    await store.credit(a.id, 1000, kind=Kind.OCTETS, valid_to=now_us() - 1)
    r = await store.reserve(a.id, "s1", 10, kind=Kind.OCTETS)
    assert r.outcome is Outcome.INSUFFICIENT


async def test_suspended_account_gets_no_grant_but_usage_is_charged(store):
    a = await account(store)
    await store.reserve(a.id, "s1", EUR, seq=1)
    await store.set_account_status(a.id, "suspended")
    assert (await store.reserve(a.id, "s2", EUR)).outcome is Outcome.ACCOUNT_SUSPENDED
    c = await store.commit(a.id, "s1", EUR // 2, seq=2, reserve=EUR)
    assert c.outcome is Outcome.ACCOUNT_SUSPENDED and c.cost == EUR // 2 and c.granted == 0
    assert (await store.balance(a.id))["balance"] == 10 * EUR - EUR // 2


async def test_unknown_account_is_an_outcome_not_a_crash(store):
    r = await store.reserve(999_999, "s1", 10)
    assert r.outcome is Outcome.UNKNOWN_ACCOUNT


async def test_credit_with_a_reference_is_applied_once(store):
    a = await account(store, balance=0)
    first = await store.credit(a.id, 5 * EUR, ref="payment-77")
    second = await store.credit(a.id, 5 * EUR, ref="payment-77")
    assert not first.replayed and second.replayed
    assert (await store.balance(a.id))["balance"] == 5 * EUR


async def test_adjust_refuses_to_cross_the_floor_unless_forced(store):
    a = await account(store, balance=EUR)
    r = await store.adjust(a.id, -2 * EUR, reason="refund reversal")
    assert r.outcome is Outcome.REJECTED
    r = await store.adjust(a.id, -2 * EUR, reason="refund reversal", force=True, actor="alice")
    assert r.ok and (await store.balance(a.id))["balance"] == -EUR
    entry = (await store.ledger(a.id))[0]
    assert entry.entry_type.value == "adjust" and entry.actor == "alice"


async def test_supervision_releases_expired_reservations_only(store):
    a = await account(store)
    await store.reserve(a.id, "stale", EUR, ttl=1)
    await store.reserve(a.id, "fresh", EUR, ttl=3600)
    await asyncio.sleep(1.1)
    released = await store.release_expired()
    assert released == EUR
    assert [r.session for r in await store.reservations(account_id=a.id)] == ["fresh"]
    assert (await store.balance(a.id))["reserved"] == EUR
    await assert_ledger_matches(store, a.id)


async def test_bucket_created_and_reserved_in_one_batch(store):
    a = await account(store, balance=0)
    credit, grant = await asyncio.gather(
        store.credit(a.id, 5000, kind=Kind.OCTETS),
        store.reserve(a.id, "s1", 2000, kind=Kind.OCTETS))
    assert grant.granted == 2000
    (res,) = await store.reservations(session="s1")
    assert res.holds == ((credit.bucket_id, 2000),)
    await assert_ledger_matches(store, a.id)


def test_operations_validate_their_arguments():
    from ocs.balance import Commit, Credit, Reserve
    with pytest.raises(ValueError):
        Reserve(1, "s", -5)
    with pytest.raises(ValueError):
        Commit(1, "s", 10, ttl=0)
    with pytest.raises(ValueError):
        Credit(1, 0)


async def test_cumulative_reports_charge_only_what_is_new(store):
    """RADIUS interims carry session totals: a repeated or reordered one charges nothing."""
    a = await account(store)
    kw = dict(kind=Kind.OCTETS, price=PER_MB, cumulative=True, reserve=100_000_000)
    first = await store.commit(a.id, "acct-1", 50_000_000, seq=1, **kw)
    assert first.cost == EUR // 2 and first.session_units == 50_000_000
    second = await store.commit(a.id, "acct-1", 80_000_000, seq=2, **kw)
    assert second.charged == 30_000_000 and second.cost == 3 * EUR // 10
    stale = await store.commit(a.id, "acct-1", 70_000_000, seq=3, **kw)  # arrived late
    assert stale.charged == 0 and stale.cost == 0 and stale.session_units == 80_000_000
    assert (await store.balance(a.id))["balance"] == 10 * EUR - 8 * EUR // 10
    charges = await store.session_charges("acct-1")
    assert charges[""]["units"] == 80_000_000 and charges[""]["cost"] == 8 * EUR // 10


async def test_a_wrapping_counter_is_charged_across_the_wrap(store):
    """A counter without high words (RADIUS octets without Gigawords) wraps at 2**32:
    a newer report below the total gained the fewest wraps that bring it past it."""
    a = await account(store)
    wrap = 2**32
    kw = dict(kind=Kind.OCTETS, price=PER_MB, cumulative=True, wraps=wrap)
    await store.commit(a.id, "w", 4_200_000_000, seq=10, **kw)
    r = await store.commit(a.id, "w", 4_300_000_000 - wrap, seq=20, **kw)
    assert r.charged == 100_000_000 and r.session_units == 4_300_000_000
    # An older report (lower seq) charges nothing, as without wraps; a repeat of the
    # same one is answered from the first.
    assert (await store.commit(a.id, "w", 5_000, seq=15, **kw)).charged == 0
    assert (await store.commit(a.id, "w", 4_300_000_000 - wrap, seq=20, **kw)).replayed
    assert (await store.session_charges("w"))[""]["units"] == 4_300_000_000
    # Two wraps since the last report (both directions of a sum): still the fewest.
    r = await store.commit(a.id, "w", 4_500_000_000 - 2 * wrap + wrap, seq=30, **kw)
    assert r.charged == 200_000_000 and r.session_units == 4_500_000_000
    # Implausible as traffic (more than half a wrap in one report): a counter reset,
    # charged nothing rather than billions of octets.
    r = await store.commit(a.id, "w", 1_000, seq=40, **kw)
    assert r.charged == 0 and r.session_units == 4_500_000_000
    # Without `wraps`, a newer report below the total charges nothing.
    await store.commit(a.id, "n", 4_200_000_000, seq=10, kind=Kind.OCTETS, price=PER_MB,
                       cumulative=True)
    assert (await store.commit(a.id, "n", 5_032_704, seq=20, kind=Kind.OCTETS,
                               price=PER_MB, cumulative=True)).charged == 0


async def test_a_credit_beyond_what_a_bucket_may_hold_changes_nothing(store):
    from ocs.balance import Outcome
    from ocs.model import MAX_BALANCE
    a = await account(store)
    before = await store.buckets(a.id, include_empty=True)
    for kw in ({}, {"kind": Kind.OCTETS}):  # the main bucket, and a new one
        r = await store.credit(a.id, MAX_BALANCE + 1, **kw)
        assert r.outcome is Outcome.REJECTED and "more than a balance may" in r.message, kw
    assert await store.buckets(a.id, include_empty=True) == before  # no bucket was made
    assert (await store.balance(a.id))["balance"] == 10 * EUR


async def test_increments_apply_to_the_session_not_to_each_report(store):
    a = await account(store)
    per_minute = LinearPrice(price=EUR, per=60, first=60, next=60)
    kw = dict(kind=Kind.SECONDS, price=per_minute)
    r1 = await store.commit(a.id, "call", 30, seq=1, reserve=60, **kw)
    r2 = await store.commit(a.id, "call", 31, seq=2, final=True, **kw)
    # 61 s at 60/60 is two minutes in total, however it was reported.
    assert (r1.cost, r2.cost) == (EUR, EUR) and r2.session_cost == 2 * EUR
    # What was paid up to the next edge is free: 59 more seconds cost nothing.
    r3 = await store.commit(a.id, "call2", 61, seq=1, **kw)
    r4 = await store.commit(a.id, "call2", 59, seq=2, **kw)
    assert (r3.cost, r4.cost) == (2 * EUR, 0)


async def test_usage_counter_advances_with_the_charge(store):
    a = await account(store)
    await store.commit(a.id, "s1", 5_000, kind=Kind.OCTETS, price=PER_MB, seq=1,
                       counter="fup:sub1:2026-11")
    r = await store.commit(a.id, "s2", 7_000, kind=Kind.OCTETS, price=PER_MB, seq=1,
                           counter="fup:sub1:2026-11")
    assert r.counter_units == 12_000
    replay = await store.commit(a.id, "s2", 7_000, kind=Kind.OCTETS, price=PER_MB, seq=1,
                                counter="fup:sub1:2026-11")
    assert replay.replayed and await store.usage_counter("fup:sub1:2026-11") == 12_000


async def event_types(store, account_id):
    return [e["type"] for e in reversed(await store.events(account_id=account_id))]


async def test_exhaustion_and_low_balance_are_events_in_the_same_transaction(store):
    a = await store.create_account(name="ev", currency="EUR", billing="prepaid",
                                   opening_balance=2 * EUR, low_balance_threshold=EUR)
    await store.reserve(a.id, "s1", 150_000_000, kind=Kind.OCTETS, price=PER_MB, seq=1)
    assert await event_types(store, a.id) == ["low_balance"]  # 2.00 -> 0.50 available
    r = await store.commit(a.id, "s1", 150_000_000, kind=Kind.OCTETS, price=PER_MB, seq=2,
                           reserve=100_000_000)
    assert r.granted == 50_000_000  # what is left
    r = await store.commit(a.id, "s1", 50_000_000, kind=Kind.OCTETS, price=PER_MB, seq=3,
                           reserve=100_000_000)
    assert r.outcome is Outcome.INSUFFICIENT
    events = await store.events(account_id=a.id)
    assert [e["type"] for e in events][0] == "exhausted"
    assert events[0]["session"] == "s1" and events[0]["id"] == "commit|s1||3:exhausted:"
    # A replay of the request that exhausted the balance emits nothing new.
    await store.commit(a.id, "s1", 50_000_000, kind=Kind.OCTETS, price=PER_MB, seq=3,
                       reserve=100_000_000)
    assert (await event_types(store, a.id)).count("exhausted") == 1


async def test_top_up_and_status_changes_are_events(store):
    a = await account(store, balance=0)
    await store.credit(a.id, 5 * EUR, ref="pay-1")
    await store.set_account_status(a.id, "suspended", reason="unpaid", actor="ops")
    await store.reserve(a.id, "s1", EUR)
    await store.set_account_status(a.id, "suspended")  # no change, no event
    await store.set_account_status(a.id, "active")
    assert await event_types(store, a.id) == ["topped_up", "account_suspended",
                                              "suspended_seen", "account_restored"]
    suspended = [e for e in await store.events(account_id=a.id)
                 if e["type"] == "account_suspended"][0]
    assert (suspended["reason"], suspended["actor"]) == ("unpaid", "ops")


async def test_fair_usage_threshold_crossed_once(store):
    a = await account(store)
    kw = dict(kind=Kind.OCTETS, price=PER_MB, counter="fup:1:2026-11",
              counter_threshold=1_000_000)
    await store.commit(a.id, "s1", 600_000, seq=1, **kw)
    await store.commit(a.id, "s1", 600_000, seq=2, **kw)
    await store.commit(a.id, "s1", 600_000, seq=3, **kw)
    assert await event_types(store, a.id) == ["fair_usage"]


async def test_outbox_rows_are_relayed_once_marked(store):
    a = await account(store, balance=0)
    await store.reserve(a.id, "s1", EUR)
    pending = await store.unpublished_events()
    assert [e["type"] for _, e in pending] == ["exhausted"]
    await store.mark_published([i for i, _ in pending])
    assert await store.unpublished_events() == []


async def test_composite_request_is_atomic_and_replayed_whole(store):
    from ocs.balance import Commit, Composite, Reserve
    from ocs.model import Session
    a = await account(store)
    sub = await store.create_subscriber(account_id=a.id, username="multi")
    now = now_us()
    record = Session(id="gy-1", account_id=a.id, subscriber_id=sub.id, proto="diameter",
                     nas="pgw", nas_session_id="gy-1", framed_ip=None, status="active",
                     last_seq=0, started_at=now, updated_at=now, ended_at=None, attrs={})
    op = Composite(a.id, "gy-1", 0, (
        Reserve(a.id, "gy-1", 100_000_000, kind=Kind.OCTETS, service="rg10", price=PER_MB),
        Reserve(a.id, "gy-1", 100_000_000, kind=Kind.OCTETS, service="rg20", price=PER_MB),
    ), record=record)
    r = await store.apply(op)
    assert [p.granted for p in r.parts] == [100_000_000, 100_000_000]
    assert (await store.get_session("gy-1")).proto == "diameter"
    update = Composite(a.id, "gy-1", 1, (
        Commit(a.id, "gy-1", 40_000_000, kind=Kind.OCTETS, service="rg10", price=PER_MB,
               reserve=100_000_000),
        Commit(a.id, "gy-1", 60_000_000, kind=Kind.OCTETS, service="rg20", price=PER_MB,
               reserve=100_000_000),
    ))
    first = await store.apply(update)
    again = await store.apply(update)
    assert again.replayed and [p.cost for p in again.parts] == [p.cost for p in first.parts]
    assert (await store.balance(a.id))["balance"] == 9 * EUR
    with pytest.raises(ValueError):
        Composite(a.id, "x", 0, (Reserve(a.id + 1, "x", 1),))


async def test_strict_commit_is_all_or_nothing(store):
    sms = LinearPrice(price=EUR // 10)  # 0.10 per event
    a = await account(store, balance=EUR // 4)
    ok = await store.commit(a.id, "sms-1", 2, kind=Kind.EVENTS, price=sms, strict=True, final=True)
    assert ok.outcome is Outcome.OK and ok.cost == EUR // 5
    refused = await store.commit(a.id, "sms-2", 1, kind=Kind.EVENTS, price=sms, strict=True,
                                 final=True)
    assert refused.outcome is Outcome.INSUFFICIENT and refused.cost == 0
    assert (await store.balance(a.id))["balance"] == EUR // 20


async def test_strict_commit_keeps_the_reservation_it_could_not_use(store):
    a = await account(store, balance=EUR)
    await store.reserve(a.id, "ecur", 5, kind=Kind.EVENTS, price=LinearPrice(price=EUR // 10))
    refused = await store.commit(a.id, "ecur", 20, kind=Kind.EVENTS,
                                 price=LinearPrice(price=EUR // 10), strict=True, seq=1)
    assert refused.outcome is Outcome.INSUFFICIENT
    assert (await store.balance(a.id))["reserved"] == EUR // 2
    await assert_ledger_matches(store, a.id)


async def test_closing_a_session_writes_one_rated_cdr_per_service(store):
    from ocs.balance import Commit, Composite, Release
    from ocs.model import Session
    a = await account(store)
    sub = await store.create_subscriber(account_id=a.id, username="cdr")
    t0 = now_us()
    record = Session(id="s-cdr", account_id=a.id, subscriber_id=sub.id, proto="diameter",
                     nas="pgw", nas_session_id="s-cdr", framed_ip=None, status="active",
                     last_seq=0, started_at=t0, updated_at=t0, ended_at=None,
                     attrs={"apn": "internet"})
    for seq, used in ((1, 10_000_000), (2, 20_000_000)):
        await store.apply(Composite(a.id, "s-cdr", seq, (
            Commit(a.id, "s-cdr", used, kind=Kind.OCTETS, service="rg10", price=PER_MB,
                   reserve=10_000_000),
            Commit(a.id, "s-cdr", used // 10, kind=Kind.OCTETS, service="rg20", price=PER_MB,
                   reserve=10_000_000)), record=record))
    closed = replace(record, status="closed", ended_at=now_us())
    end = Composite(a.id, "s-cdr", 3, (Release(a.id, "s-cdr"),), record=closed, close=True)
    await store.apply(end)
    await store.apply(end)  # a retransmitted termination writes nothing more
    cdrs = sorted(await store.list_cdrs(session="s-cdr"), key=lambda c: c.service)
    assert [(c.service, c.units, c.cost) for c in cdrs] == [
        ("rg10", 30_000_000, 3 * EUR // 10), ("rg20", 3_000_000, 3 * EUR // 100)]
    assert cdrs[0].details == {"apn": "internet"} and cdrs[0].currency == "EUR"
    assert (await store.balance(a.id))["reserved"] == 0


def test_a_stored_result_reads_back_whole_in_both_stored_forms():
    from dataclasses import fields

    from ocs.balance import Result
    part = Result(Outcome.INSUFFICIENT, granted=1, expires_at=2, charged=3, cost=4, unpaid=5,
                  below_floor=6, released=7, draws=((8, 9), (10, -11)), balance=12,
                  available=13, bucket_id=14, session_units=15, session_cost=16,
                  counter_units=17, events=("exhausted",), message="no more", service="rg:7",
                  behind=18)
    whole = Result(Outcome.OK, balance=-1, parts=(part, Result(Outcome.OK)))
    assert {f.name for f in fields(Result)} - {"outcome", "parts", "replayed"} == {
        name for name in part.__slots__ if getattr(part, name) != getattr(Result(Outcome.OK), name)
    } - {"outcome"}  # the example sets every stored field
    again = Result.from_json(whole.to_json())
    assert again.replayed and again == Result(Outcome.OK, balance=-1, parts=(
        Result(**{f.name: getattr(part, f.name) for f in fields(Result)
                  if f.name != "replayed"}, replayed=True),
        Result(Outcome.OK, replayed=True)), replayed=True)
    # Rows written before results were stored positionally still read.
    old = ('{"outcome":"ok","parts":[{"granted":5,"draws":[[1,2]],"outcome":"ok",'
           '"events":["low_balance"]}],"balance":9}')
    read = Result.from_json(old)
    assert read.balance == 9 and read.parts[0].granted == 5
    assert read.parts[0].draws == ((1, 2),) and read.parts[0].events == ("low_balance",)
    # Positional rows written before results named their service read with none.
    read = Result.from_json('["ok",0,null,0,0,0,0,0,[],9,9,null,0,0,null,[],"",'
                            '[["ok",5,null,0,0,0,0,0,[],0,0,null,0,0,null,[],"",[]]]]')
    assert read.parts[0].granted == 5 and read.parts[0].service == ""


async def test_a_session_that_moves_to_another_account_holds_and_pays_there(store):
    """The subscriber changed accounts mid-session: the next commit names the new
    account; the old hold is given back and the new one is the new account's."""
    old, new = await account(store, name="old"), await account(store, name="new")
    await store.reserve(old.id, "s1", 2 * EUR, seq=0)
    moved = await store.commit(new.id, "s1", EUR // 2, seq=1, reserve=EUR)
    assert moved.ok and moved.granted == EUR
    (held,) = await store.reservations()
    assert held.account_id == new.id and held.units == EUR
    assert (await store.balance(old.id))["reserved"] == 0
    assert (await store.balance(new.id))["reserved"] == EUR
    again = await store.commit(new.id, "s1", EUR // 4, seq=2, reserve=EUR)
    assert again.ok and (await store.balance(new.id))["balance"] == 10 * EUR - 3 * EUR // 4
    for a in (old, new):
        await assert_ledger_matches(store, a.id)


async def test_a_batch_that_fails_or_is_retried_leaves_nothing_behind(store, monkeypatch):
    """The node keeps the balance state it committed (ocs.store.cache). A batch whose
    writes fail (SQLite: the caller is told) or are retried (PostgreSQL re-runs a
    deadlocked transaction) must not leave the state it changed in memory."""
    import asyncpg

    from ocs.errors import StoreUnavailable
    a = await account(store)
    await store.reserve(a.id, "s1", 2 * EUR, seq=0)
    await store.commit(a.id, "s1", EUR // 10, seq=1, reserve=2 * EUR)  # the node holds it now
    failed = []
    if store.dialect == "postgres":
        from ocs.store import postgres as driver
        real = driver._write_all

        async def once(conn, queries):
            if not failed:
                failed.append(True)
                raise asyncpg.DeadlockDetectedError("deadlock detected (injected)")
            return await real(conn, queries)
        monkeypatch.setattr(driver, "_write_all", once)
        await store.commit(a.id, "s1", EUR // 10, seq=2, reserve=2 * EUR)  # retried inside
    else:
        import sqlite3

        from ocs.store import sqlite as driver
        real = driver._execute

        def once(conn, q):
            if q.mode == "write_all" and not failed:
                failed.append(True)
                raise sqlite3.OperationalError("disk I/O error (injected)")
            return real(conn, q)
        monkeypatch.setattr(driver, "_execute", once)
        with pytest.raises(StoreUnavailable):
            await store.commit(a.id, "s1", EUR // 10, seq=2, reserve=2 * EUR)
        await store.commit(a.id, "s1", EUR // 10, seq=2, reserve=2 * EUR)  # the NAS retries
    assert failed
    last = await store.commit(a.id, "s1", EUR // 10, seq=3, reserve=2 * EUR)
    assert last.balance == 10 * EUR - 3 * (EUR // 10)
    position = await store.balance(a.id)
    assert position["balance"] == 10 * EUR - 3 * (EUR // 10) and position["reserved"] == 2 * EUR
    await assert_ledger_matches(store, a.id)

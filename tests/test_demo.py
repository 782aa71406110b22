"""The demo dataset on both backends: what the README promises, and idempotence."""

from __future__ import annotations

from ocs import demo, passwords
from ocs.balance import Outcome
from ocs.model import Kind
from ocs.pricing import LinearPrice
from ocs.store.sql import fetchval

EUR = 1_000_000
TABLES = ("accounts", "subscribers", "plans", "buckets", "ledger", "nas", "api_tokens")


async def counts(store) -> dict[str, int]:
    def program(table):
        return (yield fetchval(f"SELECT count(*) FROM {table}"))
    return {t: int(await store.driver.run(program, t, write=False)) for t in TABLES}


async def test_seed_creates_what_the_readme_lists(store):
    info = await demo.seed(store)

    (nas,) = await store.list_nas()
    assert (nas.name, nas.address, nas.secret, nas.vendor) == \
        ("localhost-nas", "127.0.0.1", "testing123", "generic")

    data = await store.find_plan("demo-data")
    assert [(a.kind, a.units, a.validity_days) for a in data.allowances] == \
        [(Kind.OCTETS, 10 * 2**30, 30)]
    assert (data.speed_profile.down_kbps, data.speed_profile.up_kbps) == (20000, 5000)
    assert data.fair_usage.threshold_octets == 8 * 2**30
    voice = await store.find_plan("demo-voice")
    assert [a.kind for a in voice.allowances] == [Kind.SECONDS]

    prepaid = await store.find_subscriber(username="demo")
    assert passwords.verify_password("demo", prepaid.password_hash)
    assert prepaid.plan_id == data.id
    account = await store.get_account(prepaid.account_id)
    assert (account.name, account.billing.value, account.currency) == ("demo", "prepaid", "EUR")
    assert (await store.balance(account.id))["balance"] == 10 * EUR

    post = await store.find_subscriber(username="demo-post")
    assert passwords.verify_password("demo", post.password_hash)
    post_account = await store.get_account(post.account_id)
    assert post_account.billing.value == "postpaid" and post_account.credit_limit == 100 * EUR

    voip = await store.find_subscriber(sip_user="1001")
    assert voip.plan_id == voice.id
    assert (await store.balance(voip.account_id))["balance"] > 0

    mobile = await store.find_subscriber(msisdn="41780000001")
    assert mobile.imsi == "228010000000001" and mobile.plan_id == data.id
    assert (await store.balance(mobile.account_id))["balance"] > 0

    empty = await store.find_subscriber(imsi="228010000000002")
    assert empty.msisdn == "41780000002"
    bal = await store.balance(empty.account_id)
    assert bal["balance"] == 0 and bal["available"] == 0
    assert [b for b in bal["buckets"] if not b.main] == []

    token = await store.verify_token(info.token)
    assert token is not None and (token.name, token.role.value) == ("demo-admin", "admin")

    by_label = {s.label: s for s in info.subscribers}
    assert by_label["prepaid"].balance == "10.00" and by_label["prepaid"].plan == "demo-data"
    assert by_label["postpaid"].credit_limit == "100.00"
    text = info.summary()
    assert "testing123" in text and info.token in text and "10.00 EUR" in text


async def test_the_empty_subscriber_cannot_get_any_grant(store):
    await demo.seed(store)
    empty = await store.find_subscriber(msisdn="41780000002")
    per_mb = LinearPrice(price=10_000, per=1_000_000)
    for kind, price in ((Kind.OCTETS, per_mb), (Kind.OCTETS, None), (Kind.SECONDS, None),
                        (Kind.MONEY, None)):
        result = await store.reserve(empty.account_id, f"s-{kind.value}", 1000, kind=kind,
                                     price=price)
        assert result.outcome is Outcome.INSUFFICIENT and result.granted == 0, kind
    # ...while the funded mobile subscriber is granted from its allowance.
    mobile = await store.find_subscriber(msisdn="41780000001")
    result = await store.reserve(mobile.account_id, "s-ok", 1000, kind=Kind.OCTETS)
    assert result.ok and result.granted == 1000


async def test_seeding_twice_changes_nothing(store):
    first = await demo.seed(store)
    assert first.token and "subscriber demo" in first.created
    before = await counts(store)
    second = await demo.seed(store)
    assert second.created == [] and second.token is None
    assert await counts(store) == before
    assert [s.balance for s in second.subscribers] == [s.balance for s in first.subscribers]
    text = second.summary()
    assert "nothing changed" in text and "demo-admin exists" in text
    assert "ocsctl token add" in text


async def test_seed_keeps_spent_balances_and_completes_a_partial_dataset(store):
    await demo.seed(store)
    prepaid = await store.find_subscriber(username="demo")
    await store.adjust(prepaid.account_id, -3 * EUR, reason="spent")
    voip = await store.find_subscriber(sip_user="1001")
    await store.delete_subscriber(voip.id)
    info = await demo.seed(store)
    assert info.created == ["subscriber 1001"]
    assert (await store.balance(prepaid.account_id))["balance"] == 7 * EUR
    again = await store.find_subscriber(sip_user="1001")
    assert again.account_id == voip.account_id

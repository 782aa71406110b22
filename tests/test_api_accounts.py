"""Accounts through the API: balances, top-ups, adjustments, suspension, buckets,
ledger and CDRs, and bad bodies refused with the field named."""

from __future__ import annotations

import pytest

from ocs.model import now_us
from tests.test_api_harness import Api, api, make_account  # noqa: F401

EUR = 1_000_000


async def test_create_then_show_with_balance(api: Api):
    acct = await make_account(api, opening_balance="10.00", language="de-CH",
                              low_balance_threshold=2)
    assert acct["balance"]["balance"] == "10.00"
    assert acct["low_balance_threshold"] == "2.00" and acct["language"] == "de-CH"
    assert acct["created_at"].endswith("Z") and "T" in acct["created_at"]
    r = await api.reader.get(f"/v1/accounts/{acct['id']}")
    assert r.status == 200
    bal = r.json["balance"]
    assert (bal["balance"], bal["reserved"], bal["available"], bal["floor"],
            bal["currency"]) == ("10.00", "0.00", "10.00", "0.00", "EUR")
    (main,) = bal["buckets"]
    assert main["main"] is True and main["kind"] == "money" and main["balance"] == "10.00"
    listing = await api.reader.get("/v1/accounts", params={"status": "active"})
    assert [a["name"] for a in listing.json["items"]] == ["acme"]
    assert listing.json["count"] == 1
    assert (await api.reader.get("/v1/accounts", params={"status": "suspended"})).json == {
        "items": [], "count": 0}
    by_name = await api.reader.get("/v1/accounts", params={"name": "acme"})
    assert [a["id"] for a in by_name.json["items"]] == [acct["id"]]
    assert (await api.reader.get("/v1/accounts", params={"name": "acm"})).json["count"] == 0


async def test_postpaid_floor_is_minus_the_credit_limit(api: Api):
    acct = await make_account(api, name="corp", billing="postpaid", credit_limit="50")
    assert acct["credit_limit"] == "50.00"
    assert acct["balance"]["floor"] == "-50.00" and acct["balance"]["available"] == "50.00"


async def test_topup_credits_once_per_ref(api: Api):
    acct = await make_account(api, opening_balance="10.00")
    aid = acct["id"]
    r = await api.operator.post(f"/v1/accounts/{aid}/topup",
                                {"amount": "10.50", "ref": "pay-77", "reason": "card"})
    assert r.status == 200
    assert r.json["outcome"] == "ok" and r.json["replayed"] is False
    assert r.json["amount"] == "10.50" and r.json["balance"]["balance"] == "20.50"
    again = await api.operator.post(f"/v1/accounts/{aid}/topup",
                                    {"amount": "10.50", "ref": "pay-77"})
    assert again.status == 200 and again.json["replayed"] is True
    assert again.json["balance"]["balance"] == "20.50"
    r = await api.operator.post(f"/v1/accounts/{aid}/topup", {"amount": 5})
    assert r.json["balance"]["balance"] == "25.50"
    ledger = await api.reader.get(f"/v1/accounts/{aid}/ledger")
    entries = ledger.json["items"]
    assert [(e["amount"], e["entry_type"], e["actor"]) for e in entries] == [
        ("5.00", "credit", "ops"), ("10.50", "credit", "ops"), ("10.00", "credit", "ops")]
    assert entries[1]["reason"] == "card"
    # Invariant 3, as an operator can check it: the balance is the sum of the ledger.
    assert await api.store.ledger_sums(aid) == {entries[0]["bucket_id"]: 25_500_000}


async def test_credits_beyond_what_a_balance_may_hold_are_refused(api: Api):
    """Each top-up is within the per-request limit; their sum would pass what the
    64-bit columns hold (once a 503 'store unavailable' on PostgreSQL and an
    internal error on SQLite). Refused with the reason; the balance stays whole."""
    acct = await make_account(api)
    aid, most = acct["id"], 10**12  # the largest amount one request takes
    for n in range(4):
        r = await api.operator.post(f"/v1/accounts/{aid}/topup", {"amount": most})
        assert r.status == 200, (n, r.text)
    r = await api.operator.post(f"/v1/accounts/{aid}/topup", {"amount": most})
    assert r.status == 409 and "more than a balance may" in r.error["message"], r.text
    r = await api.operator.post(f"/v1/accounts/{aid}/adjust", {"amount": most, "reason": "x"})
    assert r.status == 409 and "more than a balance may" in r.error["message"], r.text
    balance = (await api.reader.get(f"/v1/accounts/{aid}")).json["balance"]["balance"]
    assert balance == f"{4 * most}.00"
    assert sum((await api.store.ledger_sums(aid)).values()) == 4 * most * EUR


async def test_adjust_below_the_floor_is_refused_unless_forced(api: Api):
    acct = await make_account(api, opening_balance="3.00")
    aid = acct["id"]
    r = await api.operator.post(f"/v1/accounts/{aid}/adjust",
                                {"amount": "-5", "reason": "chargeback"})
    assert r.status == 409 and "below its floor" in r.error["message"]
    assert (await api.reader.get(f"/v1/accounts/{aid}")).json["balance"]["balance"] == "3.00"
    r = await api.operator.post(f"/v1/accounts/{aid}/adjust",
                                {"amount": "-5", "reason": "chargeback", "force": True})
    assert r.status == 200 and r.json["balance"]["balance"] == "-2.00"
    assert r.json["amount"] == "-5.00"
    r = await api.operator.post(f"/v1/accounts/{aid}/adjust", {"amount": "0.25"})
    assert r.status == 422 and r.fields() == {"reason"}
    r = await api.operator.post(f"/v1/accounts/{aid}/adjust", {"amount": 0, "reason": "x"})
    assert r.status == 422 and r.fields() == {"amount"}


async def test_suspend_and_resume(api: Api):
    acct = await make_account(api)
    aid = acct["id"]
    r = await api.operator.post(f"/v1/accounts/{aid}/suspend", {"reason": "fraud check"})
    assert r.status == 200 and r.json["status"] == "suspended"
    assert (await api.operator.post(f"/v1/accounts/{aid}/suspend")).json["status"] == "suspended"
    r = await api.operator.post(f"/v1/accounts/{aid}/resume")
    assert r.status == 200 and r.json["status"] == "active"
    await api.store.set_account_status(aid, "closed")
    r = await api.operator.post(f"/v1/accounts/{aid}/resume")
    assert r.status == 409 and "closed" in r.error["message"]
    r = await api.operator.post(f"/v1/accounts/{aid}/topup", {"amount": 1})
    assert r.status == 409 and "closed" in r.error["message"]


async def test_patch_changes_only_what_is_given(api: Api):
    parent = await make_account(api, name="reseller")
    acct = await make_account(api, billing="postpaid", credit_limit=10, tax_profile="ch-vat")
    aid = acct["id"]
    r = await api.operator.patch(f"/v1/accounts/{aid}",
                                 {"credit_limit": "25.5", "parent_id": parent["id"]})
    assert r.status == 200
    assert r.json["credit_limit"] == "25.50" and r.json["parent_id"] == parent["id"]
    assert r.json["tax_profile"] == "ch-vat" and r.json["balance"]["floor"] == "-25.50"
    r = await api.operator.patch(f"/v1/accounts/{aid}", {"tax_profile": None})
    assert r.status == 200 and r.json["tax_profile"] is None
    r = await api.operator.patch(f"/v1/accounts/{aid}", {"name": None})
    assert r.status == 422 and r.fields() == {"name"}
    r = await api.operator.patch(f"/v1/accounts/{aid}", {"parent_id": 424242})
    assert r.status == 404
    r = await api.operator.patch(f"/v1/accounts/{aid}", {"status": "closed"})
    assert r.status == 422 and r.fields() == {"status"}
    assert (await api.operator.patch("/v1/accounts/424242", {"name": "x"})).status == 404


async def test_buckets_of_units_and_money(api: Api):
    acct = await make_account(api)
    aid = acct["id"]
    later = "2099-01-01T00:00:00Z"
    r = await api.operator.post(f"/v1/accounts/{aid}/buckets",
                                {"kind": "octets", "units": 5_000_000_000, "service": "internet",
                                 "valid_to": later, "name": "5 GB"})
    assert r.status == 201
    b = r.json
    assert (b["kind"], b["balance"], b["service"], b["name"]) == (
        "octets", 5_000_000_000, "internet", "5 GB")
    assert b["valid_to"] == "2099-01-01T00:00:00.000000Z"
    r = await api.operator.post(f"/v1/accounts/{aid}/buckets",
                                {"kind": "money", "units": "2.50", "priority": 5})
    assert r.status == 201 and r.json["balance"] == "2.50" and r.json["main"] is False
    listing = await api.reader.get(f"/v1/accounts/{aid}/buckets")
    kinds = sorted((x["kind"], x["balance"]) for x in listing.json["items"])
    assert kinds == [("money", "0.00"), ("money", "2.50"), ("octets", 5_000_000_000)]
    detail = await api.reader.get(f"/v1/accounts/{aid}")
    assert detail.json["balance"]["balance"] == "2.50"  # money buckets count
    r = await api.operator.post(f"/v1/accounts/{aid}/buckets", {"kind": "octets", "units": "5"})
    assert r.status == 422 and r.fields() == {"units"}
    r = await api.operator.post(f"/v1/accounts/{aid}/buckets",
                                {"kind": "seconds", "units": 60, "valid_from": later,
                                 "valid_to": "2098-01-01T00:00:00Z"})
    assert r.status == 422 and "valid_to" in r.error["message"]
    r = await api.operator.post(f"/v1/accounts/{aid}/buckets",
                                {"kind": "seconds", "units": 60, "valid_to": "next week"})
    assert r.status == 422 and r.fields() == {"valid_to"}


async def test_cdrs_show_cost_in_the_account_currency(api: Api):
    acct = await make_account(api, currency="JPY")
    aid = acct["id"]
    t = now_us()
    await api.store.add_cdr(account_id=aid, kind="seconds", started_at=t - 60_000_000,
                            ended_at=t, units=60, cost=12 * EUR, currency="JPY",
                            session="s-1", service="voice")
    r = await api.reader.get(f"/v1/accounts/{aid}/cdrs")
    (cdr,) = r.json["items"]
    assert (cdr["units"], cdr["cost"], cdr["currency"], cdr["session"]) == (
        60, "12", "JPY", "s-1")
    assert (await api.reader.get("/v1/cdrs", params={"session": "s-1"})).json["count"] == 1
    assert (await api.reader.get("/v1/accounts/999/cdrs")).status == 404


BAD_ACCOUNTS = [
    ({"currency": "EUR", "billing": "prepaid"}, {"name"}),                   # missing field
    ({"name": 5, "currency": "EUR", "billing": "prepaid"}, {"name"}),        # wrong type
    ({"name": "a", "currency": "euro", "billing": "prepaid"}, {"currency"}),  # bad currency
    ({"name": "a", "currency": "eur", "billing": "prepaid"}, {"currency"}),
    ({"name": "a", "currency": "EUR", "billing": "prepaid", "colour": "red"}, {"colour"}),
    ({"name": "a", "currency": "EUR", "billing": "maybe"}, {"billing"}),
    ({"name": "a", "currency": "EUR", "billing": "prepaid", "opening_balance": "-1"},
     {"opening_balance"}),
    ({"name": "a", "currency": "EUR", "billing": "prepaid", "opening_balance": 10.123456789},
     {"opening_balance"}),
    ({"name": "a", "currency": "EUR", "billing": "prepaid", "credit_limit": "1.1234567"},
     {"credit_limit"}),
    ({"name": "a", "currency": "EUR", "billing": "prepaid", "credit_limit": True},
     {"credit_limit"}),
]


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_bad_account_bodies_name_the_field(api: Api):
    for body, fields in BAD_ACCOUNTS:
        r = await api.operator.post("/v1/accounts", body)
        assert r.status == 422, body
        assert r.error["code"] == "validation_error"
        assert r.fields() == fields, (body, r.error)
        for f in fields:
            assert f in r.error["message"]
    assert (await api.reader.get("/v1/accounts")).json["count"] == 0


async def test_bad_topups_and_conflicts(api: Api):
    acct = await make_account(api)
    aid = acct["id"]
    for body, field in [({"amount": -5}, "amount"), ({"amount": "-5.00"}, "amount"),
                        ({"amount": 0}, "amount"), ({"amount": 10.5}, "amount"),
                        ({"amount": "10.123456789"}, "amount"), ({"amount": "ten"}, "amount"),
                        ({}, "amount"), ({"amount": 1, "currency": "EUR"}, "currency")]:
        r = await api.operator.post(f"/v1/accounts/{aid}/topup", body)
        assert r.status == 422 and r.fields() == {field}, (body, r.text)
    assert (await api.reader.get(f"/v1/accounts/{aid}")).json["balance"]["balance"] == "0.00"
    # A whole number written as 10.0 is an integer in JSON Schema, so it is accepted.
    r = await api.operator.post(f"/v1/accounts/{aid}/topup", {"amount": 10.0})
    assert r.status == 200 and r.json["balance"]["balance"] == "10.00"
    r = await api.operator.post("/v1/accounts/424242/topup", {"amount": 1})
    assert r.status == 404 and "424242" in r.error["message"]
    r = await api.operator.post("/v1/accounts", {"name": "acme", "currency": "EUR",
                                                 "billing": "prepaid"})
    assert r.status == 409 and r.error["code"] == "conflict"

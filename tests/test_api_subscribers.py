"""Subscribers through the API: provisioning by names, lookup by every identity,
no password material ever in an answer, and the CSV bulk import."""

from __future__ import annotations

import pytest

from ocs.model import Session, now_us
from tests.test_api_harness import Api, api, make_account  # noqa: F401

PASSWORD = "s3cret-Pa55word"


async def setup_catalog(api: Api) -> tuple[dict, dict]:
    plan = await api.admin.post("/v1/plans", {
        "name": "fiber-100", "currency": "EUR", "recurring_fee": "29.90",
        "allowances": [{"kind": "octets", "units": 10_000_000_000, "validity_days": 30}]})
    assert plan.status == 201, plan.text
    acct = await make_account(api, name="alice", opening_balance="10.00")
    return plan.json, acct


def assert_no_password_material(text: str) -> None:
    assert PASSWORD not in text
    for word in ("password_hash", "nt_hash", "cleartext", "ssha256$"):
        assert word not in text


async def test_create_by_names_and_show_with_balance_and_plan(api: Api):
    plan, acct = await setup_catalog(api)
    r = await api.operator.post("/v1/subscribers", {
        "account": "alice", "plan": "fiber-100", "username": "alice@isp",
        "msisdn": "41780000001", "imsi": "228010000000001", "password": PASSWORD,
        "framed_ip": "198.51.100.7", "max_sessions": 2})
    assert r.status == 201, r.text
    assert_no_password_material(r.text)
    sub = r.json
    assert sub["has_password"] is True and sub["account_id"] == acct["id"]
    assert sub["plan"] == {"id": plan["id"], "name": "fiber-100"}
    assert sub["account"]["name"] == "alice"
    # The plan's allowance was credited to the account.
    buckets = sub["account"]["balance"]["buckets"]
    assert ("octets", 10_000_000_000) in [(b["kind"], b["balance"]) for b in buckets]
    assert sub["account"]["balance"]["balance"] == "10.00"
    shown = await api.reader.get(f"/v1/subscribers/{sub['id']}")
    assert shown.status == 200 and shown.json == sub
    assert_no_password_material(shown.text)
    listing = await api.reader.get("/v1/subscribers", params={"account_id": acct["id"]})
    assert listing.json["count"] == 1 and listing.json["items"][0]["username"] == "alice@isp"
    assert_no_password_material(listing.text)


async def test_find_by_every_identity_address_and_session(api: Api):
    _, acct = await setup_catalog(api)
    r = await api.operator.post("/v1/subscribers", {
        "account_id": acct["id"], "username": "bob", "msisdn": "41780000002",
        "imsi": "228010000000002", "sip_user": "1001", "password": PASSWORD})
    sub_id = r.json["id"]
    t = now_us()
    await api.store.upsert_session(Session(
        id="radius:bras1:abc", account_id=acct["id"], subscriber_id=sub_id, proto="radius",
        nas="bras1", nas_session_id="abc", framed_ip="100.64.0.9", status="active",
        last_seq=0, started_at=t, updated_at=t, ended_at=None, attrs={}))
    for query in ({"username": "bob"}, {"msisdn": "41780000002"},
                  {"imsi": "228010000000002"}, {"sip_user": "1001"},
                  {"framed_ip": "100.64.0.9"}, {"session": "radius:bras1:abc"},
                  {"session": "abc"}):
        r = await api.reader.get("/v1/subscribers/find", params=query)
        assert r.status == 200, (query, r.text)
        assert r.json["id"] == sub_id and r.json["account"]["balance"]["balance"] == "10.00"
        assert_no_password_material(r.text)
    r = await api.reader.get("/v1/subscribers/find", params={"username": "nobody"})
    assert r.status == 404 and "nobody" in r.error["message"]
    r = await api.reader.get("/v1/subscribers/find")
    assert r.status == 422 and "exactly one" in r.error["message"]
    r = await api.reader.get("/v1/subscribers/find", params={"username": "bob", "imsi": "1"})
    assert r.status == 422 and r.fields() == {"username", "imsi"}
    r = await api.reader.get("/v1/subscribers/find", params={"email": "bob@x"})
    assert r.status == 422 and r.fields() == {"email"}


async def test_patch_password_and_identities_delete(api: Api):
    _, acct = await setup_catalog(api)
    r = await api.operator.post("/v1/subscribers", {"account_id": acct["id"],
                                                    "username": "carol"})
    sub = r.json
    assert sub["has_password"] is False and sub["plan"] is None
    r = await api.operator.patch(f"/v1/subscribers/{sub['id']}",
                                 {"password": PASSWORD, "msisdn": "41790000003"})
    assert r.status == 200 and r.json["has_password"] is True
    assert r.json["msisdn"] == "41790000003"
    assert_no_password_material(r.text)
    stored = await api.store.get_subscriber(sub["id"])
    assert stored.password_hash and stored.password_hash != PASSWORD
    r = await api.operator.patch(f"/v1/subscribers/{sub['id']}", {"password": None})
    assert r.json["has_password"] is False
    r = await api.operator.patch(f"/v1/subscribers/{sub['id']}",
                                 {"username": None, "msisdn": None})
    assert r.status == 422 and "at least one" in r.error["message"]
    r = await api.operator.patch(f"/v1/subscribers/{sub['id']}", {"plan_id": 999})
    assert r.status == 404
    assert (await api.operator.delete(f"/v1/subscribers/{sub['id']}")).status == 204
    assert (await api.reader.get(f"/v1/subscribers/{sub['id']}")).status == 404
    assert (await api.operator.delete(f"/v1/subscribers/{sub['id']}")).status == 404
    # Audit keeps the change but never the password.
    audit = await api.admin.get("/v1/audit", params={"actor": "ops"})
    assert PASSWORD not in audit.text
    assert any(e["request"] == {"password": "***", "msisdn": "41790000003"}
               for e in audit.json["items"])


async def test_bad_subscriber_bodies(api: Api):
    _, acct = await setup_catalog(api)
    aid = acct["id"]
    cases = [
        ({"username": "x"}, {"account_id", "account"}),
        ({"account_id": aid, "account": "alice", "username": "x"}, {"account_id", "account"}),
        ({"account_id": aid, "username": "x", "msisdn": "+41 79"}, {"msisdn"}),
        ({"account_id": aid, "username": "x", "framed_ip": "10.0.0.300"}, {"framed_ip"}),
        ({"account_id": aid, "username": "x", "pasword": "typo"}, {"pasword"}),
        ({"account_id": "1", "username": "x"}, {"account_id"}),
    ]
    for body, fields in cases:
        r = await api.operator.post("/v1/subscribers", body)
        assert r.status == 422 and r.fields() == fields, (body, r.text)
    r = await api.operator.post("/v1/subscribers", {"account_id": aid})
    assert r.status == 422 and "at least one" in r.error["message"]
    r = await api.operator.post("/v1/subscribers", {"account": "nobody", "username": "x"})
    assert r.status == 404 and "nobody" in r.error["message"]
    r = await api.operator.post("/v1/subscribers", {"account_id": aid, "plan": "gold",
                                                    "username": "x"})
    assert r.status == 404 and "gold" in r.error["message"]
    assert (await api.operator.post("/v1/subscribers",
                                    {"account_id": aid, "username": "dup"})).status == 201
    r = await api.operator.post("/v1/subscribers", {"account_id": aid, "username": "dup"})
    assert r.status == 409 and "username" in r.error["message"]


CSV_OK = """account,currency,billing,plan,username,password,opening_balance
bulk-1,EUR,prepaid,fiber-100,bulk-user-1,pw-one-1,5.00
bulk-1,,,fiber-100,bulk-user-2,pw-two-2,
bulk-2,EUR,postpaid,,bulk-user-3,pw-three-3,
"""

CSV_BAD = """account,currency,billing,plan,username,password
bulk-9,EUR,prepaid,fiber-100,bulk-user-9,pw
bulk-10,EURO,prepaid,fiber-100,bulk-user-10,pw
bulk-11,EUR,sometimes,no-such-plan,bulk-user-11,pw
"""


async def test_csv_import_all_or_nothing_with_line_numbered_errors(api: Api):
    await setup_catalog(api)
    r = await api.operator.post("/v1/subscribers/import", data=CSV_BAD.encode(),
                                headers={"Content-Type": "text/csv"})
    assert r.status == 422 and r.error["code"] == "import_rejected"
    problems = {(d["line"], d["column"]) for d in r.error["details"]}
    assert {(3, "currency"), (4, "billing"), (4, "plan")} <= problems
    assert "line 3" in r.error["message"]
    assert (await api.reader.get("/v1/subscribers")).json["count"] == 0  # nothing imported
    r = await api.operator.post("/v1/subscribers/import", data=CSV_OK.encode(),
                                headers={"Content-Type": "text/csv"})
    assert r.status == 200, r.text
    assert r.json == {"imported": 3, "accounts_created": 2}
    found = await api.reader.get("/v1/subscribers/find", params={"username": "bulk-user-1"})
    assert found.json["account"]["balance"]["balance"] == "5.00"
    assert found.json["plan"]["name"] == "fiber-100"
    r = await api.operator.post("/v1/subscribers/import", data=CSV_OK.encode(),
                                headers={"Content-Type": "application/json"})
    assert r.status == 400 and "text/csv" in r.error["message"]
    # The audit log records the import without the file (it holds passwords).
    audit = await api.admin.get("/v1/audit", params={"actor": "ops"})
    assert "pw-one-1" not in audit.text
    entry = next(e for e in audit.json["items"] if e["status"] == 200
                 and e["action"] == "POST /v1/subscribers/import")
    assert entry["request"]["lines"] == 4 and entry["request"]["content_type"] == "text/csv"


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_csv_import_refuses_non_utf8(api: Api):
    r = await api.operator.post("/v1/subscribers/import", data=b"account\n\xff\xfe\n",
                                headers={"Content-Type": "text/csv"})
    assert r.status == 400 and "UTF-8" in r.error["message"]

"""Who may do what through the API: tokens, roles, the bootstrap token, the audit log."""

from __future__ import annotations

import pytest

from tests.test_api_harness import Api, api, make_account, start_api, stop_api  # noqa: F401

PLAN = {"name": "basic", "currency": "EUR"}
NAS = {"name": "bras1", "address": "192.0.2.1", "secret": "a-long-shared-secret-123"}


async def test_missing_and_unknown_tokens_are_401_and_counted(api: Api):
    r = await api.anon.get("/v1/plans")
    assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="ocsd"'
    r = await api.client("not-a-token").get("/v1/plans")
    assert r.status == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert "not-a-token" not in r.text
    r = await api.anon.get("/v1/plans", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status == 401
    assert api.sample("ocs_api_auth_failures_total", reason="missing_token") == 2
    assert api.sample("ocs_api_auth_failures_total", reason="unknown_token") == 1


async def test_read_only_may_read_but_not_change(api: Api):
    acct = await make_account(api)
    assert (await api.reader.get(f"/v1/accounts/{acct['id']}")).status == 200
    assert (await api.reader.get("/v1/plans")).status == 200
    assert (await api.reader.get("/v1/nas")).status == 200
    r = await api.reader.post(f"/v1/accounts/{acct['id']}/topup", {"amount": "5.00"})
    assert r.status == 403 and r.error["code"] == "forbidden"
    assert "read-only" in r.error["message"] and "operator" in r.error["message"]
    assert (await api.reader.get("/v1/audit")).status == 403
    assert (await api.reader.get("/v1/tokens")).status == 403
    # Nothing changed, and the refusal is counted and audited.
    bal = (await api.reader.get(f"/v1/accounts/{acct['id']}")).json["balance"]
    assert bal["balance"] == "0.00"
    assert api.sample("ocs_api_auth_failures_total", reason="forbidden") == 3
    (entry, *_) = await api.store.list_audit(actor="viewer")
    assert (entry.action, entry.status, entry.role) == (
        f"POST /v1/accounts/{acct['id']}/topup", 403, "read-only")


async def test_operator_changes_accounts_but_not_plans_nas_or_tokens(api: Api):
    acct = await make_account(api)
    r = await api.operator.post(f"/v1/accounts/{acct['id']}/topup", {"amount": 3})
    assert r.status == 200
    assert (await api.operator.post("/v1/plans", PLAN)).status == 403
    assert (await api.operator.post("/v1/nas", NAS)).status == 403
    assert (await api.operator.post("/v1/tokens", {"name": "x", "role": "admin"})).status == 403
    assert (await api.operator.get("/v1/audit")).status == 403
    assert (await api.admin.post("/v1/plans", PLAN)).status == 201
    assert (await api.admin.post("/v1/nas", NAS)).status == 201


async def test_tokens_created_once_listed_without_secret_and_revoked(api: Api):
    r = await api.admin.post("/v1/tokens", {"name": "noc-1", "role": "operator"})
    assert r.status == 201
    created = r.json
    secret = created["token"]
    assert created["role"] == "operator" and len(secret) >= 32
    listing = await api.admin.get("/v1/tokens")
    assert [t["name"] for t in listing.json["items"]] == ["bootstrap", "ops", "viewer", "noc-1"]
    assert secret not in listing.text and "token_hash" not in listing.text
    noc = api.client(secret)
    assert (await noc.get("/v1/accounts")).status == 200
    assert (await api.admin.post("/v1/tokens", {"name": "noc-1", "role": "admin"})).status == 409
    r = await api.admin.post("/v1/tokens", {"name": "x", "role": "root"})
    assert r.status == 422 and r.fields() == {"role"}
    assert (await api.admin.delete("/v1/tokens/noc-1")).status == 204
    assert (await noc.get("/v1/accounts")).status == 401
    assert (await api.admin.delete("/v1/tokens/noc-1")).status == 404
    # The secret is nowhere in the audit log.
    audit = await api.admin.get("/v1/audit")
    assert secret not in audit.text
    actions = [(e["action"], e["target"], e["status"]) for e in audit.json["items"]]
    assert actions[:4] == [("DELETE /v1/tokens/noc-1", "token:noc-1", 404),
                           ("DELETE /v1/tokens/noc-1", "token:noc-1", 204),
                           ("POST /v1/tokens", None, 422),
                           ("POST /v1/tokens", None, 409)]


async def test_bootstrap_token_is_created_then_rekeyed_when_the_secret_changes(store):
    api, _ = await start_api(store)
    try:
        assert (await api.admin.get("/v1/tokens")).status == 200
    finally:
        await stop_api(api)
    # Same secret again: kept as it is.
    api, _ = await start_api(store)
    await stop_api(api)
    assert [t.name for t in await store.list_tokens()] == ["bootstrap"]
    new_secret = "a-completely-new-bootstrap-secret"
    api, _ = await start_api(store, config={"bootstrap_token": new_secret})
    try:
        assert (await api.admin.get("/v1/tokens")).status == 401  # old secret is dead
        r = await api.client(new_secret).get("/v1/tokens")
        assert r.status == 200
        assert [(t["name"], t["role"]) for t in r.json["items"]] == [("bootstrap", "admin")]
    finally:
        await stop_api(api)


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_every_mutating_call_is_audited_with_who_what_and_status(api: Api):
    acct = await make_account(api, opening_balance="1.00")
    aid = acct["id"]
    await api.operator.post(f"/v1/accounts/{aid}/topup", {"amount": "2.50", "ref": "pay-1"})
    await api.operator.post(f"/v1/accounts/{aid}/adjust", {"amount": -100, "reason": "oops"})
    await api.operator.post("/v1/accounts/999999/topup", {"amount": 1})
    await api.operator.post("/v1/subscribers", {"account_id": aid, "username": "joe",
                                                "password": "pa55word-joe"})
    await api.reader.get(f"/v1/accounts/{aid}")  # reads are not audited
    r = await api.admin.get("/v1/audit", params={"actor": "ops"})
    assert r.status == 200
    got = [(e["action"], e["target"], e["status"], e["role"]) for e in r.json["items"]]
    assert got == [
        ("POST /v1/subscribers", "subscriber:1", 201, "operator"),
        ("POST /v1/accounts/999999/topup", "account:999999", 404, "operator"),
        (f"POST /v1/accounts/{aid}/adjust", f"account:{aid}", 409, "operator"),
        (f"POST /v1/accounts/{aid}/topup", f"account:{aid}", 200, "operator"),
        ("POST /v1/accounts", f"account:{aid}", 201, "operator"),
    ]
    sub_entry = r.json["items"][0]
    assert sub_entry["request"]["password"] == "***"
    assert "pa55word-joe" not in r.text
    assert sub_entry["remote"] == "127.0.0.1" and sub_entry["at"].endswith("Z")
    assert r.json["items"][3]["request"] == {"amount": "2.50", "ref": "pay-1"}
    # Paging backwards through the log.
    older = await api.admin.get("/v1/audit", params={"actor": "ops", "limit": 2,
                                                     "before_id": r.json["items"][1]["id"]})
    assert [e["status"] for e in older.json["items"]] == [409, 200]


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_a_bare_string_body_is_audited_and_the_log_still_reads(api: Api):
    # '"AAA"' is valid JSON but not an object: refused, audited as the string it was,
    # and the audit log (which once failed to read such a record back) still answers.
    r = await api.admin.post("/v1/accounts", data=b'"AAA"',
                             headers={"Content-Type": "application/json"})
    assert r.status == 422
    log = await api.admin.get("/v1/audit")
    assert log.status == 200
    (entry, *_) = log.json["items"]
    assert (entry["action"], entry["status"], entry["request"]) == (
        "POST /v1/accounts", 422, "AAA")

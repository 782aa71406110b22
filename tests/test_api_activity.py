"""Sessions, the ledger and CDRs through the API: filters, paging, reservations."""

from __future__ import annotations

from ocs.model import Session, now_us
from tests.test_api_harness import Api, api, make_account  # noqa: F401

EUR = 1_000_000


async def open_session(api: Api, sid: str, account_id: int, subscriber_id: int,
                       status: str = "active", nas: str = "bras1") -> None:
    t = now_us()
    await api.store.upsert_session(Session(
        id=sid, account_id=account_id, subscriber_id=subscriber_id, proto="radius", nas=nas,
        nas_session_id=sid.rsplit(":", 1)[-1], framed_ip="100.64.0.1", status=status,
        last_seq=0, started_at=t, updated_at=t, ended_at=None if status == "active" else t,
        attrs={"called_station": "bras1"}))


async def test_sessions_list_filters_and_show_with_reservations(api: Api):
    acct = await make_account(api, opening_balance="10.00")
    other = await make_account(api, name="other")
    sub = (await api.operator.post("/v1/subscribers", {"account_id": acct["id"],
                                                       "username": "u1"})).json
    sub2 = (await api.operator.post("/v1/subscribers", {"account_id": other["id"],
                                                        "username": "u2"})).json
    await open_session(api, "radius:bras1:a/1", acct["id"], sub["id"])
    await open_session(api, "radius:bras2:b", other["id"], sub2["id"], nas="bras2")
    await open_session(api, "radius:bras1:c", acct["id"], sub["id"], status="closed")
    await api.store.reserve(acct["id"], "radius:bras1:a/1", 3 * EUR, seq=1)

    active = await api.reader.get("/v1/sessions")
    assert sorted(s["id"] for s in active.json["items"]) == ["radius:bras1:a/1",
                                                             "radius:bras2:b"]
    r = await api.reader.get("/v1/sessions", params={"account_id": acct["id"]})
    assert [s["id"] for s in r.json["items"]] == ["radius:bras1:a/1"]
    r = await api.reader.get("/v1/sessions", params={"status": "closed"})
    assert [s["id"] for s in r.json["items"]] == ["radius:bras1:c"]
    r = await api.reader.get("/v1/sessions", params={"nas": "bras2"})
    assert [s["subscriber_id"] for s in r.json["items"]] == [sub2["id"]]
    r = await api.reader.get("/v1/sessions/radius:bras1:a%2F1")
    assert r.status == 200, r.text
    detail = r.json
    assert detail["status"] == "active" and detail["attrs"] == {"called_station": "bras1"}
    (res,) = detail["reservations"]
    assert res["units"] == "3.00" and res["kind"] == "money"
    assert res["expires_at"].endswith("Z")
    bal = (await api.reader.get(f"/v1/accounts/{acct['id']}")).json["balance"]
    assert (bal["reserved"], bal["available"]) == ("3.00", "7.00")
    assert (await api.reader.get("/v1/sessions/nope")).status == 404
    r = await api.reader.get("/v1/sessions", params={"status": "dead"})
    assert r.status == 422 and r.fields() == {"status"}


async def test_ledger_filters_and_pages_newest_first(api: Api):
    a = await make_account(api, opening_balance="1.00")
    b = await make_account(api, name="beta", currency="KWD", opening_balance="1.5")
    for i in range(5):
        await api.operator.post(f"/v1/accounts/{a['id']}/topup", {"amount": i + 1})
    await api.store.reserve(a["id"], "sess-9", EUR, seq=1)
    await api.store.commit(a["id"], "sess-9", EUR // 2, seq=2, final=True)

    r = await api.reader.get("/v1/ledger", params={"account_id": a["id"], "limit": 3})
    page = r.json["items"]
    assert r.json["count"] == 3
    assert [e["amount"] for e in page] == ["-0.50", "5.00", "4.00"]
    assert page[0]["session"] == "sess-9" and page[0]["entry_type"] == "debit"
    r = await api.reader.get("/v1/ledger", params={"account_id": a["id"],
                                                    "before_id": page[-1]["id"]})
    assert [e["amount"] for e in r.json["items"]] == ["3.00", "2.00", "1.00", "1.00"]
    everything = await api.reader.get("/v1/ledger")
    amounts = {(e["account_id"], e["amount"]) for e in everything.json["items"]}
    assert (b["id"], "1.500") in amounts  # three decimals for KWD
    r = await api.reader.get("/v1/ledger", params={"session": "sess-9"})
    assert [e["amount"] for e in r.json["items"]] == ["-0.50"]
    for params, field in (({"limit": 1001}, "limit"), ({"limit": 0}, "limit"),
                          ({"before_id": "x"}, "before_id"), ({"acount_id": 1}, "acount_id")):
        r = await api.reader.get("/v1/ledger", params=params)
        assert r.status == 422 and r.fields() == {field}, (params, r.text)
        assert r.error["code"] == "validation_error"
    r = await api.reader.get("/v1/ledger?limit=1&limit=2")
    assert r.status == 422 and r.fields() == {"limit"}

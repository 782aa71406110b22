"""/v1/tariffs, /v1/rate and /v1/rate-cdrs on a real socket over both store backends:
definitions round-trip, every write compiles first and is all or nothing,
deck imports name every bad line, charges are the ones computed by hand, and
every change makes the daemon's listeners hear "tariff".

Tariff "retail" (tests/data/cdrs/retail.json): EUR, Europe/Zurich, peak Mon-Fri
08:00-19:00 else off-peak; London 4420 1.00/min off-peak, 2.00 peak, 60/60; UK
mobile 4479 0.30/min + 0.10, minimum 30 s, 30/6; rg10 2.00/GB for the first GB
then 1.00/GB; EUR->CHF 0.95 from 2026-01-01.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os

from ocs.api import CATALOG_CHANGED
from tests.test_api_harness import Api, api  # noqa: F401

DATA = os.path.join(os.path.dirname(__file__), "data", "cdrs")
CSV = {"Content-Type": "text/csv"}


def read(name: str) -> str:
    with open(os.path.join(DATA, name), encoding="utf-8") as fh:
        return fh.read()


def retail_body() -> dict:
    body = json.loads(read("retail.json"))
    for deck in body["decks"]:
        deck["csv"] = read(deck.pop("file"))
    return body


def listen(api: Api) -> list[str]:
    """The kinds the daemon's catalog listeners hear."""
    heard: list[str] = []

    async def listener(kind: str) -> None:
        heard.append(kind)

    api.runner.app[CATALOG_CHANGED].append(listener)
    return heard


async def put_retail(api: Api, name: str = "retail", **changes) -> dict:
    r = await api.admin.request("PUT", f"/v1/tariffs/{name}", json={**retail_body(), **changes})
    assert r.status == 200, r.text
    return r.json


async def rate(api: Api, **body):
    return await api.reader.post("/v1/rate", {"tariff": "retail", **body})


# ---------------------------------------------------------------------------- definitions


async def test_put_show_list_and_round_trip(api: Api):
    heard = listen(api)
    t = await put_retail(api)
    assert heard == ["tariff"]
    assert (t["name"], t["revision"]) == ("retail", 1)
    assert t["services"] == {"rg10": "octets", "sms": "events", "voice": "seconds"}
    assert t["decks"] == [{"name": "base", "service": "voice", "unit": "minute", "priority": 0,
                           "rows": 5, "bands": ["peak"], "effective_from": None,
                           "effective_to": None}]
    d = t["definition"]
    assert d["bands"] == [{"band": "peak", "days": "mon,tue,wed,thu,fri", "from": "08:00",
                           "to": "19:00"}]
    assert d["usage_rates"][0]["tiers"] == [{"upto": 1_000_000_000, "price": "2.00"},
                                            {"upto": None, "price": "1.00"}]
    assert [u["tier_scope"] for u in d["usage_rates"]] == ["period", "session"]
    assert d["exchange_rates"] == [{"from": "EUR", "to": "CHF", "rate": "0.95",
                                    "effective_from": "2026-01-01T00:00:00.000000Z"}]
    assert d["numbering"] == {"international_prefix": "00", "national_prefix": "0",
                              "country_code": "41"}
    assert (await api.reader.get("/v1/tariffs/retail")).json == t

    listing = (await api.reader.get("/v1/tariffs")).json
    assert listing["count"] == 1
    item = listing["items"][0]
    assert (item["name"], item["currency"], item["revision"], item["services"]) == (
        "retail", "EUR", 1, ["rg10", "sms", "voice"])
    assert item["decks"] == [{"name": "base", "service": "voice", "unit": "minute",
                              "priority": 0, "rows": 5}]

    # What GET shows goes back through PUT: the decks are kept, the revision checked.
    edited = {**copy.deepcopy(d), "revision": 1, "description": "edited"}
    r = await api.admin.request("PUT", "/v1/tariffs/retail", json=edited)
    assert r.status == 200, r.text
    assert (r.json["revision"], r.json["definition"]["description"]) == (2, "edited")
    assert r.json["decks"][0]["rows"] == 5 and heard == ["tariff", "tariff"]
    stale = await api.admin.request("PUT", "/v1/tariffs/retail", json=edited)
    assert stale.status == 409 and "revision 2, not 1" in stale.error["message"]
    exists = await api.admin.request("PUT", "/v1/tariffs/retail", json={**edited, "revision": 0})
    assert exists.status == 409 and "exists already" in exists.error["message"]
    assert heard == ["tariff", "tariff"]
    # ... and the OpenAPI document says a PUT may answer so.
    doc = (await api.anon.get("/openapi.json")).json
    assert "409" in doc["paths"]["/v1/tariffs/{name}"]["put"]["responses"]

    # Reading is for every role, writing for admins only.
    r = await api.operator.request("PUT", "/v1/tariffs/retail", json=edited)
    assert r.status == 403
    assert (await api.reader.get("/v1/tariffs/nothing")).status == 404


async def test_a_tariff_that_does_not_compile_is_never_stored(api: Api):
    heard = listen(api)
    await put_retail(api)
    body = retail_body()
    body["decks"].append({"name": "promo", "csv": "prefix,price\n44,0.01\n"})  # priority 0 too
    r = await api.admin.request("PUT", "/v1/tariffs/retail", json=body)
    assert r.status == 422 and r.error["code"] == "invalid"
    assert "priorit" in r.error["message"]

    bad_csv = retail_body()
    bad_csv["decks"][0]["csv"] += "4420,London again,1.00,,,60,60,\n"
    r = await api.admin.request("PUT", "/v1/tariffs/retail", json=bad_csv)
    assert r.status == 422 and r.error["code"] == "import_rejected"
    assert r.error["details"] == [{"field": "decks.0.csv", "line": 7, "column": "prefix",
                                   "message": "duplicate prefix 4420 (line 4) with "
                                              "overlapping effective dates"}]

    schema = await api.admin.request("PUT", "/v1/tariffs/retail", json={
        **retail_body(), "timezone": "Mars/Olympus", "rounding": {"decimals": 9}})
    assert schema.status == 422 and schema.fields() == {"timezone", "rounding.decimals"}
    new_deck = await api.admin.request("PUT", "/v1/tariffs/other", json={
        "currency": "EUR", "decks": [{"name": "base"}]})
    assert new_deck.status == 422 and new_deck.error["details"][0]["field"] == "decks.0.csv"

    t = (await api.reader.get("/v1/tariffs/retail")).json
    assert t["revision"] == 1 and [d["name"] for d in t["decks"]] == ["base"]
    assert (await api.reader.get("/v1/tariffs/other")).status == 404
    assert heard == ["tariff"]  # only the first, successful write


async def test_delete_is_refused_while_a_plan_names_the_tariff(api: Api):
    heard = listen(api)
    await put_retail(api)
    plan = (await api.admin.post("/v1/plans", {"name": "voice-retail", "currency": "EUR",
                                               "tariff": "retail"})).json
    r = await api.admin.delete("/v1/tariffs/retail")
    assert r.status == 409 and "voice-retail" in r.error["message"]
    assert (await api.reader.get("/v1/tariffs/retail")).status == 200
    assert (await api.admin.patch(f"/v1/plans/{plan['id']}", {"tariff": None})).status == 200
    heard.clear()
    assert (await api.reader.delete("/v1/tariffs/retail")).status == 403
    r = await api.admin.delete("/v1/tariffs/retail")
    assert r.status == 204 and heard == ["tariff"]
    assert (await api.reader.get("/v1/tariffs/retail")).status == 404
    assert (await rate(api, to="442079460000", duration=60)).status == 404
    assert (await api.admin.delete("/v1/tariffs/retail")).status == 404
    assert (await api.reader.get("/v1/tariffs")).json["count"] == 0


# ---------------------------------------------------------------------------- deck import

BAD_DECK = """prefix,destination,price,connection_fee,min_duration,increment,next_increment,effective_from,effective_to
44,United Kingdom,0.70,,,60,60,,
4420,London,0.90,,,60,60,,
33,France,0.20,,,60,60,,
4420,London twice,0.95,,,60,60,,
+49,Germany,0.20,,,60,60,,
39,Italy,-0.20,,,60,60,,
34,Spain,0.20,,,0,60,,
31,Netherlands,0.20,,,60,60,2026-02-30,
"""


async def test_deck_import_names_every_bad_line_and_imports_nothing(api: Api):
    heard = listen(api)
    await put_retail(api)
    before = (await rate(api, to="442079460000", duration=185, at="2026-11-25T19:00")).json
    assert before["cost"] == "4.00"

    r = await api.admin.post("/v1/tariffs/retail/decks/base", data=BAD_DECK.encode(),
                             headers=CSV)
    assert r.status == 422 and r.error["code"] == "import_rejected"
    problems = {(d["line"], d["column"]): d["message"] for d in r.error["details"]}
    assert set(problems) == {(5, "prefix"), (6, "prefix"), (7, "price"), (8, "increment"),
                             (9, "effective_from")}
    assert "duplicate prefix 4420 (line 3)" in problems[(5, "prefix")]
    assert "'+49' is not all digits" in problems[(6, "prefix")]
    assert "negative" in problems[(7, "price")]
    assert "1..10000000 (got 0)" in problems[(8, "increment")]
    assert "2026-02-30" in problems[(9, "effective_from")]

    missing = await api.admin.post("/v1/tariffs/retail/decks/base",
                                   data=b"prefix,destination\n44,UK\n", headers=CSV)
    assert missing.status == 422
    assert missing.error["details"] == [{"line": 1, "column": "price",
                                         "message": "missing column"}]
    wrong_type = await api.admin.post("/v1/tariffs/retail/decks/base", json={"rows": []})
    assert wrong_type.status == 400 and "text/csv" in wrong_type.error["message"]
    bad_name = await api.admin.post("/v1/tariffs/retail/decks/bad%20name",
                                    data=b"prefix,price\n1,1\n", headers=CSV)
    assert bad_name.status == 422 and "deck name" in bad_name.error["message"]
    missing_tariff = await api.admin.post("/v1/tariffs/nothing/decks/base",
                                          data=b"prefix,price\n1,1\n", headers=CSV)
    assert missing_tariff.status == 404
    # A carriage return inside an unquoted field: the CSV itself cannot be read on.
    # Once an internal error (500); now the line and what to do about it.
    for bad in (b"prefix,price\n44,1.00\n49\r7,2.00\n", b"prefix,pr\rice\n44,1\n"):
        broken = await api.admin.post("/v1/tariffs/retail/decks/base", data=bad, headers=CSV)
        assert broken.status == 422 and broken.error["code"] == "import_rejected", broken.text
        (detail,) = broken.error["details"]
        assert detail["line"] == bad.count(b"\n", 0, bad.index(b"\r")) + 1
        assert "a line break inside an unquoted field (quote the field" in detail["message"]

    # Nothing changed: same deck, same revision, same charge, no reload.
    t = (await api.reader.get("/v1/tariffs/retail")).json
    assert t["revision"] == 1 and t["decks"][0]["rows"] == 5
    assert (await rate(api, to="442079460000", duration=185, at="2026-11-25T19:00")).json == \
        before
    assert heard == ["tariff"]

    # A good file replaces the deck; a promo deck with a higher priority wins over it.
    good = "prefix,destination,price,increment\n44,United Kingdom,0.70,60\n4420,London,0.90,60\n"
    r = await api.admin.post("/v1/tariffs/retail/decks/base", data=good.encode(), headers=CSV)
    assert r.status == 200, r.text
    assert r.json == {"tariff": "retail", "revision": 2, "deck": {
        "name": "base", "service": "voice", "unit": "minute", "priority": 0, "rows": 2,
        "bands": [], "effective_from": None, "effective_to": None}}
    assert heard == ["tariff", "tariff"]
    after = (await rate(api, to="442079460000", duration=185, at="2026-11-25T19:00")).json
    assert (after["cost"], after["revision"], after["destination"]["line"]) == ("3.60", 2, 3)
    r = await api.admin.post("/v1/tariffs/retail/decks/promo", params={"priority": "10"},
                             data=b"prefix,destination,price,increment\n4420,London promo,"
                                  b"0.10,60\n", headers=CSV)
    assert r.status == 200 and r.json["deck"]["priority"] == 10
    promo = (await rate(api, to="442079460000", duration=185, at="2026-11-25T19:00")).json
    assert (promo["cost"], promo["destination"]["deck"]) == ("0.40", "promo")
    bad_query = await api.admin.post("/v1/tariffs/retail/decks/promo",
                                     params={"priority": "high"}, data=good.encode(),
                                     headers=CSV)
    assert bad_query.status == 422 and bad_query.fields() == {"priority"}


# ---------------------------------------------------------------------------- rating


async def test_rate_golden_charges_and_how_they_were_computed(api: Api):
    await put_retail(api)
    # 185 s at 60/60 and 1.00/min off-peak: 4 minutes = 4.00.
    r = await rate(api, to="442079460000", duration=185, at="2026-11-25T19:00")
    assert r.status == 200, r.text
    c = r.json
    assert (c["cost"], c["currency"], c["billed_units"], c["units"]) == ("4.00", "EUR", 240, 185)
    assert c["destination"] == {"deck": "base", "line": 4, "prefix": "4420",
                                "destination": "London", "price": "1.00",
                                "connection_fee": "0.00", "min_duration": 0, "increment": 60,
                                "next_increment": 60}
    assert c["bands"] == [{"band": "offpeak", "units": 240, "price": "1.00"}]
    assert (c["at"], c["local_time"], c["time_zone"]) == (
        "2026-11-25T18:00:00.000000Z", "2026-11-25T19:00:00+01:00", "Europe/Zurich")
    assert c["number"] == "442079460000" and c["fx"] is None and c["tiers"] == []
    # A quote changes nothing: it is not an audited change (the PUT before it is).
    assert [e.action for e in await api.store.list_audit()] == ["PUT /v1/tariffs/retail"]

    # From 18:59, across the peak/off-peak boundary: 60 s at 2.00 + 180 s at 1.00.
    c = (await rate(api, to="00442079460000", duration=185,
                    at="2026-11-25T18:59")).json
    assert c["cost"] == "5.00" and c["number"] == "442079460000"
    assert c["bands"] == [{"band": "peak", "units": 60, "price": "2.00"},
                          {"band": "offpeak", "units": 180, "price": "1.00"}]

    # Connection fee and minimum: 61 s to a mobile at 30/6 is 66 s: 0.33 + 0.10.
    c = (await rate(api, to="447911123456", duration=61, at="2026-11-25T10:00")).json
    assert (c["cost"], c["billed_units"]) == ("0.43", 66)

    # Data across a tier edge: 1 GB at 2.00 + 0.5 GB at 1.00.
    c = (await rate(api, service="rg10", units=1_500_000_000)).json
    assert c["cost"] == "2.50" and c["kind"] == "octets" and c["destination"] is None
    assert c["tiers"] == [{"tier": 1, "units": 1_000_000_000, "price": "2.00",
                           "unit": 1_000_000_000},
                          {"tier": 2, "units": 500_000_000, "price": "1.00",
                           "unit": 1_000_000_000}]
    c = (await rate(api, service="rg10", units=500_000_000, already=800_000_000)).json
    assert c["cost"] == "0.70"   # 0.2 GB at 2.00 then 0.3 GB at 1.00

    # In another currency, with the exchange rate used.
    c = (await rate(api, to="442079460000", duration=185, at="2026-11-25T19:00Z",
                    currency="CHF")).json
    assert (c["cost"], c["currency"], c["tariff_cost"], c["tariff_currency"]) == (
        "3.80", "CHF", "4.00", "EUR")
    assert c["fx"] == {"from": "EUR", "to": "CHF", "rate": "0.95",
                       "effective_from": "2026-01-01T00:00:00.000000Z"}
    assert c["local_time"] == "2026-11-25T20:00:00+01:00"  # an explicit offset wins


async def test_rate_refusals_name_the_problem(api: Api):
    await put_retail(api)
    cases = [
        ({"to": "8612345678", "duration": 60}, 422, "no_route", "to"),
        ({"to": "12ab", "duration": 60}, 422, "bad_number", "to"),
        ({"service": "fax", "duration": 60}, 422, "unknown_service", "service"),
        ({"to": "442079460000", "duration": 60, "currency": "USD"}, 422, "no_fx", "currency"),
        ({"to": "442079460000", "duration": 60, "at": "2025-06-01T12:00",
          "currency": "CHF"}, 422, "no_fx", "currency"),
        ({"to": "442079460000", "duration": 99_000_000}, 422, "out_of_range", "units"),
    ]
    for body, status, reason, field in cases:
        r = await rate(api, **body)
        assert r.status == status, (body, r.text)
        assert r.error["details"][0]["type"] == reason, (body, r.text)
        assert r.error["details"][0]["field"] == field
    r = await rate(api, to="442079460000", duration=60, units=60)
    assert r.status == 422 and r.error["code"] == "validation_error"
    r = await rate(api, to="442079460000", duration=60, at="next tuesday")
    assert r.status == 422 and r.fields() == {"at"}
    r = await api.reader.post("/v1/rate", {"tariff": "nothing", "to": "44", "duration": 1})
    assert r.status == 404 and "no tariff named 'nothing'" in r.error["message"]
    assert (await api.anon.post("/v1/rate", {"tariff": "retail", "duration": 1})).status == 401


# ---------------------------------------------------------------------------- mediation


async def test_rate_cdrs_of_both_switches_with_line_numbered_rejects(api: Api):
    await put_retail(api)
    r = await api.reader.post("/v1/rate-cdrs", data=read("freeswitch.csv").encode(),
                              params={"format": "freeswitch", "tariff": "retail"}, headers=CSV)
    assert r.status == 200, r.text
    a = r.json
    assert (a["tariff"], a["revision"], a["currency"], a["time_zone"]) == (
        "retail", 1, "EUR", "Europe/Zurich")
    assert a["summary"] == {"lines": 10, "rated": 3, "rejected": 7, "total_cost": "5.53",
                            "reasons": {"zero_duration": 1, "unparseable": 1, "no_route": 1,
                                        "bad_number": 1, "bad_duration": 1, "bad_time": 1,
                                        "negative_duration": 1}}
    assert [(c["line"], c["cost"], c["billed"], c["destination"]) for c in a["rated"]] == [
        (1, "5.00", 240, "London"), (2, "0.43", 66, "UK mobile"), (8, "0.10", 60,
                                                                   "Switzerland")]
    assert a["rated"][0]["start"] == "2026-11-25T17:59:00Z"
    assert [(x["line"], x["reason"]) for x in a["rejects"]] == [
        (3, "zero_duration"), (4, "unparseable"), (5, "no_route"), (6, "bad_number"),
        (7, "bad_duration"), (10, "bad_time"), (11, "negative_duration")]

    r = await api.reader.post("/v1/rate-cdrs", data=read("Master.csv").encode(),
                              params={"format": "asterisk", "tariff": "retail",
                                      "currency": "CHF"}, headers=CSV)
    assert r.status == 200, r.text
    a = r.json
    assert (a["currency"], a["summary"]["rated"], a["summary"]["total_cost"]) == (
        "CHF", 3, "5.26")
    assert [(x["line"], x["reason"]) for x in a["rejects"]] == [
        (2, "zero_duration"), (4, "unparseable"), (6, "no_route"), (7, "zero_duration")]

    # The same file as CSV, one row per line, with the totals in headers.
    r = await api.reader.post("/v1/rate-cdrs", data=read("Master.csv").encode(),
                              params={"format": "asterisk", "tariff": "retail"},
                              headers={**CSV, "Accept": "text/csv"})
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert (r.headers["X-Rated"], r.headers["X-Rejected"], r.headers["X-Total-Cost"]) == (
        "3", "4", "5.53 EUR")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["line"], x["status"], x["cost"]) for x in rows] == [
        ("1", "ok", "5.00"), ("2", "zero_duration", ""), ("3", "ok", "0.43"),
        ("4", "unparseable", ""), ("5", "ok", "0.10"), ("6", "no_route", ""),
        ("7", "zero_duration", "")]


async def test_what_if_rerating_with_another_tariff(api: Api):
    await put_retail(api)
    cheap = retail_body()
    cheap["decks"][0]["csv"] = ("prefix,destination,price,increment\n"
                                "44,United Kingdom,0.10,1\n1,USA and Canada,0.01,1\n")
    r = await api.admin.request("PUT", "/v1/tariffs/cheap", json=cheap)
    assert r.status == 200, r.text
    totals = {}
    for name in ("retail", "cheap"):
        r = await api.reader.post("/v1/rate-cdrs", data=read("Master.csv").encode(),
                                  params={"format": "asterisk", "tariff": name}, headers=CSV)
        assert r.status == 200, r.text
        totals[name] = (r.json["summary"]["total_cost"], r.json["summary"]["rated"])
    # cheap, per second and rounded up to cents per call: 185 s (0.3083) and 61 s (0.1017)
    # to the UK at 0.10/min, 120 s to the USA at 0.01/min: 0.31 + 0.11 + 0.02.
    assert totals == {"retail": ("5.53", 3), "cheap": ("0.44", 3)}


async def test_rate_cdrs_refusals(api: Api):
    await put_retail(api)
    post = api.reader.post
    r = await post("/v1/rate-cdrs", data=b"id,start\n1,2026-11-25T10:00\n",
                   params={"tariff": "retail"}, headers=CSV)
    assert r.status == 422 and "no column to, duration" in r.error["message"]
    r = await post("/v1/rate-cdrs", data=b"x", params={"tariff": "retail", "format": "csv"},
                   headers=CSV)
    assert r.status == 422 and r.fields() == {"format"}
    r = await post("/v1/rate-cdrs", data=b"x", params={"format": "asterisk"}, headers=CSV)
    assert r.status == 422 and r.fields() == {"tariff"}
    r = await post("/v1/rate-cdrs", data=b"x", params={"tariff": "retail", "tz": "Nowhere/X"},
                   headers=CSV)
    assert r.status == 422 and r.fields() == {"tz"}
    r = await post("/v1/rate-cdrs", data=read("Master.csv").encode(),
                   params={"tariff": "retail", "format": "asterisk", "service": "rg10"},
                   headers=CSV)
    assert r.status == 422 and r.error["details"][0]["type"] == "unknown_service"
    r = await post("/v1/rate-cdrs", data=read("Master.csv").encode(),
                   params={"tariff": "nothing", "format": "asterisk"}, headers=CSV)
    assert r.status == 404
    r = await post("/v1/rate-cdrs", data=b"\xff\xfe\x00", params={"tariff": "retail"},
                   headers=CSV)
    assert r.status == 400 and "UTF-8" in r.error["message"]
    r = await post("/v1/rate-cdrs", json={"cdrs": []}, params={"tariff": "retail"})
    assert r.status == 400
    # An empty FreeSWITCH file rates nothing, which is not an error.
    r = await post("/v1/rate-cdrs", data=b"", params={"tariff": "retail",
                                                      "format": "freeswitch"}, headers=CSV)
    assert r.status == 200 and r.json["summary"]["lines"] == 0

"""Plans and NAS through the API (admin): money in the plan's currency, NAS
addresses validated, NAS secrets never returned."""

from __future__ import annotations

import pytest

from ocs.api import CATALOG_CHANGED
from tests.test_api_harness import Api, api  # noqa: F401

SECRET = "Shared-Secret-For-Bras-1"

PLAN = {
    "name": "mobile-5g", "currency": "CHF", "recurring_fee": "19.95", "period": "month",
    "allowances": [{"kind": "octets", "units": 5_000_000_000, "service": "data"},
                   {"kind": "money", "units": "2.50", "validity_days": 7, "priority": 5}],
    "tariff": "mobile-2026", "speed_profile": {"down_kbps": 50_000, "up_kbps": 10_000},
    "fair_usage": {"threshold_octets": 4_000_000_000,
                   "throttle_profile": {"down_kbps": 1000, "up_kbps": 256, "name": "slow"}},
    "description": "5 GB and 2.50 of calls",
}


async def test_plan_create_show_list_patch(api: Api):
    r = await api.admin.post("/v1/plans", PLAN)
    assert r.status == 201, r.text
    plan = r.json
    assert plan["recurring_fee"] == "19.95" and plan["period"] == "month"
    assert plan["allowances"] == [
        {"kind": "octets", "units": 5_000_000_000, "service": "data", "validity_days": 30,
         "priority": 10},
        {"kind": "money", "units": "2.50", "service": None, "validity_days": 7, "priority": 5}]
    assert plan["fair_usage"]["throttle_profile"] == {"down_kbps": 1000, "up_kbps": 256,
                                                      "name": "slow"}
    stored = await api.store.get_plan(plan["id"])
    assert stored.recurring_fee == 19_950_000 and stored.allowances[1].units == 2_500_000
    assert (await api.reader.get(f"/v1/plans/{plan['id']}")).json == plan
    r = await api.admin.patch(f"/v1/plans/{plan['id']}",
                              {"recurring_fee": 25, "speed_profile": None})
    assert r.status == 200
    assert r.json["recurring_fee"] == "25.00" and r.json["speed_profile"] is None
    assert r.json["allowances"] == plan["allowances"]
    listing = await api.reader.get("/v1/plans")
    assert [p["name"] for p in listing.json["items"]] == ["mobile-5g"]
    assert (await api.admin.post("/v1/plans", PLAN)).status == 409
    assert (await api.reader.get("/v1/plans/77")).status == 404


async def test_plan_final_unit_action_and_enforcement_policy(api: Api):
    r = await api.admin.post("/v1/plans", {
        **PLAN, "final_unit": {"action": "redirect", "redirect_url": "http://topup.example/"},
        "policy": {"on_exhausted": "throttle", "throttle_profile": {"down_kbps": 256,
                                                                      "up_kbps": 128}}})
    assert r.status == 201, r.text
    assert r.json["final_unit"] == {"action": "redirect", "redirect_url": "http://topup.example/",
                                    "filter_id": None}
    assert r.json["policy"]["on_exhausted"] == "throttle"
    assert r.json["policy"]["on_suspended"] == "disconnect"  # the default
    stored = await api.store.get_plan(r.json["id"])
    assert stored.final_unit.action == "redirect"
    assert stored.policy.throttle_profile.down_kbps == 256
    plain = await api.admin.post("/v1/plans", {**PLAN, "name": "plain"})
    assert plain.json["final_unit"]["action"] == "terminate"
    bad = await api.admin.post("/v1/plans", {**PLAN, "name": "bad",
                                             "policy": {"on_exhausted": "explode"}})
    assert bad.status == 422 and "policy.on_exhausted" in bad.text


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_bad_plans_name_the_nested_field(api: Api):
    cases = [
        ({**PLAN, "allowances": [{"kind": "octets", "units": 5, "colour": 1}]},
         {"allowances.0.colour"}),
        ({**PLAN, "allowances": [{"kind": "octets", "units": "1.5"}]}, {"allowances.0.units"}),
        ({**PLAN, "allowances": [{"kind": "bytes", "units": 1}]}, {"allowances.0.kind"}),
        ({**PLAN, "speed_profile": {"down_kbps": 0, "up_kbps": 1}}, {"speed_profile.down_kbps"}),
        ({**PLAN, "period": "year"}, {"period"}),
        ({**PLAN, "recurring_fee": -1}, {"recurring_fee"}),
    ]
    for body, fields in cases:
        r = await api.admin.post("/v1/plans", body)
        assert r.status == 422 and r.fields() == fields, (body, r.text)
    assert (await api.reader.get("/v1/plans")).json["count"] == 0


async def test_nas_secret_is_write_only(api: Api):
    r = await api.admin.post("/v1/nas", {
        "name": "bras1", "address": "192.0.2.1", "secret": SECRET, "vendor": "mikrotik",
        "require_message_authenticator": "auto",
        "control": {"esl_host": "127.0.0.1", "esl_password": "ClueCon-Secret"}})
    assert r.status == 201, r.text
    nas = r.json
    assert nas["has_secret"] is True and "secret" not in nas
    assert nas["control"] == {"esl_host": "127.0.0.1", "esl_password": "***"}
    assert (nas["coa_port"], nas["kind"]) == (3799, "nas")
    assert (await api.store.get_nas(nas["id"])).secret == SECRET
    texts = [(await api.reader.get("/v1/nas")).text,
             (await api.reader.get(f"/v1/nas/{nas['id']}")).text]
    r = await api.admin.patch(f"/v1/nas/{nas['id']}", {"secret": SECRET + "-new",
                                                       "coa_port": 1700})
    assert r.status == 200 and r.json["coa_port"] == 1700
    texts.append(r.text)
    texts.append((await api.admin.get("/v1/audit")).text)
    for text in texts:
        assert SECRET not in text and "ClueCon-Secret" not in text
    assert (await api.store.get_nas(nas["id"])).secret == SECRET + "-new"
    assert (await api.admin.delete(f"/v1/nas/{nas['id']}")).status == 204
    assert (await api.reader.get(f"/v1/nas/{nas['id']}")).status == 404


async def test_nas_addresses_are_validated(api: Api):
    r = await api.admin.post("/v1/nas", {"name": "pool", "address": "198.51.100.77/24",
                                         "secret": SECRET})
    assert r.status == 201 and r.json["address"] == "198.51.100.0/24"
    r = await api.admin.post("/v1/nas", {"name": "v6", "address": "2001:DB8::1",
                                         "secret": SECRET, "kind": "diameter"})
    assert r.status == 201 and r.json["address"] == "2001:db8::1"
    for bad in ("300.1.1.1", "bras1.example", "192.0.2.1/33", "", "1.2.3"):
        r = await api.admin.post("/v1/nas", {"name": "bad", "address": bad, "secret": SECRET})
        assert r.status == 422 and r.fields() == {"address"}, (bad, r.text)
        # The message quotes what was sent (not a template's placeholder).
        assert f"{bad!r} is not an IPv4/IPv6 address" in r.json["error"]["message"], r.text
    r = await api.admin.post("/v1/nas", {"name": "nosecret", "address": "192.0.2.9"})
    assert r.status == 422 and r.fields() == {"secret"}
    r = await api.admin.post("/v1/nas", {"name": "pool", "address": "192.0.2.50",
                                         "secret": SECRET})
    assert r.status == 409
    r = await api.admin.patch("/v1/nas/1", {"require_message_authenticator": "sometimes"})
    assert r.status == 422 and r.fields() == {"require_message_authenticator"}


async def test_nas_control_keys_are_validated(api: Api):
    """The control keys ocsd acts on are checked when they are set, not when an
    action or a peer first needs them."""
    r = await api.admin.post("/v1/nas", {
        "name": "ctl", "address": "192.0.2.60", "secret": SECRET,
        "control": {"coa_address": "2001:db8::60", "origin_host": "pgw1.example",
                    "proxy": True, "unique_framed_ip": False, "policy_node": "edge-1"}})
    assert r.status == 201, r.text
    nas_id = r.json["id"]
    for control, why in (({"coa_address": "bras1.example"}, "control.coa_address is the IP"),
                         ({"coa_address": 10.1}, "control.coa_address is the IP"),
                         ({"origin_host": 5}, "control.origin_host is the Diameter peer's"),
                         ({"origin_host": ""}, "control.origin_host is the Diameter peer's"),
                         ({"unique_framed_ip": "yes"}, "control.unique_framed_ip is true or"),
                         ({"proxy": 1}, "control.proxy is true or false"),
                         ({"policy_node": 7}, "control.policy_node is the [daemon] node_name")):
        r = await api.admin.patch(f"/v1/nas/{nas_id}", {"control": control})
        assert r.status == 422 and r.fields() == {"control"}, (control, r.text)
        assert why in r.text, (control, r.text)
    assert (await api.store.get_nas(nas_id)).control["coa_address"] == "2001:db8::60"


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_catalog_listeners_hear_of_nas_and_plan_changes(api: Api, caplog):
    heard = []

    async def listener(kind):
        heard.append((kind, len(await api.store.list_nas())))

    async def broken(kind):
        raise RuntimeError("reload failed")

    api.runner.app[CATALOG_CHANGED].extend([listener, broken])
    r = await api.admin.post("/v1/nas", {"name": "n1", "address": "192.0.2.7",
                                         "secret": SECRET})
    assert r.status == 201  # a failing listener does not undo the committed change
    await api.admin.patch(f"/v1/nas/{r.json['id']}", {"vendor": "cisco"})
    await api.admin.delete(f"/v1/nas/{r.json['id']}")
    await api.admin.post("/v1/plans", {"name": "p", "currency": "EUR"})
    await api.admin.post("/v1/nas", {"name": "n2", "address": "bad", "secret": SECRET})
    assert heard == [("nas", 1), ("nas", 1), ("nas", 0), ("plan", 0)]
    assert "catalog listener failed" in caplog.text

"""RFC 5176 against a real peer: FreeRADIUS (``listen { type = coa }``) plays the NAS.

It decodes our CoA-Request and Disconnect-Request with its own dictionaries,
checks the Request Authenticator and the Message-Authenticator it requires
(``require_message_authenticator = yes``), and answers ACK, or NAK with an
Error-Cause for the user "nak-me". The tests read what it logged."""

from __future__ import annotations

import pytest

from tests.policy_harness import FreeRadiusNas, exhausted, reload, running_service, seed, until

THROTTLE = {"on_exhausted": "throttle", "throttle_profile": {"down_kbps": 512, "up_kbps": 256},
            "on_restored": "restore"}


@pytest.fixture(scope="module")
def freeradius(tmp_path_factory):
    fr = FreeRadiusNas(tmp_path_factory.mktemp("freeradius")).start()
    yield fr
    fr.stop()


@pytest.fixture
async def svc(tmp_path):
    async with running_service(tmp_path) as service:
        yield service



async def test_throttle_coa_decoded_by_freeradius_for_each_vendor(freeradius, svc):
    store = svc.store
    before = len(freeradius.requests())
    seeded = {}
    for i, (vendor, user) in enumerate((("mikrotik", "alice"), ("huawei", "bob"),
                                        ("cisco", "carol"))):
        seeded[vendor] = await seed(
            store, nas_port=freeradius.port, vendor=vendor, policy=THROTTLE, username=user,
            nas_name=f"bras-{vendor}", nas_address=f"127.0.0.{i + 1}",
            control={"coa_address": "127.0.0.1"}, framed_ip=f"10.1.0.{i + 1}")
    await reload(svc.ctx)
    for info in seeded.values():
        await svc.ctx.cluster.events.publish(exhausted(info))
    logged = (await freeradius.wait(before + 3))[before:]
    assert len(logged) == 3
    by_user = {r.attrs.get("User-Name") or r.attrs.get("Acct-Session-Id"): r for r in logged}
    assert all(r.code == "CoA-Request" and r.reply == "CoA-ACK" for r in logged)
    mk = by_user["alice"]
    assert mk.attrs["Mikrotik-Rate-Limit"] == "256k/512k"
    assert mk.attrs["Acct-Session-Id"] == "alice-0"
    assert mk.attrs["Framed-IP-Address"] == "10.1.0.1"
    assert "Event-Timestamp" in mk.attrs and "Message-Authenticator" in mk.attrs
    hw = by_user["bob"]
    assert hw.attrs["Huawei-Input-Average-Rate"] == "256000"
    assert hw.attrs["Huawei-Output-Average-Rate"] == "512000"
    assert hw.attrs["NAS-IP-Address"] == "127.0.0.1"   # Huawei profile identifies the NAS
    cisco = by_user["carol"]
    assert "rate-limit output 512000" in cisco.attrs["Cisco-AVPair"]
    done = await until(lambda: _done(svc, 3))
    assert {d["result"] for d in done} == {"ack"}


async def _done(svc, n):
    done = await svc.listing(("done",))
    return done if len(done) >= n else None


async def test_nak_with_error_cause_then_disconnect_fallback(freeradius, svc):
    before = len(freeradius.requests())
    info = await seed(svc.store, nas_port=freeradius.port, policy=THROTTLE, username="nak-me")
    await reload(svc.ctx)
    await svc.ctx.cluster.events.publish(exhausted(info))
    logged = (await freeradius.wait(before + 2))[before:]
    assert [(r.code, r.reply) for r in logged] == [("CoA-Request", "CoA-NAK"),
                                                   ("Disconnect-Request", "Disconnect-ACK")]
    assert logged[1].attrs["Acct-Session-Id"] == "nak-me-0"
    assert "Mikrotik-Rate-Limit" not in logged[1].attrs
    registry = svc.ctx.metrics.registry
    assert registry.get_sample_value("ocs_policy_error_causes_total",
                                     {"nas": "bras-1", "cause": "Unsupported-Attribute"}) == 1
    audit = await until(lambda: _audits(svc, 2))
    nak = next(a for a in audit if a.action == "policy throttle via coa")
    assert nak.status == 409 and nak.request["answer"]["code"] == "CoA-NAK"
    assert nak.request["answer"]["error_causes"] == ["Unsupported-Attribute"]


async def _audits(svc, n):
    rows = await svc.store.list_audit(actor="policy")
    return rows if len([a for a in rows if a.action.startswith("policy ")
                        and "confirm" not in a.action]) >= n else None


async def test_operator_kill_and_unshaped_restore(freeradius, svc):
    before = len(freeradius.requests())
    info = await seed(svc.store, nas_port=freeradius.port, policy=THROTTLE, username="dave",
                      speed={}, sessions=2)
    await reload(svc.ctx)
    queued = await svc.apply_to_subscriber(info["subscriber"].id, "restore")
    assert len(queued) == 2
    await freeradius.wait(before + 2)
    queued = await svc.kill(info["sessions"][0])
    assert [(q["action"], q["backend"]) for q in queued] == [("disconnect", "coa")]
    logged = (await freeradius.wait(before + 3))[before:]
    codes = sorted((r.code, r.attrs.get("Mikrotik-Rate-Limit")) for r in logged)
    assert codes == [("CoA-Request", "0/0"), ("CoA-Request", "0/0"),
                     ("Disconnect-Request", None)]

"""Gy sessions enforced through the Diameter front-end: a real DiameterServer on a
socket with a client (the PGW side) that opened the session with a CCR-I;
exhaustion sends it an Abort-Session-Request, a top-up a Re-Auth-Request, and
what the client answers decides the action's outcome."""

from __future__ import annotations

import pytest

from diameter import tables as T
from diameter.client import INITIAL, DiameterClient, mscc
from diameter.codec import value
from diameter.component import DiameterComponent
from diameter.server import DiameterServer
from ocs.config import ChargingConfig, DiameterConfig
from ocs.model import now_us
from ocs.store import Store, make_driver
from policy.service import PolicyService
from tests.policy_harness import context, finished, policy_config, reload, until

CONFIG = DiameterConfig(listen="127.0.0.1:0", origin_host="ocs.test.example",
                        origin_realm="test.example", allowed_realms=["pgw.example"],
                        request_timeout=0.3, request_attempts=2)
PLAN = {"on_exhausted": "disconnect", "on_suspended": "redirect", "on_restored": "restore"}


@pytest.fixture
async def setup(tmp_path):
    store = Store(make_driver(f"sqlite:{tmp_path}/ocs.db", sqlite_synchronous="NORMAL"))
    await store.open(migrate_schema=True)
    ctx = await context(store, policy_config(max_attempts=2))
    from ocs.charging import ChargingCore
    from ocs.charging.tariffs import PlanTariffs
    ctx.charging = ChargingCore(store, PlanTariffs(), ChargingConfig())
    await ctx.charging.reload()
    server = DiameterServer(CONFIG, charging=ctx.charging, cluster=ctx.cluster,
                            metrics=ctx.metrics, session_ttl=600)
    await server.listen("diameter", "127.0.0.1", 0)
    component = DiameterComponent(ctx)
    component.server = server
    ctx.diameter = component          # what the daemon's Diameter component provides
    svc = PolicyService(ctx)
    await svc.start()
    client = DiameterClient("127.0.0.1", server.addresses["diameter"][1],
                            origin_host="pgw1.pgw.example", origin_realm="pgw.example",
                            destination_realm="test.example")
    assert value((await client.connect()).avps, T.RESULT_CODE) == 2001
    yield svc, client
    await client.close()
    await svc.stop()
    await server.close(1.0)
    await ctx.cluster.stop()
    await store.close()


async def gy_session(svc, client, msisdn: str, sid: str, **plan_extra) -> int:
    store = svc.store
    plan = await store.create_plan(name=f"gy-{msisdn}", currency="EUR",
                                   allowances=[{"kind": "octets", "units": 50_000_000}],
                                   policy={**PLAN, **plan_extra})
    acct = await store.create_account(name=f"a{msisdn}", currency="EUR", billing="prepaid",
                                      opening_balance=1_000_000)
    await store.create_subscriber(account_id=acct.id, msisdn=msisdn, plan_id=plan.id)
    await reload(svc.ctx)
    a = await client.request(client.ccr(sid, INITIAL, 0, msisdn=msisdn,
                                        msccs=[mscc(10, requested={})]))
    assert value(a.avps, T.RESULT_CODE) == 2001
    return acct.id


def event(etype, account_id, sid=None, **extra):
    at = now_us()
    return {"id": f"t|{etype}|{at}", "type": etype, "account_id": account_id, "session": sid,
            "service": "rg:10", "at": at, **extra}



async def test_exhaustion_sends_asr_to_the_sessions_client(setup):
    svc, client = setup
    account = await gy_session(svc, client, "41790000201", "pgw1;s-asr")
    await svc.ctx.cluster.events.publish(event("exhausted", account, "pgw1;s-asr"))
    done = await until(lambda: finished(svc))
    assert done[0]["backend"] == "diameter" and done[0]["result"] == "ok"
    (asr,) = [m for m in client.server_requests if m.code == T.CMD_ABORT_SESSION]
    assert value(asr.avps, T.SESSION_ID) == "pgw1;s-asr"
    assert value(asr.avps, T.DESTINATION_HOST) == "pgw1.pgw.example"
    audit = (await svc.store.list_audit(actor="policy"))[0]
    assert audit.action == "policy disconnect via diameter"
    assert audit.request["answer"]["result_code"] == 2001


async def test_suspension_redirects_by_rar_and_resumption_restores(setup):
    svc, client = setup
    account = await gy_session(svc, client, "41790000202", "pgw1;s-rar")
    await svc.store.set_account_status(account, "suspended", reason="unpaid")
    await svc.ctx.cluster.events.publish((await svc.store.events(limit=1))[0])
    await until(lambda: finished(svc))
    await svc.store.set_account_status(account, "active")
    await svc.ctx.cluster.events.publish((await svc.store.events(limit=1))[0])
    done = await until(lambda: finished(svc, n=2))
    assert sorted(d["action"] for d in done) == ["redirect", "restore"]
    rars = [m for m in client.server_requests if m.code == T.CMD_RE_AUTH]
    assert len(rars) == 2 and all(value(m.avps, T.SESSION_ID) == "pgw1;s-rar" for m in rars)


async def test_client_not_knowing_the_session_counts_as_gone(setup):
    svc, client = setup

    async def unknown(msg):
        return 5002
    client.on_request = unknown
    account = await gy_session(svc, client, "41790000203", "pgw1;s-gone")
    await svc.ctx.cluster.events.publish(event("exhausted", account, "pgw1;s-gone"))
    done = await until(lambda: finished(svc))
    assert done[0]["result"] == "gone"


async def test_unanswered_asr_is_retried_then_dead_lettered(setup):
    svc, client = setup

    async def silent(msg):
        return None
    client.on_request = silent
    account = await gy_session(svc, client, "41790000204", "pgw1;s-mute")
    await svc.ctx.cluster.events.publish(event("exhausted", account, "pgw1;s-mute"))
    dead = await until(lambda: finished(svc, "dead"), timeout=8)
    assert dead[0]["attempts"] == 2 and dead[0]["result"] == "timeout"
    asrs = [m for m in client.server_requests if m.code == T.CMD_ABORT_SESSION]
    assert len(asrs) == 4 and any(m.retransmit for m in asrs)   # T flag on resends


async def test_a_slow_client_is_waited_for_as_long_as_the_diameter_settings_allow(setup):
    """The worker bounds each attempt; a RAR/ASR may take the Diameter front-end's
    request_timeout x request_attempts, which can be longer than the CoA bounds:
    an ASR first left unanswered, then answered, ends done, not timed out."""
    import asyncio
    svc, client = setup
    server = svc.ctx.diameter.server
    server.config = CONFIG.model_copy(update={"request_timeout": 4.0})
    cfg = svc.ctx.config   # the CoA and control bounds alone would cut it at 5.2 s
    svc.ctx.config = cfg.model_copy(update={"policy": cfg.policy.model_copy(
        update={"coa_max_duration": 0.2, "control_timeout": 0.2, "lease": 30})})
    seen = []

    async def slow(msg):
        seen.append(msg)
        if len(seen) == 1:
            return None                  # the first copy is lost
        await asyncio.sleep(1.5)         # the resend is answered late
        return 2001
    client.on_request = slow
    account = await gy_session(svc, client, "41790000205", "pgw1;s-slow")
    await svc.ctx.cluster.events.publish(event("exhausted", account, "pgw1;s-slow"))
    done = await until(lambda: finished(svc, "done"), timeout=12)
    assert [(a["action"], a["result"]) for a in done] == [("disconnect", "ok")]
    # One attempt of the worker: the lost copy and its resend, not a third ASR sent
    # by a second attempt after the first was given up.
    assert [m.code for m in seen] == [T.CMD_ABORT_SESSION] * 2
    assert seen[1].retransmit

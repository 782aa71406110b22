"""The event consumer against the in-process stream: which sessions an event reaches,
bad entries counted and acknowledged (never wedging enforcement), and a
configuration that cannot work refused at start with its key."""

from __future__ import annotations

import pytest

from ocs.errors import ConfigError
from ocs.model import now_us
from ocs.store import Store, make_driver
from policy.consumer import GROUP
from policy.service import PolicyService
from tests.policy_harness import (DaeNas, close_session, context, policy_config, reload,
                                  running_service, seed, until)


@pytest.fixture
async def nas():
    n = await DaeNas().start()
    yield n
    n.stop()


@pytest.fixture
async def svc(tmp_path):
    async with running_service(tmp_path) as service:
        yield service


def sample(svc, name, **labels) -> float:
    return svc.ctx.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_poison_entries_are_counted_acknowledged_and_skipped(svc, nas):
    info = await seed(svc.store, nas_port=nas.port, policy={"on_exhausted": "disconnect"})
    await reload(svc.ctx)
    events = svc.ctx.cluster.events
    await events.publish({"not": "an event"})
    await events.publish({"type": "exhausted", "id": "x", "account_id": "seven",
                          "session": info["sessions"][0], "at": "soon"})
    at = now_us()
    await events.publish({"id": f"ok|{at}", "type": "exhausted", "session": info["sessions"][0],
                          "account_id": info["account"].id, "at": at})
    assert await nas.wait(1)
    await until(lambda: sample(svc, "ocs_policy_events_total", type="exhausted",
                               decision="act") == 1)
    assert sample(svc, "ocs_policy_events_total", type="invalid", decision="ignored") == 1
    assert sample(svc, "ocs_policy_events_total", type="exhausted", decision="failed") == 1
    assert await until(lambda: _no_pending(events))


async def _no_pending(events):
    return await events.pending(GROUP) == 0


async def test_fair_usage_throttles_every_session_of_the_subscriber(svc, nas):
    info = await seed(svc.store, nas_port=nas.port, sessions=3, fair={
        "threshold_octets": 8 * 2**30, "throttle_profile": {"down_kbps": 1024, "up_kbps": 512}})
    await close_session(svc.store, info["sessions"][2])
    await reload(svc.ctx)
    at = now_us()
    await svc.ctx.cluster.events.publish({
        "id": f"fup|{at}", "type": "fair_usage", "session": info["sessions"][0],
        "account_id": info["account"].id, "at": at, "counter": "fup:1:2026-11",
        "threshold": 8 * 2**30, "units": 8 * 2**30 + 1})
    got = await nas.wait(2)
    assert sorted(r.attrs["Acct-Session-Id"] for r in got) == ["alice-0", "alice-1"]
    assert all(r.attrs["Mikrotik-Rate-Limit"] == "512k/1024k" for r in got)


async def test_closing_an_account_disconnects_whatever_the_plan_says(svc, nas):
    info = await seed(svc.store, nas_port=nas.port, sessions=2,
                      policy={"on_suspended": "none", "on_exhausted": "none"})
    await reload(svc.ctx)
    await svc.store.set_account_status(info["account"].id, "suspended")
    await svc.ctx.cluster.events.publish((await svc.store.events(limit=1))[0])
    await until(lambda: sample(svc, "ocs_policy_events_total", type="account_suspended",
                               decision="none") == 2)
    assert nas.received == []
    await svc.store.set_account_status(info["account"].id, "closed")
    await svc.ctx.cluster.events.publish((await svc.store.events(limit=1))[0])
    got = await nas.wait(2)
    assert [r.code for r in got] == [40, 40]


async def test_an_event_for_a_closed_session_does_nothing(svc, nas):
    info = await seed(svc.store, nas_port=nas.port)
    await close_session(svc.store, info["sessions"][0])
    await reload(svc.ctx)
    at = now_us()
    await svc.ctx.cluster.events.publish({
        "id": f"late|{at}", "type": "exhausted", "session": info["sessions"][0],
        "account_id": info["account"].id, "at": at})
    await until(lambda: sample(svc, "ocs_policy_events_total", type="exhausted",
                               decision="no_session") == 1)
    assert nas.received == []


async def test_redis_queue_without_redis_is_refused_with_its_key(tmp_path):
    store = Store(make_driver(f"sqlite:{tmp_path}/ocs.db", sqlite_synchronous="NORMAL"))
    await store.open(migrate_schema=True)
    ctx = await context(store, policy_config(queue="redis"))
    try:
        with pytest.raises(ConfigError) as info:
            await PolicyService(ctx).start()
        assert info.value.key == "policy.queue" and "[redis] url" in str(info.value)
    finally:
        await ctx.cluster.stop()
        await store.close()


async def test_operator_coa_profiles_are_checked_at_start(tmp_path):
    from policy.vendors import load_profiles
    good = tmp_path / "coa.toml"
    good.write_text('[vendors.acme]\nidentify = ["Acct-Session-Id", "NAS-Port-Id"]\n'
                    'unshaped = { "Filter-Id" = "open" }\n'
                    'speed = { "Filter-Id" = "rate-{down_kbps}" }\n')
    profiles = load_profiles(str(good))
    assert profiles["acme"].identify == ("Acct-Session-Id", "NAS-Port-Id")
    assert "mikrotik" in profiles      # the shipped ones stay
    bad = tmp_path / "bad.toml"
    bad.write_text('[vendors.acme]\nidentify = ["Acct-Sesion-Id"]\n')
    with pytest.raises(ConfigError, match="'Acct-Sesion-Id' is not in the RADIUS dictionary"):
        load_profiles(str(bad))
    with pytest.raises(ConfigError, match="file not found"):
        load_profiles(str(tmp_path / "missing.toml"))
    store = Store(make_driver(f"sqlite:{tmp_path}/ocs.db", sqlite_synchronous="NORMAL"))
    await store.open(migrate_schema=True)
    ctx = await context(store, policy_config(coa_profiles=str(bad)))
    try:
        with pytest.raises(ConfigError):
            await PolicyService(ctx).start()
    finally:
        await ctx.cluster.stop()
        await store.close()

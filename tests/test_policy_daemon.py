"""End to end through the real `ocsd`: RADIUS accounting charges a prepaid
subscriber until the balance runs dry, and enforcement reaches the NAS --
FreeRADIUS listening for CoA (``listen { type = coa }``) -- within a second;
a top-up through the API restores the plan's speed; operators use `ocsctl`
to kill, throttle, restore and inspect the queue; a disabled node says so.

Everything here is a real process or socket: ocsd, radclient, FreeRADIUS,
ocsctl, the REST API."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time

import pytest

from ocs.model import Session, now_us
from tests.conftest import ROOT
from tests.policy_harness import FreeRadiusNas
from tests.radius_harness import SECRET, TOKEN, RadiusOcsd

FAST = """
[policy]
coa_timeout = 0.3
coa_max_timeout = 0.6
coa_retransmissions = 2
coa_max_duration = 2.0
backoff_initial = 0.2
backoff_max = 0.5
max_attempts = 2
poll_interval = 0.2
confirm_timeout = 3
"""
CUT = {"on_exhausted": "disconnect"}
SLOW = {"on_exhausted": "throttle", "throttle_profile": {"down_kbps": 256, "up_kbps": 128},
        "on_restored": "restore"}


async def seed(store, coa_port: int) -> dict:
    await store.create_nas(name="bras", address="127.0.0.1", secret=SECRET, vendor="mikrotik",
                           coa_port=coa_port)
    # A NAS that never answers CoA (closed port): its actions end dead-lettered.
    await store.create_nas(name="mute", address="192.0.2.77", secret=SECRET, vendor="generic",
                           coa_port=9, control={"coa_address": "127.0.0.1"})
    ids = {}
    for name, policy in (("cut", CUT), ("slow", SLOW)):
        await store.create_plan(name=name, currency="EUR", policy=policy,
                                allowances=[{"kind": "octets", "units": 1_000_000}],
                                speed_profile={"down_kbps": 20000, "up_kbps": 5000})
    for user, plan in (("cut1", "cut"), ("slow1", "slow"), ("slow2", "slow"),
                       ("kill1", "cut"), ("mute1", "cut")):
        acct = await store.create_account(name=user, currency="EUR", billing="prepaid")
        sub = await store.create_subscriber(account_id=acct.id, username=user,
                                            plan_id=(await store.find_plan(plan)).id)
        ids[user] = (acct.id, sub.id)
    now = now_us()
    acct_id, sub_id = ids["mute1"]
    await store.upsert_session(Session(
        id="radius:mute:m-1", account_id=acct_id, subscriber_id=sub_id, proto="radius",
        nas="mute", nas_session_id="m-1", framed_ip="10.0.9.1", status="active", last_seq=0,
        started_at=now, updated_at=now, ended_at=None, attrs={}))
    return ids


@pytest.fixture(scope="module")
def freeradius(tmp_path_factory):
    fr = FreeRadiusNas(tmp_path_factory.mktemp("fr-nas"), secret=SECRET).start()
    yield fr
    fr.stop()


@pytest.fixture(scope="module")
def ocsd(tmp_path_factory, freeradius):
    d = RadiusOcsd(tmp_path_factory.mktemp("ocsd"), extra_radius=FAST)
    d.ids = d.seed(lambda store: seed(store, freeradius.port))
    d.start()
    yield d
    d.stop()


def accounting(d: RadiusOcsd, user: str, sid: str, status: str, octets: int = 0) -> None:
    code, _ = d.radclient("acct", f'User-Name = "{user}", Acct-Status-Type = {status}, '
                                  f'Acct-Session-Id = "{sid}", Framed-IP-Address = 10.7.0.1, '
                                  f'Acct-Output-Octets = {octets}, Acct-Session-Time = 10')
    assert code == "Accounting-Response", (user, status)


def seen(fr: FreeRadiusNas, before: int, n: int, timeout: float):
    """(the new requests FreeRADIUS logged, seconds until the n-th was answered)."""
    started = time.monotonic()
    while True:
        got = fr.requests()[before:]
        if len(got) >= n and all(r.reply for r in got[:n]):
            return got, time.monotonic() - started
        if time.monotonic() - started > timeout:
            return got, None
        time.sleep(0.01)


def ocsctl(d: RadiusOcsd, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, "-m", "ocs.cli", "--api", d.url, "--token", TOKEN,
                           *args], capture_output=True, text=True, timeout=60, env=env)


def test_exhausted_interim_disconnects_within_a_second_and_the_stop_confirms(ocsd, freeradius):
    before = len(freeradius.requests())
    accounting(ocsd, "cut1", "c-1", "Start")
    accounting(ocsd, "cut1", "c-1", "Interim-Update", octets=3_000_000)
    got, delay = seen(freeradius, before, 1, timeout=3)
    assert delay is not None and delay < 1.0, (got, delay)
    dm = got[0]
    assert dm.code == "Disconnect-Request" and dm.reply == "Disconnect-ACK"
    assert dm.attrs["User-Name"] == "cut1" and dm.attrs["Acct-Session-Id"] == "c-1"
    assert dm.attrs["Framed-IP-Address"] == "10.7.0.1"
    # The NAS ends the session: its Stop confirms the disconnect.
    accounting(ocsd, "cut1", "c-1", "Stop", octets=3_000_000)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, page = ocsd.api("GET", "/v1/policy/actions?status=done")
        results = {a["session"]: a["result"] for a in page["items"]}
        if results.get("radius:bras:c-1") == "confirmed":
            break
        time.sleep(0.1)
    assert results.get("radius:bras:c-1") == "confirmed", page
    assert 'ocs_policy_confirmations_total{result="confirmed"} 1.0' in ocsd.metrics_text()
    # One node, in-process event stream: the outbox counts an event published once
    # policy handled it (a restart before that publishes it again). These were.
    deadline = time.monotonic() + 5
    while (left := ocsd.seed(lambda store: store.unpublished_events())) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []


def test_exhausted_interim_throttles_then_api_top_up_restores(ocsd, freeradius):
    before = len(freeradius.requests())
    accounting(ocsd, "slow1", "s-1", "Start")
    accounting(ocsd, "slow1", "s-1", "Interim-Update", octets=3_000_000)
    got, delay = seen(freeradius, before, 1, timeout=3)
    assert delay is not None and delay < 1.0, (got, delay)
    assert got[0].code == "CoA-Request" and got[0].reply == "CoA-ACK"
    assert got[0].attrs["Mikrotik-Rate-Limit"] == "128k/256k"
    # Another interim while throttled: still exhausted, but no second CoA.
    accounting(ocsd, "slow1", "s-1", "Interim-Update", octets=3_500_000)
    account_id = ocsd.ids["slow1"][0]
    status, _ = ocsd.api("POST", f"/v1/accounts/{account_id}/topup", {"amount": "5.00"})
    assert status == 200
    got, delay = seen(freeradius, before, 2, timeout=3)
    assert delay is not None and len(got) == 2, got
    assert got[1].code == "CoA-Request" and got[1].attrs["Mikrotik-Rate-Limit"] == "5000k/20000k"
    # The audit entry is written once the NAS's CoA-ACK is back, which can be a
    # moment after the NAS has seen the request.
    deadline = time.monotonic() + 5
    while True:
        audit = ocsd.api("GET", "/v1/audit?actor=policy")[1]["items"]
        actions = [a["action"] for a in audit if a["target"] == "session:radius:bras:s-1"]
        if len(actions) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert actions == ["policy restore via coa", "policy throttle via coa"]


def test_operator_commands_through_ocsctl(ocsd, freeradius):
    before = len(freeradius.requests())
    accounting(ocsd, "slow2", "s-2", "Start")
    accounting(ocsd, "kill1", "k-1", "Start")
    run = ocsctl(ocsd, "subscriber", "throttle", "slow2", "--speed", "1000/500")
    assert run.returncode == 0, run.stderr
    assert "queued throttle of session radius:bras:s-2 via coa" in run.stdout
    got, _ = seen(freeradius, before, 1, timeout=3)
    assert got[0].attrs["Mikrotik-Rate-Limit"] == "500k/1000k"
    run = ocsctl(ocsd, "subscriber", "restore", "slow2")
    assert run.returncode == 0 and "queued restore" in run.stdout
    run = ocsctl(ocsd, "session", "kill", "radius:bras:k-1")
    assert run.returncode == 0 and "queued disconnect of session radius:bras:k-1" in run.stdout
    got, _ = seen(freeradius, before, 3, timeout=3)
    assert sorted(r.code for r in got[:3]) == ["CoA-Request", "CoA-Request",
                                               "Disconnect-Request"]
    # A session that is not active: refused with the reason, exit 1.
    run = ocsctl(ocsd, "session", "kill", "radius:bras:c-1")
    assert run.returncode == 1 and "is closed" in run.stderr
    run = ocsctl(ocsd, "subscriber", "throttle", "nobody-at-all")
    assert run.returncode == 1 and "no subscriber" in run.stderr


def test_dead_letter_listed_and_retried_with_ocsctl(ocsd):
    run = ocsctl(ocsd, "session", "kill", "radius:mute:m-1")
    assert run.returncode == 0, run.stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        run = ocsctl(ocsd, "policy", "queue", "--dead")
        if "radius:mute:m-1" in run.stdout:
            break
        time.sleep(0.3)
    assert "radius:mute:m-1" in run.stdout and "timeout" in run.stdout, run.stdout
    line = next(x for x in run.stdout.splitlines() if "radius:mute:m-1" in x)
    action_id = line.split()[0]
    assert re.search(r"^ocs_policy_dead_letters 1\.0$", ocsd.metrics_text(), re.M) or \
        _eventually(lambda: re.search(r"^ocs_policy_dead_letters 1\.0$", ocsd.metrics_text(),
                                      re.M))
    run = ocsctl(ocsd, "policy", "retry", action_id)
    assert run.returncode == 0 and "queued again: disconnect of session radius:mute:m-1" \
        in run.stdout
    run = ocsctl(ocsd, "--json", "policy", "queue")
    assert '"radius:mute:m-1"' in run.stdout
    run = ocsctl(ocsd, "policy", "retry", "999999")
    assert run.returncode == 1 and "no dead-lettered action 999999" in run.stderr


def _eventually(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_policy_disabled_answers_503(tmp_path):
    d = RadiusOcsd(tmp_path, extra_radius="\n[policy]\nenabled = false\n")
    d.start()
    try:
        status, body = d.api("POST", "/v1/sessions/radius:x:1/kill")
        assert status == 503 and body["error"]["code"] == "policy_disabled"
        status, body = d.api("GET", "/v1/diameter/peers")  # and Diameter is off too
        assert status == 503 and body["error"]["code"] == "diameter_disabled"
        d.wait_log(r"enforcement disabled \(policy.enabled = false\)")
    finally:
        d.stop()


@contextlib.contextmanager
def two_daemons(tmp_path, pg_dsn: str, redis_url: str, extra=lambda name: ""):
    """Daemons "node-a" and "node-b" (not started) sharing a fresh PostgreSQL schema
    and Redis key prefix, with FAST policy settings and `extra(name)` in their
    configuration; stopped, and their schema and keys dropped, on leaving."""
    import asyncio
    import secrets

    import redis as redis_client

    from tests.conftest import _admin
    schema = "ocs_t_" + secrets.token_hex(6)
    prefix = f"ocs-2n-{secrets.token_hex(4)}:"
    asyncio.run(_admin(pg_dsn, f"CREATE SCHEMA {schema}"))
    nodes = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            n = RadiusOcsd(tmp_path / name, store_url=pg_dsn, extra_store=f'schema = "{schema}"',
                           extra_radius=f'\n[redis]\nurl = "{redis_url}"\n'
                                        f'key_prefix = "{prefix}"\n' + FAST + extra(name))
            # Each node its own name, as deployed.
            n.config.write_text(n.config.read_text().replace('node_name = "test-node"',
                                                             f'node_name = "node-{name}"'))
            n.schema = schema
            nodes.append(n)
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        asyncio.run(_admin(pg_dsn, f"DROP SCHEMA {schema} CASCADE"))
        r = redis_client.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{prefix}*"):
            r.delete(key)
        r.close()


def test_two_nodes_share_postgres_redis_and_the_action_queue(tmp_path, pg_dsn, redis_url,
                                                             freeradius):
    """Multi-node mode: two ocsd share PostgreSQL and Redis; the event and the action
    go through Redis Streams consumer groups, so exactly one node enforces."""
    with two_daemons(tmp_path, pg_dsn, redis_url) as nodes:
        nodes[0].ids = nodes[0].seed(lambda store: seed(store, freeradius.port),
                                     schema=nodes[0].schema)
        for n in nodes:
            n.start()
        before = len(freeradius.requests())
        accounting(nodes[0], "cut1", "n-1", "Start")
        accounting(nodes[1], "cut1", "n-1", "Interim-Update", octets=3_000_000)
        got, delay = seen(freeradius, before, 1, timeout=3)
        assert delay is not None and delay < 1.0, (got, delay)
        assert got[0].code == "Disconnect-Request" and got[0].attrs["Acct-Session-Id"] == "n-1"
        time.sleep(0.5)
        assert len(freeradius.requests()) == before + 1   # one node acted, once
        status, page = nodes[1].api("GET", "/v1/policy/actions?status=done")
        assert [a["session"] for a in page["items"]] == ["radius:bras:n-1"]
        run = ocsctl(nodes[0], "--json", "policy", "queue", "--status", "all")
        assert '"radius:bras:n-1"' in run.stdout


def test_gy_exhaustion_sends_asr_through_the_daemons_diameter_listener(tmp_path):
    """A PGW's Gy session on the real ocsd runs out of allowance: the Diameter
    front-end (ctx.diameter) carries the Abort-Session-Request to it within a second."""
    import asyncio

    from diameter import tables as T
    from diameter.client import INITIAL, UPDATE, DiameterClient, mscc
    from diameter.codec import value
    from tests.services import free_port

    port = free_port()
    d = RadiusOcsd(tmp_path, extra_radius=FAST + f"""
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.example"
origin_realm = "test.example"
allowed_realms = ["pgw.example"]
request_timeout = 0.5
""")

    async def seed_gy(store):
        plan = await store.create_plan(name="gy", currency="EUR", policy=CUT,
                                       allowances=[{"kind": "octets", "units": 1_000_000}])
        acct = await store.create_account(name="gy1", currency="EUR", billing="prepaid")
        await store.create_subscriber(account_id=acct.id, msisdn="41790000301",
                                      plan_id=plan.id)

    d.seed(seed_gy)
    d.start()

    async def pgw():
        c = DiameterClient("127.0.0.1", port, origin_host="pgw1.pgw.example",
                           origin_realm="pgw.example", destination_realm="test.example")
        assert value((await c.connect()).avps, T.RESULT_CODE) == 2001
        try:
            a = await c.request(c.ccr("pgw1;gy-1", INITIAL, 0, msisdn="41790000301",
                                      msccs=[mscc(10, requested={})]))
            assert value(a.avps, T.RESULT_CODE) == 2001
            await c.request(c.ccr("pgw1;gy-1", UPDATE, 1, msisdn="41790000301",
                                  msccs=[mscc(10, requested={}, used={"total": 3_000_000})]))
            answered = time.monotonic()
            while time.monotonic() - answered < 3:
                asrs = [m for m in c.server_requests if m.code == T.CMD_ABORT_SESSION]
                if asrs:
                    return asrs, time.monotonic() - answered
                await asyncio.sleep(0.01)
            return [], None
        finally:
            await c.close()
    try:
        asrs, delay = asyncio.run(pgw())
        assert delay is not None and delay < 1.0, delay
        assert value(asrs[0].avps, T.SESSION_ID) == "pgw1;gy-1"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _, page = d.api("GET", "/v1/policy/actions?status=done")
            if page["items"]:
                break
            time.sleep(0.1)
        assert [(a["backend"], a["action"], a["result"]) for a in page["items"]] == [
            ("diameter", "disconnect", "ok")]
    finally:
        d.stop()


def test_bad_requests_get_clear_answers(ocsd):
    status, body = ocsd.api("POST", "/v1/subscribers/999999/throttle", {})
    assert status == 404 and "subscriber 999999 not found" in body["error"]["message"]
    sub_id = ocsd.ids["kill1"][1]
    status, body = ocsd.api("POST", f"/v1/subscribers/{sub_id}/throttle", {"down_kbps": 100})
    assert status == 422 and "give both down_kbps and up_kbps" in body["error"]["message"]
    status, body = ocsd.api("POST", f"/v1/subscribers/{sub_id}/throttle",
                            {"down_kbps": 0, "up_kbps": 1})
    assert status == 422 and body["error"]["details"][0]["field"] == "down_kbps"
    status, body = ocsd.api("POST", "/v1/sessions/radius:bras:nope/kill")
    assert status == 404 and "radius:bras:nope" in body["error"]["message"]
    status, body = ocsd.api("GET", "/v1/policy/actions?status=bogus")
    assert status == 422 and body["error"]["details"][0]["field"] == "status"
    status, body = ocsd.api("POST", "/v1/policy/actions/424242/retry")
    assert status == 404 and "no dead-lettered action 424242" in body["error"]["message"]
    # A subscriber without an active session: nothing to enforce, and it says so.
    status, body = ocsd.api("POST", f"/v1/subscribers/{ocsd.ids['cut1'][1]}/restore")
    assert status == 409 and "no active session" in body["error"]["message"]


PATIENT = """
[policy]
coa_timeout = 0.2
coa_max_timeout = 0.2
coa_retransmissions = 0
coa_max_duration = 0.5
backoff_initial = 0.3
backoff_max = 0.5
max_attempts = 100
poll_interval = 0.2
lease = 1
confirm_timeout = 3
"""


def test_a_disconnect_queued_before_a_crash_reaches_the_nas_after_the_restart(tmp_path):
    """The balance runs dry and ocsd decides to disconnect, but the NAS does not
    answer CoA yet (nothing listens on its port), so the action waits for its
    next attempt. ocsd is killed with SIGKILL meanwhile. Started again, it takes
    the action up from the durable queue, and the Disconnect-Request reaches the
    NAS (FreeRADIUS, now listening), which acknowledges it."""
    (tmp_path / "fr").mkdir()
    (tmp_path / "ocsd").mkdir()
    fr = FreeRadiusNas(tmp_path / "fr", secret=SECRET)  # not started yet
    d = RadiusOcsd(tmp_path / "ocsd", extra_radius=PATIENT)
    d.ids = d.seed(lambda store: seed(store, fr.port))
    d.start()
    try:
        accounting(d, "cut1", "x-1", "Start")
        accounting(d, "cut1", "x-1", "Interim-Update", octets=3_000_000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            _, page = d.api("GET", "/v1/policy/actions?status=queue")
            waiting = [a for a in page["items"] if a["session"] == "radius:bras:x-1"]
            if waiting and waiting[0]["result"] is not None:  # an attempt failed
                break
            time.sleep(0.1)
        assert waiting and waiting[0]["action"] == "disconnect", page
        assert waiting[0]["status"] in ("pending", "running") and \
            waiting[0]["result"] in ("timeout", "error"), waiting
        d.proc.kill()
        d.proc.wait(10)
        fr.start()
        d._log.close()
        d.start()
        got, delay = seen(fr, 0, 1, timeout=15)
        assert delay is not None, got
        assert got[0].code == "Disconnect-Request" and got[0].reply == "Disconnect-ACK"
        assert got[0].attrs["Acct-Session-Id"] == "x-1"
    finally:
        d.stop()
        fr.stop()


def test_a_pgw_connected_to_one_of_two_nodes_gets_every_asr_at_once(tmp_path, pg_dsn,
                                                                     redis_url):
    """Two ocsd share PostgreSQL, Redis and the action queue; a PGW with one primary
    peer is connected to node B only. Sessions run dry: whichever node's worker
    takes the disconnect, the PGW gets its ASR within a second (node A asks node B
    to send it), and every action ends done."""
    import asyncio
    import socket

    from diameter import tables as T
    from diameter.client import INITIAL, UPDATE, DiameterClient, mscc
    from diameter.codec import value
    from tests.services import free_port

    ports = {"a": free_port(), "b": free_port()}

    def diameter(name):
        return f"""
[diameter]
listen = "127.0.0.1:{ports[name]}"
origin_host = "ocs.test.example"
origin_realm = "test.example"
allowed_realms = ["pgw.example"]
request_timeout = 0.5
"""
    sessions = [f"pgw1;primary-{i}" for i in range(6)]

    async def seed_gy(store):
        plan = await store.create_plan(name="gy", currency="EUR", policy=CUT,
                                       allowances=[{"kind": "octets", "units": 1_000_000}])
        for i in range(len(sessions)):
            acct = await store.create_account(name=f"gy{i}", currency="EUR",
                                              billing="prepaid")
            await store.create_subscriber(account_id=acct.id, msisdn=f"4179000040{i}",
                                          plan_id=plan.id)

    async def pgw():
        c = DiameterClient("127.0.0.1", ports["b"], origin_host="pgw1.pgw.example",
                           origin_realm="pgw.example", destination_realm="test.example")
        assert value((await c.connect()).avps, T.RESULT_CODE) == 2001
        delays = {}
        try:
            for i, sid in enumerate(sessions):
                who = {"msisdn": f"4179000040{i}"}
                a = await c.request(c.ccr(sid, INITIAL, 0, **who, msccs=[mscc(10, requested={})]))
                assert value(a.avps, T.RESULT_CODE) == 2001
                await c.request(c.ccr(sid, UPDATE, 1, **who,
                                      msccs=[mscc(10, requested={}, used={"total": 3_000_000})]))
                answered = time.monotonic()
                while time.monotonic() - answered < 5 and sid not in delays:
                    if any(m.code == T.CMD_ABORT_SESSION and value(m.avps, T.SESSION_ID) == sid
                           for m in c.server_requests):
                        delays[sid] = time.monotonic() - answered
                    await asyncio.sleep(0.01)
            # Where is the PGW connected? Node A answers for both nodes.
            _, listed = await asyncio.to_thread(nodes[0].api, "GET",
                                                "/v1/diameter/peers?nodes=all")
            peers.extend(listed["items"])
            _, mine = await asyncio.to_thread(nodes[0].api, "GET", "/v1/diameter/peers")
            peers.append(mine)
            run = await asyncio.to_thread(ocsctl, nodes[0], "diameter", "peers", "--all-nodes")
            peers.append(run.stdout)
            return delays
        finally:
            await c.close()

    with two_daemons(tmp_path, pg_dsn, redis_url, diameter) as nodes:
        nodes[0].seed(seed_gy, schema=nodes[0].schema)
        for n in nodes:
            n.start()
        peers = []
        delays = asyncio.run(pgw())
        assert sorted(delays) == sorted(sessions), delays
        assert max(delays.values()) < 1.0, delays
        everywhere, here, printed = peers[:-2], peers[-2], peers[-1]
        assert [(p["node"], p["origin_host"], p["state"]) for p in everywhere] == [
            ("node-b", "pgw1.pgw.example", "open")]
        assert here == {"items": [], "count": 0, "unreachable": []}
        (line,) = [x for x in printed.splitlines() if "pgw1.pgw.example" in x]
        assert line.split()[0] == "node-b" and "open" in line
        _, listed = nodes[1].api("GET", "/v1/cluster/nodes")
        assert [(n["node"], n["this"]) for n in listed["items"]] == [
            ("node-a", False), ("node-b", True)]
        run = ocsctl(nodes[0], "nodes")
        assert run.returncode == 0, run.stderr
        assert [x.split()[:2] for x in run.stdout.splitlines()[2:]] == [
            ["*", "node-a"], ["node-b", socket.gethostname()]]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _, page = nodes[0].api("GET", "/v1/policy/actions?status=done")
            if len(page["items"]) == len(sessions):
                break
            time.sleep(0.1)
        assert sorted((a["backend"], a["action"], a["result"]) for a in page["items"]) == [
            ("diameter", "disconnect", "ok")] * len(sessions)
        # Node A's worker took some of them and had node B send the ASR.
        assert re.search(r"ASR \S+ to pgw1\.pgw\.example: asking node node-b", nodes[0].log())


def test_a_nas_that_names_its_policy_node_is_acted_on_by_that_node_only(tmp_path, pg_dsn,
                                                                         redis_url, freeradius):
    """The NAS accepts CoA from node B's address only (control.policy_node = "node-b").
    Node A, alone, decides the disconnect but does not send it: its attempts fail at
    once ("node node-b is not running") and the action is dead-lettered. Node B
    started, the action retried through node A's API reaches the NAS."""
    async def home_on_b(store):
        (bras,) = [n for n in await store.list_nas() if n.name == "bras"]
        await store.update_nas(bras.id, control={**bras.control, "policy_node": "node-b"})

    with two_daemons(tmp_path, pg_dsn, redis_url) as nodes:
        nodes[0].ids = nodes[0].seed(lambda store: seed(store, freeradius.port),
                                     schema=nodes[0].schema)
        nodes[0].seed(home_on_b, schema=nodes[0].schema)
        nodes[0].start()
        _, page = nodes[0].api("GET", "/v1/nas")
        (bras,) = [n for n in page["items"] if n["name"] == "bras"]
        assert bras["control"]["policy_node"] == "node-b"
        status, body = nodes[0].api("PATCH", f"/v1/nas/{bras['id']}",
                                    {"control": {**bras["control"], "policy_node": 7}})
        assert status == 422 and "control.policy_node is the [daemon] node_name" in str(body)
        before = len(freeradius.requests())
        accounting(nodes[0], "cut1", "home-1", "Start")
        accounting(nodes[0], "cut1", "home-1", "Interim-Update", octets=3_000_000)
        deadline, dead = time.monotonic() + 10, []
        while time.monotonic() < deadline and not dead:
            _, page = nodes[0].api("GET", "/v1/policy/actions?status=dead")
            dead = [a for a in page["items"] if a["session"] == "radius:bras:home-1"]
            time.sleep(0.1)
        assert dead and dead[0]["action"] == "disconnect", page
        assert "node node-b, which carries out the actions of NAS bras (control.policy_node)" \
            in dead[0]["last_error"] and "is not running" in dead[0]["last_error"]
        assert len(freeradius.requests()) == before  # node A sent nothing itself

        nodes[1].start()
        status, _ = nodes[0].api("POST", f"/v1/policy/actions/{dead[0]['id']}/retry")
        assert status == 200
        got, delay = seen(freeradius, before, 1, timeout=5)
        assert delay is not None, got
        assert got[0].code == "Disconnect-Request" and got[0].attrs["Acct-Session-Id"] == "home-1"

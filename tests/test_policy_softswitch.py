"""Calls ended through the softswitch's own control interface when the account runs
dry: FreeSWITCH event socket, Asterisk manager, Kamailio JSON-RPC -- each a
test server speaking the real wire protocol (tests/softswitch_servers.py)."""

from __future__ import annotations

import pytest

from tests.policy_harness import exhausted, finished, reload, running_service, seed, until
from tests.softswitch_servers import AmiServer, EslServer, KamailioRpc

CUT = {"on_exhausted": "disconnect", "on_suspended": "disconnect"}


@pytest.fixture
async def svc(tmp_path):
    async with running_service(tmp_path, max_attempts=2, control_timeout=2) as service:
        yield service


async def voice(svc, *, vendor: str, control: dict, user: str, policy=CUT, attrs=None):
    info = await seed(svc.store, nas_port=3799, vendor=vendor, nas_kind="softswitch",
                      nas_name=f"{vendor}-1", control=control, policy=policy, username=user,
                      speed={})
    if attrs:
        from dataclasses import replace
        s = await svc.store.get_session(info["sessions"][0])
        await svc.store.upsert_session(replace(s, attrs={**s.attrs, **attrs}))
    await reload(svc.ctx)
    return info




async def test_freeswitch_uuid_kill_over_the_event_socket(svc):
    esl = await EslServer(password="fs-secret").start()
    try:
        info = await voice(svc, vendor="freeswitch", user="fs1", control={"freeswitch": {
            "host": "127.0.0.1", "port": esl.port, "password": "fs-secret",
            "cause": "CALL_REJECTED"}})
        esl.calls.add("fs1-0")   # the session's Acct-Session-Id is the channel UUID
        await svc.ctx.cluster.events.publish(exhausted(info, "voice"))
        done = await until(lambda: finished(svc))
        assert done[0]["backend"] == "freeswitch" and done[0]["result"] == "ok"
        assert "fs1-0" not in esl.calls
        assert esl.received[:2] == ["auth ***", "api uuid_kill fs1-0 CALL_REJECTED"]
        audit = (await svc.store.list_audit(actor="policy"))[0]
        assert audit.action == "policy disconnect via freeswitch"
        assert audit.request["request"] == {"to": f"127.0.0.1:{esl.port}",
                                            "command": "api uuid_kill fs1-0 CALL_REJECTED"}
        assert "fs-secret" not in str(audit.request)
        # The call already ended on the switch: nothing left to do.
        await svc.kill(info["sessions"][0])
        done = await until(lambda: finished(svc, n=2))
        assert done[0]["result"] == "gone"
    finally:
        await esl.stop()


async def test_freeswitch_wrong_password_is_dead_lettered_not_retried(svc):
    esl = await EslServer(password="right").start()
    try:
        info = await voice(svc, vendor="freeswitch", user="fs2", control={"freeswitch": {
            "host": "127.0.0.1", "port": esl.port, "password": "wrong"}})
        esl.calls.add("fs2-0")
        await svc.ctx.cluster.events.publish(exhausted(info, "voice"))
        dead = await until(lambda: finished(svc, "dead"))
        assert "refused the login" in dead[0]["last_error"] and dead[0]["attempts"] == 1
        assert esl.received == ["auth <wrong>"] and "fs2-0" in esl.calls
    finally:
        await esl.stop()


async def test_asterisk_manager_login_and_hangup_matched_by_action_id(svc):
    ami = await AmiServer().start()
    try:
        info = await voice(svc, vendor="asterisk", user="ast1", control={"asterisk": {
            "host": "127.0.0.1", "port": ami.port, "username": "ocs", "secret": "ami-secret",
            "cause": 16}}, attrs={"Asterisk-Chan": "SIP/1001-00000042"})
        ami.channels.add("SIP/1001-00000042")
        await svc.ctx.cluster.events.publish(exhausted(info, "voice"))
        done = await until(lambda: finished(svc))
        assert done[0]["backend"] == "asterisk" and done[0]["result"] == "ok"
        assert not ami.channels
        actions = [(m["Action"], m.get("Channel")) for m in ami.received]
        assert actions == [("Login", None), ("Hangup", "SIP/1001-00000042"), ("Logoff", None)]
        assert ami.received[0]["Secret"] == "***"
        ids = [m["ActionID"] for m in ami.received]
        assert len(set(ids)) == 3 and all(ids)
        assert ami.received[1]["Cause"] == "16"
    finally:
        await ami.stop()


async def test_kamailio_json_rpc_finds_the_dialog_then_ends_it(svc):
    kam = await KamailioRpc().start()
    try:
        info = await voice(svc, vendor="kamailio", user="kam1", control={"kamailio": {
            "url": f"http://127.0.0.1:{kam.port}/RPC"}})
        kam.dialogs["kam1-0"] = (3421, 56)   # Acct-Session-Id is the SIP Call-ID
        await svc.ctx.cluster.events.publish(exhausted(info, "voice"))
        done = await until(lambda: finished(svc))
        assert done[0]["backend"] == "kamailio" and done[0]["result"] == "ok"
        assert [(r["method"], r["params"]) for r in kam.received] == [
            ("dlg.dlg_list", ["kam1-0"]), ("dlg.end_dlg", [3421, 56])]
        assert all(r["jsonrpc"] == "2.0" and r["id"] for r in kam.received)
        assert not kam.dialogs
    finally:
        await kam.stop()


async def test_throttle_on_a_softswitch_falls_back_to_hang_up(svc):
    esl = await EslServer().start()
    try:
        info = await voice(svc, vendor="freeswitch", user="fs3", policy={
            "on_exhausted": "throttle", "throttle_profile": {"down_kbps": 64, "up_kbps": 64}},
            control={"freeswitch": {"host": "127.0.0.1", "port": esl.port,
                                    "password": "ClueCon"}})
        esl.calls.add("fs3-0")
        await svc.ctx.cluster.events.publish(exhausted(info, "voice"))
        done = await until(lambda: finished(svc))
        assert done[0]["action"] == "disconnect" and "fs3-0" not in esl.calls
    finally:
        await esl.stop()


async def test_unreachable_softswitch_is_retried_then_dead_lettered(svc):
    info = await voice(svc, vendor="asterisk", user="ast2", control={"asterisk": {
        "host": "127.0.0.1", "port": 9, "username": "ocs", "secret": "x"}})
    await svc.ctx.cluster.events.publish(exhausted(info, "voice"))
    dead = await until(lambda: finished(svc, "dead"), timeout=8)
    assert dead[0]["attempts"] == 2 and "ConnectionRefusedError" in dead[0]["last_error"]

"""`ocsctl` against the real REST API: what an operator sees on the terminal.

The API runs in the test's event loop on a real socket (`setup_api` on an
aiohttp runner) over a SQLite store seeded with the demo data; ocsctl runs as
a real subprocess. The last test runs the real `ocsd` daemon the way the
quickstart does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest
from aiohttp import web

from ocs import demo
from ocs.api import setup_api
from ocs.config import from_dict
from ocs.metrics import Metrics
from ocs.model import Session, now_us
from ocs.store import Store, make_driver
from tests.conftest import ROOT
from tests.services import free_port
from tests.test_cli_local import Run, ocsctl as ocsctl_sync, write_config


async def ocsctl(*args: str, cwd=None, env: dict[str, str] | None = None) -> Run:
    """Run ocsctl without blocking the loop that serves the API."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    base["PYTHONPATH"] = ROOT
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocs.cli", *args, cwd=cwd, env={**base, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return Run(proc.returncode, out.decode(), err.decode())


def value(out: str, key: str) -> str:
    """The value shown for `key` in a key/value block of ocsctl's output."""
    m = re.search(rf"^  {re.escape(key)}  +(.*)$", out, re.M)
    assert m, f"no {key!r} in:\n{out}"
    return m.group(1)


@dataclass
class Served:
    store: Store
    base: str
    token: str
    cwd: str

    async def run(self, *args: str, token: str | None = None, **kw) -> Run:
        return await ocsctl("--api", self.base, "--token", token or self.token, *args,
                            cwd=self.cwd, **kw)


@pytest.fixture
async def served(tmp_path):
    store = Store(make_driver(f"sqlite:{tmp_path}/ocs.db"))
    await store.open(migrate_schema=True)
    info = await demo.seed(store)
    app = web.Application()
    setup_api(app, store=store, config=from_dict({}), metrics=Metrics())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Served(store, f"http://127.0.0.1:{port}", info.token, str(tmp_path))
    await runner.cleanup()
    await store.close()


# ----------------------------------------------------------------------------- subscribers

async def test_find_demo_shows_the_subscriber_balance_and_plan(served):
    r = await served.run("subscriber", "find", "demo")
    assert r.code == 0, r.err
    assert r.out.startswith("Subscriber demo (#")
    assert "Account demo (#" in r.out and "prepaid, active" in r.out
    assert value(r.out, "balance") == "10.00 EUR"
    assert value(r.out, "plan") == "demo-data"
    assert "10 GiB" in r.out  # the plan's allowance bucket

    data = (await served.run("subscriber", "find", "demo", "--json")).json()
    assert data["username"] == "demo" and data["plan"]["name"] == "demo-data"
    assert data["account"]["balance"]["balance"] == "10.00"
    assert "password_hash" not in data and data["has_password"] is True


async def test_find_by_every_identity_and_by_a_bare_value(served):
    sub = await served.store.find_subscriber(msisdn="41780000001")
    await served.store.upsert_session(Session(
        id="radius:nas1:abc", account_id=sub.account_id, subscriber_id=sub.id, proto="radius",
        nas="localhost-nas", nas_session_id="abc", framed_ip="100.64.0.9", status="active",
        last_seq=0, started_at=now_us(), updated_at=now_us(), ended_at=None, attrs={}))
    for args in (["--msisdn", "41780000001"], ["--imsi", "228010000000001"],
                 ["--framed-ip", "100.64.0.9"], ["--session", "abc"],
                 ["41780000001"], ["100.64.0.9"]):
        r = await served.run("--json", "subscriber", "find", *args)
        assert r.code == 0, (args, r.err)
        assert r.json()["id"] == sub.id, args
    voip = (await served.run("--json", "subscriber", "find", "1001")).json()
    assert voip["sip_user"] == "1001" and voip["plan"]["name"] == "demo-voice"
    empty = await served.run("subscriber", "find", "--imsi", "228010000000002")
    assert value(empty.out, "balance") == "0.00 EUR" and value(empty.out, "plan") == "-"

    missing = await served.run("subscriber", "find", "nobody")
    assert missing.code == 1 and "no subscriber" in missing.err and "'nobody'" in missing.err
    missing = await served.run("subscriber", "find", "--msisdn", "999999")
    assert missing.code == 1 and "no subscriber with msisdn=999999" in missing.err


async def test_add_list_and_show_subscribers(served):
    r = await served.run("subscriber", "add", "--account", "demo", "--username", "alice",
                         "--password", "pw", "--plan", "demo-data", "--msisdn", "41791112233")
    assert r.code == 0, r.err
    assert r.out.startswith("Created subscriber alice (#")
    listing = await served.run("subscriber", "list", "--account", "demo")
    assert listing.code == 0, listing.err
    lines = listing.out.splitlines()
    assert lines[0].split() == ["id", "account", "username", "msisdn", "imsi", "sip", "user",
                                "framed", "ip", "plan"]
    assert [ln.split()[2] for ln in lines[2:]] == ["demo", "alice"]
    alice = await served.store.find_subscriber(username="alice")
    shown = await served.run("subscriber", "show", str(alice.id), "--json")
    assert shown.json()["msisdn"] == "41791112233"
    assert shown.json()["account"]["name"] == "demo"
    # ... and by what the operator knows: the username, the MSISDN (digits, no such id)
    for ref in ("alice", "41791112233"):
        by = await served.run("subscriber", "show", ref, "--json")
        assert by.code == 0 and by.json()["id"] == alice.id, (ref, by.err)
    gone = await served.run("subscriber", "show", "nobody-at-all")
    assert gone.code == 1 and "no subscriber with username" in gone.err

    dup = await served.run("subscriber", "add", "--account", "demo", "--username", "alice")
    assert dup.code == 1 and "already exists" in dup.err and "HTTP 409" in dup.err
    bad = await served.run("subscriber", "add", "--account", "demo", "--msisdn", "12ab")
    assert bad.code == 1 and "msisdn" in bad.err and "HTTP 422" in bad.err
    none = await served.run("subscriber", "add", "--account", "demo")
    assert none.code == 2 and "at least one of --username" in none.err


async def test_import_all_or_nothing_with_line_numbered_errors(served, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("account,currency,plan,username,msisdn,password,opening_balance\n"
                    "acme,EUR,demo-data,a1,41790000011,pw,20.00\n"
                    "acme,EUR,demo-data,a2,41790000012,pw,20.00\n"
                    "demo,,,a3,,pw,\n")
    r = await served.run("subscriber", "import", str(good))
    assert r.code == 0, r.err
    assert r.out.strip() == "Imported 3 subscribers (1 new account)."
    acme = await served.run("--json", "account", "show", "acme")
    assert acme.json()["balance"]["balance"] == "20.00"

    bad = tmp_path / "bad.csv"
    bad.write_text("account,currency,username,msisdn\n"
                   "beta,EUR,b1,41790000021\n"
                   "beta,EUR,b2,not-a-number\n"
                   "beta,EUR,a1,\n")
    before = len(await served.store.list_subscribers(limit=1000))
    r = await served.run("subscriber", "import", str(bad))
    assert r.code == 1
    assert "nothing imported" in r.err and "HTTP 422" in r.err
    assert "  line 3, column msisdn: msisdn must be 6-15 digits" in r.err
    assert "  line 4, column username: username a1 already belongs to a subscriber" in r.err
    assert len(await served.store.list_subscribers(limit=1000)) == before
    detail = await served.run("--json", "subscriber", "import", str(bad))
    assert detail.code == 1 and detail.out == ""


# ----------------------------------------------------------------------------- accounts

async def test_topup_adjust_and_what_the_operator_then_sees(served):
    r = await served.run("account", "topup", "demo", "5.00", "--ref", "pay-1",
                         "--reason", "shop")
    assert r.code == 0, r.err
    assert "Topped up demo by 5.00 EUR: balance 15.00 EUR" in r.out
    again = await served.run("account", "topup", "demo", "5.00", "--ref", "pay-1")
    assert again.code == 0 and "nothing changed" in again.out and "15.00" in again.out
    assert value((await served.run("subscriber", "find", "demo")).out, "balance") == "15.00 EUR"

    r = await served.run("account", "adjust", "demo", "-1.50", "--reason", "goodwill")
    assert r.code == 0, r.err
    assert "balance 13.50 EUR" in r.out
    shown = await served.run("account", "show", "demo")
    assert shown.out.startswith("Account demo (#")
    assert value(shown.out, "balance") == "13.50 EUR" and value(shown.out, "available") == "13.50"

    ledger = await served.run("ledger", "--account", "demo")
    rows = ledger.out.splitlines()[2:]
    assert [r.split()[4] for r in rows[:3]] == ["adjust", "credit", "credit"]
    assert "goodwill" in rows[0] and "-1.50" in rows[0] and "demo-admin" in rows[0]
    entries = (await served.run("--json", "ledger", "--account", "demo", "--limit", "2")).json()
    assert entries["count"] == 2 and entries["items"][0]["amount"] == "-1.50"

    audit = await served.run("audit", "--actor", "demo-admin")
    assert audit.code == 0, audit.err
    assert "POST /v1/accounts/" in audit.out and "/topup" in audit.out

    no_reason = await served.run("account", "adjust", "demo", "-1")
    assert no_reason.code == 2 and "--reason" in no_reason.err
    bad = await served.run("account", "topup", "demo", "ten")
    assert bad.code == 1 and "amount: 'ten' is not an amount" in bad.err, bad.err
    assert bad.err.count("is not an amount") == 1  # the summary is not repeated


async def test_suspend_resume_and_accounts_by_name_or_id(served):
    r = await served.run("account", "suspend", "demo-post", "--reason", "unpaid")
    assert r.code == 0 and r.out.strip() == "Account demo-post is suspended."
    assert (await served.run("--json", "account", "show", "demo-post")).json()["status"] == \
        "suspended"
    assert "postpaid, suspended" in (await served.run("subscriber", "find", "demo-post")).out
    r = await served.run("account", "resume", "demo-post")
    assert r.code == 0 and r.out.strip() == "Account demo-post is active."

    made = await served.run("--json", "account", "add", "acme", "--currency", "eur",
                            "--billing", "postpaid", "--credit-limit", "50")
    assert made.code == 0, made.err
    acme_id = made.json()["id"]
    by_name = (await served.run("--json", "account", "show", "acme")).json()
    by_id = (await served.run("--json", "account", "show", str(acme_id))).json()
    assert by_name["id"] == by_id["id"] == acme_id and by_name["credit_limit"] == "50.00"
    listing = await served.run("account", "list")
    assert "acme" in listing.out and "50.00" in listing.out
    missing = await served.run("account", "show", "nosuch")
    assert missing.code == 1 and "no account named 'nosuch'" in missing.err


# ----------------------------------------------------------------------------- catalogue, sessions

async def test_plans_and_nas(served):
    r = await served.run("plan", "add", "fiber-100", "--currency", "EUR",
                         "--recurring-fee", "29.90", "--allowance", "octets:100GiB:30",
                         "--allowance", "seconds:100min", "--speed", "100000/20000",
                         "--fair-usage", "80GiB:2048/1024")
    assert r.code == 0, r.err
    plans = (await served.run("--json", "plan", "list")).json()
    fiber = next(p for p in plans["items"] if p["name"] == "fiber-100")
    assert [a["units"] for a in fiber["allowances"]] == [100 * 2**30, 6000]
    assert fiber["fair_usage"]["threshold_octets"] == 80 * 2**30
    listing = await served.run("plan", "list")
    assert "fiber-100" in listing.out and "100 GiB/30d" in listing.out
    assert "demo-data" in listing.out and "20000/5000" in listing.out
    bad = await served.run("plan", "add", "x", "--currency", "EUR", "--allowance", "gold:1")
    assert bad.code == 2 and "kind is octets" in bad.err

    r = await served.run("nas", "add", "mk-1", "10.1.0.0/24", "--secret", "a-long-secret-123",
                         "--vendor", "mikrotik", "--control", "coa_address=10.1.0.1")
    assert r.code == 0, r.err
    assert "Added NAS mk-1 at 10.1.0.0/24" in r.out
    nas = await served.run("nas", "list")
    assert "mk-1" in nas.out and "mikrotik" in nas.out and "localhost-nas" in nas.out
    assert "a-long-secret-123" not in nas.out and "testing123" not in nas.out
    dup = await served.run("nas", "add", "other", "127.0.0.1", "--secret", "x" * 20)
    assert dup.code == 1 and "HTTP 409" in dup.err
    # After a "shared secret differs" warning: a new secret and rule, by name.
    r = await served.run("nas", "set", "mk-1", "--secret", "another-secret-456",
                         "--require-message-authenticator", "auto")
    assert r.code == 0, r.err
    assert "Changed NAS mk-1 at 10.1.0.0/24: require_message_authenticator, secret." in r.out
    nas = await served.run("--json", "nas", "list")
    (mk,) = [n for n in nas.json()["items"] if n["name"] == "mk-1"]
    assert mk["require_message_authenticator"] == "auto"
    assert (await served.run("nas", "set", "mk-1")).code == 2  # nothing to change
    # Control keys: JSON values or text, merged with the others, KEY= removes one.
    (mk,) = [n for n in await served.store.list_nas() if n.name == "mk-1"]
    assert mk.control == {"coa_address": "10.1.0.1"}
    r = await served.run("nas", "set", "mk-1", "--control", "policy_node=edge-1",
                         "--control", "proxy=true", "--control", "coa_address=10.1.0.9")
    assert r.code == 0, r.err
    assert "Changed NAS mk-1 at 10.1.0.0/24: control." in r.out
    r = await served.run("nas", "set", "mk-1", "--control", "coa_address=")
    mk = (await served.store.list_nas())
    (mk,) = [n for n in mk if n.name == "mk-1"]
    assert mk.control == {"policy_node": "edge-1", "proxy": True}  # coa_address removed
    # Keys that name something take text, even where it reads as a number.
    r = await served.run("nas", "set", "mk-1", "--control", "policy_node=7")
    assert r.code == 0, r.err
    (mk,) = [n for n in await served.store.list_nas() if n.name == "mk-1"]
    assert mk.control == {"policy_node": "7", "proxy": True}
    bad = await served.run("nas", "set", "mk-1", "--control", "proxy=yes")
    assert bad.code == 1 and "control.proxy is true or false" in bad.err
    bad = await served.run("nas", "set", "mk-1", "--control", "coa_address=10.1")
    assert bad.code == 1 and "control.coa_address is the IP address" in bad.err
    bad = await served.run("nas", "set", "mk-1", "--control", "nokey")
    assert bad.code == 2 and "use KEY=VALUE" in bad.err
    missing = await served.run("nas", "set", "nope", "--vendor", "cisco")
    assert missing.code == 1 and "no NAS named 'nope'" in missing.err
    r = await served.run("nas", "delete", "mk-1")
    assert r.code == 0 and "Deleted NAS mk-1." in r.out
    assert "mk-1" not in (await served.run("nas", "list")).out


async def test_sessions(served):
    empty = await served.run("session", "list")
    assert empty.code == 0 and empty.out.splitlines()[0].split()[:2] == ["id", "proto"]
    sub = await served.store.find_subscriber(username="demo")
    await served.store.upsert_session(Session(
        id="radius:localhost-nas:s/1", account_id=sub.account_id, subscriber_id=sub.id,
        proto="radius", nas="localhost-nas", nas_session_id="s/1", framed_ip="100.64.0.1",
        status="active", last_seq=0, started_at=now_us(), updated_at=now_us(), ended_at=None,
        attrs={}))
    listing = await served.run("session", "list", "--account", "demo")
    assert "radius:localhost-nas:s/1" in listing.out and "100.64.0.1" in listing.out
    shown = await served.run("session", "show", "radius:localhost-nas:s/1")
    assert shown.code == 0, shown.err
    assert value(shown.out, "status") == "active" and value(shown.out, "nas session") == "s/1"
    closed = (await served.run("--json", "session", "list", "--status", "closed")).json()
    assert closed == {"items": [], "count": 0}
    missing = await served.run("session", "show", "nope")
    assert missing.code == 1 and "not found" in missing.err

    await served.store.record_unmatched(
        session="radius:localhost-nas:x/9", proto="radius", nas="localhost-nas",
        nas_session_id="x/9", identity="username=ghost", closed=True, units={"data": 4096},
        attrs={}, seq=1, at=now_us())
    unmatched = await served.run("session", "unmatched")
    assert unmatched.code == 0, unmatched.err
    row = next(line for line in unmatched.out.splitlines() if "x/9" in line)
    assert "username=ghost" in row and "closed" in row and "data=4096" in row
    forgot = await served.run("session", "unmatched", "--forget", "radius:localhost-nas:x/9")
    assert forgot.code == 0 and "Forgot" in forgot.out
    assert (await served.run("--json", "session", "unmatched")).json()["items"] == []


# ----------------------------------------------------------------------------- tokens and auth

async def test_tokens_via_the_api_and_refusals(served):
    made = await served.run("--json", "token", "add", "viewer", "--role", "read-only")
    assert made.code == 0, made.err
    viewer = made.json()["token"]
    listing = await served.run("token", "list")
    assert "viewer" in listing.out and "read-only" in listing.out and viewer not in listing.out

    seen = await served.run("account", "show", "demo", token=viewer)
    assert seen.code == 0 and "10.00 EUR" in seen.out
    refused = await served.run("account", "topup", "demo", "1", token=viewer)
    assert refused.code == 1 and "HTTP 403" in refused.err and "needs operator" in refused.err

    deleted = await served.run("token", "delete", "viewer")
    assert deleted.code == 0 and "Deleted token viewer" in deleted.out
    gone = await served.run("account", "show", "demo", token=viewer)
    assert gone.code == 1 and "unknown or revoked token" in gone.err
    assert "hint: pass --token" in gone.err
    again = await served.run("token", "delete", "viewer")
    assert again.code == 1 and "HTTP 404" in again.err


async def test_token_comes_from_the_token_file_or_the_config(served, tmp_path):
    anonymous = await ocsctl("--api", served.base, "plan", "list", cwd=tmp_path)
    assert anonymous.code == 1 and "authentication required" in anonymous.err
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "ocsctl.token").write_text(served.token + "\n")
    from_file = await ocsctl("--api", served.base, "plan", "list", cwd=tmp_path)
    assert from_file.code == 0 and "demo-voice" in from_file.out

    _, secret = await served.store.create_token("cfg", "read-only")
    port = served.base.rsplit(":", 1)[1]
    conf = write_config(str(tmp_path), "sqlite:unused.db", {}, api_listen=f"127.0.0.1:{port}",
                        extra='bootstrap_token = "env:CFG_TOKEN"\n')
    other = tmp_path / "elsewhere"
    other.mkdir()
    r = await ocsctl("--config", conf, "nas", "list", cwd=other, env={"CFG_TOKEN": secret})
    assert r.code == 0, r.err
    assert "localhost-nas" in r.out


# ----------------------------------------------------------------------------- the quickstart

def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ocsd exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("ocsd did not become healthy")


def test_quickstart_migrate_demo_ocsd_then_find_demo(tmp_path):
    """What a newcomer does: migrate, seed, start ocsd, ask for the demo subscriber."""
    port = free_port()
    (tmp_path / "conf").mkdir()
    write_config(str(tmp_path / "conf"), "sqlite:var/ocs.db", {},
                 api_listen=f"127.0.0.1:{port}")
    assert ocsctl_sync("db", "migrate", cwd=tmp_path).code == 0
    seeded = ocsctl_sync("demo", cwd=tmp_path)
    assert seeded.code == 0 and "API token demo-admin" in seeded.out
    log = open(tmp_path / "ocsd.log", "w")
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-c", "from ocs.daemon import main; main()",
                             "--config", "conf/ocs.toml"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        found = ocsctl_sync("subscriber", "find", "demo", cwd=tmp_path)
        assert found.code == 0, found.err
        assert "Subscriber demo" in found.out and value(found.out, "balance") == "10.00 EUR"
        assert "demo-data" in found.out
        topped = ocsctl_sync("--json", "account", "topup", "demo", "2.50", cwd=tmp_path)
        assert json.loads(topped.out)["balance"]["balance"] == "12.50"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    assert code == 0, (tmp_path / "ocsd.log").read_text()


def test_what_is_left_is_cut_not_rounded_up():
    """An allowance 3 MB into its 10 GiB reads 9.99 GiB: rounding showed "10 GiB",
    as if nothing had been used."""
    from ocs.cli.output import duration, size
    assert size(10 * 2**30) == "10 GiB"
    assert size(10 * 2**30 - 3_000_000) == "9.99 GiB"
    assert size(1536) == "1.5 KiB" and size(1023) == "1023 B" and size(-5 * 2**20) == "-5 MiB"
    assert duration(7199) == "119.98 min" and duration(5400) == "90 min"
    assert duration(3600) == "1 h" and duration(59) == "59 s"

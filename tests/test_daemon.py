"""The `ocsd` process as systemd and an operator see it.

Every test runs the installed `ocsd` (or `python -m ocs.daemon`) as a real
subprocess with a temporary configuration, listens on a real sd_notify socket,
talks HTTP to it and sends it real signals. What is asserted is what an
operator notices: notifications, exit codes, HTTP answers, log lines, and the
data left in the store.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import sqlite3
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ocs import __version__, accel
from ocs.model import Session, now_us
from ocs.store import Store, make_driver
from tests.services import free_port

OCSD = str(Path(sys.executable).with_name("ocsd"))
EUR = 1_000_000


# ---------------------------------------------------------------------- harness
class NotifySocket:
    """The receiving end of sd_notify, as systemd binds it."""

    def __init__(self, abstract: bool = True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            self.name = "@ocs-test-" + secrets.token_hex(8)
            self.sock.bind("\0" + self.name[1:])
        else:
            # sun_path holds 108 bytes: keep the directory short.
            self.dir = tempfile.mkdtemp(prefix="ocsn-", dir="/tmp")
            self.name = os.path.join(self.dir, "notify")
            self.sock.bind(self.name)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def _receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        msg = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        self.messages.append((time.monotonic(), msg))
        return msg

    def wait_for(self, key: str, value: str = "1", timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._receive(deadline - time.monotonic())
            if msg is not None and msg.get(key) == value:
                return msg
        raise AssertionError(f"no {key}={value} within {timeout}s; got {self.messages}")

    def drain(self, seconds: float) -> list[dict[str, str]]:
        """Everything that arrives within `seconds`."""
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self._receive(deadline - time.monotonic())
            if msg is not None:
                got.append(msg)
        return got

    def close(self) -> None:
        self.sock.close()
        if not self.name.startswith("@"):
            os.unlink(self.name)
            os.rmdir(self.dir)


def config_text(store_url: str, port: int, *, extra_store: str = "", extra: str = "",
                level: str = "info", fmt: str = "text", sweep: float = 0.2) -> str:
    return f"""
[daemon]
node_name = "test-node"
drain_timeout = 5

[log]
format = "{fmt}"
level = "{level}"

[store]
url = "{store_url}"
reservation_sweep_interval = {sweep}
{extra_store}

[api]
listen = "127.0.0.1:{port}"
shutdown_timeout = 2
{extra}
{_off("radius", extra)}
{_off("diameter", extra)}
"""


def _off(section: str, extra: str) -> str:
    """Protocol listeners stay off unless a test configures them: default ports
    (1812, 3868) would collide between test runs."""
    return "" if f"[{section}]" in extra else f"[{section}]\nenabled = false\n"


class Ocsd:
    """One ocsd subprocess with its config file, log file and notify socket."""

    def __init__(self, tmp_path: Path, *, store_url: str | None = None, extra_store: str = "",
                 extra: str = "", level: str = "info", fmt: str = "text", sweep: float = 0.2,
                 env: dict[str, str] | None = None, notify: NotifySocket | None = None,
                 argv0: list[str] | None = None):
        self.tmp = tmp_path
        self.port = free_port()
        self.store_url = store_url or f"sqlite:{tmp_path}/ocs.db"
        self.config = tmp_path / "ocs.toml"
        self.config.write_text(config_text(self.store_url, self.port, extra_store=extra_store,
                                           extra=extra, level=level, fmt=fmt, sweep=sweep))
        self.log_path = tmp_path / f"ocsd-{secrets.token_hex(3)}.log"
        self.notify = notify or NotifySocket()
        self.env = {**os.environ, "NOTIFY_SOCKET": self.notify.name, **(env or {})}
        self.argv0 = argv0 or [OCSD]
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> "Ocsd":
        self._log = open(self.log_path, "a")  # a restart adds to the same log
        self.proc = subprocess.Popen(self.argv0 + ["--config", str(self.config)],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env)
        if wait_ready:
            self.notify.wait_for("READY")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, method: str, path: str, token: str,
            body: dict | None = None) -> tuple[int, dict]:
        """(status, JSON body) of one REST API call with a Bearer token."""
        req = urllib.request.Request(
            self.url + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log(), re.MULTILINE)
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"log has no {pattern!r}:\n{self.log()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def reload(self) -> None:
        """SIGHUP, then wait for RELOADING=1 and READY=1 as systemd does."""
        self.signal(signal.SIGHUP)
        self.notify.wait_for("RELOADING")
        self.notify.wait_for("READY")

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
        self.notify.close()
        return self.proc.returncode if self.proc else 0


def http(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def health(d: Ocsd) -> tuple[int, dict]:
    status, _, body = http(d.url + "/healthz")
    return status, json.loads(body)


def metric(text: str, name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


@pytest.fixture
def daemons(tmp_path):
    """Factory of Ocsd subprocesses; anything still running at the end is killed."""
    made: list[Ocsd] = []

    def make(**kw) -> Ocsd:
        d = Ocsd(tmp_path, **kw)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()


def in_store(url: str, job, **options):
    """Run `job(store)` on a separate connection to the daemon's store."""
    async def run():
        store = Store(make_driver(url, **options))
        await store.open(migrate_schema=True)
        try:
            return await job(store)
        finally:
            await store.close()
    return asyncio.run(run())


# ---------------------------------------------------------------------- start and READY
@pytest.mark.parametrize("abstract", [True, False], ids=["abstract-socket", "path-socket"])
def test_ready_is_sent_once_healthz_answers(daemons, abstract):
    d = daemons(notify=NotifySocket(abstract=abstract)).start(wait_ready=False)
    ready = d.notify.wait_for("READY")
    # At the instant systemd hears READY=1, the store is open and the API is bound.
    status, body = health(d)
    assert status == 200, body
    assert body["status"] == "ok" and body["store"] == "ok"
    assert body["node"] == "test-node" and body["version"] == __version__
    assert body["extensions"] in ("compiled", "pure-python")
    assert body["config_generation"] == 1 and body["nas_loaded"] == 0
    assert 0 <= body["uptime_s"] < 60
    assert "API on 127.0.0.1" in ready.get("STATUS", "")
    statuses = [m.get("STATUS", "") for _, m in d.notify.messages]
    assert any(s.startswith("starting store") for s in statuses), statuses
    # Nothing but progress before READY=1.
    before = [m for _, m in d.notify.messages[:-1]]
    assert all(set(m) == {"STATUS"} for m in before), before
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


@pytest.mark.parametrize("case", ["armed", "other-pid", "disabled-in-config"])
def test_watchdog_pings_from_the_event_loop(daemons, case):
    env = {"WATCHDOG_USEC": "200000"}
    if case == "other-pid":
        env["WATCHDOG_PID"] = "1"  # the watchdog is meant for another process
    d = daemons(env=env)
    if case == "disabled-in-config":
        d.config.write_text(d.config.read_text().replace("drain_timeout = 5",
                                                         "drain_timeout = 5\nwatchdog = false"))
    d.start()
    got = d.notify.drain(1.2)
    pings = [m for m in got if m.get("WATCHDOG") == "1"]
    if case == "armed":
        # Every WATCHDOG_USEC/2 = 0.1 s: about 12 in 1.2 s; never a flood.
        assert 6 <= len(pings) <= 16, got
    else:
        assert pings == [], got
    if case == "disabled-in-config":
        d.wait_log(r"watchdog is armed but daemon.watchdog = false")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_bad_config_at_start_exits_2_naming_file_key_reason(daemons, tmp_path):
    d = daemons()
    d.config.write_text(d.config.read_text().replace(f'listen = "127.0.0.1:{d.port}"',
                                                     'listen = "nowhere"'))
    d.start(wait_ready=False)
    assert d.wait() == 2
    out = d.log()
    assert out.strip() == f"ocsd: {d.config}:api.listen: 'nowhere' is not HOST:PORT"
    assert d.notify.drain(0.1) == []

    missing = subprocess.run([OCSD, "--config", str(tmp_path / "nope.toml")],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"ocsd: {tmp_path / 'nope.toml'}: file not found"


def test_bad_config_from_ocs_config_env(tmp_path):
    cfg = tmp_path / "env.toml"
    cfg.write_text("[log]\nlevel = 'loud'\n")
    r = subprocess.run([OCSD], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "OCS_CONFIG": str(cfg)})
    assert r.returncode == 2
    assert r.stderr.startswith(f"ocsd: {cfg}:log.level: ")
    assert "Traceback" not in r.stderr


def test_unreachable_store_at_start_exits_1_without_ready(daemons):
    port = free_port()  # nothing listens there
    d = daemons(store_url=f"postgresql://ocs:hunter22@127.0.0.1:{port}/ocs").start(
        wait_ready=False)
    assert d.wait() == 1
    out = d.log()
    assert "cannot start: cannot connect to PostgreSQL" in out
    assert "Traceback" not in out and "hunter22" not in out
    assert all("READY" not in m for _, m in d.notify.messages)
    assert any(m.get("STOPPING") == "1" for m in d.notify.drain(0.2) + [
        m for _, m in d.notify.messages])


def test_listen_address_in_use_exits_1(daemons):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        d = daemons()
        port = busy.getsockname()[1]
        d.config.write_text(d.config.read_text().replace(f"127.0.0.1:{d.port}",
                                                         f"127.0.0.1:{port}"))
        d.start(wait_ready=False)
        assert d.wait() == 1
        d.wait_log(rf"cannot start: cannot listen on 127.0.0.1:{port} \(api\): "
                   r"Address already in use")
        assert "Traceback" not in d.log()
        assert all("READY" not in m for _, m in d.notify.messages)
    finally:
        busy.close()


# ---------------------------------------------------------------------- stop
def test_sigterm_drains_the_store_and_exits_0(daemons, tmp_path):
    """SIGTERM while supervision is releasing expired reservations (1000 per round,
    each one a balance operation through the group committer): the daemon
    stops within daemon.drain_timeout, exits 0, and leaves the store whole:
    every reservation is either released with its ledger entry or still held,
    and every balance equals the sum of its ledger."""
    url = f"sqlite:{tmp_path}/ocs.db"
    n = 1500

    async def prepare(store):
        acc = await store.create_account(name="drain", currency="EUR", billing="prepaid",
                                         opening_balance=n * EUR)
        results = await asyncio.gather(*[store.reserve(acc.id, f"s{i}", EUR, ttl=1)
                                         for i in range(n)])
        assert all(r.granted == EUR for r in results)
        return acc.id
    account_id = in_store(url, prepare)
    time.sleep(1.1)  # every reservation is now past its validity

    d = daemons(sweep=60).start()
    time.sleep(0.1)
    d.signal(signal.SIGTERM)  # while the first round of releases is running
    sent = time.monotonic()
    stopping = d.notify.wait_for("STOPPING")
    assert int(stopping["EXTEND_TIMEOUT_USEC"]) >= 5_000_000
    assert d.wait() == 0
    assert time.monotonic() - sent < 5  # within daemon.drain_timeout
    d.wait_log(r"SIGTERM: stopping")
    d.wait_log(r"ocs.daemon: stopped$")

    async def check(store):
        assert await store.schema_version() >= 1
        bal = await store.balance(account_id)
        reservations = await store.reservations(account_id=account_id)
        sums = await store.ledger_sums(account_id)
        buckets = await store.buckets(account_id, include_empty=True)
        for b in buckets:
            assert b.balance == sums.get(b.id, 0), "balance differs from its ledger"
        held = sum(amount for r in reservations for _, amount in r.holds)
        assert sum(b.reserved for b in buckets) == held
        assert held == len(reservations) * EUR  # no reservation half released
        assert bal["balance"] == n * EUR  # releasing never spends
        assert bal["available"] == n * EUR - held
        return len(reservations)
    remaining = in_store(url, check)
    # One round releases at most 1000; the second would come only after 60 s.
    assert n - 1000 < remaining <= n


async def test_stopping_http_lets_in_flight_requests_finish(tmp_path, monkeypatch):
    """Listeners close at once; a request in progress gets api.shutdown_timeout to finish.

    The API routes belong to ocs.api; a slow route stands in for a long API
    call here, served by the daemon's real listener component.
    """
    import aiohttp
    from aiohttp import web

    import ocs.api
    from ocs.components import Context, HttpListeners, StoreComponent
    from ocs.config import from_dict
    from ocs.metrics import Metrics

    entered = asyncio.Event()
    inside: list[str] = []

    async def slow(request):
        inside.append(request.query["s"])
        if len(inside) == 2:
            entered.set()
        await asyncio.sleep(float(request.query["s"]))
        return web.Response(text="done")
    monkeypatch.setattr(ocs.api, "setup_api",
                        lambda app, **kw: app.router.add_get("/v1/slow", slow))
    port = free_port()
    config = from_dict({"store": {"url": f"sqlite:{tmp_path}/ocs.db"},
                        "api": {"listen": f"127.0.0.1:{port}", "shutdown_timeout": 1.0}})
    ctx = Context(config=config, config_path="test", metrics=Metrics())
    store, listeners = StoreComponent(ctx), HttpListeners(ctx)
    await store.start()
    await listeners.start()
    try:
        async with aiohttp.ClientSession() as client:
            async def get(seconds):
                try:
                    async with client.get(f"http://127.0.0.1:{port}/v1/slow?s={seconds}") as r:
                        return r.status, await r.text()
                except aiohttp.ClientError as exc:
                    return None, type(exc).__name__
            short = asyncio.create_task(get(0.8))
            long = asyncio.create_task(get(30))
            await entered.wait()
            began = time.monotonic()
            stopping = asyncio.create_task(listeners.stop())
            await asyncio.sleep(0.1)
            with pytest.raises(ConnectionRefusedError):  # no longer accepting
                await asyncio.open_connection("127.0.0.1", port)
            assert await short == (200, "done")
            await stopping
            took = time.monotonic() - began
            assert 0.9 <= took < 1.8, took  # bounded by api.shutdown_timeout
            status, _ = await long
            assert status is None  # cut off, never answered as if it had completed
    finally:
        await store.stop()


def test_sigint_stops_like_sigterm(daemons):
    d = daemons().start()
    d.signal(signal.SIGINT)
    d.notify.wait_for("STOPPING")
    assert d.wait() == 0
    d.wait_log(r"SIGINT: stopping")


# ---------------------------------------------------------------------- supervision, metrics
def test_expired_reservations_are_released_and_counted(daemons, tmp_path):
    url = f"sqlite:{tmp_path}/ocs.db"

    async def prepare(store):
        acc = await store.create_account(name="sv", currency="EUR", billing="prepaid",
                                         opening_balance=10 * EUR)
        for i in range(3):
            await store.reserve(acc.id, f"old{i}", 2 * EUR, ttl=1)
        await store.reserve(acc.id, "live", 1 * EUR, ttl=3600)
        return acc.id
    account_id = in_store(url, prepare)
    time.sleep(1.1)
    d = daemons().start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, _, body = http(d.url + "/metrics")
        if metric(body.decode(), "ocs_reservations_expired_units_total") == 6 * EUR:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(body.decode())
    d.wait_log(r"released 6000000 units of expired reservations")

    async def check(store):
        return await store.balance(account_id)
    assert in_store(url, check)["available"] == 9 * EUR  # only the live hold remains
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_metrics_listener_and_prometheus_names(daemons, tmp_path):
    url = f"sqlite:{tmp_path}/ocs.db"

    async def prepare(store):
        acc = await store.create_account(name="m", currency="EUR", billing="prepaid")
        sub = await store.create_subscriber(account_id=acc.id, username="alice")
        now = now_us()
        for i, proto in enumerate(["radius", "radius", "diameter"]):
            await store.upsert_session(Session(
                id=f"m{i}", account_id=acc.id, subscriber_id=sub.id, proto=proto, nas=None,
                nas_session_id=None, framed_ip=None, status="active", last_seq=0,
                started_at=now, updated_at=now, ended_at=None, attrs={}))
    in_store(url, prepare)
    mport = free_port()
    d = daemons(extra=f'\n[metrics]\nlisten = "127.0.0.1:{mport}"\n').start()
    status, headers, body = http(f"http://127.0.0.1:{mport}/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert metric(text, "ocs_up") == 1
    assert metric(text, "ocs_sessions_active", '{proto="radius"}') == 2
    assert metric(text, "ocs_sessions_active", '{proto="diameter"}') == 1
    assert re.search(r'^ocs_build_info\{.*version="%s".*\} 1\.0$' % re.escape(__version__),
                     text, re.MULTILINE), text
    status, _, body = http(f"http://127.0.0.1:{mport}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    # Serving, the daemon runs the garbage collector itself and times each pause.
    deadline = time.monotonic() + 5
    while not metric(text, "ocs_gc_pause_seconds_count", '{generation="young"}'):
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
        text = http(f"http://127.0.0.1:{mport}/metrics")[2].decode()
    # The metrics listener serves nothing else.
    assert http(f"http://127.0.0.1:{mport}/openapi.json")[0] == 404
    # Both are also on the API listener.
    assert http(d.url + "/metrics")[0] == 200
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_malformed_http_gets_400_one_warning_and_a_count(daemons):
    d = daemons().start()

    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
            s.sendall(request)
            return s.recv(4096)
    # A NUL in a header value, then a header line without a colon (RFC 9110/9112).
    for bad in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Probe: \x00\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"):
        assert re.match(rb"HTTP/1\.[01] 400 ", raw(bad)), bad
    assert raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    text = http(d.url + "/metrics")[2].decode()
    assert metric(text, "ocs_api_requests_total",
                  '{method="-",route="malformed",status="400"}') == 2
    # One warning naming the client (the second is within the minute), no traceback.
    line = d.wait_log(r"^.*malformed HTTP request from 127\.0\.0\.1 answered 400.*$").group(0)
    assert "WARNING" in line
    log = d.log()
    assert log.count("malformed HTTP request") == 1 and "Traceback" not in log, log
    assert "ERROR" not in log, log


# ---------------------------------------------------------------------- SIGHUP
def test_sighup_with_broken_config_keeps_the_old_one(daemons):
    d = daemons().start()
    good = d.config.read_text()
    d.config.write_text(good.replace('level = "info"', 'level = "loud"'))
    d.reload()
    line = d.wait_log(r"^.*reload refused.*$").group(0)
    assert f"{d.config}:log.level: Input should be" in line
    assert "ERROR" in line and "ocs.daemon" in line
    status, body = health(d)
    assert status == 200 and body["config_generation"] == 1
    text = http(d.url + "/metrics")[2].decode()
    assert metric(text, "ocs_config_reloads_total", '{result="failed"}') == 1
    # A syntax error is refused the same way; the daemon keeps serving.
    d.config.write_text("[log\n")
    d.reload()
    d.wait_log(rf"reload refused.*{re.escape(str(d.config))}: not valid TOML")
    assert health(d)[0] == 200
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_sighup_applies_log_settings_and_reports_restart_only_changes(daemons):
    d = daemons().start()
    assert " DEBUG " not in d.log()
    new_port = free_port()
    text = d.config.read_text()
    text = text.replace('level = "info"', 'level = "debug"').replace(
        'format = "text"', 'format = "json"').replace(
        f'listen = "127.0.0.1:{d.port}"', f'listen = "127.0.0.1:{new_port}"')
    d.config.write_text(text)
    mark = len(d.log())
    d.reload()
    d.wait_log(r'"msg": "configuration reloaded \(generation 2\)')
    time.sleep(0.5)  # a few supervision rounds, logged at debug now
    after = [json.loads(line) for line in d.log()[mark:].splitlines() if line.strip()]
    assert any(e["level"] == "debug" and e["logger"] == "ocs.daemon" for e in after), after
    reloaded = next(e for e in after if e["msg"].startswith("configuration reloaded"))
    assert "log.level: 'info' -> 'debug'" in reloaded["msg"]
    assert "log.format: 'text' -> 'json'" in reloaded["msg"]
    restart = [e for e in after if "needs restart" in e["msg"]]
    assert len(restart) == 1 and restart[0]["msg"].startswith("api.listen:")
    assert restart[0]["level"] == "warning"
    # Still on the old port (a listen address needs a restart); generation bumped.
    status, body = health(d)
    assert status == 200 and body["config_generation"] == 2
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", new_port), timeout=1).close()
    text = http(d.url + "/metrics")[2].decode()
    assert metric(text, "ocs_config_reloads_total", '{result="ok"}') == 1
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_sighup_reloads_nas_and_plans_from_the_store(daemons, tmp_path):
    url = f"sqlite:{tmp_path}/ocs.db"
    d = daemons().start()
    assert health(d)[1]["nas_loaded"] == 0

    async def add(store):
        await store.create_nas(name="bras-1", address="192.0.2.10",
                               secret="Zq8-vT3-kW9-pL2-xR7")
        await store.create_plan(name="fiber-100", currency="EUR")
    in_store(url, add)
    assert health(d)[1]["nas_loaded"] == 0  # nothing changes until asked
    d.reload()
    status, body = health(d)
    assert status == 200 and body["nas_loaded"] == 1 and body["plans_loaded"] == 1
    assert body["config_generation"] == 2
    d.wait_log(r"configuration reloaded \(generation 2\): no live setting changed; "
               r"NAS 1 \(\+1 -0 ~0\), plans 1 \(\+1 -0 ~0\)")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert "Zq8-vT3-kW9-pL2-xR7" not in d.log()


def test_sighup_reads_balances_edited_by_hand_afresh(daemons, tmp_path):
    """The balance state a node keeps between batches is trusted through
    accounts.version; SQL that changes a bucket without bumping it is seen after
    SIGHUP (README: editing the database by hand)."""
    token = secrets.token_urlsafe(24)
    d = daemons(extra='bootstrap_token = "env:OCS_TEST_TOKEN"',
                env={"OCS_TEST_TOKEN": token}).start()

    def call(method, path, body=None):
        status, answer = d.api(method, path, token, body)
        assert status < 300, (status, answer)
        return answer
    a = call("POST", "/v1/accounts", {"name": "by-hand", "currency": "EUR",
                                      "billing": "prepaid", "opening_balance": "10"})
    call("POST", f"/v1/accounts/{a['id']}/topup", {"amount": "1"})  # the node now holds it
    db = sqlite3.connect(str(tmp_path / "ocs.db"))
    with db:
        db.execute("UPDATE buckets SET balance = balance + 5000000 "
                   "WHERE account_id = ? AND main = 1", (a["id"],))
    db.close()
    d.reload()
    call("POST", f"/v1/accounts/{a['id']}/topup", {"amount": "1"})
    assert call("GET", f"/v1/accounts/{a['id']}")["balance"]["balance"] == "17.00"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


# ---------------------------------------------------------------------- logs
def test_json_logs_are_one_object_per_line(daemons):
    d = daemons(fmt="json").start()
    assert health(d)[0] == 200
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    lines = [json.loads(line) for line in d.log().splitlines()]
    assert lines, "no log output"
    for entry in lines:
        assert {"ts", "level", "logger", "msg"} <= entry.keys(), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["ts"])
    loggers = {e["logger"] for e in lines}
    assert {"ocs.daemon", "ocs.store"} <= loggers
    assert any(e["msg"].startswith("ready:") and e["level"] == "info" for e in lines)


def test_secrets_never_reach_the_logs(daemons, tmp_path):
    token = "tok-" + secrets.token_hex(12)
    nas_secret = "nas-" + secrets.token_hex(12)
    url = f"sqlite:{tmp_path}/ocs.db"

    async def add(store):
        await store.create_nas(name="edge", address="198.51.100.7", secret=nas_secret)
    in_store(url, add)
    d = daemons(level="debug", extra='bootstrap_token = "env:OCS_TEST_TOKEN"',
                env={"OCS_TEST_TOKEN": token})
    d.start()
    http(d.url + "/healthz")
    http(d.url + "/metrics")
    # A changed secret is reported on reload without its value.
    d.config.write_text(d.config.read_text().replace('"env:OCS_TEST_TOKEN"',
                                                     f'"{token}-2"'))
    d.reload()
    d.wait_log(r"api.bootstrap_token: \(secret\) -> \(secret\) needs restart")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    out = d.log()
    assert token not in out and nas_secret not in out
    check = subprocess.run([OCSD, "--config", str(d.config), "--check-config"],
                           capture_output=True, text=True, timeout=30)
    assert token not in check.stdout + check.stderr
    assert nas_secret not in check.stdout + check.stderr


# ---------------------------------------------------------------------- CLI
def test_version_names_the_active_implementation(tmp_path):
    r = subprocess.run([OCSD, "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert r.stdout.strip() == (
        f"ocsd {__version__} (extensions: {accel.ACTIVE}; rating {accel.ACTIVE}, "
        f"radius codec {accel.ACTIVE}, diameter codec {accel.ACTIVE})")
    r = subprocess.run([sys.executable, "-m", "ocs.daemon", "--version"], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "OCS_NO_EXTENSIONS": "1"},
                       cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == (
        f"ocsd {__version__} (extensions: pure-python; rating pure-python, "
        "radius codec pure-python, diameter codec pure-python)")


def test_check_config_warns_about_weak_secrets_without_printing_them(tmp_path):
    url = f"sqlite:{tmp_path}/ocs.db"

    async def add(store):
        await store.create_nas(name="edge-1", address="192.0.2.1", secret="testing123")
        await store.create_nas(name="core-2", address="192.0.2.2",
                               secret="G7#kq2!Lm9@xP4$zR8")
    in_store(url, add)
    cfg = tmp_path / "ocs.toml"
    cfg.write_text(config_text(url, free_port(), extra='bootstrap_token = "env:TOK"\n'
                                                       '[policy]\nlease = 8'))
    r = subprocess.run([OCSD, "--config", str(cfg), "--check-config"], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "TOK": "shorty77"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{cfg}: configuration is valid")
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 3, warnings
    assert any("policy.lease (8 s) is not longer than one enforcement attempt may take (37 s"
               in w for w in warnings)
    assert any("api.bootstrap_token is weak: only 8 characters" in w for w in warnings)
    assert any("NAS 'edge-1' (192.0.2.1): shared secret is weak: a well-known default" in w
               for w in warnings)
    assert "core-2" not in r.stderr
    assert "testing123" not in r.stdout + r.stderr and "shorty77" not in r.stdout + r.stderr

    cfg.write_text(cfg.read_text() + "\n[nosuch]\n")
    r = subprocess.run([OCSD, "--config", str(cfg), "--check-config"], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "TOK": "shorty77"})
    assert r.returncode == 2
    assert r.stderr.strip() == f"ocsd: {cfg}:nosuch: unknown key"


def test_check_config_on_the_documented_file():
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([OCSD, "--check-config", "--config", "conf/ocs.toml"], cwd=root,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "conf/ocs.toml: configuration is valid" in r.stdout


# ---------------------------------------------------------------------- PostgreSQL
async def test_daemon_on_postgres(daemons, pg_dsn, pg_schema):
    d = daemons(store_url=pg_dsn, extra_store=f'schema = "{pg_schema}"').start()
    status, body = health(d)
    assert status == 200 and body["store"] == "ok"

    async def add(store):
        await store.create_nas(name="pg-nas", address="203.0.113.0/24",
                               secret="aL3-xx9-Qe7-mm2-Zt5")
    await asyncio.to_thread(in_store, pg_dsn, add, schema=pg_schema)
    d.reload()
    assert health(d)[1]["nas_loaded"] == 1
    d.signal(signal.SIGTERM)
    assert d.wait() == 0

    async def check(store):
        return await store.schema_version(), [n.name for n in await store.list_nas()]
    version, names = await asyncio.to_thread(in_store, pg_dsn, check, schema=pg_schema)
    assert version >= 1 and names == ["pg-nas"]


class TcpProxy:
    """A TCP forwarder the test can cut and restore, to take the store away."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(16)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self._listener.close()
        for s in self._conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._conns = []


async def test_healthz_degrades_while_the_store_is_away(daemons, pg_dsn, pg_schema):
    from urllib.parse import urlsplit

    parts = urlsplit(pg_dsn)
    proxy = TcpProxy((parts.hostname, parts.port or 5432))
    proxy.start()
    via_proxy = pg_dsn.replace(parts.netloc.rsplit("@", 1)[-1], f"127.0.0.1:{proxy.port}")
    d = daemons(store_url=via_proxy,
                extra_store=f'schema = "{pg_schema}"\ncommand_timeout = 2')
    await asyncio.to_thread(d.start)
    assert health(d)[0] == 200
    proxy.cut()
    status, body = health(d)
    assert status == 503, body
    assert body["status"] == "degraded" and body["store"].startswith("store unavailable")
    d.wait_log(r"WARNING ocs.daemon: health check degraded: store unavailable")
    proxy.start()
    deadline = time.monotonic() + 10
    while health(d)[0] != 200:
        assert time.monotonic() < deadline, "store never came back"
        await asyncio.sleep(0.1)
    d.wait_log(r"INFO    ocs.daemon: health check ok again")
    # One line per change of state, not one per probe.
    assert d.log().count("health check degraded") <= 2
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    proxy.cut()

"""RADIUS load generator: ocsd against FreeRADIUS 3.2 + rlm_sql/PostgreSQL, in one run.

Sends realistic sessions (Start, Interim-Update x N, Stop) for many
subscribers from several processes, or PAP Access-Requests (``--mode auth``),
to a freshly seeded ocsd (sqlite or PostgreSQL store) and, with
``--freeradius``, to a FreeRADIUS configured in a temporary directory (a
foreground process on free ports, doing rlm_sql accounting / authorisation
into a throwaway PostgreSQL database on this machine). Prints one JSON
document per run:

* ``requests_per_s``, ``latency_ms`` p50/p99/max from sending to the answer
  (and ``latency_ms_by_kind``: Start, Interim-Update and Stop apart, or auth),
  ``timeouts``; with ``--rate``, ``latency_from_due_ms`` too: from when each
  request was due, so a request the window or a late generator held back
  counts as late;
* ``server_cpu_us_per_request``: CPU (user + system, from /proc) of the server
  and of *every* PostgreSQL process during the load, divided by the requests
  answered (other PostgreSQL clients on the machine inflate it);
* ``server_cpu_split_us``: that figure split between the server process and the
  PostgreSQL processes;
* ``client_cpu_us_per_request``: the load generator's own CPU;
* ``rows``: what the server really stored (closed sessions and CDRs for
  ocsd, radacct rows for FreeRADIUS), checked against what was sent;
* ``ratio``: ocsd / FreeRADIUS for rate and CPU per request;
* with ``--daemons N``, N ocsd processes share the RADIUS ports and the store,
  and the figures count the CPU of all of them;
* ``ocsd_at_twice_freeradius`` (accounting, closed loop, ``--freeradius``): one
  more ocsd run in the same invocation, open loop at twice the rate FreeRADIUS
  reached (``--no-twice`` leaves it out): rate, latency from when due, CPU;
* ``targets``: the RADIUS issue's targets for the mode (CPU per request,
  throughput against FreeRADIUS, p99 from when requests were due in an
  open-loop run: ``--rate``, or the run at twice FreeRADIUS's rate), each with
  what this run measured and whether it was met (null when this run cannot
  tell).

Both servers are measured in a steady state, as a server that has been running
for a while is: one unmeasured round of the same load (other session ids)
goes first, then the databases are vacuumed and analyzed as autovacuum keeps
them, so that the planner knows the tables' real sizes (`--no-warmup` measures a fresh database instead; then
PostgreSQL plans lookups into tables it still thinks are empty as sequential
scans for the first minute or so, until autovacuum analyzes them).

    python -m bench.radius [--backend sqlite|postgres] [--sessions 2000] [--interims 5]
                           [--procs 2] [--window 64] [--rate 0] [--mode acct|auth] [--daemons 1]
                           [--freeradius] [--repeat 1] [--pg-dsn DSN]

With ``--repeat N`` the load runs N rounds (ocsd, then FreeRADIUS, in each)
and each server's figures are the medians over its rounds, with every run's
own figures beside them and the ratio of each round's pair: on a shared,
noisy machine a single run can be off by 15%.

Every request loop is bounded (sessions x rounds) and stops by itself;
traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from bench import ports, scrape  # noqa: E402
from bench.procstat import cpu_seconds  # noqa: E402
from bench.targets import judge  # noqa: E402
from radius import codec  # noqa: E402
from radius.codec import A, Code  # noqa: E402

SECRET = "bench-secret-0123456789"
OCSD = str(Path(sys.executable).with_name("ocsd"))
SOCKETS_PER_PROCESS = 4
FR_SQL = Path("/etc/freeradius/3.0/mods-config/sql/main/postgresql")


def free_port(kind=socket.SOCK_DGRAM) -> int:
    return ports.free_port(kind)


# ---------------------------------------------------------------- CPU from /proc
def postgres_pids() -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().strip() in ("postgres", "postmaster"):
                        out.append(int(entry))
            except OSError:
                pass
    return out


# ---------------------------------------------------------------- packets
def acct_request(ident: int, user: str, sid: str, status: int, rnd: int) -> bytes:
    octets = rnd * 1_500_000
    attrs = [(A.USER_NAME, user.encode()), (A.ACCT_STATUS_TYPE, codec.u32(status)),
             (A.ACCT_SESSION_ID, sid.encode()), (A.NAS_IP_ADDRESS, bytes([127, 0, 0, 1])),
             (A.NAS_PORT, codec.u32(rnd)), (A.FRAMED_IP_ADDRESS, bytes([10, 0, 0, 1])),
             (A.ACCT_DELAY_TIME, codec.u32(0))]
    if status != 1:
        attrs += [(A.ACCT_INPUT_OCTETS, codec.u32(octets // 3)),
                  (A.ACCT_OUTPUT_OCTETS, codec.u32(octets)),
                  (A.ACCT_INPUT_PACKETS, codec.u32(rnd * 1000)),
                  (A.ACCT_OUTPUT_PACKETS, codec.u32(rnd * 3000)),
                  (A.ACCT_SESSION_TIME, codec.u32(rnd * 300))]
    return codec.encode_request(Code.ACCOUNTING_REQUEST, ident, attrs, SECRET.encode())


def auth_request(ident: int, user: str, password: str) -> bytes:
    auth = codec.new_authenticator()
    return codec.encode_request(Code.ACCESS_REQUEST, ident, [
        (A.USER_NAME, user.encode()),
        (A.USER_PASSWORD, codec.hide_password(password.encode(), SECRET.encode(), auth)),
        (A.NAS_IP_ADDRESS, bytes([127, 0, 0, 1]))], SECRET.encode(), authenticator=auth,
        message_authenticator=True)


def worker(port: int, mode: str, users: list[int], interims: int, window: int, rate: float,
           timeout: float, prefix: str, sid_prefix: str, out) -> None:
    """Send this process's share; report (answered, timeouts, latencies, cpu)."""
    started_cpu = time.process_time()
    # Several source ports: the kernel spreads the flows of several ocsd sharing the
    # port (`--daemons`, SO_REUSEPORT) by source address and port.
    socks = []
    for _ in range(SOCKETS_PER_PROCESS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    if mode == "acct":
        plan = [(rnd, u) for rnd in range(interims + 2) for u in users]
    else:
        plan = [(0, u) for u in users for _ in range(interims + 2)]
    free_ids = list(range(256))[:min(window, 256)]
    pending: dict[int, tuple[float, float]] = {}  # ident -> (sent, due)
    kinds: dict[int, str] = {}  # ident -> "start", "interim", "stop" or "auth"
    latencies: list[float] = []
    from_due: list[float] = []
    by_kind: dict[str, list[float]] = {}
    codes: dict[int, int] = {}  # reply code -> count: an answer is not always an accept
    timeouts = answered = 0
    i = 0
    interval = 1.0 / rate if rate else 0.0
    next_at = time.perf_counter()
    while i < len(plan) or pending:
        now = time.perf_counter()
        while i < len(plan) and free_ids and (not interval or now >= next_at):
            rnd, u = plan[i]
            ident = free_ids.pop()
            if mode == "acct":
                status = 1 if rnd == 0 else (2 if rnd == interims + 1 else 3)
                data = acct_request(ident, f"{prefix}{u}", f"{sid_prefix}{u}", status, rnd)
            else:
                data = auth_request(ident, f"{prefix}{u}", f"pw{u}")
            try:
                socks[i % len(socks)].send(data)
            except BlockingIOError:
                free_ids.append(ident)
                break
            # Open loop: latency is also measured from when the request was due, so
            # a request the window (or a late generator) held back shows as late.
            sent_at = time.perf_counter()
            pending[ident] = (sent_at, next_at if interval else sent_at)
            kinds[ident] = (("start", "stop", "interim")[status - 1] if mode == "acct"
                            else "auth")
            i += 1
            next_at += interval
            now = time.perf_counter()
        wait = 0.05
        if interval and i < len(plan) and free_ids:  # else only an answer can unblock it
            wait = max(0.0, min(wait, next_at - time.perf_counter()))
        ready, _, _ = select.select(socks, [], [], wait)
        for sock in ready:
            while True:
                try:
                    reply = sock.recv(4096)
                except BlockingIOError:
                    break
                ident = reply[1] if len(reply) > 1 else -1
                times = pending.pop(ident, None)
                if times is not None:
                    codes[reply[0]] = codes.get(reply[0], 0) + 1
                    got = time.perf_counter()
                    latencies.append(got - times[0])
                    from_due.append(got - times[1])
                    by_kind.setdefault(kinds[ident], []).append(latencies[-1])
                    answered += 1
                    free_ids.append(ident)
        now = time.perf_counter()
        for ident, (sent, _) in list(pending.items()):
            if now - sent > timeout:
                del pending[ident]
                timeouts += 1
                free_ids.append(ident)
    out.put((answered, timeouts, latencies, time.process_time() - started_cpu, by_kind,
             from_due, codes))


def run_load(port: int, mode: str, n: int, interims: int, procs: int, window: int,
             rate: float, timeout: float, prefix: str, server_pids, sid_prefix: str = "s",
             daemons: int = 1) -> dict:
    """`server_pids()`: the server's processes (its `daemons` first), then the
    database's."""
    users = list(range(n))
    shares = [users[k::procs] for k in range(procs)]
    queue: mp.Queue = mp.Queue()
    pids = server_pids()
    cpu0, own0 = cpu_seconds(*pids), cpu_seconds(*pids[:daemons])
    t0 = time.perf_counter()
    workers = [mp.Process(target=worker, args=(port, mode, share, interims, window,
                                               rate / procs if rate else 0.0, timeout,
                                               prefix, sid_prefix, queue))
               for share in shares]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(*server_pids()) - cpu0  # includes backends started meanwhile
    own = cpu_seconds(*pids[:daemons]) - own0  # the server's processes alone
    answered = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[2])

    def pct(values, p):
        return (round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 3)
                if values else None)

    def percentiles(values):
        return {"p50": pct(values, 0.50), "p99": pct(values, 0.99), "max": pct(values, 1.0)}
    kinds = sorted({k for r in results for k in r[4]})
    by_kind = {k: percentiles(sorted(x for r in results for x in r[4].get(k, ())))
               for k in kinds}
    replies = _summed({_code_name(c): n for c, n in r[6].items()} for r in results)
    return {"requests": n * (interims + 2), "answered": answered,
            "replies": replies,
            "timeouts": sum(r[1] for r in results), "seconds": round(elapsed, 3),
            "requests_per_s": round(answered / elapsed, 1) if elapsed else 0,
            "latency_ms": percentiles(lat),
            "latency_ms_by_kind": by_kind,
            **({"latency_from_due_ms": percentiles(sorted(x for r in results for x in r[5]))}
               if rate else {}),
            "server_cpu_us_per_request": round(cpu * 1e6 / answered, 1) if answered else None,
            "server_cpu_split_us": {"daemon": round(own * 1e6 / answered, 1),
                                    "database": round((cpu - own) * 1e6 / answered, 1)}
            if answered else None,
            "client_cpu_us_per_request": round(sum(r[3] for r in results) * 1e6 / answered, 1)
            if answered else None}


def wait_http(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            scrape.metrics(port)
            return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"ocsd's API on port {port} did not come up") from None
            time.sleep(0.1)


def wait_status(port: int, deadline: float = 20.0) -> None:
    data = codec.encode_request(Code.STATUS_SERVER, 1, [], SECRET.encode(),
                                message_authenticator=True)
    end = time.monotonic() + deadline
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while time.monotonic() < end:
            s.sendto(data, ("127.0.0.1", port))
            try:
                s.recv(4096)
                return
            except socket.timeout:
                continue
    raise RuntimeError(f"nothing answers on UDP port {port}")


# ---------------------------------------------------------------- ocsd
class Ocsd:
    def __init__(self, args, tmp: str):
        self.args, self.tmp = args, tmp
        self.auth_port, self.acct_port = free_port(), free_port()
        self.daemons = args.daemons
        self.api_ports = [free_port(socket.SOCK_STREAM) for _ in range(self.daemons)]
        self.api_port = self.api_ports[0]
        self.procs: list[subprocess.Popen] = []
        self.schema = None
        if args.backend == "postgres":
            self.schema = "ocs_bench_" + secrets.token_hex(4)
            self.url, self.options = args.pg_dsn, {"schema": self.schema}
        else:
            self.url, self.options = f"sqlite:{tmp}/ocs.db", {}

    async def _seed(self):
        from ocs.store import Store, make_driver
        if self.schema:
            conn = await asyncpg.connect(self.args.pg_dsn)
            await conn.execute(f"CREATE SCHEMA {self.schema}")
            await conn.close()
        store = Store(make_driver(self.url, **self.options))
        await store.open(migrate_schema=True)
        try:
            await store.create_nas(name="bench-nas", address="127.0.0.1", secret=SECRET,
                                   require_message_authenticator="auto")
            await store.create_plan(name="bench", currency="EUR",
                                    allowances=[{"kind": "octets", "units": 2**50}])
            rows = [{"account": f"b{u}", "currency": "EUR", "billing": "prepaid",
                     "opening_balance": 10_000_000, "plan": "bench", "username": f"b{u}",
                     "password": f"pw{u}", "max_sessions": 100}
                    for u in range(self.args.sessions)]
            for k in range(0, len(rows), 5000):
                await store.import_subscribers(rows[k:k + 5000])
        finally:
            await store.close()

    async def rows(self) -> dict:
        from ocs.store import Store, make_driver
        store = Store(make_driver(self.url, **self.options))
        await store.open()
        try:
            q = store._all  # counting is not part of the Store's API
            closed = (await q("SELECT count(*) AS n FROM sessions WHERE status = 'closed'"))[0]["n"]
            active = (await q("SELECT count(*) AS n FROM sessions WHERE status = 'active'"))[0]["n"]
            cdrs = (await q("SELECT count(*) AS n FROM cdrs"))[0]["n"]
            ledger = (await q("SELECT count(*) AS n FROM ledger WHERE entry_type = 'debit'"))[0]["n"]
            return {"sessions_closed": closed, "sessions_active": active, "cdrs": cdrs,
                    "ledger_debits": ledger}
        finally:
            await store.close()

    async def settle(self):
        if self.schema:
            await analyze(self.args.pg_dsn, self.schema)

    def start(self):
        asyncio.run(self._seed())
        schema = f'schema = "{self.schema}"\n' if self.schema else ""
        self.log = open(Path(self.tmp) / "ocsd.log", "w")
        for k, api_port in enumerate(self.api_ports):
            # Several daemons share the RADIUS ports (SO_REUSEPORT) and the store
            # (README: "Several ocsd on one host").
            cfg = Path(self.tmp) / f"ocs-{k}.toml"
            cfg.write_text(f"""
[log]
level = "info"
[store]
url = "{self.url}"
{schema}sqlite_synchronous = "{self.args.sqlite_synchronous}"
group_commit_window_ms = {self.args.group_commit_window_ms}
pool_max = 10
[api]
listen = "127.0.0.1:{api_port}"
[radius]
auth_listen = "127.0.0.1:{self.auth_port}"
acct_listen = "127.0.0.1:{self.acct_port}"
reuse_port = {"true" if self.daemons > 1 else "false"}
[diameter]
enabled = false
""")
            self.procs.append(subprocess.Popen([OCSD, "--config", str(cfg)], stdout=self.log,
                                               stderr=subprocess.STDOUT, env=dict(os.environ)))
            wait_http(api_port)
        wait_status(self.acct_port)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs] + (postgres_pids() if self.schema else [])

    def metrics(self) -> str:
        return scrape.metrics(self.api_port)

    def stop(self):
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.log.close()

    async def drop(self):
        if self.schema:
            conn = await asyncpg.connect(self.args.pg_dsn)
            await conn.execute(f"DROP SCHEMA {self.schema} CASCADE")
            await conn.close()


# ---------------------------------------------------------------- FreeRADIUS
RADIUSD_CONF = """
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {tmp}
raddbdir = {tmp}
radacctdir = {tmp}
name = radiusd
confdir = {tmp}
modconfdir = /etc/freeradius/3.0/mods-config
run_dir = {tmp}
db_dir = {tmp}
libdir = /usr/lib/freeradius
pidfile = {tmp}/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
log {{
    destination = files
    file = {tmp}/radius.log
    auth = no
}}
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = 0
    status_server = yes
}}
thread pool {{
    start_servers = 8
    max_servers = 32
    min_spare_servers = 4
    max_spare_servers = 16
    max_requests_per_server = 0
    auto_limit_acct = no
}}
client bench {{
    ipaddr = 127.0.0.1
    secret = {secret}
    require_message_authenticator = no
}}
modules {{
    expr {{
    }}
    pap {{
        normalise = yes
    }}
    sql {{
        dialect = "postgresql"
        driver = "rlm_sql_postgresql"
        postgresql {{
            send_application_name = yes
        }}
        server = "{host}"
        port = {port}
        login = "{user}"
        password = ""
        radius_db = "{db}"
        acct_table1 = "radacct"
        acct_table2 = "radacct"
        postauth_table = "radpostauth"
        authcheck_table = "radcheck"
        groupcheck_table = "radgroupcheck"
        authreply_table = "radreply"
        groupreply_table = "radgroupreply"
        usergroup_table = "radusergroup"
        read_groups = no
        delete_stale_sessions = yes
        pool {{
            start = 8
            min = 8
            max = 32
            spare = 8
            uses = 0
            retry_delay = 30
            lifetime = 0
            idle_timeout = 600
        }}
        client_table = "nas"
        group_attribute = "SQL-Group"
        $INCLUDE ${{modconfdir}}/sql/main/${{dialect}}/queries.conf
    }}
}}
server default {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {auth_port}
    }}
    listen {{
        type = acct
        ipaddr = 127.0.0.1
        port = {acct_port}
    }}
    authorize {{
        sql
        pap
    }}
    authenticate {{
        Auth-Type PAP {{
            pap
        }}
    }}
    preacct {{
        update request {{
            &Acct-Unique-Session-Id := "%{{md5:%{{User-Name}},%{{Acct-Session-Id}},%{{NAS-IP-Address}}}}"
        }}
    }}
    accounting {{
        sql
    }}
}}
"""


class FreeRadius:
    def __init__(self, args, tmp: str):
        self.args, self.tmp = args, tmp
        self.auth_port, self.acct_port = free_port(), free_port()
        self.db = "frbench_" + secrets.token_hex(4)

    async def _db(self):
        conn = await asyncpg.connect(self.args.pg_dsn)
        await conn.execute(f"CREATE DATABASE {self.db}")
        await conn.close()
        conn = await asyncpg.connect(self._dsn())
        await conn.execute((FR_SQL / "schema.sql").read_text())
        await conn.copy_records_to_table(
            "radcheck", records=[(f"b{u}", "Cleartext-Password", ":=", f"pw{u}")
                                 for u in range(self.args.sessions)],
            columns=["username", "attribute", "op", "value"])
        await conn.close()

    def _dsn(self) -> str:
        base = self.args.pg_dsn.rsplit("/", 1)[0]
        return f"{base}/{self.db}"

    async def rows(self) -> dict:
        conn = await asyncpg.connect(self._dsn())
        try:
            total = await conn.fetchval("SELECT count(*) FROM radacct")
            stopped = await conn.fetchval("SELECT count(*) FROM radacct "
                                          "WHERE acctstoptime IS NOT NULL")
            return {"radacct_rows": total, "sessions_closed": stopped}
        finally:
            await conn.close()

    async def settle(self):
        await analyze(self._dsn(), "public")

    def start(self):
        asyncio.run(self._db())
        from urllib.parse import urlparse
        u = urlparse(self.args.pg_dsn)
        (Path(self.tmp) / "radiusd.conf").write_text(RADIUSD_CONF.format(
            tmp=self.tmp, secret=SECRET, host=u.hostname or "127.0.0.1", port=u.port or 5432,
            user=u.username or "postgres", db=self.db, auth_port=self.auth_port,
            acct_port=self.acct_port))
        (Path(self.tmp) / "dictionary").write_text("")
        self.log = open(Path(self.tmp) / "freeradius.out", "w")
        self.proc = subprocess.Popen(["freeradius", "-f", "-d", self.tmp, "-n", "radiusd"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_status(self.acct_port)
        except RuntimeError:
            self.stop()
            raise RuntimeError("FreeRADIUS did not start: "
                               + (Path(self.tmp) / "freeradius.out").read_text()[-2000:])

    def pids(self) -> list[int]:
        return [self.proc.pid] + postgres_pids()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    async def drop(self):
        conn = await asyncpg.connect(self.args.pg_dsn)
        await conn.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
        await conn.close()


async def analyze(dsn: str, schema: str) -> None:
    """Dead rows cleared and statistics for the planner, as autovacuum keeps them
    on a running server."""
    conn = await asyncpg.connect(dsn)
    try:
        for (table,) in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1",
                                         schema):
            await conn.execute(f'VACUUM ANALYZE "{schema}"."{table}"')
    finally:
        await conn.close()


def measure(target_cls, args, prefix: str) -> dict:
    tmp = tempfile.mkdtemp(prefix="ocs-bench-radius-")
    target = target_cls(args, tmp)
    try:
        target.start()
        port = target.acct_port if args.mode == "acct" else target.auth_port
        daemons = getattr(target, "daemons", 1)
        before: dict = {}
        if args.warmup:
            run_load(port, args.mode, args.sessions, args.interims, args.procs, args.window,
                     args.rate, args.timeout, prefix, target.pids, sid_prefix="w",
                     daemons=daemons)
            time.sleep(0.5)
            asyncio.run(target.settle())
            before = asyncio.run(target.rows())
        scraped = target.metrics() if hasattr(target, "metrics") else None
        result = run_load(port, args.mode, args.sessions, args.interims, args.procs,
                          args.window, args.rate, args.timeout, prefix, target.pids,
                          daemons=daemons)
        time.sleep(0.5)  # let the last answers' writes settle before counting
        after = asyncio.run(target.rows())
        result["rows"] = {k: v - before.get(k, 0) for k, v in after.items()}
        if scraped is not None:  # ocsd: how full its group commits were
            result["store_batch_mean"] = scrape.batch_mean(scraped, target.metrics())
        return result
    finally:
        target.stop()
        asyncio.run(target.drop())
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--mode", choices=("acct", "auth"), default="acct")
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--interims", type=int, default=5)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--window", type=int, default=64, help="requests in flight per process")
    p.add_argument("--rate", type=float, default=0.0, help="offered requests/s (0: closed loop)")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--daemons", type=int, default=1,
                   help="ocsd processes sharing the RADIUS ports (SO_REUSEPORT) and the store")
    p.add_argument("--freeradius", action="store_true",
                   help="run the same load against FreeRADIUS + rlm_sql/PostgreSQL")
    p.add_argument("--sqlite-synchronous", default="FULL", choices=("FULL", "NORMAL"))
    p.add_argument("--group-commit-window-ms", type=float, default=0.0,
                   help="ocsd's [store] group_commit_window_ms: wait to fill batches")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds (ocsd, then FreeRADIUS in each); figures are their medians")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="measure a fresh database (see above)")
    p.add_argument("--no-twice", dest="twice", action="store_false",
                   help="with --freeradius (accounting, closed loop): skip the ocsd run "
                        "offered twice the rate FreeRADIUS reached")
    p.add_argument("--pg-dsn", default=os.environ.get(
        "OCS_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.daemons < 1:
        p.error("--daemons must be at least 1")
    out = {"mode": args.mode, "backend": args.backend, "sessions": args.sessions,
           "interims": args.interims, "procs": args.procs, "window": args.window,
           "ocsd_daemons": args.daemons,
           "offered_rate": args.rate or "closed loop", "warmup": args.warmup,
           "group_commit_window_ms": args.group_commit_window_ms}
    rounds = []  # each round measures ocsd, then FreeRADIUS: a pair taken together
    for _ in range(args.repeat):
        rounds.append({"ocsd": measure(Ocsd, args, "b")})
        if args.freeradius:
            rounds[-1]["freeradius"] = measure(FreeRadius, args, "b")
    if args.repeat == 1:
        out.update(rounds[0])
    else:
        out["repeat"] = args.repeat
        for name in rounds[0]:
            out[name] = medians([r[name] for r in rounds])
    if args.freeradius:
        out["ratio"] = ratio(out["ocsd"], out["freeradius"])
        if args.repeat > 1:
            out["ratio"]["each_round"] = [ratio(r["ocsd"], r["freeradius"]) for r in rounds]
        if args.twice and args.mode == "acct" and not args.rate \
                and out["freeradius"]["requests_per_s"]:
            # The p99 target's load: twice what FreeRADIUS sustained, offered to ocsd.
            rate = round(2 * out["freeradius"]["requests_per_s"], 1)
            run = measure(Ocsd, argparse.Namespace(**{**vars(args), "rate": rate}), "b")
            out["ocsd_at_twice_freeradius"] = {
                "offered_rate": rate, **{k: run[k] for k in (
                    "requests_per_s", "latency_ms", "latency_from_due_ms", "timeouts",
                    "server_cpu_us_per_request", "store_batch_mean") if k in run}}
    out["targets"] = targets(args, out)
    print(json.dumps(out, indent=2))
    return 0


def ratio(o: dict, f: dict) -> dict:
    """ocsd against FreeRADIUS: throughput, and CPU per request (FreeRADIUS's over ocsd's)."""
    return {
        "throughput_ocsd_over_freeradius": round(o["requests_per_s"] / f["requests_per_s"], 2)
        if f["requests_per_s"] else None,
        "cpu_per_request_freeradius_over_ocsd": round(
            f["server_cpu_us_per_request"] / o["server_cpu_us_per_request"], 2)
        if o["server_cpu_us_per_request"] and f["server_cpu_us_per_request"] else None}


def medians(runs: list[dict]) -> dict:
    """The headline figures of several runs of one server: the median of each (the
    largest maximum latency, the sum of timeouts), and each run's own figures."""
    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    def each(run):
        own = {"requests_per_s": run["requests_per_s"],
               "server_cpu_us_per_request": run["server_cpu_us_per_request"],
               "latency_ms": run["latency_ms"], "timeouts": run["timeouts"],
               "replies": run.get("replies"), "rows": run.get("rows")}
        if "latency_from_due_ms" in run:  # open loop (--rate)
            own["latency_from_due_ms"] = run["latency_from_due_ms"]
        return own
    summary = {
        "requests_per_s": med(r["requests_per_s"] for r in runs),
        "latency_ms": {"p50": med(r["latency_ms"]["p50"] for r in runs),
                       "p99": med(r["latency_ms"]["p99"] for r in runs),
                       "max": max(r["latency_ms"]["max"] for r in runs)},
        "timeouts": sum(r["timeouts"] for r in runs),
        "replies": _summed(r.get("replies") or {} for r in runs),
        "server_cpu_us_per_request": med(r["server_cpu_us_per_request"] for r in runs),
        "server_cpu_split_us": {part: med((r["server_cpu_split_us"] or {}).get(part)
                                          for r in runs) for part in ("daemon", "database")},
        "client_cpu_us_per_request": med(r["client_cpu_us_per_request"] for r in runs),
        "each_run": [each(r) for r in runs]}
    if "latency_from_due_ms" in runs[0]:
        summary["latency_from_due_ms"] = {
            p: med(r["latency_from_due_ms"][p] for r in runs) for p in ("p50", "p99")}
    if "store_batch_mean" in runs[0]:
        summary["store_batch_mean"] = med(r.get("store_batch_mean") for r in runs)
    return summary


def _code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:  # not a code this project names: its number
        return str(code)


def _summed(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for each in counts:
        for name, n in each.items():
            total[name] = total.get(name, 0) + n
    return dict(sorted(total.items()))


# The RADIUS issue's targets, read against this run. The p99 target holds at twice
# FreeRADIUS's sustainable rate (about 2,000/s on the reference 2-core machine),
# so it is judged only in an open-loop run (--rate), at the rate given, on the
# latency from when each request was due: a request the server's backlog held
# back in the generator counts as late.
TARGETS = {
    "acct": {"server_cpu_us_per_request": ("<=", 60), "throughput_x_freeradius": (">=", 4),
             "p99_ms": ("<", 10)},
    "auth": {"server_cpu_us_per_request": ("<=", 50), "throughput_x_freeradius": (">=", 5)},
}


def targets(args, out: dict) -> dict:
    o = out["ocsd"]
    open_loop, rate = (o, args.rate) if args.rate else (None, None)
    twice = out.get("ocsd_at_twice_freeradius")
    if twice is not None:
        open_loop, rate = twice, twice["offered_rate"]
    report = judge(TARGETS[args.mode], {
        "server_cpu_us_per_request": o["server_cpu_us_per_request"],
        "throughput_x_freeradius": (out.get("ratio") or {}).get(
            "throughput_ocsd_over_freeradius"),
        "p99_ms": open_loop["latency_from_due_ms"]["p99"] if open_loop else None})
    if rate and "p99_ms" in report:
        report["p99_ms"]["offered_rate"] = rate
    return report


if __name__ == "__main__":
    sys.exit(main())

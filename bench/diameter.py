"""Gy credit-control load against a real ocsd: CCR/s, latency and server CPU per request.

K concurrent sessions spread over C connections each do CCR-I, N x CCR-U
(reporting usage and asking for more, i.e. commit + durable re-reservation)
and CCR-T against an `ocsd` subprocess, per store backend. The CCR-U phase is
the measured one:

* closed loop (default): every session sends its next update as soon as the
  previous answer arrives: the throughput ceiling;
* `--rate R`: open loop at R CCR-U/s offered: each request has a scheduled
  send time and its latency is measured from that time, so a server that
  falls behind shows it in the percentiles (no coordinated omission).

Server CPU comes from /proc: utime+stime of the ocsd process and, on
PostgreSQL, of the backends serving ocsd's connections (found through
pg_stat_activity and ocsd's socket inodes); PostgreSQL's shared background
processes are reported separately (they also serve anyone else using that
server). The baseline measured in the same run is DWR/DWA over the same
connections: the cost of the Diameter stack alone (framing, codec, peer
state machine, transport), against which the charging path is a ratio.
Each backend's `targets` reads the issue's targets against the run (CPU per
CCR-U; p95 and p99 only with `--rate`, the target being at 5,000/s).

    python -m bench.diameter [--sessions 200] [--updates 20] [--connections 4]
        [--rate 5000] [--backends sqlite,postgres] [--pg-dsn DSN] [--profile DIR]

`--profile DIR` runs ocsd under cProfile during a separate closed-loop
CCR-U phase and prints where the time goes, grouped by area (the profiled
run is slower; its timings are not the benchmark's).

`--frontend` measures the Diameter layer alone, in process: CCR-Us go
through the real connection (framing, codec, peer state machine), server
(duplicate cache, metrics, access log) and Gy mapping to an answer on the
wire, with the charging core replaced by one fixed decision and the socket by
a transport that only counts writes. It reports the CPU per CCR-U (best and
median of `--repeat` runs) with the codec as selected, with the pure-Python
codec twin, and with the per-request access line switched the other way
(`[diameter] log_credit_control`, off by default), as ratios in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import asyncpg

from bench import scrape
from bench.ports import free_port
from bench.pg import throwaway_schema
from bench.procstat import cpu_seconds, thread_cpu
from bench.targets import judge
from diameter import base
from diameter import tables as T
from diameter.client import INITIAL, TERMINATION, UPDATE, DiameterClient, mscc
from diameter.codec import value
from ocs.store import Store, make_driver

OCSD = shutil.which("ocsd") or str(Path(sys.executable).with_name("ocsd"))
USED = 1_000_000  # octets reported per update


# ---------------------------------------------------------------------- /proc
def socket_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of `pid`'s TCP connections to `remote_port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], parts[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


async def postgres_pids(dsn: str, daemon_pid: int) -> tuple[list[int], list[int]]:
    """(backends serving ocsd, the server's background processes)."""
    port = int(dsn.rsplit(":", 1)[1].split("/")[0]) if dsn.count(":") >= 2 else 5432
    ports = socket_ports(daemon_pid, port)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT pid, client_port, backend_type FROM pg_stat_activity")
    finally:
        await conn.close()
    backends = [r["pid"] for r in rows if r["client_port"] in ports]
    background = [r["pid"] for r in rows if r["backend_type"] not in ("client backend",)]
    return backends, background


# ---------------------------------------------------------------------- the daemon


class Daemon:
    def __init__(self, workdir: Path, store_url: str, schema: str, *, log_level: str,
                 sqlite_synchronous: str, log_credit_control: bool = False,
                 profile: Path | None = None):
        self.port, self.api = free_port(), free_port()
        self.config = workdir / "ocs.toml"
        self.config.write_text(f"""
[daemon]
node_name = "bench"
[log]
level = "{log_level}"
[store]
url = "{store_url}"
schema = "{schema}"
sqlite_synchronous = "{sqlite_synchronous}"
pool_max = 10
[charging]
default_quota = {{ octets = 10000000, seconds = 600, events = 1 }}
[radius]
enabled = false
[diameter]
listen = "127.0.0.1:{self.port}"
origin_host = "ocs.bench.example"
origin_realm = "bench.example"
allowed_addresses = ["127.0.0.1"]
max_in_flight = 100000
log_credit_control = {"true" if log_credit_control else "false"}
[api]
listen = "127.0.0.1:{self.api}"
""")
        self.log = open(workdir / "ocsd.log", "w")
        argv = [OCSD, "--config", str(self.config)]
        if profile is not None:
            argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "ocs.daemon",
                    "--config", str(self.config)]
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    async def ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ocsd exited with {self.proc.returncode}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError("ocsd did not open its Diameter port")

    def metrics(self) -> str:
        return scrape.metrics(self.api)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------- load
def percentiles(samples: list[float]) -> dict:
    if len(samples) < 2:
        return {}
    q = statistics.quantiles(samples, n=1000)
    return {"p50_ms": round(q[499] * 1000, 3), "p95_ms": round(q[949] * 1000, 3),
            "p99_ms": round(q[989] * 1000, 3), "max_ms": round(max(samples) * 1000, 3)}


class Load:
    def __init__(self, port: int, sessions: int, connections: int, prefix: str = "bench"):
        self.port, self.sessions, self.connections = port, sessions, connections
        self.prefix = prefix  # of the Session-Ids: a new prefix, new sessions
        self.clients: list[DiameterClient] = []
        self.errors: Counter = Counter()

    async def connect(self) -> None:
        for i in range(self.connections):
            c = DiameterClient("127.0.0.1", self.port, origin_host=f"pgw{i}.bench.example",
                               origin_realm="bench.example", destination_realm="bench.example")
            await c.connect()
            self.clients.append(c)

    def client(self, n: int) -> DiameterClient:
        return self.clients[n % len(self.clients)]

    async def ccr(self, n: int, kind: int, number: int, latencies: list | None,
                  scheduled: float | None = None) -> None:
        c = self.client(n)
        sid = f"{self.prefix};{n}"
        msccs = {INITIAL: [mscc(10, requested={})],
                 UPDATE: [mscc(10, requested={}, used={"total": USED})],
                 TERMINATION: [mscc(10, used={"total": USED})]}[kind]
        msg = c.ccr(sid, kind, number, msisdn=f"4179{n:07d}", msccs=msccs)
        start = scheduled if scheduled is not None else time.perf_counter()
        try:
            answer = await c.request(msg, timeout=30)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            self.errors[type(exc).__name__] += 1
            return
        if latencies is not None:
            latencies.append(time.perf_counter() - start)
        code = value(answer.avps, T.RESULT_CODE)
        if code != 2001:
            self.errors[str(code)] += 1

    async def phase(self, kind: int, numbers: int, rate: float | None = None) -> dict:
        """`numbers` requests of `kind` per session (CC-Request-Numbers from `first`)."""
        latencies: list[float] = []
        errors_before = sum(self.errors.values())

        async def session(n: int) -> None:
            base_number = 0 if kind == INITIAL else (1 if kind == UPDATE else self.updates + 1)
            if rate:
                interval = self.sessions / rate
                t0 = self.t0 + interval * n / self.sessions
                for i in range(numbers):
                    due = t0 + i * interval
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await self.ccr(n, kind, base_number + i, latencies, scheduled=due)
            else:
                for i in range(numbers):
                    await self.ccr(n, kind, base_number + i, latencies)

        self.t0 = time.perf_counter() + 0.05
        started = time.perf_counter()
        await asyncio.gather(*[session(n) for n in range(self.sessions)])
        wall = time.perf_counter() - started
        return {"requests": len(latencies), "wall_s": round(wall, 3),
                "ccr_per_s": round(len(latencies) / wall), **percentiles(latencies),
                "errors": sum(self.errors.values()) - errors_before}

    async def watchdogs(self, total: int) -> dict:
        latencies: list[float] = []

        async def one(c: DiameterClient, count: int) -> None:
            for _ in range(count):
                hbh, e2e = c.ids()
                t = time.perf_counter()
                await c.request(base.dwr(c.local, hbh, e2e), timeout=30)
                latencies.append(time.perf_counter() - t)
        per = total // (len(self.clients) * 16)
        started = time.perf_counter()
        await asyncio.gather(*[one(c, per) for c in self.clients for _ in range(16)])
        wall = time.perf_counter() - started
        return {"requests": len(latencies), "per_s": round(len(latencies) / wall),
                **percentiles(latencies)}

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


# ---------------------------------------------------------------------- one backend
async def prepare_store(url: str, schema: str | None, sessions: int) -> None:
    """K prepaid subscribers on a plan with a practically endless octets allowance."""
    store = Store(make_driver(url, schema=schema) if schema else make_driver(url))
    await store.open(migrate_schema=True)
    try:
        await store.create_plan(name="bench", currency="EUR", allowances=[
            {"kind": "octets", "units": 10**15, "validity_days": 30}])
        await store.import_subscribers([
            {"account": f"bench-{n}", "currency": "EUR", "billing": "prepaid", "plan": "bench",
             "msisdn": f"4179{n:07d}"} for n in range(sessions)])
    finally:
        await store.close()


async def bench_backend(name: str, url: str, schema: str, args, workdir: Path) -> dict:
    await prepare_store(url, schema or None, args.sessions)
    daemon = Daemon(workdir, url, schema, log_level=args.log_level,
                    log_credit_control=args.log_credit_control,
                    sqlite_synchronous=args.sqlite_synchronous)
    out: dict = {}
    try:
        await daemon.ready()
        load = Load(daemon.port, args.sessions, args.connections)
        load.updates = args.updates
        await load.connect()
        pid = daemon.proc.pid
        async def database_cpu() -> tuple[float, float]:
            """CPU of ocsd's PostgreSQL backends and of the shared background processes.
            Pids are found again at every snapshot: the pool grows under load, and a
            backend first seen at the end started during the phase (all its CPU counts)."""
            if name != "postgres":
                return 0.0, 0.0
            backends, background = await postgres_pids(args.pg_dsn, pid)
            return (sum(cpu_seconds(p) for p in backends),
                    sum(cpu_seconds(p) for p in background))

        async def snapshot():
            own, shared = await database_cpu()
            return (cpu_seconds(pid), own, shared, *thread_cpu(pid))

        # Baseline: DWR/DWA, the Diameter stack without charging.
        before = await snapshot()
        dwr = await load.watchdogs(args.watchdogs)
        after = await snapshot()
        dwr["server_cpu_us_per_msg"] = round((after[0] - before[0]) / dwr["requests"] * 1e6, 1)
        out["dwr_baseline"] = dwr

        out["ccr_i"] = await load.phase(INITIAL, 1)
        m0 = daemon.metrics()
        before = await snapshot()
        upd = await load.phase(UPDATE, args.updates, rate=args.rate)
        after = await snapshot()
        m1 = daemon.metrics()
        n = max(1, upd["requests"])
        upd["server_cpu_us_per_ccr_u"] = {
            "daemon": round((after[0] - before[0]) / n * 1e6, 1),
            "database": round((after[1] - before[1]) / n * 1e6, 1),
            "total": round(((after[0] - before[0]) + (after[1] - before[1])) / n * 1e6, 1),
            "daemon_event_loop_thread": round((after[3] - before[3]) / n * 1e6, 1),
            "daemon_other_threads": round((after[4] - before[4]) / n * 1e6, 1),
        }
        if name == "postgres":
            upd["server_cpu_us_per_ccr_u"]["database_background_shared"] = round(
                (after[2] - before[2]) / n * 1e6, 1)
        upd["store_batch_mean"] = scrape.batch_mean(m0, m1)
        upd["offered_rate"] = args.rate
        out["ccr_u"] = upd
        out["targets"] = targets(name, upd, args.rate)
        out["ccr_t"] = await load.phase(TERMINATION, 1)
        out["errors_by_kind"] = dict(load.errors)
        out["ratio_cpu_ccr_u_to_dwr"] = round(
            upd["server_cpu_us_per_ccr_u"]["daemon"] / max(0.1, dwr["server_cpu_us_per_msg"]),
            1)
        await load.close()
    finally:
        daemon.stop()
    if args.profile:
        out["profile"] = await profile_backend(name, url, schema, args, workdir)
    return out


# The Diameter issue's targets, read against this run: CPU per CCR-U (daemon and
# its database), and the latency percentiles at 5,000 CCR/s offered, judged only
# in an open-loop run (--rate) at the rate given.
TARGETS = {"sqlite": 50, "postgres": 80}


def targets(backend: str, upd: dict, rate: float | None) -> dict:
    report = judge({"server_cpu_us_per_ccr_u": ("<=", TARGETS[backend]),
                    "p95_ms": ("<", 3), "p99_ms": ("<", 10)},
                   {"server_cpu_us_per_ccr_u": upd["server_cpu_us_per_ccr_u"]["total"],
                    "p95_ms": upd["p95_ms"] if rate else None,
                    "p99_ms": upd["p99_ms"] if rate else None})
    if rate:
        for name in ("p95_ms", "p99_ms"):
            report[name]["offered_rate"] = rate
    return report


async def profile_backend(name: str, url: str, schema: str, args, workdir: Path) -> dict:
    """Where the daemon's time goes during closed-loop CCR-U, by area."""
    prof = Path(args.profile) / f"ocsd-{name}.prof"
    prof.parent.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(workdir, url, schema, log_level=args.log_level,
                    log_credit_control=args.log_credit_control,
                    sqlite_synchronous=args.sqlite_synchronous, profile=prof)
    try:
        await daemon.ready(60)
        # Sessions of its own: the measured run's would be replays here, answered
        # from the operations already stored, not charged.
        load = Load(daemon.port, args.sessions, args.connections, prefix="profiled")
        load.updates = args.updates * 2
        await load.connect()
        await load.phase(INITIAL, 1)
        await load.phase(UPDATE, args.updates)
        await load.close()
    finally:
        daemon.stop()
    return summarize_profile(prof)


#: Functions of the start-up (imports) and of the profiler's own run, not the load.
STARTUP = ("<frozen", "builtins.compile", "builtins.exec", "marshal.loads", "importlib",
           "set_default_verify_paths", "load_verify_locations")
AREAS = (("runners.py", "event loop (uvloop, C)"), ("diameter/codec", "diameter codec"), ("diameter/gy", "diameter gy mapping"),
         ("diameter/", "diameter transport/server"), ("ocs/charging", "charging core"),
         ("ocs/balance", "balance engine"), ("ocs/store", "store"), ("ocs/cluster", "cluster"),
         ("prometheus_client", "metrics"), ("logging", "logging"), ("ocs/logs", "logging"),
         ("asyncpg", "asyncpg"), ("sqlite", "sqlite"), ("json", "json"),
         ("asyncio", "asyncio"), ("{built-in", "builtins"), ("{method", "builtins"))


def summarize_profile(path: Path) -> dict:
    stats = pstats.Stats(str(path))
    by_area: dict[str, float] = defaultdict(float)
    top = []
    total = 0.0
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        if any(s in filename or s in func for s in STARTUP):
            continue
        total += tt
        area = next((label for needle, label in AREAS if needle in filename
                     or needle in func), "other")
        by_area[area] += tt
        top.append((tt, f"{Path(filename).name}:{line}:{func}", nc))
    top.sort(reverse=True)
    return {"self_time_share": {k: round(v / total, 3) for k, v in
                                sorted(by_area.items(), key=lambda kv: -kv[1])},
            "top_self_time": [{"function": f, "calls": n, "seconds": round(t, 3)}
                              for t, f, n in top[:25]],
            "file": str(path)}


# ---------------------------------------------------------------------- front-end alone
class FixedDecision:
    """The charging core's place in `--frontend`: every request is granted the same."""

    def __init__(self):
        from ocs.charging.types import ChargeDecision, ResultCode, ServiceGrant
        from ocs.model import Kind
        self.decision = ChargeDecision(ResultCode.SUCCESS, (ServiceGrant(
            "rg:10", Kind.OCTETS, ResultCode.SUCCESS, granted=10_000_000, validity_time=3600,
            threshold=1_000_000, charged=USED),), account_id=1, subscriber_id=1)

    async def charge(self, request):
        return self.decision


class CountingTransport(asyncio.Transport):
    """A connected socket's place in `--frontend`: writes are counted, not sent."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 3868) if name in ("peername", "sockname") else default

    def write(self, data) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connect_in_process(server, transport: asyncio.Transport):
    """(connection, client): a connection of `server` on `transport`, opened by a
    client's CER as if it came over the socket."""
    from diameter.codec import encode
    conn = server.connection()
    conn.connection_made(transport)
    client = DiameterClient("127.0.0.1", 0, origin_host="pgw0.bench.example",
                            origin_realm="bench.example", destination_realm="bench.example")
    conn.data_received(encode(base.cer(client.local, *client.ids())))
    return conn, client


async def frontend_run(requests: int, chunk: int, log_level: str, log_credit_control: bool,
                       log_path: Path) -> float:
    """CPU seconds per CCR-U through one connection of a fresh DiameterServer."""
    from diameter.codec import encode
    from diameter.server import DiameterServer
    from ocs import logs
    from ocs.cluster import build
    from ocs.config import DiameterConfig, LogConfig, RedisConfig
    from ocs.metrics import Metrics

    with open(log_path, "w") as stream:
        logs.setup(LogConfig(level=log_level), stream=stream)
        cluster = build(RedisConfig(), node="bench")
        await cluster.start()
        config = DiameterConfig(listen="127.0.0.1:0", origin_host="ocs.bench.example",
                                origin_realm="bench.example", allowed_addresses=["127.0.0.1"],
                                max_in_flight=100_000, log_credit_control=log_credit_control)
        server = DiameterServer(config, charging=FixedDecision(), cluster=cluster,
                                metrics=Metrics())
        transport = CountingTransport()
        conn, client = connect_in_process(server, transport)
        sessions = 200
        raws = [encode(client.ccr(f"bench;{i % sessions}", UPDATE, 1 + i // sessions,
                                  msisdn=f"4179{i % sessions:07d}",
                                  msccs=[mscc(10, requested={}, used={"total": USED})]))
                for i in range(requests)]

        async def feed(batch: list[bytes]) -> None:
            for k in range(0, len(batch), chunk):
                conn.data_received(b"".join(batch[k:k + chunk]))
                while server.tasks:
                    await asyncio.sleep(0)
            await asyncio.sleep(0)  # the coalesced answers are flushed

        await feed(raws[:requests // 10])  # warm-up: caches, metric children
        measured = raws[requests // 10:]
        gc.collect()  # each run starts from the same heap, not the last run's garbage
        started = time.process_time()
        await feed(measured)
        cpu = time.process_time() - started
        if transport.writes == 0:
            raise RuntimeError("the server answered nothing")
        conn.connection_lost(None)
        await cluster.stop()
        logs.teardown()
    return cpu / len(measured)


async def frontend(args) -> dict:
    import diameter.codec as codec
    selected = getattr(codec, "_compiled", None)  # None: no compiled twin to compare

    async def variant(log_credit_control: bool, compiled) -> dict:
        codec._compiled = compiled
        try:
            with tempfile.TemporaryDirectory(prefix="ocs-bench-") as d:
                runs = [await frontend_run(args.requests, args.chunk, args.log_level,
                                           log_credit_control, Path(d) / "access.log")
                        for _ in range(args.repeat)]
        finally:
            codec._compiled = selected
        return {"best_us": round(min(runs) * 1e6, 1),
                "median_us": round(statistics.median(runs) * 1e6, 1)}

    out = {"codec": getattr(codec, "IMPLEMENTATION", "pure-python"),
           "cpu_per_ccr_u": await variant(args.log_credit_control, selected)}
    if selected is not None:
        out["cpu_per_ccr_u_pure_codec"] = await variant(args.log_credit_control, None)
    other = "off" if args.log_credit_control else "on"
    out[f"cpu_per_ccr_u_access_line_{other}"] = await variant(not args.log_credit_control,
                                                               selected)
    best = out["cpu_per_ccr_u"]["best_us"]
    out["ratios_of_best"] = {k: round(v["best_us"] / best, 2) for k, v in out.items()
                             if isinstance(v, dict) and "best_us" in v}
    return out


# ---------------------------------------------------------------------- main
async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--rate", type=float, default=None,
                    help="offered CCR-U/s (open loop); default: closed loop")
    ap.add_argument("--watchdogs", type=int, default=20_000)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-credit-control", action="store_true",
                    help="one info line per CCR ([diameter] log_credit_control)")
    ap.add_argument("--sqlite-synchronous", default="FULL")
    ap.add_argument("--profile", default=None, metavar="DIR")
    ap.add_argument("--pg-dsn", default=os.environ.get(
        "OCS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--frontend", action="store_true",
                    help="measure the Diameter layer alone, in process (see above)")
    ap.add_argument("--requests", type=int, default=20_000, help="--frontend: CCR-Us per run")
    ap.add_argument("--chunk", type=int, default=50,
                    help="--frontend: CCR-Us per read from the socket")
    ap.add_argument("--repeat", type=int, default=5, help="--frontend: runs per variant")
    args = ap.parse_args()
    if args.frontend:
        print(json.dumps({"benchmark": "diameter-frontend", "requests": args.requests,
                          "chunk": args.chunk, "repeat": args.repeat,
                          "log_level": args.log_level,
                          "log_credit_control": args.log_credit_control,
                          **await frontend(args)}, indent=2))
        return
    version = subprocess.run([OCSD, "--version"], capture_output=True, text=True).stdout.strip()
    result = {"benchmark": "diameter", "ocsd": version, "sessions": args.sessions,
              "updates_per_session": args.updates, "connections": args.connections,
              "offered_rate": args.rate, "log_level": args.log_level,
              "log_credit_control": args.log_credit_control,
              "cpus": os.cpu_count(), "backends": {}}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="ocs-bench-") as d:
            workdir = Path(d)
            if backend == "sqlite":
                result["backends"]["sqlite"] = await bench_backend(
                    "sqlite", f"sqlite:{workdir}/bench.db", "", args, workdir)
            elif backend == "postgres":
                async with throwaway_schema(args.pg_dsn) as schema:
                    result["backends"]["postgres"] = await bench_backend(
                        "postgres", args.pg_dsn, schema, args, workdir)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import uvloop
    uvloop.run(main())

"""CPU per RADIUS request through the daemon's own code, in process.

The whole request path of a real ocsd (its components started from a
configuration: store, cluster state, charging core, RADIUS server) is fed
datagrams in process: `RadiusServer.received`, exactly as the socket would call
it, with a window of requests in flight, and the replies collected where the
socket would send them. No kernel, no load generator: the figure is the
process's own CPU (main and store threads) per request, which on a shared
machine is far steadier than a socket benchmark (the best of several rounds
is quoted, and the median beside it).

Each variant runs in a child process: the build as installed (the Cython
kernels of cext/, when compiled), and the same code with their pure-Python
twins (`OCS_NO_EXTENSIONS=1`), alternating, so both see the same machine.
It is the benchmark to judge a change to the request path by: rounds agree
within a few per cent where the socket benchmarks scatter by a quarter. One
JSON document is printed:

    python -m bench.request_path [--mode auth|acct|ccr] [--requests 3000] [--rounds 7]
                                 [--pairs 3] [--window 64] [--sqlite-synchronous FULL]

`--window`: requests in flight; the store's group commits hold about as many,
so `--window 1` shows what a batch costs apart from its requests (a server at
moderate load commits small batches).

`--instructions`: instead of CPU time, the instructions each request costs,
counted by valgrind's callgrind (user space only: the kernel's share, a few
per cent here, is not in it). The count is the same whatever else the machine
is doing (runs agree within about 0.1%), so it judges a change on a busy day
when CPU times scatter by half. Each variant runs twice under callgrind, with
1 and with 3 measured rounds; the difference divided by the extra requests is
the figure, start-up and warm-up cancelled out. It is slow (callgrind runs the
code about fifty times slower): minutes, not seconds. One JSON document:

    python -m bench.request_path --instructions [--mode ...] [--requests 300]

`auth`: PAP Access-Requests with authorisation from the store (SQLite).
`acct`: one Interim-Update per session per round, each charged durably.
`ccr`: one Diameter CCR-Update per session per round (usage reported, more
quota asked: a commit and a durable re-reservation), fed to a connection of
the real Diameter server as the socket would, answers written to a transport
that only counts them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WINDOW = 64            # requests in flight (--window)
SYNCHRONOUS = "FULL"   # [store] sqlite_synchronous (--sqlite-synchronous)


class _Endpoint:
    """Stands where the UDP endpoint is: counts replies, wakes the feeder."""

    def __init__(self, loop, port: str):
        self.loop, self.port = loop, port
        self.replies = 0
        self.wanted = 0
        self.done: asyncio.Event | None = None

    def send(self, reply: bytes, addr) -> None:
        self.replies += 1
        if self.done is not None and self.replies >= self.wanted:
            self.done.set()


async def _child(mode: str, requests: int, rounds: int) -> dict:
    """The measurement, on a store in a directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="ocs-bench-") as tmp:
        if mode == "ccr":
            return await _child_ccr(tmp, requests, rounds)
        return await _child_radius(tmp, mode, requests, rounds)


async def _child_radius(tmp: str, mode: str, requests: int, rounds: int) -> dict:
    from bench.radius import Ocsd, acct_request, auth_request

    class Args:
        backend, sessions, pg_dsn = "sqlite", requests, None
        sqlite_synchronous, group_commit_window_ms, daemons = "FULL", 0, 1

    seeded = Ocsd(Args(), tmp)
    await seeded._seed()
    daemon = await _daemon(tmp, seeded.url, """
[radius]
auth_listen = "127.0.0.1:0"
acct_listen = "127.0.0.1:0"
[diameter]
enabled = false
""")
    server = next(c for c in daemon.components if c.name == "radius").server
    endpoint = _Endpoint(asyncio.get_running_loop(), mode)
    addr = ("127.0.0.1", 40000)
    per_request = []
    for rnd in range(rounds + 1):  # round 0 warms up (and, for acct, starts the sessions)
        if mode == "auth":
            packets = [auth_request(i % 256, f"b{i}", f"pw{i}") for i in range(requests)]
        elif rnd == 0:
            packets = [acct_request(i % 256, f"b{i}", f"s{i}", 1, 1) for i in range(requests)]
        else:
            packets = [acct_request((i + rnd) % 256, f"b{i}", f"s{i}", 3, rnd + 1)
                       for i in range(requests)]
        endpoint.replies = 0
        cpu = time.process_time()
        for k in range(0, requests, WINDOW):
            chunk = packets[k:k + WINDOW]
            endpoint.wanted = endpoint.replies + len(chunk)
            endpoint.done = asyncio.Event()
            for packet in chunk:
                server.received(endpoint, packet, addr)
            await asyncio.wait_for(endpoint.done.wait(), 30)
        cpu = time.process_time() - cpu
        if endpoint.replies != requests:
            raise SystemExit(f"{endpoint.replies} replies to {requests} requests")
        if rnd:
            per_request.append(cpu / requests * 1e6)
    await daemon._shutdown()
    from radius import codec
    return _report(codec.IMPLEMENTATION, per_request)


async def _daemon(tmp: str, url: str, sections: str):
    """A real ocsd's components, started in this process from a configuration:
    the store at `url`, the API on a port the system picks, and `sections`."""
    from ocs.config import load
    from ocs.daemon import Daemon, _tune_gc
    path = os.path.join(tmp, "ocs.toml")
    Path(path).write_text(f'[log]\nlevel = "warning"\n[store]\nurl = "{url}"\n'
                          f'sqlite_synchronous = "{SYNCHRONOUS}"\n'
                          '[api]\nlisten = "127.0.0.1:0"\n' + sections)
    daemon = Daemon(load(path), path)
    await daemon._start_all()
    # As the daemon does once ready: start-up's objects frozen, the cyclic collector on
    # its timer ([daemon] gc_interval) instead of counting allocations.
    _tune_gc()
    daemon.collector.start()
    return daemon


def _report(implementation: str, per_request: list[float]) -> dict:
    return {"implementation": implementation,
            "cpu_us_best": round(min(per_request), 1),
            "cpu_us_median": round(statistics.median(per_request), 1),
            "each_round": [round(x, 1) for x in per_request]}


async def _child_ccr(tmp: str, requests: int, rounds: int) -> dict:
    from bench.diameter import USED, CountingTransport, connect_in_process, prepare_store
    from diameter.client import INITIAL, UPDATE, mscc
    from diameter.codec import encode

    url = f"sqlite:{tmp}/ocs.db"
    await prepare_store(url, None, requests)
    daemon = await _daemon(tmp, url, """
[radius]
enabled = false
[diameter]
listen = "127.0.0.1:0"
origin_host = "ocs.bench.example"
origin_realm = "bench.example"
allowed_addresses = ["127.0.0.1"]
max_in_flight = 100000
""")
    class Keeping(CountingTransport):
        """Keeps what is written, to be read after the timed part."""
        def __init__(self):
            super().__init__()
            self.written: list[bytes] = []

        def write(self, data) -> None:
            self.writes += 1
            self.written.append(bytes(data))

    server = next(c for c in daemon.components if c.name == "diameter").server
    transport = Keeping()
    conn, client = connect_in_process(server, transport)
    per_request = []
    for rnd in range(rounds + 1):  # round 0 opens the sessions (CCR-I) and warms up
        raws = [encode(client.ccr(
            f"bench;{i}", INITIAL if rnd == 0 else UPDATE, rnd, msisdn=f"4179{i:07d}",
            msccs=[mscc(10, requested={}, used=None if rnd == 0 else {"total": USED})]))
            for i in range(requests)]
        transport.written.clear()
        cpu = time.process_time()
        for k in range(0, requests, WINDOW):
            conn.data_received(b"".join(raws[k:k + WINDOW]))
            if server.tasks:
                await asyncio.wait(set(server.tasks), timeout=30)
        await asyncio.sleep(0)  # the coalesced answers are flushed
        cpu = time.process_time() - cpu
        codes = _result_codes(b"".join(transport.written))
        if codes != {2001: requests}:
            raise SystemExit(f"round {rnd}: Result-Codes {codes} to {requests} requests")
        if rnd:
            per_request.append(cpu / requests * 1e6)
    await daemon._shutdown()
    from diameter import codec
    return _report(codec.IMPLEMENTATION, per_request)


def _result_codes(stream: bytes) -> dict:
    """Result-Code -> answers, of the CCAs in a stream of Diameter messages."""
    from diameter import tables as T
    from diameter.codec import decode
    from diameter.framing import Framer
    from diameter.base import value
    codes: dict = {}
    framer = Framer()
    for raw in framer.feed(stream):
        msg = decode(raw)
        if msg.code == T.CMD_CREDIT_CONTROL:
            code = value(msg.avps, T.RESULT_CODE)
            codes[code] = codes.get(code, 0) + 1
    return codes


def _measure(mode: str, requests: int, rounds: int, pure: bool) -> dict:
    env = dict(os.environ)
    env.pop("OCS_NO_EXTENSIONS", None)
    if pure:
        env["OCS_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-m", "bench.request_path", "--child", "--mode", mode,
                          "--requests", str(requests), "--rounds", str(rounds),
                          "--window", str(WINDOW), "--sqlite-synchronous", SYNCHRONOUS],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


INSTRUCTION_ROUNDS = (1, 3)  # measured rounds of the two callgrind runs of a variant


def _instructions(mode: str, requests: int, pure: bool) -> dict:
    """Instructions per request of one variant (the build, or the pure twins)."""
    env = dict(os.environ)
    env.pop("OCS_NO_EXTENSIONS", None)
    if pure:
        env["OCS_NO_EXTENSIONS"] = "1"

    def child(rounds: int) -> list[str]:
        return [sys.executable, "-m", "bench.request_path", "--child", "--mode", mode,
                "--requests", str(requests), "--rounds", str(rounds),
                "--window", str(WINDOW), "--sqlite-synchronous", SYNCHRONOUS]
    counted = callgrind_per_unit(child, requests, env)
    return {"implementation": counted.pop("last_output")["implementation"],
            "instructions_per_request": counted.pop("per_unit"), **counted}


def callgrind_per_unit(command, units_per_round: int, env: dict | None = None) -> dict:
    """Instructions per unit of work of `command(rounds)` (argv of a program that
    does `rounds` x `units_per_round` units after a start-up of its own, and prints
    a JSON line last): two runs under callgrind, with INSTRUCTION_ROUNDS rounds,
    so that the start-up cancels out of their difference."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    # One hash seed for every run: the layout of dicts and sets, and so the work of
    # the start-up, is then the same in both, and cancels out exactly.
    env = {**(os.environ if env is None else env), "PYTHONHASHSEED": "0"}
    totals, output = [], None
    with tempfile.TemporaryDirectory(prefix="ocs-bench-cg-") as tmp:
        for rounds in INSTRUCTION_ROUNDS:
            out_file = os.path.join(tmp, f"callgrind.{rounds}")
            run = subprocess.run([valgrind, "--tool=callgrind",
                                  f"--callgrind-out-file={out_file}", *command(rounds)],
                                 capture_output=True, text=True, env=env, cwd=ROOT,
                                 timeout=3600)
            if run.returncode != 0:
                raise SystemExit(f"child under callgrind failed:\n{run.stderr[-2000:]}")
            output = json.loads(run.stdout.strip().splitlines()[-1])
            totals.append(_callgrind_total(out_file))
    extra = (INSTRUCTION_ROUNDS[1] - INSTRUCTION_ROUNDS[0]) * units_per_round
    return {"per_unit": round((totals[1] - totals[0]) / extra), "instructions_total": totals,
            "rounds": list(INSTRUCTION_ROUNDS), "last_output": output}


def _callgrind_total(path: str) -> int:
    """The instructions counted in a callgrind output file (its totals line)."""
    with open(path) as fh:
        for line in fh:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")


def _instructions_report(mode: str, requests: int) -> dict:
    out = {"benchmark": "request_path", "measure": "instructions", "mode": mode,
           "requests_per_round": requests, "window": WINDOW,
           "sqlite_synchronous": SYNCHRONOUS}
    for variant in ("pure_python", "extensions"):
        out[variant] = _instructions(mode, requests, variant == "pure_python")
    out["extensions_over_pure_python"] = round(
        out["extensions"]["instructions_per_request"]
        / out["pure_python"]["instructions_per_request"], 3)
    return out


def main(argv=None) -> int:
    global WINDOW, SYNCHRONOUS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("auth", "acct", "ccr"), default="auth")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per round (3000; 300 with --instructions)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--pairs", type=int, default=3, help="runs of each variant, alternating")
    p.add_argument("--window", type=int, default=WINDOW, help="requests in flight")
    p.add_argument("--sqlite-synchronous", choices=("FULL", "NORMAL"), default=SYNCHRONOUS)
    p.add_argument("--instructions", action="store_true",
                   help="instructions per request under callgrind instead of CPU time "
                        "(steady on a busy machine; slow)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.window < 1:
        p.error("--window must be at least 1")
    if args.requests is None:
        args.requests = 300 if args.instructions else 3000
    WINDOW, SYNCHRONOUS = args.window, args.sqlite_synchronous
    if args.child:
        import uvloop
        result = uvloop.run(_child(args.mode, args.requests, args.rounds))
        print(json.dumps(result), flush=True)
        os._exit(0)  # the daemon's components are not stopped: nothing to keep
    if args.instructions:
        print(json.dumps(_instructions_report(args.mode, args.requests), indent=2))
        return 0
    runs = {"pure_python": [], "extensions": []}
    for _ in range(args.pairs):
        for variant in runs:
            runs[variant].append(_measure(args.mode, args.requests, args.rounds,
                                          variant == "pure_python"))
    out = {"benchmark": "request_path", "mode": args.mode, "requests_per_round": args.requests,
           "rounds": args.rounds, "pairs": args.pairs, "window": WINDOW,
           "sqlite_synchronous": SYNCHRONOUS}
    for variant, each in runs.items():
        out[variant] = {"cpu_us_best": min(r["cpu_us_best"] for r in each),
                        "cpu_us_median_of_bests": round(statistics.median(
                            r["cpu_us_best"] for r in each), 1),
                        "implementation": each[0]["implementation"],
                        "each_run": each}
    if out["extensions"]["implementation"] != "compiled":
        out["note"] = "the Cython kernels are not compiled in this build: run 'make build'"
    out["extensions_over_pure_python"] = round(
        out["extensions"]["cpu_us_median_of_bests"]
        / out["pure_python"]["cpu_us_median_of_bests"], 3)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

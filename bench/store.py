"""Balance-operation throughput of the store, group commit against one commit per op.

Runs CCR-U-like operations (commit the used units and reserve the next grant,
durably) from many concurrent sessions against each backend twice: with group
commit (the default) and with batches of one (the baseline: one transaction
per operation). Prints one JSON document with operations/s, latency
percentiles and the ratio, so the figure is always read against a baseline
measured in the same run on the same machine.

    python -m bench.store [--ops 20000] [--sessions 200] [--pg-dsn DSN] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time

from bench.pg import throwaway_schema
from ocs.model import Kind
from ocs.pricing import LinearPrice
from ocs.store import Store, make_driver

PRICE = LinearPrice(price=10_000, per=1_000_000)  # 0.01 per MB


async def run_load(store: Store, ops: int, sessions: int) -> dict:
    account = await store.create_account(name=f"bench-{secrets.token_hex(4)}", currency="EUR",
                                         billing="prepaid", opening_balance=10**15)
    per_session = max(1, ops // sessions)
    latencies: list[float] = []

    async def session(n: int) -> None:
        sid = f"bench-{n}"
        await store.reserve(account.id, sid, 10_000_000, kind=Kind.OCTETS, price=PRICE, seq=0)
        for seq in range(1, per_session + 1):
            t = time.perf_counter()
            await store.commit(account.id, sid, 10_000_000, kind=Kind.OCTETS, price=PRICE,
                               seq=seq, reserve=10_000_000)
            latencies.append(time.perf_counter() - t)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*[session(n) for n in range(sessions)])
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "ops": len(latencies),
        "ops_per_s": round(len(latencies) / wall),
        "p50_ms": round(q[49] * 1000, 3),
        "p99_ms": round(q[98] * 1000, 3),
        "client_cpu_us_per_op": round(cpu / len(latencies) * 1e6, 1),
    }


async def bench_backend(name: str, url: str, options: dict, ops: int, sessions: int) -> dict:
    out = {}
    for label, max_batch in (("group_commit", 512), ("one_per_transaction", 1)):
        store = Store(make_driver(url, **options), max_batch=max_batch)
        await store.open(migrate_schema=True)
        try:
            out[label] = await run_load(store, ops if max_batch > 1 else ops // 4, sessions)
        finally:
            await store.close()
    out["ratio_ops_per_s"] = round(out["group_commit"]["ops_per_s"]
                                   / out["one_per_transaction"]["ops_per_s"], 2)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=20_000)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--pg-dsn", default=os.environ.get(
        "OCS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = ap.parse_args()
    result = {"benchmark": "store", "ops": args.ops, "sessions": args.sessions,
              "python": sys.version.split()[0], "backends": {}}
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as d:
                result["backends"]["sqlite"] = await bench_backend(
                    "sqlite", f"sqlite:{d}/bench.db", {}, args.ops, args.sessions)
        elif backend == "postgres":
            async with throwaway_schema(args.pg_dsn) as schema:
                result["backends"]["postgres"] = await bench_backend(
                    "postgres", args.pg_dsn, {"schema": schema}, args.ops, args.sessions)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import uvloop
    uvloop.run(main())

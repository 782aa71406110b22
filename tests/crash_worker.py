"""Load generator for the SIGKILL test: commits usage as fast as it can and
prints one line per acknowledged commit ("ACK <op_key> <cost>"), flushed, so
the parent knows exactly what was acknowledged when it kills this process."""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ocs.store import Store, make_driver  # noqa: E402


async def main(url: str, account_id: int, schema: str) -> None:
    store = Store(make_driver(url, **({"schema": schema} if schema else {})))
    await store.open()

    async def session(n: int) -> None:
        seq = 0
        while True:
            seq += 1
            r = await store.commit(account_id, f"crash-{n}", 1_000, seq=seq, reserve=1_000)
            key = f"commit|crash-{n}||{seq}"
            sys.stdout.write(f"ACK {key} {r.cost}\n")
            sys.stdout.flush()

    await asyncio.gather(*[session(n) for n in range(32)])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""))

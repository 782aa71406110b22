"""Fuzzing a live ocsd: mutated valid messages on many connections never stop it
from answering the others.

Mutations of every byte vector (flipped bits, random bytes, truncations,
insertions, damaged AVP lengths; headers re-fixed half the time so they reach
the AVP decoder) are sent, in random chunks, on connections that did and did
not exchange capabilities. Throughout, a well-behaved client keeps getting
its answers; afterwards the daemon is alive and healthy, logged no traceback,
counted what it refused, and every balance still equals its ledger.
"""

from __future__ import annotations

import asyncio
import random

from diameter import base
from diameter import tables as T
from diameter.client import INITIAL, UPDATE, DiameterClient, mscc
from diameter.codec import encode, value
from tests.services import free_port
from tests.test_balance import assert_ledger_matches
from tests.test_daemon import Ocsd, http, in_store, metric
from tests.test_diameter_codec import _mutations
from tests.test_diameter_harness import VECTORS, load_vector

CONFIG = """
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.example"
origin_realm = "test.example"
allowed_realms = ["example.net", "pgw.example"]
cer_timeout = 2
"""


async def _prepare(store):
    plan = await store.create_plan(name="fuzz", currency="EUR", allowances=[
        {"kind": "octets", "units": 10**12}])
    ids = []
    for msisdn in ("41790000001", "41790000099"):  # the vectors' subscriber and the control
        acct = await store.create_account(name=f"f{msisdn}", currency="EUR", billing="prepaid",
                                          opening_balance=1_000_000)
        await store.create_subscriber(account_id=acct.id, plan_id=plan.id, msisdn=msisdn)
        ids.append(acct.id)
    return ids


async def _fuzz_connection(port: int, payloads: list[bytes], rng: random.Random,
                           with_cer: bool) -> int:
    """Send the payloads in random chunks; reconnect whenever the server hangs up."""
    sent = 0
    while sent < len(payloads):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if with_cer:
            local = base.LocalIdentity("fuzz.example.net", "example.net")
            writer.write(encode(base.cer(local, 1, 1)))
        drain = asyncio.create_task(reader.read(1 << 20))
        try:
            while sent < len(payloads) and not reader.at_eof():
                data = payloads[sent]
                sent += 1
                cut = rng.randrange(1, len(data) + 1)
                writer.write(data[:cut])
                await asyncio.sleep(0)
                writer.write(data[cut:])
                await writer.drain()
                await asyncio.sleep(0.002)  # interleave with the control client
                if drain.done():
                    if not drain.result():
                        break  # closed by the server
                    drain = asyncio.create_task(reader.read(1 << 20))
        except (ConnectionError, OSError):
            pass
        finally:
            drain.cancel()
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
    return sent


async def _control(port: int, stop: asyncio.Event) -> int:
    """A well-behaved PGW: one session, an update every few milliseconds."""
    c = DiameterClient("127.0.0.1", port, origin_host="control.pgw.example",
                       origin_realm="pgw.example", destination_realm="test.example")
    await c.connect()
    sid = "control;1"
    a = await c.request(c.ccr(sid, INITIAL, 0, msisdn="41790000099",
                              msccs=[mscc(10, requested={"total": 1000})]), timeout=5)
    assert value(a.avps, T.RESULT_CODE) == 2001
    n = 0
    while not stop.is_set() or n < 20:
        n += 1
        a = await c.request(c.ccr(sid, UPDATE, n, msisdn="41790000099", msccs=[
            mscc(10, requested={"total": 1000}, used={"total": 1000})]), timeout=5)
        assert value(a.avps, T.RESULT_CODE) == 2001, n
        await asyncio.sleep(0.005)
    await c.close()
    return n


def test_mutated_messages_never_stop_the_daemon_answering_others(tmp_path):
    port = free_port()
    d = Ocsd(tmp_path, extra=CONFIG.format(port=port))
    accounts = in_store(d.store_url, _prepare)
    d.start()
    rng = random.Random(3588)
    vectors = [load_vector(p.stem) for p in sorted(VECTORS.glob("*.hex"))]

    async def run():
        stop = asyncio.Event()
        control = asyncio.create_task(_control(port, stop))
        jobs = []
        for i in range(8):
            payloads = [m for raw in vectors for m in _mutations(raw, rng, 5)]
            rng.shuffle(payloads)
            jobs.append(_fuzz_connection(port, payloads[:150], random.Random(i), i % 4 != 0))
        sent = sum(await asyncio.gather(*jobs))
        stop.set()
        updates = await control
        return sent, updates
    try:
        sent, updates = asyncio.run(run())
        assert sent == 8 * 150 and updates >= 20
        assert d.proc.poll() is None
        status, _, body = http(d.url + "/healthz")
        assert status == 200
        _, _, body = http(d.url + "/metrics")
        text = body.decode()
        refused = sum(metric(text, "ocs_diameter_errors_total", f'{{reason="{r}"}}') or 0
                      for r in ("framing", "bad-request", "peer-refused", "closed"))
        assert refused > 50, text
        log = d.log()
        assert "Traceback" not in log and "unexpectedly" not in log
    finally:
        d.stop()

    async def ledgers(store):
        for account in accounts:
            await assert_ledger_matches(store, account)
    in_store(d.store_url, ledgers)

"""The ledger's invariants under concurrency and crashes, on both backends.

* 1,000 concurrent reservations against one account, from two store instances
  (two "nodes" on one database), never take it below its floor;
* concurrent replays of one commit charge once;
* after a randomized concurrent workload every balance is the sum of its
  ledger and the money moved is exactly what the results reported;
* a process SIGKILLed mid-load loses no operation it acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys

from ocs.balance import Outcome
from ocs.model import Kind
from ocs.pricing import LinearPrice
from ocs.store import Store, make_driver
from tests.test_balance import EUR, PER_MB, assert_ledger_matches

HERE = os.path.dirname(os.path.abspath(__file__))


async def second_node(store_target) -> Store:
    url, options = store_target
    node = Store(make_driver(url, **options))
    await node.open()
    return node


async def test_thousand_concurrent_reservations_never_pass_the_floor(store, store_target):
    other = await second_node(store_target)
    try:
        a = await store.create_account(name="shared", currency="EUR", billing="prepaid",
                                       opening_balance=100 * EUR)
        want = EUR // 4  # 1,000 x 0.25 EUR asks 250 EUR of a 100 EUR balance
        nodes = [store, other]
        results = await asyncio.gather(*[
            nodes[i % 2].reserve(a.id, f"call-{i}", want, min_units=want, seq=1)
            for i in range(1000)])
        granted = [r for r in results if r.outcome is Outcome.OK]
        assert all(r.granted == want for r in granted)
        assert len(granted) == 400
        assert all(r.outcome is Outcome.INSUFFICIENT for r in results if r not in granted)
        bal = await store.balance(a.id)
        assert bal["balance"] == 100 * EUR and bal["reserved"] == 100 * EUR
        assert bal["available"] == 0
        # Spending every grant in full lands exactly on the floor, never below it.
        sessions = [f"call-{i}" for i, r in enumerate(results) if r.outcome is Outcome.OK]
        commits = await asyncio.gather(*[
            nodes[i % 2].commit(a.id, s, want, seq=2, final=True)
            for i, s in enumerate(sessions)])
        assert all(c.below_floor == 0 for c in commits)
        bal = await store.balance(a.id)
        assert bal["balance"] == 0 and bal["reserved"] == 0
        await assert_ledger_matches(store, a.id)
    finally:
        await other.close()


async def test_concurrent_reservations_respect_a_postpaid_credit_limit(store, store_target):
    other = await second_node(store_target)
    try:
        a = await store.create_account(name="corp", currency="EUR", billing="postpaid",
                                       credit_limit=30 * EUR, opening_balance=0)
        voice = LinearPrice(price=EUR, per=60, first=60, next=60)
        results = await asyncio.gather(*[
            (store, other)[i % 2].reserve(a.id, f"c{i}", 120, kind=Kind.SECONDS, price=voice,
                                          min_units=60)
            for i in range(1000)])
        assert sum(r.granted for r in results) == 30 * 60
        bal = await store.balance(a.id)
        assert bal["available"] == 0 and bal["reserved"] == 30 * EUR
        await assert_ledger_matches(store, a.id)
    finally:
        await other.close()


async def test_concurrent_replays_of_one_commit_charge_once(store, store_target):
    other = await second_node(store_target)
    try:
        a = await store.create_account(name="r", currency="EUR", billing="prepaid",
                                       opening_balance=10 * EUR)
        await store.reserve(a.id, "s", 100_000_000, kind=Kind.OCTETS, price=PER_MB, seq=1)
        results = await asyncio.gather(*[
            (store, other)[i % 2].commit(a.id, "s", 100_000_000, kind=Kind.OCTETS,
                                         price=PER_MB, seq=2, reserve=100_000_000)
            for i in range(40)])
        assert sum(1 for r in results if not r.replayed) == 1
        assert {(r.cost, r.granted) for r in results} == {(EUR, 100_000_000)}
        bal = await store.balance(a.id)
        assert bal["balance"] == 9 * EUR and bal["reserved"] == EUR
        await assert_ledger_matches(store, a.id)
    finally:
        await other.close()


async def test_balance_is_the_sum_of_the_ledger_after_random_concurrent_load(store,
                                                                             store_target):
    other = await second_node(store_target)
    rng = random.Random(20261125)
    try:
        accounts = []
        for i in range(5):
            billing = "postpaid" if i % 2 else "prepaid"
            accounts.append(await store.create_account(
                name=f"acct{i}", currency="EUR", billing=billing,
                credit_limit=5 * EUR if billing == "postpaid" else 0,
                opening_balance=rng.randrange(0, 20) * EUR))
        for a in accounts[:3]:
            await store.credit(a.id, 500_000_000, kind=Kind.OCTETS)
        opening = {a.id: (await store.balance(a.id))["balance"] for a in accounts}
        moved = {a.id: 0 for a in accounts}   # money in (+) and out (-) per account
        overdrawn: set[int] = set()           # accounts that usage pushed below the floor
        seqs: dict[str, int] = {}

        async def worker(w: int):
            node = (store, other)[w % 2]
            for _ in range(60):
                a = rng.choice(accounts)
                session = f"w{w}-s{rng.randrange(4)}"
                seqs[session] = seq = seqs.get(session, 0) + 1
                roll = rng.random()
                if roll < 0.35:
                    r = await node.reserve(a.id, session, rng.randrange(1, 400_000_000),
                                           kind=Kind.OCTETS, price=PER_MB, seq=seq)
                elif roll < 0.75:
                    r = await node.commit(a.id, session, rng.randrange(0, 300_000_000),
                                          kind=Kind.OCTETS, price=PER_MB, seq=seq,
                                          reserve=rng.choice([0, 100_000_000]),
                                          final=rng.random() < 0.2)
                    moved[a.id] -= r.cost
                    if r.below_floor:
                        overdrawn.add(a.id)
                elif roll < 0.85:
                    r = await node.release(a.id, session)
                elif roll < 0.95:
                    amount = rng.randrange(1, 5) * EUR
                    r = await node.credit(a.id, amount, ref=f"pay-{w}-{seq}-{session}")
                    if not r.replayed:
                        moved[a.id] += amount
                else:
                    amount = -rng.randrange(1, 3) * EUR
                    r = await node.adjust(a.id, amount)
                    if r.ok:
                        moved[a.id] += amount

        await asyncio.gather(*[worker(w) for w in range(16)])
        for a in accounts:
            await assert_ledger_matches(store, a.id)
            bal = await store.balance(a.id)
            assert bal["balance"] == opening[a.id] + moved[a.id]
            if a.id not in overdrawn:  # reservations alone never push below the floor
                assert bal["balance"] - bal["reserved"] >= bal["floor"]
            held = sum(b.reserved for b in bal["buckets"] if b.kind is Kind.MONEY)
            assert held == bal["reserved"]
    finally:
        await other.close()


async def test_sigkill_mid_load_loses_no_acknowledged_operation(store, store_target):
    url, options = store_target
    a = await store.create_account(name="crash", currency="EUR", billing="prepaid",
                                   opening_balance=1_000 * EUR)
    await store.close()  # the worker process owns the database now
    cmd = [sys.executable, os.path.join(HERE, "crash_worker.py"), url, str(a.id),
           options.get("schema", "")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    acked: dict[str, int] = {}
    try:
        for line in proc.stdout:
            kind, key, cost = line.split()
            acked[key] = int(cost)
            if len(acked) >= 300:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 300

    reopened = Store(make_driver(url, **options))
    await reopened.open()
    try:
        ledger = await reopened.ledger(a.id, limit=1_000_000)
        charged_keys = {e.op_key for e in ledger if e.entry_type.value == "debit"}
        missing = [k for k in acked if k not in charged_keys]
        assert not missing, f"{len(missing)} acknowledged commits lost, e.g. {missing[:3]}"
        await assert_ledger_matches(reopened, a.id)
        # Every committed operation, acknowledged or not, is whole: its debits add up.
        spent = -sum(e.amount for e in ledger if e.entry_type.value == "debit")
        assert spent >= sum(acked.values())
        assert (await reopened.balance(a.id))["balance"] == 1_000 * EUR - spent
    finally:
        await reopened.close()


async def test_store_unavailable_answers_no_one_as_if_committed(store_target):
    """A store that cannot commit raises; it never returns a result."""
    url, options = store_target
    node = Store(make_driver(url, **options))
    await node.open(migrate_schema=True)
    a = await node.create_account(name="x", currency="EUR", billing="prepaid",
                                  opening_balance=EUR)
    await node.driver.close()  # the database goes away under the daemon
    from ocs.errors import StoreUnavailable
    try:
        await node.reserve(a.id, "s", 10)
    except StoreUnavailable:
        pass
    else:
        raise AssertionError("a reservation was acknowledged without a store")
    finally:
        await node._committer.stop(1)


async def test_a_node_never_charges_from_state_another_node_changed(store, store_target):
    """Each node keeps the balance state it committed (ocs.store.cache); a credit,
    a suspension or a session's usage charged by the other node must be seen."""
    other = await second_node(store_target)
    try:
        a = await store.create_account(name="two-nodes", currency="EUR", billing="prepaid",
                                       opening_balance=10 * EUR)
        price, mb, cent = PER_MB, 1_000_000, 10_000  # 0.01 EUR per MB

        def commit(node, seq, used):
            return node.commit(a.id, "sess", used, kind=Kind.OCTETS, price=price, seq=seq,
                               reserve=10 * mb, cumulative=True)
        await store.reserve(a.id, "sess", 10 * mb, kind=Kind.OCTETS, price=price, seq=0)
        first = await commit(store, 1, 100 * mb)
        assert first.cost == 100 * cent
        # The other node charges the same session further, and tops the account up.
        second = await commit(other, 2, 300 * mb)
        assert second.charged == 200 * mb
        await other.credit(a.id, 5 * EUR, ref="pay-1")
        # This node must charge from the other node's point, not from its own.
        third = await commit(store, 3, 350 * mb)
        assert third.charged == 50 * mb and third.session_units == 350 * mb
        assert third.balance == 15 * EUR - 350 * cent
        # A suspension through the other node stops this node's next grant.
        await other.set_account_status(a.id, "suspended")
        fourth = await commit(store, 4, 360 * mb)
        assert fourth.outcome is Outcome.ACCOUNT_SUSPENDED and fourth.granted == 0
        await assert_ledger_matches(store, a.id)
    finally:
        await other.close()

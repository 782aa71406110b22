"""Group commit of balance operations.

Operations that arrive while a batch is being committed wait in a queue; the
next batch takes all of them (up to `max_batch`), applies them in arrival order
in one transaction, and only after COMMIT answers every caller. Under light
load a batch is one operation and latency is one commit; under heavy load one
fsync serves hundreds of operations. Nobody is answered before commit
(DESIGN.md invariant 1).

`balance_program` is the transaction itself: lock the accounts, read the
idempotency records, reservations and buckets, run the in-memory engine
(`ocs.balance`), write what it changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Awaitable, Callable

from ..balance import (AccountState, BatchState, BucketState, ChargeState, Operation,
                       ReservationState, Result, apply, flatten, remap_result)
from ..errors import StoreUnavailable
from ..logs import Throttled
from ..model import AccountStatus, Billing, Kind, Session, holds_of
from .cache import BalanceCache, CachedAccount, CachedSession
from .sql import execute, executemany, fetch, fetchval, write_all

log = logging.getLogger("ocs.store")


def balance_program(ops: list[Operation], now: int, cache: BalanceCache | None = None):
    """Program: apply `ops` atomically; returns their results in order.

    With a `cache` (ocs.store.cache), the state of accounts nobody else changed
    since this node's last batch is taken from it instead of read; the caller
    must `publish` or `abort` the cache after the transaction.
    """
    cache = cache if cache is not None else BalanceCache(0, 0)
    cache.abort()  # anything still staged is from an attempt of this batch that failed
    parts = list(flatten(ops))
    state = BatchState(now=now)
    valid: dict[int, CachedAccount] = {}  # accounts whose cached state this batch uses
    cold: list[int] = []                   # accounts whose buckets must be read

    def take(rows) -> None:
        for r in rows:
            entry = cache.account(r["id"], r["version"])
            named = named_buckets.get(r["id"], ())
            if entry is not None and all(b in entry.state.buckets for b in named):
                valid[r["id"]] = entry
            else:
                entry = CachedAccount(r["version"], _account_state(r))
                cold.append(entry.state.id)
            state.accounts[entry.state.id] = entry.state
            cache.stage(entry, r["version"] + 1)  # the batch bumps it (below)

    named_buckets: dict[int, list[int]] = {}
    for op in parts:
        if getattr(op, "bucket_id", None):
            named_buckets.setdefault(op.account_id, []).append(op.bucket_id)
    rows = yield fetch(_LOCK_ACCOUNTS, sorted({op.account_id for op in ops}))
    take(rows)

    keys = [op.op_key for op in ops
            if op.op_key is not None and getattr(op, "keep_result", True)]
    if keys:
        rows = yield fetch("SELECT op_key, result FROM operations WHERE op_key = ANY($1)", keys)
        state.done = {r["op_key"]: r["result"] for r in rows}

    sessions = sorted({op.session for op in parts if hasattr(op, "session")})
    with_record = {op.session for op in ops
                   if getattr(op, "record", None) is not None or
                   getattr(op, "require_session", False)}
    unread: list[str] = []
    records_unread: list[str] = []
    for s in sessions:
        entry = cache.session(s, valid)
        if entry is None:
            unread.append(s)
            if s in with_record:
                records_unread.append(s)
            continue
        if entry.reservations:
            state.reservations[s] = entry.reservations
        for service, charge in entry.charges.items():
            state.charges[(s, service)] = charge
        if s in with_record:
            if entry.has_record:
                if entry.record is not None:
                    state.sessions[s] = entry.record
            else:
                records_unread.append(s)
    if unread:
        rows = yield fetch("SELECT * FROM reservations WHERE session = ANY($1)", unread)
        extra = sorted({r["account_id"] for r in rows} - state.accounts.keys())
        if extra:  # a session charging another account than the op says: lock that one too
            take((yield fetch(_LOCK_ACCOUNTS, extra)))
        charge_rows = yield fetch("SELECT * FROM session_charges WHERE session = ANY($1)",
                                  unread)
        for r in charge_rows:
            state.charges[(r["session"], r["service"])] = ChargeState(
                r["session"], r["service"], r["account_id"], Kind(r["kind"]), r["units"],
                r["cost"], r["seq"], bool(r["closed"]), r["unpaid"])
        for r in rows:
            state.reservations.setdefault(r["session"], {})[r["service"]] = ReservationState(
                r["session"], r["service"], r["account_id"], Kind(r["kind"]), r["units"],
                holds_of(r["holds"]), r["seq"], r["expires_at"],
                r["created_at"])
    if records_unread:
        rows = yield fetch("SELECT * FROM sessions WHERE id = ANY($1)", records_unread)
        state.sessions.update({r["id"]: Session.from_row(r) for r in rows})

    counter_keys = {key for op in parts
                    for key in (getattr(op, "counter", None),
                                getattr(op, "tier_counter", None)) if key}
    unread_counters: list[str] = []
    for key in sorted(counter_keys):
        for entry in valid.values():
            if key in entry.counters:
                state.counters[key] = entry.counters[key]
                break
        else:
            unread_counters.append(key)
    if unread_counters:
        rows = yield fetch("SELECT key, units FROM usage_counters WHERE key = ANY($1)",
                           unread_counters)
        state.counters.update({r["key"]: r["units"] for r in rows})
        for key in unread_counters:
            state.counters.setdefault(key, 0)

    if cold:
        rows = yield fetch(
            "SELECT * FROM buckets WHERE account_id = ANY($1) "
            "AND (main = 1 OR balance <> 0 OR reserved <> 0 OR id = ANY($2))",
            sorted(cold), sorted({b for a in cold for b in named_buckets.get(a, ())}))
        for r in rows:
            acct = state.accounts[r["account_id"]]
            acct.buckets[r["id"]] = BucketState(
                id=r["id"], kind=Kind(r["kind"]), service=r["service"], balance=r["balance"],
                reserved=r["reserved"], priority=r["priority"], valid_from=r["valid_from"],
                valid_to=r["valid_to"], main=bool(r["main"]), created_at=r["created_at"],
                floor=acct.floor if r["main"] else 0, name=r["name"])

    held_by = {(session, service): (res.account_id, res.kind)
               for session, held in state.reservations.items()
               for service, res in held.items()}
    indexed = {s: (r.status, r.framed_ip) for s, r in state.sessions.items()}
    results, writes = apply(state, ops)

    ids: dict[int, int] = {}
    for tmp, account_id, b in writes.new_buckets:
        real = yield fetchval(
            "INSERT INTO buckets (account_id, kind, service, balance, reserved, priority, "
            "valid_from, valid_to, main, name, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10) RETURNING id",
            account_id, b.kind.value, b.service, b.balance, b.reserved, b.priority,
            b.valid_from, b.valid_to, b.name, b.created_at)
        ids[tmp] = real
        b.id = real
        b.dirty = False
        buckets = state.accounts[account_id].buckets
        buckets[real] = buckets.pop(tmp)
    if ids:
        writes.remap(ids)
        results = [remap_result(r, ids) for r in results]
    _stage_sessions(cache, state, sessions, with_record,
                    {op.session: op.account_id for op in parts if hasattr(op, "session")})
    for op in parts:
        entry = cache.staged(op.account_id)
        for key in (getattr(op, "counter", None), getattr(op, "tier_counter", None)):
            if key and entry is not None:
                entry.counters[key] = state.counters.get(key, 0)

    out: list = [executemany(_BUMP, [(a, 1) for a in sorted(state.accounts)])]
    # ... and every other write of the batch, sent together (see sql.write_all)
    dirty = writes.dirty_buckets(state)
    if dirty:
        out.append(executemany("UPDATE buckets SET balance = $2, reserved = $3 WHERE id = $1",
                               [(b.id, b.balance, b.reserved) for b in dirty]))
        for b in dirty:
            b.dirty = False
    if writes.ledger:
        out.append(executemany(
            "INSERT INTO ledger (account_id, bucket_id, kind, amount, balance_after, entry_type, "
            "session, op_key, reason, actor, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            [(e.account_id, e.bucket_id, e.kind.value, e.amount, e.balance_after,
              e.entry_type.value, e.session, e.op_key, e.reason, e.actor, e.created_at)
             for e in writes.ledger]))
    if writes.deleted_reservations:
        out.append(executemany("DELETE FROM reservations WHERE session = $1 AND service = $2",
                               sorted(writes.deleted_reservations)))
    if writes.upserted_reservations:
        # A hold that replaces one of the same account and kind rewrites only what a
        # new hold changes: setting the indexed account_id costs SQLite three times
        # as much as the rest of the row.
        same, other = [], []
        for r in writes.upserted_reservations.values():
            row = (r.session, r.service, r.account_id, r.kind.value, r.units, _holds_json(r),
                   r.seq, r.expires_at, r.created_at)
            (same if held_by.get((r.session, r.service)) == (r.account_id, r.kind)
             else other).append(row)
        if same:
            out.append(executemany(_UPSERT_RESERVATION + _SAME_HOLDER, same))
        if other:
            out.append(executemany(_UPSERT_RESERVATION + "account_id = excluded.account_id, "
                                   "kind = excluded.kind, " + _SAME_HOLDER, other))
    if writes.charges:
        out.append(executemany(
            "INSERT INTO session_charges (session, service, account_id, kind, units, cost, seq, "
            "closed, updated_at, unpaid) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
            "ON CONFLICT (session, service) DO UPDATE SET units = excluded.units, "
            "cost = excluded.cost, seq = excluded.seq, closed = excluded.closed, "
            "updated_at = excluded.updated_at, unpaid = excluded.unpaid",
            [(c.session, c.service, c.account_id, c.kind.value, c.units, c.cost, c.seq,
              int(c.closed), now, c.unpaid) for c in writes.charges.values()]))
    if writes.counters:
        out.append(executemany(
            "INSERT INTO usage_counters (key, account_id, units, updated_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO UPDATE SET units = excluded.units, "
            "updated_at = excluded.updated_at",
            [(k, a, u, now) for k, (a, u) in writes.counters.items()]))
    if writes.sessions:
        # A record whose indexed columns (status, framed_ip) are as stored rewrites only
        # the rest: naming them in SET makes SQLite rewrite their three index entries,
        # about half the cost of the statement.
        same, other = [], []
        for x in writes.sessions.values():
            (same if indexed.get(x.id) == (x.status, x.framed_ip) else other).append(
                session_args(x))
        if same:
            out.append(executemany(_UPSERT_SESSION_SAME_INDEXED, same))
        if other:
            out.append(executemany(UPSERT_SESSION, other))
    if writes.cdrs:
        out.append(executemany(
            "INSERT INTO cdrs (session, account_id, subscriber_id, service, kind, started_at, "
            "ended_at, units, cost, currency, details, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            [(c["session"], c["account_id"], c["subscriber_id"], c["service"], c["kind"],
              c["started_at"], c["ended_at"], c["units"], c["cost"], c["currency"],
              json.dumps(c["details"], separators=(",", ":")), now) for c in writes.cdrs]))
    if writes.events:
        out.append(executemany(
            "INSERT INTO outbox (event_id, account_id, type, payload, created_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
            [(e["id"], e["account_id"], e["type"], json.dumps(e, separators=(",", ":")), now)
             for e in writes.events]))
    if writes.operations:
        out.append(executemany(
            "INSERT INTO operations (op_key, account_id, op_type, result, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(k, a, t, r.to_json(), now) for k, a, t, r in writes.operations]))
    yield write_all(*out)
    return results


# Locks the accounts in id order, so two nodes never deadlock. The batch bumps
# their version when it writes (_BUMP): the cache (ocs.store.cache) trusts an
# account only when the version found here is the one it committed last.
# (One UPDATE ... RETURNING would do both, but SQLite runs that form several
# times slower than the two statements together.)
_LOCK_ACCOUNTS = ("SELECT id, version, billing, credit_limit, status, low_balance_threshold, "
                  "currency FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE")
_BUMP = "UPDATE accounts SET version = version + $2 WHERE id = $1"


_UPSERT_RESERVATION = (
    "INSERT INTO reservations (session, service, account_id, kind, units, holds, seq, "
    "expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
    "ON CONFLICT (session, service) DO UPDATE SET ")
_SAME_HOLDER = ("units = excluded.units, holds = excluded.holds, seq = excluded.seq, "
                "expires_at = excluded.expires_at, created_at = excluded.created_at")


def bump_accounts_program(account_ids: list[int]):
    """Program fragment for writes outside the balance batch that change what it reads
    (buckets, sessions, an account's terms): the cache reads these accounts afresh."""
    yield executemany(_BUMP, [(a, 1) for a in sorted(set(account_ids))])


def _stage_sessions(cache: BalanceCache, state: BatchState, sessions: list[str],
                    with_record: set[str], owners: dict[str, int]) -> None:
    """Stage each session of the batch for the cache, under the account it charges:
    what it holds, what it was charged, its record. A session whose rows belong to
    several accounts, or that ended, is forgotten instead."""
    charges: dict[str, dict[str, ChargeState]] = {}
    for (session, service), charge in state.charges.items():
        charges.setdefault(session, {})[service] = charge
    for s in sessions:
        owner = cache.staged(owners[s])
        held = state.reservations.get(s) or {}
        charged = charges.get(s, {})
        record = state.sessions.get(s)
        accounts = {x.account_id for x in (*held.values(), *charged.values())}
        if owner is None or accounts - {owners[s]} or (record is not None and
                                                       record.status == "closed"):
            cache.stage_session(s, None)
            continue
        entry = CachedSession(owner, held, charged)
        if s in with_record:
            entry.record, entry.has_record = record, True
        else:
            before = cache.session(s, {owner.state.id: owner})
            if before is not None:
                entry.record, entry.has_record = before.record, before.has_record
        cache.stage_session(s, entry)


def _account_state(r) -> AccountState:
    return AccountState(r["id"], Billing(r["billing"]), r["credit_limit"],
                        AccountStatus(r["status"]),
                        low_balance_threshold=r["low_balance_threshold"], currency=r["currency"])


UPSERT_SESSION = (
    "INSERT INTO sessions (id, account_id, subscriber_id, proto, nas, nas_session_id, "
    "framed_ip, status, last_seq, started_at, updated_at, ended_at, attrs) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
    "ON CONFLICT (id) DO UPDATE SET framed_ip = COALESCE(excluded.framed_ip, sessions.framed_ip), "
    "status = excluded.status, last_seq = excluded.last_seq, "
    "updated_at = excluded.updated_at, ended_at = excluded.ended_at, attrs = excluded.attrs")


_UPSERT_SESSION_SAME_INDEXED = UPSERT_SESSION.split(" DO UPDATE SET ")[0] + (
    " DO UPDATE SET last_seq = excluded.last_seq, updated_at = excluded.updated_at, "
    "ended_at = excluded.ended_at, attrs = excluded.attrs")


def session_args(x: Session) -> tuple:
    return (x.id, x.account_id, x.subscriber_id, x.proto, x.nas, x.nas_session_id, x.framed_ip,
            x.status, x.last_seq, x.started_at, x.updated_at, x.ended_at,
            json.dumps(x.attrs, separators=(",", ":")))


def _holds_json(r: ReservationState) -> str:
    return "[" + ",".join(f"[{b},{a}]" for b, a in r.holds) + "]"


def purge_operations_program(before: int):
    """Program: forget idempotency records and closed sessions' charging records
    older than `before` (replays and retransmissions are minutes old)."""
    n = yield execute("DELETE FROM operations WHERE created_at < $1", before)
    n += yield execute("DELETE FROM session_charges WHERE closed = 1 AND updated_at < $1", before)
    n += yield execute("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1",
                       before)
    return n


#: Seconds a batch may take before a warning: its requests waited that long, and a NAS
#: or PGW retransmits after a few seconds.
SLOW_BATCH = 1.0


class GroupCommitter:
    """Queues balance operations and commits them in batches.

    `run_batch(ops)` must apply the operations in one transaction and return
    their results; it is called by one worker at a time. `what` names the
    operations in the warning about a slow batch.
    """

    def __init__(self, run_batch: Callable[[list[Operation]], Awaitable[list[Result]]], *,
                 window: float = 0.0, max_batch: int = 512,
                 observe: Callable[[int, float], None] | None = None,
                 what: str = "balance"):
        self._run_batch = run_batch
        self._what = what
        self._slow = Throttled(log)
        self._window = window
        self._max_batch = max_batch
        self._observe = observe
        self._queue: asyncio.Queue = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    def start(self) -> None:
        if self._worker is None:
            # Kept: asyncio.get_running_loop() costs a getpid() system call each time.
            self._loop = asyncio.get_running_loop()
            self._worker = self._loop.create_task(self._work(), name="ocs-group-commit")

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def submit(self, op: Operation) -> Result:
        if self._closing:
            raise StoreUnavailable("store is stopping")
        if self._worker is None:
            self.start()
        fut = self._loop.create_future()
        self._queue.put_nowait((op, fut))
        # A caller cancelled while waiting cancels only its own future: the batch
        # still applies the operation and skips answering a future already done.
        return await fut

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; commit what is queued (within `timeout`), then stop the worker."""
        self._closing = True
        if self._worker is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), timeout)
        except asyncio.TimeoutError:
            log.error("group commit did not drain within %.1fs; %d operations unanswered",
                      timeout, self._queue.qsize())
            self._worker.cancel()
        self._fail_queued(StoreUnavailable("store stopped"))
        self._worker = None

    def _fail_queued(self, exc: Exception) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item[1].done():
                item[1].set_exception(exc)

    async def _work(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
            if self._window:
                await asyncio.sleep(self._window)
            while len(batch) < self._max_batch and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            ops = [op for op, _ in batch]
            started = time.perf_counter()
            try:
                results = await self._run_batch(ops)
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreUnavailable("store stopped mid-commit"))
                raise
            except StoreUnavailable as exc:
                # Lost in COMMIT, it may have committed: its callers answer no one,
                # and the retransmissions are charged once either way.
                log.error("balance batch of %d not confirmed: %s", len(ops), exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            except Exception:  # noqa: BLE001 - isolate the operation that broke the batch
                log.exception("balance batch of %d failed; retrying one by one", len(ops))
                await self._one_by_one(batch)
                continue
            took = time.perf_counter() - started
            if self._observe:
                self._observe(len(ops), took)
            if took >= SLOW_BATCH:
                self._slow.warning("slow", "a %s batch of %d took %.1f s to commit: its "
                                   "requests were answered that late (the disk or the "
                                   "database is slow)", self._what, len(ops), took)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)

    async def _one_by_one(self, batch) -> None:
        for op, fut in batch:
            try:
                (result,) = await self._run_batch([op])
            except Exception as exc:  # noqa: BLE001 - reported to this op's caller
                log.error("balance operation %s failed: %s", type(op).__name__, exc)
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, StoreUnavailable)
                                      else StoreUnavailable(f"operation failed: {exc}"))
            else:
                if not fut.done():
                    fut.set_result(result)

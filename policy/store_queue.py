"""The action queue as a table in the store (``policy_actions``): the embedded mode.

Deciding and queueing are one transaction: the session's new state and its
actions are written together, so a crash leaves either both or neither.
Taking due actions is one transaction too: rows whose lease ran out are put
back first, then due rows are locked (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several workers never take the same row; SQLite has one
writer anyway), the per-NAS limit is applied by counting the NAS's running
rows, and the taken rows become ``running`` with a lease and one more
attempt counted. Counting the attempt when it starts, not when it ends,
means an action that kills its worker every time still reaches the
dead-letter threshold.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ocs.model import now_us
from ocs.store.sql import execute, fetch, fetchrow

from . import state
from .decide import Decision
from .model import Action
from .queue import DEAD, DONE, PENDING, RUNNING, SUPERSEDED, ActionQueue, entry

log = logging.getLogger("ocs.policy")


def _action(row) -> Action:
    return Action(session=row["session"], account_id=row["account_id"], action=row["action"],
                  backend=row["backend"], generation=row["generation"], reason=row["reason"],
                  nas=row["nas"], params=json.loads(row["params"] or "{}"), id=str(row["id"]),
                  attempts=row["attempts"], created_at=row["created_at"])


def _listed(row) -> dict[str, Any]:
    a = _action(row)
    return entry(a, status=row["status"], next_at=row["next_at"], result=row["result"],
                 error=row["last_error"], updated_at=row["updated_at"])


def _enqueue(actions: list[Action], now: int):
    """Program fragment: insert actions (a repeated key is a no-op) and drop the
    pending actions of older decisions for the same sessions."""
    added = 0
    for a in actions:
        added += yield execute(
            "INSERT INTO policy_actions (action_key, session, account_id, nas, backend, action, "
            "generation, reason, params, status, attempts, next_at, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10, $10) "
            "ON CONFLICT (action_key) DO NOTHING",
            a.key, a.session, a.account_id, a.nas, a.backend, a.action, a.generation, a.reason,
            state.json_params(dict(a.params)), now)
    newest: dict[str, int] = {}
    for a in actions:
        newest[a.session] = max(newest.get(a.session, 0), a.generation)
    for session, generation in newest.items():
        yield execute("UPDATE policy_actions SET status = 'superseded', updated_at = $3 "
                      "WHERE session = $1 AND status = 'pending' AND generation < $2",
                      session, generation, now)
    return added


def _commit_program(decisions: list[tuple[Decision, str | None]], now: int):
    saved = []
    for decision, event_id in decisions:
        if (yield from state.save_state(decision, now, event_id)):
            yield from _enqueue(decision.actions(now), now)
            saved.append(decision)
    return saved


def _requeue_program(actions: list[Action], now: int):
    return (yield from _enqueue(actions, now))


def _take_program(limit: int, per_nas: int, lease_us: int, owner: str, now: int):
    yield execute("UPDATE policy_actions SET status = 'pending', owner = NULL, "
                  "lease_until = NULL, last_error = $2, updated_at = $1 "
                  "WHERE status = 'running' AND lease_until < $1", now,
                  "lease expired: the worker holding it stopped or hung")
    busy = yield fetch("SELECT nas, count(*) AS n FROM policy_actions WHERE status = 'running' "
                       "GROUP BY nas")
    running = {r["nas"]: int(r["n"]) for r in busy}
    # NAS at their limit are left out in SQL, so a backlog on one NAS cannot hide
    # the due actions of the others behind it.
    full = [nas or "" for nas, n in running.items() if n >= per_nas]
    rows = yield fetch("SELECT * FROM policy_actions WHERE status = 'pending' AND next_at <= $1 "
                       "AND NOT (coalesce(nas, '') = ANY($3)) "
                       "ORDER BY next_at, id LIMIT $2 FOR UPDATE SKIP LOCKED", now, limit * 4,
                       full)
    if not rows:
        return []
    picked = []
    for r in rows:
        n = running.get(r["nas"], 0)
        if n >= per_nas:
            continue
        running[r["nas"]] = n + 1
        picked.append(r)
        if len(picked) >= limit:
            break
    if picked:
        yield execute("UPDATE policy_actions SET status = 'running', owner = $1, "
                      "lease_until = $2, attempts = attempts + 1, updated_at = $3 "
                      "WHERE id = ANY($4)", owner, now + lease_us, now,
                      [r["id"] for r in picked])
    return [_action(r) for r in picked]


def _finish_program(action_id: int, status: str, result: str | None, error: str | None,
                    next_at: int | None, now: int):
    return (yield execute(
        "UPDATE policy_actions SET status = $2, result = $3, last_error = $4, "
        "next_at = coalesce($5, next_at), owner = NULL, lease_until = NULL, updated_at = $6 "
        "WHERE id = $1 AND status = 'running'", action_id, status, result, error, next_at, now))


def _replace_program(action_id: int, result: str, error: str, fallback: Decision, now: int):
    yield execute("UPDATE policy_actions SET status = 'replaced', result = $2, last_error = $3, "
                  "owner = NULL, lease_until = NULL, updated_at = $4 WHERE id = $1",
                  action_id, result, error, now)
    if not (yield from state.save_state(fallback, now, None)):
        return False
    yield from _enqueue(fallback.actions(now), now)
    return True


def _revive_program(action_id: int, now: int):
    return (yield fetchrow(
        "UPDATE policy_actions SET status = 'pending', attempts = 0, next_at = $2, "
        "result = NULL, updated_at = $2 WHERE id = $1 AND status = 'dead' RETURNING *",
        action_id, now))


def _purge_program(before: int):
    n = yield execute("DELETE FROM policy_actions WHERE status IN ('done', 'superseded', "
                      "'replaced') AND updated_at < $1", before)
    n += yield from state.purge_states_program(before)
    return n


class StoreQueue(ActionQueue):
    kind = "store"

    def __init__(self, store, *, owner: str, per_nas: int, lease: float):
        super().__init__()
        self.store = store
        self.owner = owner
        self.per_nas = per_nas
        self.lease_us = int(lease * 1_000_000)

    def _run(self, program, *args, write: bool = True):
        return self.store.driver.run(program, *args, write=write)

    async def states(self, sessions):
        return await self._run(state.states_program, list(sessions), write=False)

    async def account_states(self, account_id):
        return await self._run(state.account_states_program, account_id, write=False)

    async def commit(self, decisions, now):
        if not decisions:
            return []
        saved = await self._run(_commit_program, list(decisions), now)
        if saved:
            self.wakeup.set()
        return saved

    async def requeue(self, actions):
        added = await self._run(_requeue_program, list(actions), now_us())
        if added:
            self.wakeup.set()
        return added

    async def take(self, limit):
        if limit <= 0:
            return []
        return await self._run(_take_program, limit, self.per_nas, self.lease_us, self.owner,
                               now_us())

    async def _finish(self, action, status, result, error=None, next_at=None):
        touched = await self._run(_finish_program, int(action.id), status, result, error,
                                  next_at, now_us())
        if not touched:
            log.warning("action %s was no longer held by this worker when it finished "
                        "(lease expired?); outcome %s", action.key, result)

    async def done(self, action, result):
        await self._finish(action, DONE, result)

    async def retry(self, action, delay, result, error):
        await self._finish(action, PENDING, result, error, now_us() + int(delay * 1_000_000))
        self.wakeup.set()

    async def bury(self, action, result, error):
        await self._finish(action, DEAD, result, error)

    async def supersede(self, action):
        await self._finish(action, SUPERSEDED, "superseded")

    async def replace(self, action, result, error, fallback):
        ok = await self._run(_replace_program, int(action.id), result, error, fallback,
                             now_us())
        if ok:
            self.wakeup.set()
        return ok

    async def annotate(self, action, result):
        def program():
            yield execute("UPDATE policy_actions SET result = $2 WHERE id = $1",
                          int(action.id), result)
        await self._run(program)

    async def listing(self, statuses, limit=100):
        def program():
            return (yield fetch("SELECT * FROM policy_actions WHERE status = ANY($1) "
                                "ORDER BY id DESC LIMIT $2", list(statuses), limit))
        return [_listed(r) for r in await self._run(program, write=False)]

    async def revive(self, action_id):
        try:
            row_id = int(action_id)
        except ValueError:
            return None
        if not 0 < row_id < 2**63:  # no row has it (and it overflows BIGINT)
            return None
        row = await self._run(_revive_program, row_id, now_us())
        if row is None:
            return None
        self.wakeup.set()
        return _listed(row)

    async def counts(self):
        def program():
            return (yield fetch("SELECT status, count(*) AS n FROM policy_actions "
                                "WHERE status IN ('pending', 'running', 'dead') "
                                "GROUP BY status"))
        rows = await self._run(program, write=False)
        found = {r["status"]: int(r["n"]) for r in rows}
        return {s: found.get(s, 0) for s in (PENDING, RUNNING, DEAD)}

    async def purge(self, before):
        return await self._run(_purge_program, before)


__all__ = ["StoreQueue"]

"""The enforcement state of sessions (table ``policy_sessions``), in the store.

Both queue modes keep it here: it is what the decision step compares a new
event with, and what lets a worker see that the action it holds belongs to
a decision that has since been replaced. Functions named ``*_program`` are
store programs (`ocs.store.sql`): generators run in one transaction by
either backend's driver.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ocs.store.sql import execute, fetch, fetchval

from .decide import Decision, State


def _state(row) -> State:
    return State(session=row["session"], account_id=row["account_id"], action=row["action"],
                 reason=row["reason"], generation=row["generation"], event_at=row["event_at"],
                 params=json.loads(row["params"] or "{}"))


def states_program(sessions: list[str]):
    """{session: State} for the sessions that have one."""
    if not sessions:
        return {}
    rows = yield fetch("SELECT * FROM policy_sessions WHERE session = ANY($1)", sessions)
    return {r["session"]: _state(r) for r in rows}


def account_states_program(account_id: int):
    rows = yield fetch("SELECT * FROM policy_sessions WHERE account_id = $1", account_id)
    return {r["session"]: _state(r) for r in rows}


def save_state(decision: Decision, now: int, event_id: str | None):
    """Program fragment: record `decision` as the session's state, only if the
    state is still the one it was decided from (its generation is one less).
    Returns False when another decision got there first."""
    sid = decision.session
    current = yield fetchval("SELECT generation FROM policy_sessions WHERE session = $1 "
                             "FOR UPDATE", sid)
    if (current or 0) != decision.generation - 1:
        return False
    params = dict(decision.state().params)
    if event_id:
        params["event_id"] = event_id
    yield execute(
        "INSERT INTO policy_sessions (session, account_id, action, reason, generation, "
        "event_at, params, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (session) DO UPDATE SET account_id = excluded.account_id, "
        "action = excluded.action, reason = excluded.reason, "
        "generation = excluded.generation, event_at = excluded.event_at, "
        "params = excluded.params, updated_at = excluded.updated_at",
        sid, decision.account_id, decision.action, decision.reason,
        decision.generation, decision.event_at, json.dumps(params, separators=(",", ":")),
        now)
    return True


def save_states_program(decisions: Iterable[tuple[Decision, str | None]], now: int):
    """Save several decisions; returns the ones saved (others lost a race)."""
    saved = []
    for decision, event_id in decisions:
        if (yield from save_state(decision, now, event_id)):
            saved.append(decision)
    return saved


def purge_states_program(before: int):
    """Forget the state of sessions that are no longer active and were last
    decided before `before`."""
    return (yield execute(
        "DELETE FROM policy_sessions WHERE updated_at < $1 AND NOT EXISTS ("
        "SELECT 1 FROM sessions s WHERE s.id = policy_sessions.session "
        "AND s.status = 'active')", before))


def json_params(params: Any) -> str:
    return json.dumps(params, separators=(",", ":"), sort_keys=True)


__all__ = ["states_program", "account_states_program", "save_state", "save_states_program",
           "purge_states_program", "throttled_program", "json_params"]


def throttled_program():
    """Active sessions whose enforcement state is a throttle: (session, nas,
    framed_ip, params), to re-apply shaping kept only in the kernel."""
    rows = yield fetch("SELECT p.session, p.params, s.framed_ip, s.nas FROM policy_sessions p "
                       "JOIN sessions s ON s.id = p.session "
                       "WHERE p.action = 'throttle' AND s.status = 'active'")
    return [(r["session"], r["nas"], r["framed_ip"], json.loads(r["params"] or "{}"))
            for r in rows]

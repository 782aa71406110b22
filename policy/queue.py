"""The durable action queue: what every mode of it promises the worker and the API.

Two implementations, one contract (one test suite runs on both):

* `policy.store_queue.StoreQueue` -- a table in the store (the embedded
  default; also fine for one node on PostgreSQL);
* `policy.redis_queue.StreamQueue` -- Redis Streams with a consumer group,
  for several ocsd nodes sharing one Redis.

Guarantees: an action is delivered at least once (a worker that dies while
holding one loses it when its lease runs out, and another worker takes it);
enqueueing is idempotent per `Action.key`; a failed attempt comes back after
its back-off delay; an action that failed `max_attempts` times, or was
refused for good, is dead-lettered and stays listed until an operator
retries it. The enforcement *state* of sessions always lives in the store
(`policy.state`), whichever mode carries the actions.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

from .decide import Decision, State
from .model import Action

#: Listing states: waiting (pending, or a retry whose time has not come),
#: being carried out, and given up.
PENDING, RUNNING, DEAD = "pending", "running", "dead"
#: Finished states (store mode lists them until purged).
DONE, SUPERSEDED, REPLACED = "done", "superseded", "replaced"


class ActionQueue(ABC):
    kind: str

    def __init__(self):
        #: Set when something was enqueued, so an idle worker looks at once.
        self.wakeup = asyncio.Event()

    async def start(self) -> None:
        """Connect what the queue needs; idempotent."""

    async def stop(self) -> None:
        """Release connections; what is queued stays queued."""

    # ------------------------------------------------------------ state (store)
    @abstractmethod
    async def states(self, sessions: list[str]) -> dict[str, State]:
        """The enforcement state of each session that has one."""

    @abstractmethod
    async def account_states(self, account_id: int) -> dict[str, State]:
        """The enforcement state of every session of an account that has one."""

    # ------------------------------------------------------------ producing
    @abstractmethod
    async def commit(self, decisions: list[tuple[Decision, str | None]],
                     now: int) -> list[Decision]:
        """Record each decision as its session's state and queue its actions.

        Each item is (decision, id of the event behind it or None). A decision
        whose session state moved on meanwhile (another node decided first)
        is left out of the result and nothing of it is queued: the caller
        decides again from the new state.
        """

    @abstractmethod
    async def requeue(self, actions: list[Action]) -> int:
        """Queue actions again whose decision is already recorded (a crash
        came between the two). Idempotent; returns how many were new."""

    # ------------------------------------------------------------ consuming
    @abstractmethod
    async def take(self, limit: int) -> list[Action]:
        """Up to `limit` due actions, now held by this worker for the lease.

        Respects the per-NAS concurrency limit; `Action.attempts` counts the
        attempts before this one.
        """

    @abstractmethod
    async def done(self, action: Action, result: str) -> None:
        """The action was carried out (or is moot: the session is gone)."""

    @abstractmethod
    async def retry(self, action: Action, delay: float, result: str, error: str) -> None:
        """The attempt failed; offer the action again after `delay` seconds."""

    @abstractmethod
    async def bury(self, action: Action, result: str, error: str) -> None:
        """Give up: dead-letter the action."""

    @abstractmethod
    async def supersede(self, action: Action) -> None:
        """A newer decision for the session replaced this action's: drop it."""

    @abstractmethod
    async def replace(self, action: Action, result: str, error: str,
                      fallback: Decision) -> bool:
        """The element refused the action and the plan allows a disconnect:
        finish it as replaced, record `fallback` as the session's state and
        queue its actions. False when a newer decision made it moot."""

    @abstractmethod
    async def annotate(self, action: Action, result: str) -> None:
        """Update the result of a finished action (a disconnect confirmed)."""

    # ------------------------------------------------------------ operators
    @abstractmethod
    async def listing(self, statuses: tuple[str, ...], limit: int = 100) -> list[dict[str, Any]]:
        """Actions in these states, newest first, as plain dicts (see `entry`)."""

    @abstractmethod
    async def revive(self, action_id: str) -> dict[str, Any] | None:
        """Queue a dead-lettered action again with a fresh attempt count;
        None if there is no such dead action."""

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """{pending, running, dead}: how many actions are in each state."""

    async def purge(self, before: int) -> int:
        """Forget finished actions older than `before` (store mode)."""
        return 0


def entry(action: Action, *, status: str, next_at: int | None = None,
          result: str | None = None, error: str | None = None,
          updated_at: int | None = None) -> dict[str, Any]:
    """How an action appears in listings (API `PolicyActionView`)."""
    return {"id": action.id, "key": action.key, "session": action.session,
            "account_id": action.account_id, "nas": action.nas, "backend": action.backend,
            "action": action.action, "generation": action.generation,
            "reason": action.reason, "status": status, "attempts": action.attempts,
            "next_at": next_at, "result": result, "last_error": error,
            "params": {k: v for k, v in action.params.items()},
            "created_at": action.created_at, "updated_at": updated_at or action.created_at}


__all__ = ["ActionQueue", "entry", "PENDING", "RUNNING", "DEAD", "DONE", "SUPERSEDED",
           "REPLACED"]

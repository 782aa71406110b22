"""Consumes the charging event stream and turns events into queued actions.

Reads the cluster event stream (`ocs.cluster.EventStream`: Redis Streams,
or in process on one node) as consumer group ``policy``, so with several
nodes each event is handled by one of them. An event is acknowledged only
once its decisions are recorded and their actions queued; if that fails
(the store is down) the event stays pending and is taken again, by this
node or another, after ``[policy] lease`` seconds. Event ids are
deterministic and the decision step compares each event with the session's
state, so an event handled twice queues nothing twice. An entry that is not
an event at all is counted and acknowledged, so it cannot wedge the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping

from ocs.errors import NotFound, OcsError, StoreUnavailable
from ocs.logs import log_context
from ocs.model import Session
from ocs.tasks import cancel_and_wait

from . import decide

log = logging.getLogger("ocs.policy")

GROUP = "policy"
_PAGE = 1000
#: Event types the charging core emits (ocs.balance, ocs.store.Store.set_account_status).
KNOWN = (frozenset(decide.SESSION_EVENTS) | frozenset(decide.ACCOUNT_EVENTS) | decide.NOTICES
         | decide.PLAN_EVENTS)


class EventConsumer:
    def __init__(self, service, *, consumer: str):
        self.service = service
        self.consumer = consumer
        self.handled = 0
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name="ocs-policy-events")

    async def stop(self) -> None:
        self._stopping = True  # ends the loop even if its cancellation were lost
        await cancel_and_wait([self._task], "policy event consumer")
        self._task = None

    # ------------------------------------------------------------ loop
    async def _loop(self) -> None:
        events = self.service.cluster.events
        cfg = self.service.config
        ready = False
        last_reclaim = 0.0
        while not self._stopping:
            try:
                if not ready:
                    await events.ensure_group(GROUP)
                    ready = True
                batch: list[tuple[str, dict]] = []
                now = time.monotonic()
                if now - last_reclaim >= cfg().lease / 2:
                    last_reclaim = now
                    batch = await events.reclaim(GROUP, self.consumer,
                                                 min_idle_ms=int(cfg().lease * 1000))
                if not batch:
                    batch = await events.consume(GROUP, self.consumer, count=100,
                                                 block_ms=1000)
            except StoreUnavailable as exc:  # ClusterUnavailable is one
                log.warning("policy cannot read the event stream: %s", exc)
                await asyncio.sleep(cfg().poll_interval)
                continue
            except OcsError as exc:
                log.error("policy event stream: %s", exc)
                await asyncio.sleep(cfg().poll_interval)
                continue
            for entry_id, event in batch:
                try:
                    await self.handle(event)
                except StoreUnavailable as exc:
                    # Not acknowledged: taken again after the lease (here or elsewhere).
                    log.warning("event %s not handled, the store is unavailable: %s",
                                event.get("id"), exc)
                    await asyncio.sleep(cfg().poll_interval)
                    break
                except Exception:  # noqa: BLE001 - a poison event must not stop enforcement
                    log.exception("event %s could not be handled; dropped", event.get("id"))
                    etype = event.get("type")
                    self.service.count_event(etype if etype in KNOWN else "other", "failed")
                try:
                    await events.ack(GROUP, [entry_id])
                except StoreUnavailable as exc:
                    log.warning("event %s handled but not acknowledged (%s); a redelivery "
                                "is harmless", event.get("id"), exc)

    # ------------------------------------------------------------ one event
    async def handle(self, event: Mapping[str, Any]) -> list[decide.Decision]:
        """Decide and queue what `event` asks for; returns the decisions recorded."""
        etype = event.get("type")
        if "_invalid" in event or not isinstance(etype, str):
            self.service.count_event("invalid", "ignored")
            log.warning("ignored a stream entry that is not a charging event: %s",
                        str(event)[:200])
            return []
        self.handled += 1
        if etype not in KNOWN:
            etype = "other"   # metric labels stay a bounded set
        scope = decide.affected(event)
        if scope == "none":
            self.service.count_event(etype, "none")
            return []
        with log_context(account=event.get("account_id"), session=event.get("session")):
            sessions = await self._sessions(event, scope)
            if not sessions:
                self.service.count_event(etype, "no_session")
                return []
            decisions = await self.service.decide_and_queue(
                sessions, lambda s, plan, state, nas, target: decide.decide(
                    event, s, plan, state, nas, target),
                event_id=str(event.get("id") or "") or None, label=etype)
        for d in decisions:
            log.info("%s: %s session %s (%s)", etype, d.action, d.session,
                     ", ".join(f"{b}:{a}" for b, a in d.backends))
        return decisions

    async def _sessions(self, event: Mapping[str, Any], scope: str) -> list[Session]:
        store = self.service.store
        if scope == "subscriber" and event.get("subscriber_id") is not None:
            return await _all(store, subscriber_id=int(event["subscriber_id"]))
        if scope in ("session", "subscriber"):
            sid = event.get("session")
            if not sid:
                return []
            try:
                session = await store.get_session(sid)
            except NotFound:
                return []
            if scope == "session":
                return [session] if session.status == "active" else []
            return await _all(store, subscriber_id=session.subscriber_id)
        account_id = event.get("account_id")
        if account_id is None:
            return []
        return await _all(store, account_id=int(account_id))


async def _all(store, **where) -> list[Session]:
    """Every active session matching `where`, page by page."""
    out: list[Session] = []
    while True:
        page = await store.list_sessions(status="active", limit=_PAGE, offset=len(out), **where)
        out.extend(page)
        if len(page) < _PAGE:
            return out


__all__ = ["EventConsumer", "GROUP"]

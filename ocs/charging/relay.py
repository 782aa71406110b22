"""Relays charging events from the store's outbox to the event stream.

Events are written to the outbox in the same transaction as the charge that
caused them (ocs.balance); this component publishes them, in order, to the
cluster event stream (Redis Streams, or the in-process stream on a single
node) that `policy/` consumes, and marks them published. A crash between the
two steps publishes an event twice: event ids are deterministic, so
consumers de-duplicate.

An event is marked published only once `policy/` has handled it (`handled`):
the in-process stream dies with the process, and a Redis without persistence
restarts empty. Whatever was not handled is published again after a restart
of ocsd; what a restarted Redis lost, as soon as the relay sees it (the stream
is gone or has a new epoch, see ocs.cluster.base.Keys).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Awaitable, Callable

from ..errors import StoreUnavailable
from ..logs import Throttled
from ..tasks import cancel_and_wait

log = logging.getLogger("ocs.charging")


class EventRelay:
    def __init__(self, store, publish: Callable[[list[dict[str, Any]]], Awaitable[Any]], *,
                 interval: float = 1.0, batch: int = 500,
                 handled: Callable[[str], Awaitable[bool | None]] | None = None,
                 max_waiting: int = 100_000):
        self.store = store
        self.publish = publish      # publishes a list of events, all or nothing; their ids
        self.handled = handled      # None: published is durable; else entry id -> handled?
        self.interval = interval
        self.batch = batch
        self.published = 0
        self._sent = 0              # the last outbox row published by this process
        # Published, not yet handled: (outbox row ids, the last one's stream entry id).
        self._unhandled: deque[tuple[list[int], str]] = deque()
        self._waiting = 0           # rows in _unhandled
        # At most this many are followed: if policy/ stops handling events, the oldest
        # are let go (they stay unpublished in the outbox, and go out again at the
        # next start) rather than held in memory without end.
        self.max_waiting = max_waiting
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._warnings = Throttled(log)  # an outage retries every interval: a line a minute

    def notify(self) -> None:
        """New events were committed: relay them now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ocs-event-relay")

    async def stop(self) -> None:
        await cancel_and_wait([self._task], "event relay")
        self._task = None
        try:  # what was committed before the stop still goes out
            await self.relay_once()
        except StoreUnavailable as exc:
            log.warning("events left in the outbox at stop: %s", exc)
        if self._unhandled:
            log.info("%d charging events not yet handled by policy at stop; they are "
                     "published again at the next start", self._waiting)

    async def relay_once(self) -> int:
        """Publish every pending event; returns how many."""
        total = 0
        while True:
            await self._mark_handled()
            pending = await self.store.unpublished_events(self.batch, after=self._sent)
            if not pending:
                return total
            ids = await self.publish([event for _, event in pending])
            rows = [row_id for row_id, _ in pending]
            self._sent = rows[-1]
            if self.handled is None:
                await self.store.mark_published(rows)
            else:
                self._unhandled.append((rows, ids[-1]))
                self._waiting += len(rows)
                self._let_go()
            total += len(pending)
            self.published += len(pending)

    async def _mark_handled(self) -> None:
        """Mark published, oldest first, what the consumers have handled; publish
        again what the stream lost."""
        rows: list[int] = []
        done = 0
        lost = False
        for batch_rows, last_entry in self._unhandled:
            state = await self.handled(last_entry)
            if state is None:
                lost = True
                break
            if not state:
                break
            rows += batch_rows
            done += 1
        if rows:
            await self.store.mark_published(rows)  # if this fails, they are kept for later
            for _ in range(done):
                self._waiting -= len(self._unhandled.popleft()[0])
        if lost:
            log.warning("the event stream lost %d published charging events before policy "
                        "handled them (did Redis restart without persistence?); publishing "
                        "them again", self._waiting)
            self._sent = self._unhandled[0][0][0] - 1
            self._unhandled.clear()
            self._waiting = 0

    def _let_go(self) -> None:
        """Stop following the oldest published events beyond `max_waiting`."""
        dropped = 0
        while self._waiting > self.max_waiting and len(self._unhandled) > 1:
            rows, _ = self._unhandled.popleft()
            self._waiting -= len(rows)
            dropped += len(rows)
        if dropped:
            self._warnings.warning(
                "waiting", "policy has not handled %d published charging events; the oldest "
                "%d stay in the outbox unmarked and are published again at the next start",
                self._waiting + dropped, dropped)

    async def _run(self) -> None:
        while True:
            # Published events waiting for the consumers are looked at again soon.
            wait = min(self.interval, 0.2) if self._unhandled else self.interval
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.relay_once()
            except StoreUnavailable as exc:  # the stream or the store is down: retry later
                self._warnings.warning("paused", "event relay paused: %s", exc)
                await asyncio.sleep(self.interval)

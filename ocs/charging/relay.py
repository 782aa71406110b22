"""Relays charging events from the store's outbox to the event stream.

Events are written to the outbox in the same transaction as the charge that
caused them (ocs.balance); this component publishes them, in order, to the
cluster event stream (Redis Streams, or the in-process stream on a single
node) that `policy/` consumes, and marks them published. A crash between the
two steps publishes an event twice: event ids are deterministic, so
consumers de-duplicate. An event marked published is as durable as the
stream: Redis keeps what it keeps on disk, and the in-process stream dies
with the process, taking the events that `policy/` had not handled yet.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from ..errors import StoreUnavailable
from ..tasks import cancel_and_wait

log = logging.getLogger("ocs.charging")


class EventRelay:
    def __init__(self, store, publish: Callable[[list[dict[str, Any]]], Awaitable[Any]], *,
                 interval: float = 1.0, batch: int = 500):
        self.store = store
        self.publish = publish      # publishes a list of events, all or nothing
        self.interval = interval
        self.batch = batch
        self.published = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

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

    async def relay_once(self) -> int:
        """Publish every pending event; returns how many."""
        total = 0
        while True:
            pending = await self.store.unpublished_events(self.batch)
            if not pending:
                return total
            await self.publish([event for _, event in pending])
            await self.store.mark_published([row_id for row_id, _ in pending])
            total += len(pending)
            self.published += len(pending)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.relay_once()
            except StoreUnavailable as exc:  # the stream or the store is down: retry later
                log.warning("event relay paused: %s", exc)
                await asyncio.sleep(self.interval)

"""Stopping background tasks without ever hanging.

A stop cancels its loops and waits for them to end. A loop that misses its
cancellation (a library that turns it into an error the loop retries on, a
clean-up that blocks) would make that wait, and so the daemon's stop, last
forever. `cancel_and_wait` bounds it: what has not ended in time is abandoned,
with an error that names it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

log = logging.getLogger("ocs.daemon")

STOP_WAIT = 5.0  # seconds a cancelled background task gets to end


async def cancel_and_wait(tasks: Iterable[asyncio.Task | None], what: str,
                          timeout: float = STOP_WAIT) -> None:
    """Cancel `tasks` and wait up to `timeout` seconds for them to end."""
    tasks = [t for t in tasks if t is not None]
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in done:  # their errors were theirs to log; only keep asyncio quiet about them
        if not task.cancelled():
            task.exception()
    for task in pending:
        log.error("%s: task %s did not end within %gs of being cancelled; abandoned",
                  what, task.get_name(), timeout)

"""When the cyclic garbage collector runs: on a timer, in short pauses.

Reference counting frees almost everything a request allocates; the cyclic
collector only finds what refers to itself (an exception kept with its
traceback, say). But Python starts a young collection by counting
allocations, and a charging daemon keeps replacing long-lived objects (the
balance cache's entries, the duplicate caches): every freed old object lowers
the count, so collections come seldom and each one walks every object that
survived since the last. Measured on a busy node, such pauses took 3 to 20 ms
and set the request latency's 99th percentile.

So ocsd turns the automatic collector off once it serves and runs it itself:
a young collection (generations 0 and 1) every `[daemon] gc_interval` seconds,
which walks only what survived that long (about 1 ms at 4,000 requests/s), and
a full collection every `gc_full_interval` seconds for cycles among old
objects. A cycle becomes free memory within one interval, as before. Each
pause is in `ocs_gc_pause_seconds`; one over 50 ms is logged.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("ocs.gc")

_SLOW = 0.050  # a pause worth a log line


class Collector:
    def __init__(self, interval: float, full_interval: float, histogram=None):
        self.interval = interval
        self.full_interval = full_interval
        self._histogram = histogram
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_full = 0.0
        self._was_enabled = True

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Take over from the automatic collector (from the running event loop).
        An interval of 0 leaves Python's own schedule in place."""
        if self.interval <= 0 or self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._next_full = time.monotonic() + self.full_interval
        self._handle = self._loop.call_later(self.interval, self._tick)
        log.debug("garbage collection on a timer: young every %.3fs, full every %.0fs",
                  self.interval, self.full_interval)

    def stop(self) -> None:
        if self._handle is None:
            return
        self._handle.cancel()
        self._handle = None
        if self._was_enabled:
            gc.enable()

    def collect(self, full: bool = False) -> int:
        """One collection now, timed and counted; returns the objects it freed."""
        generation = 2 if full else 1
        started = time.perf_counter()
        freed = gc.collect(generation)
        pause = time.perf_counter() - started
        if self._histogram is not None:
            self._histogram.labels(generation="full" if full else "young").observe(pause)
        if pause > _SLOW:
            log.info("%s garbage collection paused the daemon %.0f ms (%d objects freed)",
                     "full" if full else "young", pause * 1000, freed)
        return freed

    def _tick(self) -> None:
        now = time.monotonic()
        full = now >= self._next_full
        if full:
            self._next_full = now + self.full_interval
        try:
            self.collect(full)
        finally:
            if self._handle is not None:
                self._handle = self._loop.call_later(self.interval, self._tick)

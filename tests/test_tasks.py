"""A stop never hangs on a background loop that misses its cancellation."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

from ocs.errors import StoreUnavailable
from ocs.tasks import cancel_and_wait
from policy.consumer import EventConsumer


async def test_a_task_that_ignores_cancellation_is_abandoned_with_an_error(caplog):
    async def stubborn():
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # what a library bug looks like from here

    async def failing():
        raise ValueError("its own error, logged where it happened")

    async def polite():
        await asyncio.sleep(10)

    tasks = [asyncio.create_task(stubborn(), name="stubborn"),
             asyncio.create_task(polite(), name="polite"),
             asyncio.create_task(failing(), name="failing")]
    await asyncio.sleep(0)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="ocs.daemon"):
        await cancel_and_wait(tasks, "test loops", timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert tasks[1].cancelled() and isinstance(tasks[2].exception(), ValueError)
    assert [r.getMessage() for r in caplog.records] == [
        "test loops: task stubborn did not end within 0.3s of being cancelled; abandoned"]
    tasks[0].cancel()  # let the test's loop close cleanly: stop the stubborn one for good
    tasks[0].get_coro().close()


class _SwallowingStream:
    """An event stream whose blocking read turns a cancellation into a store error,
    as a buggy client library might: the consumer would retry on it forever."""

    def __init__(self):
        self.reads = 0

    async def ensure_group(self, group):
        pass

    async def reclaim(self, group, consumer, min_idle_ms):
        return []

    async def consume(self, group, consumer, count, block_ms):
        self.reads += 1
        try:
            await asyncio.sleep(block_ms / 1000)
        except asyncio.CancelledError:
            raise StoreUnavailable("connection lost while reading") from None
        return []


async def test_the_event_consumer_stops_even_when_its_cancellation_is_lost():
    stream = _SwallowingStream()
    config = SimpleNamespace(lease=30.0, poll_interval=0.05)
    service = SimpleNamespace(cluster=SimpleNamespace(events=stream), config=lambda: config)
    consumer = EventConsumer(service, consumer="n1")
    await consumer.start()
    await asyncio.sleep(0.1)
    task = consumer._task
    started = time.monotonic()
    await consumer.stop()
    await asyncio.sleep(0.2)  # the loop's turn after the swallowed cancel
    assert task.done(), "the consumer loop kept running after stop()"
    assert time.monotonic() - started < 2.0
    reads = stream.reads
    await asyncio.sleep(0.2)
    assert stream.reads == reads

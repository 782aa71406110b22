"""The garbage collector on a timer (ocs.collector): cycles are still freed, in
timed pauses, and the automatic collector is back once it stops."""

import asyncio
import gc
import weakref

from prometheus_client import CollectorRegistry

from ocs.collector import Collector
from ocs.metrics import Metrics


class Node:
    def __init__(self):
        self.other = self


def samples(metrics: Metrics, generation: str) -> float:
    value = metrics.registry.get_sample_value("ocs_gc_pause_seconds_count",
                                              {"generation": generation})
    return value or 0.0


async def freed_within(ref: weakref.ref, seconds: float) -> bool:
    for _ in range(int(seconds / 0.01)):
        if ref() is None:
            return True
        await asyncio.sleep(0.01)
    return ref() is None


async def test_cycles_are_freed_by_timed_young_collections():
    metrics = Metrics(CollectorRegistry())
    collector = Collector(0.02, 3600, metrics.gc_pause)
    assert gc.isenabled()
    collector.start()
    try:
        assert collector.running and not gc.isenabled()
        node = Node()
        ref = weakref.ref(node)
        del node
        # Only the cyclic collector can free it, and Python's own one is off.
        assert await freed_within(ref, 2.0)
        assert samples(metrics, "young") >= 1
        assert samples(metrics, "full") == 0
    finally:
        collector.stop()
    assert gc.isenabled() and not collector.running


async def test_full_collection_comes_at_its_interval():
    metrics = Metrics(CollectorRegistry())
    collector = Collector(0.01, 0.05, metrics.gc_pause)
    collector.start()
    try:
        for _ in range(200):
            if samples(metrics, "full") >= 1:
                break
            await asyncio.sleep(0.01)
        assert samples(metrics, "full") >= 1
        assert samples(metrics, "young") >= 1
    finally:
        collector.stop()
    assert gc.isenabled()


async def test_interval_zero_leaves_pythons_collector_alone():
    collector = Collector(0, 600)
    collector.start()
    assert not collector.running and gc.isenabled()
    collector.stop()
    assert gc.isenabled()


async def test_stop_leaves_a_collector_that_was_off_off():
    gc.disable()
    try:
        collector = Collector(0.05, 600)
        collector.start()
        collector.stop()
        assert not gc.isenabled()
    finally:
        gc.enable()

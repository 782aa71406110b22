"""The in-process twin of the Redis adapter, for a single node (embedded mode).

Same contract, same observable semantics, no network: records and events
live in this process's memory and vanish with it, which is what a single
node without Redis has anyway. Every method runs without awaiting between
reading and writing its state, so on one event loop each is atomic, like a
Redis command. Expiry is lazy (checked on access) plus a heap of deadlines
purged on every write, so memory follows the live entries without a timer
task.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..config import RedisConfig
from .base import (CallHandler, Cluster, ClusterUnavailable, DuplicateCache, EventStream,
                   NodeCalls, NodeUnreachable, SessionDirectory, check_block, check_count,
                   check_name, check_start, encode_json, member_record, parse_entry_id, ttl_ms)

log = logging.getLogger("ocs.cluster")

V = TypeVar("V")


class _State:
    """What the three parts share: whether the component is running."""

    def __init__(self):
        self.running = False

    def check(self) -> None:
        if not self.running:
            raise ClusterUnavailable("the in-process cluster state is stopped")


class _Expiring(Generic[V]):
    """A dict whose entries expire at a monotonic deadline."""

    def __init__(self):
        self._items: dict[str, tuple[float, V]] = {}
        # (deadline, key): every key has at least one pair no later than its deadline.
        # Writing a key again pushes only when it moves the deadline earlier; a pair
        # popped for a key whose deadline moved later is pushed again, once.
        self._heap: list[tuple[float, str]] = []

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            del self._items[key]
            return None
        return item[1]

    def set(self, key: str, value: V, ttl: float) -> None:
        self.set_for(key, value, ttl_ms(ttl) / 1000)

    def set_for(self, key: str, value: V, seconds: float) -> None:
        """`set` with a lifetime already checked and rounded (see ttl_ms)."""
        deadline = time.monotonic() + seconds
        before = self._items.get(key)
        self._items[key] = (deadline, value)
        if before is None or deadline < before[0]:
            heapq.heappush(self._heap, (deadline, key))
        self.purge()

    def expire(self, key: str, ttl: float) -> bool:
        value = self.get(key)
        if value is None:
            return False
        self.set(key, value, ttl)
        return True

    def pop(self, key: str) -> V | None:
        value = self.get(key)
        self._items.pop(key, None)
        return value

    def purge(self) -> None:
        now = time.monotonic()
        heap, items = self._heap, self._items
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            item = items.get(key)
            if item is not None:
                if item[0] <= now:
                    del items[key]
                else:  # written again since, to last longer
                    heapq.heappush(heap, (item[0], key))

    def __len__(self) -> int:
        self.purge()
        return len(self._items)


class LocalSessionDirectory(SessionDirectory):
    def __init__(self, state: _State, node: str):
        self._state = state
        self._node = node
        # session id -> (account id as text or None, record JSON)
        self._records: _Expiring[tuple[str | None, str]] = _Expiring()

    def _find(self, session_id: str, account_id: int | str | None):
        self._state.check()
        check_name(session_id, "session_id")
        entry = self._records.get(session_id)
        # Mirrors the key scheme: an account-tagged lookup never finds a
        # record stored under another account (or none).
        if entry is not None and account_id is not None and entry[0] != str(account_id):
            return None
        return entry

    async def put(self, session_id, data, ttl, *, account_id=None):
        self._state.check()
        check_name(session_id, "session_id")
        text = encode_json({**data, "node": self._node} if isinstance(data, dict) else data,
                           "session record")
        ttl_ms(ttl)
        self._records.set(session_id, (None if account_id is None else str(account_id), text),
                          ttl)

    async def get(self, session_id, *, account_id=None):
        entry = self._find(session_id, account_id)
        return None if entry is None else json.loads(entry[1])

    async def touch(self, session_id, ttl, *, account_id=None):
        ttl_ms(ttl)
        if self._find(session_id, account_id) is None:
            return False
        return self._records.expire(session_id, ttl)

    async def delete(self, session_id, *, account_id=None):
        if self._find(session_id, account_id) is None:
            return False
        return self._records.pop(session_id) is not None

    async def count(self):
        self._state.check()
        return len(self._records)


class LocalDuplicateCache(DuplicateCache):
    _CLAIMED = object()

    def __init__(self, state: _State, answer_ttl: float, claim_ttl: float):
        self._state = state
        # Checked once: every request uses them.
        self._seconds, self._claim_seconds = ttl_ms(answer_ttl) / 1000, ttl_ms(claim_ttl) / 1000
        # key -> _CLAIMED, or the answer bytes
        self._entries: _Expiring[Any] = _Expiring()

    def _check(self, key: str) -> None:
        self._state.check()
        check_name(key, "duplicate-cache key")

    @staticmethod
    def _lifetime(ttl: float | None, default: float) -> float:
        return default if ttl is None else ttl_ms(ttl) / 1000

    async def claim(self, key, ttl=None):
        self._check(key)
        seconds = self._lifetime(ttl, self._claim_seconds)
        if self._entries.get(key) is not None:
            return False
        self._entries.set_for(key, self._CLAIMED, seconds)
        return True

    async def store(self, key, answer, ttl=None):
        self._check(key)
        if not isinstance(answer, (bytes, bytearray, memoryview)):
            raise TypeError(f"answer must be bytes, not {type(answer).__name__}")
        self._entries.set_for(key, bytes(answer), self._lifetime(ttl, self._seconds))

    async def get(self, key):
        self._check(key)
        value = self._entries.get(key)
        return value if isinstance(value, bytes) else None

    async def release(self, key):
        self._check(key)
        if self._entries.get(key) is self._CLAIMED:
            self._entries.pop(key)
            return True
        return False


@dataclass
class _Pending:
    consumer: str
    delivered: float  # monotonic instant of the last delivery
    deliveries: int


@dataclass
class _Group:
    last: tuple[int, int]
    # Entries enter in delivery order, which is id order (`last` only grows),
    # and reclaiming re-assigns in place: iteration is oldest first.
    pel: dict[tuple[int, int], _Pending]


def _format_id(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _entry_key(entry: tuple[tuple[int, int], str]) -> tuple[int, int]:
    return entry[0]


class LocalEventStream(EventStream):
    durable = False  # it dies with the process

    def __init__(self, state: _State, maxlen: int):
        self._state = state
        self._maxlen = maxlen
        # (id, event JSON) in id order; entries before _head are trimmed
        # (dropped in bulk now and then, so trimming one entry is O(1)).
        self._log: list[tuple[tuple[int, int], str]] = []
        self._head = 0
        self._groups: dict[str, _Group] = {}
        self._last_id = (0, 0)
        self._published = asyncio.Event()

    def _next_id(self) -> tuple[int, int]:
        ms = time.time_ns() // 1_000_000
        last_ms, last_seq = self._last_id
        # Like Redis: never go backwards, even if the wall clock does.
        self._last_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return self._last_id

    def _append(self, texts: list[str]) -> list[str]:
        ids = []
        for text in texts:
            entry_id = self._next_id()
            self._log.append((entry_id, text))
            ids.append(_format_id(entry_id))
        excess = len(self._log) - self._head - self._maxlen
        if excess > 0:
            self._head += excess
            if self._head > 1024 and self._head * 2 > len(self._log):
                del self._log[:self._head]
                self._head = 0
        # Wake every blocked consumer, then arm a fresh event for the next wait.
        self._published.set()
        self._published = asyncio.Event()
        return ids

    def _text(self, entry_id: tuple[int, int]) -> str | None:
        i = bisect.bisect_left(self._log, entry_id, lo=self._head, key=_entry_key)
        if i < len(self._log) and self._log[i][0] == entry_id:
            return self._log[i][1]
        return None

    async def publish(self, event):
        self._state.check()
        return self._append([encode_json(event, "event")])[0]

    async def publish_many(self, events):
        self._state.check()
        texts = [encode_json(event, "event") for event in events]
        return self._append(texts) if texts else []

    async def ensure_group(self, group, *, start="0"):
        self._state.check()
        check_name(group, "group")
        if group in self._groups:
            return
        last = self._last_id if check_start(start) == "$" else parse_entry_id(start)
        self._groups[group] = _Group(last=last, pel={})

    @staticmethod
    def _decode(entry_id: tuple[int, int], text: str) -> tuple[str, dict]:
        return _format_id(entry_id), json.loads(text)

    def _deliver(self, group: _Group, consumer: str, count: int) -> list[tuple[str, dict]]:
        start = bisect.bisect_right(self._log, group.last, lo=self._head, key=_entry_key)
        now = time.monotonic()
        out = []
        for entry_id, text in self._log[start:start + count]:
            group.pel[entry_id] = _Pending(consumer, now, 1)
            group.last = entry_id
            out.append(self._decode(entry_id, text))
        return out

    async def consume(self, group, consumer, count=100, block_ms=1000):
        self._state.check()
        check_name(group, "group")
        check_name(consumer, "consumer")
        check_count(count)
        check_block(block_ms)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            if group not in self._groups:
                log.warning("event stream: consumer group %s missing; creating it", group)
                await self.ensure_group(group)
            out = self._deliver(self._groups[group], consumer, count)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            try:
                await asyncio.wait_for(self._published.wait(), remaining)
            except asyncio.TimeoutError:
                return []
            self._state.check()

    async def ack(self, group, ids):
        self._state.check()
        check_name(group, "group")
        g = self._groups.get(group)
        if g is None:
            return 0
        done = 0
        for entry_id in ids:
            parsed = parse_entry_id(entry_id)
            if parsed is not None and g.pel.pop(parsed, None) is not None:
                done += 1
        return done

    async def handled(self, entry_id, *, group=None):
        self._state.check()
        parsed = parse_entry_id(entry_id)
        groups = [self._groups[group]] if group in self._groups else \
            list(self._groups.values()) if group is None else []
        if parsed is None or not groups:
            return False  # no consumer yet: it has handled nothing
        for g in groups:
            oldest = next(iter(g.pel), None)  # the PEL iterates oldest first
            if g.last < parsed or (oldest is not None and oldest <= parsed):
                return False
        return True

    async def pending(self, group):
        self._state.check()
        check_name(group, "group")
        g = self._groups.get(group)
        return 0 if g is None else len(g.pel)

    async def reclaim(self, group, consumer, min_idle_ms, count=100):
        self._state.check()
        check_name(group, "group")
        check_name(consumer, "consumer")
        check_count(count)
        g = self._groups.get(group)
        if g is None:
            return []
        now = time.monotonic()
        out: list[tuple[str, dict]] = []
        trimmed = []
        for entry_id, pend in g.pel.items():
            if len(out) >= count:
                break
            if (now - pend.delivered) * 1000 < min_idle_ms:
                continue
            text = self._text(entry_id)
            if text is None:  # trimmed away while pending: cannot be redelivered
                trimmed.append(entry_id)
                continue
            g.pel[entry_id] = _Pending(consumer, now, pend.deliveries + 1)
            out.append(self._decode(entry_id, text))
        for entry_id in trimmed:
            del g.pel[entry_id]
        if trimmed:
            log.warning("event stream: %d pending event(s) of group %s were trimmed before "
                        "being processed; they are lost", len(trimmed), group)
        return out

    async def length(self):
        self._state.check()
        return len(self._log) - self._head


class LocalNodeCalls(NodeCalls):
    """One node: a call to itself runs its handler; there is no other node."""

    def __init__(self, state: _State, node: str):
        self._state = state
        self._node = node
        self._handlers: dict[str, CallHandler] = {}
        self._me = member_record(node)

    async def nodes(self):
        self._state.check()
        return [dict(self._me)]

    async def call(self, node, kind, body, timeout):
        self._state.check()
        if node != self._node:
            raise NodeUnreachable(f"node {node} is not running: without [redis] this node "
                                  f"({self._node}) is the only one")
        return await self._here(kind, body, timeout)


class LocalCluster(Cluster):
    """Single-node state in process memory. Survives stop()/start() (same
    object), not a process restart."""

    kind = "local"

    def __init__(self, config: RedisConfig, *, node: str):
        self.node = node
        self._state = _State()
        self.sessions = LocalSessionDirectory(self._state, node)
        self.dedup = LocalDuplicateCache(self._state, config.dedup_ttl,
                                         config.dedup_claim_ttl)
        self.events = LocalEventStream(self._state, config.stream_maxlen)
        self.calls = LocalNodeCalls(self._state, node)

    def describe(self) -> str:
        return "in-process (single node)"

    async def start(self) -> None:
        if not self._state.running:
            self._state.running = True
            log.info("cluster state: %s, node %s", self.describe(), self.node)

    async def stop(self) -> None:
        self._state.running = False
        # Blocked consumers wake up and see the stopped state; waits after a
        # restart need an event that is not already set.
        self.events._published.set()
        self.events._published = asyncio.Event()

    async def ping(self) -> bool:
        self._state.check()
        return True


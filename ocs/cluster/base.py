"""The contract of the cross-node state adapter: errors, interfaces, key scheme.

Two implementations follow this contract exactly (one test suite runs on
both): `ocs.cluster.redis_backend` (several nodes sharing one Redis) and
`ocs.cluster.local` (one node, everything in process memory). Callers only
see the abstract classes defined here.

Values crossing the adapter are JSON (session records, events) or opaque
bytes (cached answers); TTLs are float seconds, stored with millisecond
precision (Redis PX).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from abc import ABC, abstractmethod
from typing import Any, Awaitable, Callable

from ..errors import StoreError, StoreUnavailable, ValidationError

#: Longest a `consume()` call may block. Blocking reads run on their own
#: connections whose read timeout is the command timeout plus this bound.
MAX_BLOCK_MS = 60_000


class ClusterError(StoreError):
    """The shared state store refused or garbled an operation (a bug or
    misconfiguration, e.g. a key of the wrong type or a Redis too old)."""


class ClusterUnavailable(ClusterError, StoreUnavailable):
    """The shared state cannot be reached (Redis down, timed out, read-only
    during a failover) or the adapter is stopped. Nothing was recorded or
    read: protocol layers treat it like `StoreUnavailable` and do not answer,
    so the network element retries or fails over."""


class NodeUnreachable(ClusterError):
    """Another node did not answer a call in time (it is down, stopping, or
    busier than the call allowed), or no node of that name serves the call."""


class CallNotServed(NodeUnreachable):
    """The node runs but does not serve that kind of call (the part that would
    answer it, e.g. Diameter, is off there)."""


def parse_entry_id(entry_id: str) -> tuple[int, int] | None:
    """A stream entry id "<ms>-<seq>" as a comparable pair (None: not one)."""
    ms, sep, seq = entry_id.partition("-")
    try:
        return (int(ms), int(seq) if sep else 0)
    except ValueError:
        return None


# ---------------------------------------------------------------- key scheme
class Keys:
    """Names of every key, from the configured prefix ``P`` (default ``ocs:``).

    ===============================  =========================================
    ``P sess:<session>``             session record (JSON), no account given
    ``P sess:{acct:<id>}:<session>`` session record of account <id>
    ``P sidx:<session>``             account id of a tagged session record, so
                                     a node that knows only the session id
                                     (a Diameter CCR-Update) finds it
    ``P dup:<key>``                  duplicate-cache entry
    ``P node:<node>``                node <node> is running (JSON: host, pid,
                                     version, start), refreshed while it runs
    ``P {node:<node>}:calls``        calls waiting for node <node> (a list)
    ``P {node:<node>}:replies``      answers to the calls node <node> made (a
                                     list); both in one slot, read together
    ``P <event_stream>``             the event stream (default ``ocs:events``)
    ``P <event_stream>:epoch``       a token written with the stream's first entry:
                                     a Redis that comes back without it lost
                                     the stream (it restarted without
                                     persistence), and what the relay published
                                     before is published again
    ===============================  =========================================

    The ``{acct:<id>}`` part is a Redis Cluster hash tag: every key of one
    account hashes to the same slot, so a later multi-key operation on one
    account (a Lua script, a MULTI) stays legal on a sharded Redis. A prefix
    that itself contains ``{...}`` overrides this and pins all keys to one
    slot; that is the operator's choice for a single-shard deployment.
    """

    def __init__(self, prefix: str, event_stream: str):
        self.prefix = prefix
        self.stream = prefix + event_stream
        self.stream_epoch = self.stream + ":epoch"

    def session(self, session_id: str, account_id: int | str | None = None) -> str:
        if account_id is None:
            return f"{self.prefix}sess:{session_id}"
        return f"{self.prefix}sess:{{acct:{account_id}}}:{session_id}"

    def session_index(self, session_id: str) -> str:
        return f"{self.prefix}sidx:{session_id}"

    def session_pattern(self) -> str:
        """SCAN pattern matching every session record and nothing else."""
        return glob_escape(self.prefix) + "sess:*"

    def dedup(self, key: str) -> str:
        return f"{self.prefix}dup:{key}"

    def member(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def member_pattern(self) -> str:
        return glob_escape(self.prefix) + "node:*"

    def calls(self, node: str) -> str:
        return f"{self.prefix}{{node:{node}}}:calls"

    def replies(self, node: str) -> str:
        return f"{self.prefix}{{node:{node}}}:replies"


_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix matches only itself."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


# ---------------------------------------------------------------- helpers
def ttl_ms(ttl: float) -> int:
    """A TTL in seconds as whole milliseconds (at least 1); rejects nonsense."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) \
            or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return max(1, round(ttl * 1000))


def encode_json(value: Any, what: str) -> str:
    """Compact JSON of a dict; `ValidationError` naming `what` otherwise."""
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a dict, not {type(value).__name__}")
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} is not JSON-serializable: {exc}") from None


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    return value


def check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, not {count!r}")
    return count


def check_block(block_ms: int) -> int:
    if isinstance(block_ms, bool) or not isinstance(block_ms, int) \
            or not 0 <= block_ms <= MAX_BLOCK_MS:
        raise ValueError(f"block_ms must be an integer in 0..{MAX_BLOCK_MS}, not {block_ms!r}")
    return block_ms


_STREAM_ID = re.compile(r"^\d+(-\d+)?$")


def check_start(start: str) -> str:
    if start != "$" and not (isinstance(start, str) and _STREAM_ID.match(start)):
        raise ValueError(f"start must be '0', '$' or a stream id, not {start!r}")
    return start


def invalid_event(reason: str, raw: Any) -> dict:
    """What a consumer receives for a stream entry that is not one of ours.

    Delivered (instead of raised) so the consumer can ack it: a poison entry
    must not wedge a consumer group forever.
    """
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return {"_invalid": reason, "raw": raw if isinstance(raw, str) else repr(raw)}


# ---------------------------------------------------------------- interfaces
class SessionDirectory(ABC):
    """Which node last handled a session, and the small protocol state any
    node needs to continue it (e.g. the Diameter CC-Request-Number seen, the
    RADIUS Class, the reservation id).

    A record is a JSON object. The directory adds ``"node"`` (the node that
    last `put` it), overwriting whatever the caller passed under that name.
    A session keeps the same account for its life: put, get, touch and delete
    it either always with the same `account_id` or always without. Without
    `account_id`, `get`/`touch`/`delete` still find a record that was put
    with one (one more round trip on Redis).
    """

    @abstractmethod
    async def put(self, session_id: str, data: dict, ttl: float, *,
                  account_id: int | str | None = None) -> None:
        """Create or replace the record; it expires `ttl` seconds from now."""

    @abstractmethod
    async def get(self, session_id: str, *,
                  account_id: int | str | None = None) -> dict | None:
        """The record (a fresh dict), or None if unknown or expired."""

    @abstractmethod
    async def touch(self, session_id: str, ttl: float, *,
                    account_id: int | str | None = None) -> bool:
        """Push the expiry to `ttl` seconds from now. False if there is no record."""

    @abstractmethod
    async def delete(self, session_id: str, *, account_id: int | str | None = None) -> bool:
        """Forget the session. False if there was no record."""

    @abstractmethod
    async def count(self) -> int:
        """Number of live records. O(records) on Redis (SCAN): for operators
        and gauges, not for the request path."""


class DuplicateCache(ABC):
    """Cross-node duplicate detection (RFC 5080 §2.2.2 for RADIUS, the
    Diameter T-flag / duplicate requests of RFC 6733 §5.5.4).

    The caller builds the key from what identifies a request on the wire and
    namespaces it by protocol, e.g. ``radius:10.0.0.1:3799:37:<authenticator
    hex>``. The life of a key::

        claim() -> True   process the request, then store(answer) and send it
                          (or release() if processing failed, so a
                          retransmission is processed afresh)
        claim() -> False  a duplicate: get() -> the cached answer to resend,
                          or None while the first copy is still in progress
                          (drop it; the NAS retransmits)
    """

    @abstractmethod
    async def claim(self, key: str, ttl: float | None = None) -> bool:
        """Atomically claim `key`: True for exactly one caller across all
        nodes; False while it is claimed or answered. The claim lapses after
        `ttl` seconds (default: the configured ``dedup_claim_ttl``), so a node
        that dies mid-request holds back its retransmissions only that long."""

    @abstractmethod
    async def store(self, key: str, answer: bytes, ttl: float | None = None) -> None:
        """Record the answer for `key`; duplicates get it for `ttl` seconds
        (default: the configured ``dedup_ttl``)."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The stored answer, or None if unknown or claimed but not answered."""

    @abstractmethod
    async def release(self, key: str) -> bool:
        """Drop this node's unanswered claim on `key`. Never drops an answer
        or another node's claim. True if a claim was dropped."""


class EventStream(ABC):
    """The charging event stream feeding policy/ (Redis Streams semantics).

    Delivery is at-least-once per consumer group: a consumed entry is pending
    (owned by its consumer) until acked; entries a consumer left pending for
    `min_idle_ms` are handed to another by `reclaim`. Events are JSON objects.
    Ids are Redis stream ids (``"<ms>-<seq>"``), increasing.

    A worker's loop: take over what a dead peer left, else read new events,
    and ack each one only once it is handled::

        await events.ensure_group("policy")
        while running:
            batch = (await events.reclaim("policy", me, min_idle_ms=60_000)
                     or await events.consume("policy", me))
            for entry_id, event in batch:
                await handle(event)
                await events.ack("policy", [entry_id])
    """

    @abstractmethod
    async def publish(self, event: dict) -> str:
        """Append one event; the stream is trimmed to about ``stream_maxlen``
        entries (oldest first, whether acked or not). Returns its id."""

    @abstractmethod
    async def publish_many(self, events: list[dict]) -> list[str]:
        """Append several events in one round trip, in order."""

    #: Whether a published entry is sure to outlive this process and the stream's
    #: own restarts. Neither stream is: the in-process one dies with the process,
    #: and a Redis without persistence restarts empty. So the event relay marks an
    #: event published only once `handled` says so.
    durable = True

    async def handled(self, entry_id: str, *, group: str | None = None) -> bool | None:
        """Whether `group` (None: every consumer group) took `entry_id` and every
        entry before it, and acknowledged them (True), not yet (False), or whether
        the stream lost it before that (None: publish it again). Only the event
        relay of a stream that is not durable asks; an entry nobody handled yet is
        published again after a restart."""
        return True

    @abstractmethod
    async def ensure_group(self, group: str, *, start: str = "0") -> None:
        """Create the consumer group if missing. ``start="0"`` delivers what
        the stream already holds (no event published before the first worker
        came up is lost); ``"$"`` only what comes next."""

    @abstractmethod
    async def consume(self, group: str, consumer: str, count: int = 100,
                      block_ms: int = 1000) -> list[tuple[str, dict]]:
        """Up to `count` entries never delivered to `group`, now pending for
        `consumer`. Waits up to `block_ms` (0: do not wait) when there are
        none. Creates the group (at ``"0"``) when it is missing, so workers
        survive a Redis that lost its data."""

    @abstractmethod
    async def ack(self, group: str, ids: list[str]) -> int:
        """Mark entries processed; returns how many were pending."""

    @abstractmethod
    async def pending(self, group: str) -> int:
        """Entries delivered to `group` and not yet acked (0 for no group)."""

    @abstractmethod
    async def reclaim(self, group: str, consumer: str, min_idle_ms: int,
                      count: int = 100) -> list[tuple[str, dict]]:
        """Take over up to `count` entries pending for at least `min_idle_ms`
        (their consumer died or hangs), oldest first. Entries trimmed from the
        stream while pending are dropped from the group and logged."""

    @abstractmethod
    async def length(self) -> int:
        """Entries currently in the stream."""


#: A running node refreshes its record (``P node:<name>``) this often (seconds);
#: the record lapses after `HEARTBEAT_TTL` without it.
HEARTBEAT, HEARTBEAT_TTL = 5.0, 15.0


def member_record(node: str) -> dict:
    """What a node says of itself in the list of running nodes."""
    import os
    import socket
    import time

    from .. import __version__
    return {"node": node, "host": socket.gethostname(), "pid": os.getpid(),
            "version": __version__, "started_at": round(time.time(), 3)}


#: What a node runs for a call of one kind: the call's body in, the answer out (JSON).
CallHandler = Callable[[dict], Awaitable[dict]]

# The kinds of call between nodes, each served by one part and made by another:
#: a RAR or ASR for a Diameter client connected to the node called (diameter.server);
DIAMETER_SERVER_REQUEST = "diameter-server-request"
#: the Diameter peers connected to the node called (diameter.server serves, the API asks);
DIAMETER_PEERS = "diameter-peers"
#: an attempt of an enforcement action by the node its NAS names in
#: `control.policy_node` (policy.service serves, policy.worker asks).
POLICY_ATTEMPT = "policy-attempt"


class NodeCalls(ABC):
    """Calls from one node to another, for what only that node can do: a
    Diameter client connected to one node alone gets its Re-Auth and
    Abort-Session requests over that connection, whichever node decided them.

    A node `serve`s kinds of call; any node `call`s a node by name and waits
    for its answer. A call is delivered at most once and answered at most
    once; a call not taken before its timeout is dropped unanswered, so the
    caller, which got `NodeUnreachable`, may safely try again later.
    """

    _node: str
    _handlers: dict[str, CallHandler]

    def serve(self, kind: str, handler: CallHandler | None) -> None:
        """Answer calls of `kind` with ``await handler(body)`` (None: no longer).
        A handler that raises answers the caller with `NodeUnreachable` and
        the error's text."""
        if handler is None:
            self._handlers.pop(kind, None)
        else:
            self._handlers[kind] = handler

    async def _here(self, kind: str, body: dict, timeout: float) -> dict:
        """A call of this node to itself, answered as another node would."""
        handler = self._handlers.get(kind)
        if handler is None:
            raise CallNotServed(f"node {self._node} does not serve {kind} calls")
        try:
            return await asyncio.wait_for(handler(body), timeout)
        except asyncio.TimeoutError:
            raise NodeUnreachable(f"node {self._node} did not answer within {timeout:g}s") \
                from None
        except Exception as exc:  # noqa: BLE001 - the caller is told, as over Redis
            raise NodeUnreachable(f"node {self._node} failed the {kind} call: "
                                  f"{type(exc).__name__}: {exc}") from exc

    @abstractmethod
    async def nodes(self) -> list[dict]:
        """The running nodes, by name: each one's ``node``, ``host``, ``pid``,
        ``version`` and ``started_at`` (Unix seconds). A node that stopped or
        died drops out within `HEARTBEAT_TTL` seconds."""

    @abstractmethod
    async def call(self, node: str, kind: str, body: dict, timeout: float) -> dict:
        """The answer of node `node` to a call of `kind`. Raises `NodeUnreachable`
        at once when no node of that name runs, and when it did not answer within
        `timeout` seconds (or failed); `ClusterUnavailable` when the shared state
        cannot be reached."""


class Cluster(ABC):
    """The adapter as a daemon component: `.sessions`, `.dedup`, `.events`,
    `.calls`."""

    kind: str  #: "redis" or "local"
    node: str
    sessions: SessionDirectory
    dedup: DuplicateCache
    events: EventStream
    calls: NodeCalls

    @abstractmethod
    async def start(self) -> None:
        """Connect and check the server; idempotent. Raises ClusterUnavailable."""

    @abstractmethod
    async def stop(self) -> None:
        """Close connections; later calls raise ClusterUnavailable. Idempotent."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the shared state answers; raises ClusterUnavailable."""

    @abstractmethod
    def describe(self) -> str:
        """Where the state lives, for logs (never includes a password)."""

"""The action queue on Redis Streams: the multi-node mode (``[policy] queue = "redis"``).

Keys (``P`` is ``[redis] key_prefix``; ``{policy}`` is a Redis Cluster hash
tag, so every key of the queue is in one slot and the scripts below stay
legal on a sharded Redis)::

    P{policy}:actions        stream of actions to carry out; consumer group "workers"
    P{policy}:delayed        sorted set: actions waiting for their retry time (score: ms)
    P{policy}:key:<key>      marker of an enqueued action key (idempotency), 7 days
    P{policy}:nas:<name>     sorted set: leases of actions running against a NAS
    P{policy}:dead           stream of dead-lettered actions
    P{policy}:finished       hash: key -> outcome of finished actions (listings)
    P{policy}:finished:at    sorted set: key by finish time (order, purge)

Delivery: a node takes entries with XREADGROUP; an entry stays pending in the
group until its outcome is recorded (then it is acknowledged and deleted).
Entries a node left pending for ``[policy] lease`` seconds (it died) are
taken over by another with XAUTOCLAIM: at least once. A retry leaves the
stream for the delayed set and comes back when due. The per-NAS limit holds
across nodes: a node runs an action only after adding a lease to the NAS's
set while it has fewer than ``per_nas_concurrency`` live leases (a script,
so two nodes cannot both take the last slot); leases expire with the queue
lease, so a dead node frees its slots. Session state and the idempotency of
decisions stay in the store (`policy.state`), shared by every node.

What this mode does not count: an attempt cut short by a node's death is not
in the attempt count (the store queue counts it), because Redis keeps the
delivery count only per consumer group entry, not across retries.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from ocs.cluster import ClusterUnavailable
from ocs.cluster.redis_backend import (POOL_SIZE, UNAVAILABLE, Script, close_redis,
                                       redis_client)
from ocs.model import now_us

from . import state
from .decide import Decision
from .model import Action
from .queue import DEAD, DONE, PENDING, REPLACED, RUNNING, SUPERSEDED, ActionQueue, entry

log = logging.getLogger("ocs.policy")

GROUP = "workers"
KEY_TTL_MS = 7 * 86_400_000
FIELD = b"action"

_ENQUEUE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  return redis.call('XADD', KEYS[1], '*', 'action', ARGV[1])
end
return false
"""

_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], '*', 'action', member)
end
return #due
"""

_LEASE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_REVIVE = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
redis.call('XDEL', KEYS[1], ARGV[1])
local fields = found[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 'action' then
    -- compact JSON written by Action.to_json: one top-level "attempts" key
    local text = string.gsub(fields[i + 1], '"attempts":%d+', '"attempts":0', 1)
    redis.call('XADD', KEYS[2], '*', 'action', text)
    return text
  end
end
return false
"""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamQueue(ActionQueue):
    kind = "redis"

    def __init__(self, redis_config, store, *, owner: str, per_nas: int, lease: float,
                 timeout: float | None = None):
        super().__init__()
        self.redis_config = redis_config
        self.prefix = redis_config.key_prefix
        self.timeout = timeout or redis_config.timeout
        self.store = store
        self.owner = owner
        self.per_nas = per_nas
        self.lease_ms = int(lease * 1000)
        self.client: aioredis.Redis | None = None
        tag = self.prefix + "{policy}:"
        self.k_actions, self.k_delayed, self.k_dead = tag + "actions", tag + "delayed", \
            tag + "dead"
        self.k_finished, self.k_finished_at = tag + "finished", tag + "finished:at"
        self._tag = tag
        self._leases: dict[str, str] = {}   # entry id -> lease token held

    # ------------------------------------------------------------ plumbing
    async def start(self) -> None:
        if self.client is not None:
            return
        self.client = redis_client(self.redis_config, max_connections=POOL_SIZE,
                                   timeout=self.timeout, socket_timeout=self.timeout,
                                   socket_connect_timeout=self.timeout, decode_responses=False)
        self._enqueue = Script(self.client, _ENQUEUE)
        self._move_due = Script(self.client, _MOVE_DUE)
        self._lease = Script(self.client, _LEASE)
        self._revive = Script(self.client, _REVIVE)
        with self._guard("start"):
            try:
                await self.client.xgroup_create(self.k_actions, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    async def stop(self) -> None:
        if self.client is not None:
            await close_redis(self.client, "policy queue")
            self.client = None

    @contextmanager
    def _guard(self, what: str):
        if self.client is None:
            raise ClusterUnavailable(f"policy queue is stopped ({what})")
        try:
            yield
        except UNAVAILABLE as exc:
            raise ClusterUnavailable(f"redis unavailable for the policy queue ({what}): "
                                     f"{exc}") from exc
        except RedisError as exc:
            raise ClusterUnavailable(f"redis policy queue ({what}): {exc}") from exc

    def _nas_key(self, nas: str | None) -> str:
        return f"{self._tag}nas:{nas or '-'}"

    def _marker(self, key: str) -> str:
        return f"{self._tag}key:{key}"

    # ------------------------------------------------------------ state (store)
    async def states(self, sessions):
        return await self.store.driver.run(state.states_program, list(sessions), write=False)

    async def account_states(self, account_id):
        return await self.store.driver.run(state.account_states_program, account_id,
                                           write=False)

    # ------------------------------------------------------------ producing
    async def _add(self, actions: list[Action]) -> int:
        added = 0
        with self._guard("enqueue"):
            for a in actions:
                text = a.but(id=None).to_json()
                if await self._enqueue(keys=[self.k_actions, self._marker(a.key)],
                                       args=[text, KEY_TTL_MS]):
                    added += 1
        if added:
            self.wakeup.set()
        return added

    async def commit(self, decisions, now):
        if not decisions:
            return []
        saved = await self.store.driver.run(state.save_states_program, list(decisions), now)
        # Recorded first, queued second: a crash in between is repaired when the
        # event comes again (`PolicyService._requeue`); queueing is idempotent.
        await self._add([a for d in saved for a in d.actions(now)])
        return saved

    async def requeue(self, actions):
        return await self._add(list(actions))

    # ------------------------------------------------------------ consuming
    def _decode(self, entries) -> list[Action]:
        out = []
        for entry_id, fields in entries or ():
            if not fields:
                continue
            raw = fields.get(FIELD)
            try:
                out.append(Action.from_json(raw, id=_text(entry_id)))
            except (ValueError, KeyError, TypeError):
                log.error("policy queue entry %s is not an action; dropped", _text(entry_id))
        return out

    async def take(self, limit):
        if limit <= 0:
            return []
        now_ms = int(time.time() * 1000)
        with self._guard("take"):
            await self._move_due(keys=[self.k_delayed, self.k_actions], args=[now_ms, 100])
            reply = await self.client.xautoclaim(self.k_actions, GROUP, self.owner,
                                                 self.lease_ms, start_id="0-0", count=limit)
            actions = self._decode(reply[1])
            if actions:
                log.warning("took over %d action(s) another worker left unfinished",
                            len(actions))
            if len(actions) < limit:
                read = await self.client.xreadgroup(GROUP, self.owner, {self.k_actions: ">"},
                                                    count=limit - len(actions))
                actions += self._decode(read[0][1] if read else [])
            taken = []
            for a in actions:
                token = f"{self.owner}:{a.id}:{uuid.uuid4().hex[:8]}"
                if await self._lease(keys=[self._nas_key(a.nas)],
                                     args=[now_ms, now_ms + self.lease_ms, self.per_nas, token]):
                    self._leases[a.id] = token
                    taken.append(a)
                else:  # the NAS is at its limit: wait a moment outside the stream
                    await self._move(a, a, delay_ms=200)
        return taken

    async def _move(self, action: Action, again: Action, *, delay_ms: int) -> None:
        """Acknowledge `action`'s entry and park `again` in the delayed set."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.k_actions, GROUP, action.id)
            pipe.xdel(self.k_actions, action.id)
            pipe.zadd(self.k_delayed, {again.but(id=None).to_json():
                                       int(time.time() * 1000) + delay_ms})
            await pipe.execute()

    async def _finish(self, action: Action, status: str, result: str,
                      error: str | None = None, extra=None) -> None:
        record = entry(action.but(attempts=action.attempts + 1), status=status, result=result,
                       error=error, updated_at=now_us())
        with self._guard("finish"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xack(self.k_actions, GROUP, action.id)
                pipe.xdel(self.k_actions, action.id)
                if extra is not None:
                    extra(pipe, record)
                else:
                    pipe.hset(self.k_finished, action.key, json.dumps(record))
                    pipe.zadd(self.k_finished_at, {action.key: int(time.time() * 1000)})
                token = self._leases.pop(action.id, None)
                if token:
                    pipe.zrem(self._nas_key(action.nas), token)
                await pipe.execute()

    async def done(self, action, result):
        await self._finish(action, DONE, result)

    async def supersede(self, action):
        await self._finish(action, SUPERSEDED, "superseded")

    async def retry(self, action, delay, result, error):
        again = action.but(attempts=action.attempts + 1,
                           params={**action.params, "last_error": error, "last_result": result})
        with self._guard("retry"):
            await self._move(action, again, delay_ms=int(delay * 1000))
            token = self._leases.pop(action.id, None)
            if token:
                await self.client.zrem(self._nas_key(action.nas), token)
        self.wakeup.set()

    async def bury(self, action, result, error):
        def dead(pipe, record):
            pipe.xadd(self.k_dead, {FIELD: action.but(attempts=action.attempts + 1,
                                                      id=None).to_json(),
                                    b"result": result, b"error": error or "",
                                    b"at": str(now_us())})
        await self._finish(action, DEAD, result, error, extra=dead)

    async def replace(self, action, result, error, fallback: Decision):
        saved = await self.store.driver.run(state.save_states_program, [(fallback, None)],
                                            now_us())
        if saved:
            await self._add(fallback.actions(now_us()))
        await self._finish(action, REPLACED, result, error)
        return bool(saved)

    async def annotate(self, action, result):
        with self._guard("annotate"):
            raw = await self.client.hget(self.k_finished, action.key)
            if raw is None:
                return
            record = json.loads(raw)
            record["result"] = result
            await self.client.hset(self.k_finished, action.key, json.dumps(record))

    # ------------------------------------------------------------ operators
    async def listing(self, statuses, limit=100):
        out: list[dict[str, Any]] = []
        with self._guard("listing"):
            running_ids: set[str] = set()
            if PENDING in statuses or RUNNING in statuses:
                details = await self.client.xpending_range(self.k_actions, GROUP, "-", "+",
                                                           10_000)
                running_ids = {_text(d["message_id"]) for d in details}
                entries = await self.client.xrevrange(self.k_actions, count=limit * 2)
                for a in self._decode(entries):
                    status = RUNNING if a.id in running_ids else PENDING
                    if status in statuses:
                        out.append(entry(a, status=status,
                                         result=a.params.get("last_result"),
                                         error=a.params.get("last_error")))
            if PENDING in statuses:
                delayed = await self.client.zrange(self.k_delayed, 0, limit - 1,
                                                   withscores=True)
                for raw, score in delayed:
                    a = Action.from_json(raw, id=None)
                    out.append(entry(a, status=PENDING, next_at=int(score) * 1000,
                                     result=a.params.get("last_result"),
                                     error=a.params.get("last_error")))
            if DEAD in statuses:
                for entry_id, fields in await self.client.xrevrange(self.k_dead, count=limit):
                    a = Action.from_json(fields[FIELD], id=_text(entry_id))
                    out.append(entry(a, status=DEAD, result=_text(fields.get(b"result", b"")),
                                     error=_text(fields.get(b"error", b"")),
                                     updated_at=int(fields.get(b"at", b"0"))))
            finished = {DONE, SUPERSEDED, REPLACED} & set(statuses)
            if finished:
                keys = await self.client.zrevrange(self.k_finished_at, 0, limit * 4)
                if keys:
                    for raw in await self.client.hmget(self.k_finished, keys):
                        if raw is None:
                            continue
                        record = json.loads(raw)
                        if record["status"] in finished:
                            out.append(record)
        out.sort(key=lambda e: e.get("updated_at") or e.get("created_at") or 0, reverse=True)
        return out[:limit]

    async def revive(self, action_id):
        with self._guard("revive"):
            try:
                text = await self._revive(keys=[self.k_dead, self.k_actions], args=[action_id])
            except ResponseError:
                return None   # not a stream id
        if not text:
            return None
        self.wakeup.set()
        return entry(Action.from_json(text), status=PENDING)

    async def counts(self):
        with self._guard("counts"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xlen(self.k_actions)
                pipe.xpending(self.k_actions, GROUP)
                pipe.zcard(self.k_delayed)
                pipe.xlen(self.k_dead)
                length, pending, delayed, dead = await pipe.execute()
        running = int(pending["pending"]) if pending else 0
        return {PENDING: length - running + delayed, RUNNING: running, DEAD: dead}

    async def purge(self, before):
        cutoff_ms = before // 1000
        with self._guard("purge"):
            keys = await self.client.zrangebyscore(self.k_finished_at, "-inf", cutoff_ms)
            if keys:
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.hdel(self.k_finished, *keys)
                    pipe.zrem(self.k_finished_at, *keys)
                    await pipe.execute()
        n = await self.store.driver.run(state.purge_states_program, before)
        return len(keys) + n


__all__ = ["StreamQueue", "GROUP"]

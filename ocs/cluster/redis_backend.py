"""The cross-node state adapter on Redis (redis.asyncio, hiredis parser).

Key names are in `ocs.cluster.base.Keys`. Needs Redis 6.2 or later
(XAUTOCLAIM); `start()` checks.

Connections: one pool for ordinary commands, whose read timeout is the
command timeout (a stalled Redis must fail a request quickly, not hang it),
and one for blocking stream reads, whose read timeout also covers the longest
allowed block. Both reconnect by themselves: a pooled connection the server
closed is noticed and replaced before use, and a command that hits a broken
connection is retried twice on a fresh one. A timeout is not retried (the
time is already spent). Every failure to reach Redis surfaces as
`ClusterUnavailable`; the first one after a healthy period is logged as a
warning and the recovery as info, so an outage does not flood the log.

Duplicate cache values: ``C<node>:<random>`` while claimed (a unique token
per claim), ``A<answer bytes>`` once answered. The claim is a Lua script
equivalent to ``SET key token NX PX ttl`` that also returns the previous
value: if a connection breaks after Redis executed the claim and the client
retries it, the retry sees its own token and still reports the claim won
(a bare SET NX would report it lost, and then nobody would answer the
request until the claim expired). `release` deletes only when the value is
still this claim's token.

Calls between nodes: the caller pushes the call (JSON: its id, kind, body,
the list to answer on and a deadline in wall-clock time) onto the callee's
list ``{node:<callee>}:calls``; the callee pushes its answer onto the
caller's ``{node:<caller>}:replies``. Each node reads both of its lists with
one BRPOP loop, which also hands each answer to the call waiting for it, so
calls in flight hold no connection each. The lists expire by themselves, so
a node that never comes back leaves nothing behind, and a call found after
its deadline (the callee was down meanwhile) is dropped unanswered: its
caller has given up and will try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import time

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster as RedisClusterClient
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import (MasterNotFoundError, Sentinel, SentinelConnectionPool,
                                     SentinelManagedConnection)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (ClusterDownError, ConnectionError as RedisConnectionError,
                              NoScriptError, ReadOnlyError, RedisClusterException, RedisError,
                              ResponseError, TimeoutError as RedisTimeoutError, TryAgainError)

from ..config import RedisConfig
from ..logs import Throttled
from .base import (HEARTBEAT, HEARTBEAT_TTL, MAX_BLOCK_MS, CallHandler, CallNotServed, Cluster,
                   ClusterError, ClusterUnavailable, DuplicateCache, EventStream, Keys, NodeCalls,
                   NodeUnreachable, SessionDirectory, check_block, check_count, check_name,
                   check_start, encode_json, invalid_event, member_record, parse_entry_id,
                   ttl_ms)

log = logging.getLogger("ocs.cluster")

#: Seconds a command may take before the call fails with ClusterUnavailable.
DEFAULT_TIMEOUT = 3.0
#: Connections per node for ordinary commands; more concurrent calls queue.
POOL_SIZE = 32
#: Connections per node for blocking stream reads (one per waiting consumer).
BLOCKING_POOL_SIZE = 32
EVENT_FIELD = b"event"
MIN_VERSION = (6, 2)

# Errors that mean "cannot reach a writable Redis now", as opposed to a bug. A script
# unknown right after redis-py loaded it means the load and the call reached two
# servers: a failover under way. RedisClusterException: no seed node of a cluster
# could be reached (it is not a RedisError).
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ClusterDownError,
               TryAgainError, NoScriptError, RedisClusterException, OSError, TimeoutError)

_CLAIM = """
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# A node's record starts with its token: refreshed only by that node, while another
# one holding the name is reported (returned) instead of overwritten.
_HEARTBEAT = """
local old = redis.call('GET', KEYS[1])
if old and string.sub(old, 1, #ARGV[1]) ~= ARGV[1] then return old end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
"""

_LEAVE = """
local old = redis.call('GET', KEYS[1])
if old and string.sub(old, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _ClosedIsReset:
    """A connection mixin. Under uvloop, the daemon's loop, writing to a connection
    whose transport has already closed (the server died or cut it between two
    commands) raises RuntimeError, where redis-py expects an OSError. Made one
    here, redis-py drops the connection and retries the command on a fresh one
    (to the new primary after a failover), as for any other broken connection."""

    async def _send_packed_command(self, command) -> None:
        try:
            await super()._send_packed_command(command)
        except RuntimeError as exc:
            transport = getattr(self._writer, "transport", None)
            if transport is not None and not transport.is_closing():
                raise
            raise ConnectionResetError(f"connection already closed ({exc})") from exc


_RESET_AWARE: dict[type, type] = {}


def _reset_aware(connection_class: type) -> type:
    """`connection_class` with _ClosedIsReset (one class made per base)."""
    if issubclass(connection_class, _ClosedIsReset):
        return connection_class
    made = _RESET_AWARE.get(connection_class)
    if made is None:
        made = _RESET_AWARE[connection_class] = type(
            connection_class.__name__, (_ClosedIsReset, connection_class), {})
    return made


class _SentinelConnection(_ClosedIsReset, SentinelManagedConnection):
    """A connection to the primary the Sentinels name at each (re)connection. redis-py
    reconnects a dropped connection before a command straight to the address it
    had, bypassing the Sentinel lookup: after a switchover that is the old
    primary, now a replica, and every write there fails as read-only."""

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True):
        if self.is_connected:
            return
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await self._connect_here(check_health, retry_socket_connect)

    async def connect_to(self, address):
        # redis-py's own (re)connection, the primary just asked for: no second lookup.
        self.host, self.port = address
        await self._connect_here(self.connection_pool.check_connection, False)

    async def _connect_here(self, check_health: bool, retry_socket_connect: bool):
        await super().connect_check_health(check_health=check_health,
                                           retry_socket_connect=retry_socket_connect)


class _SentinelTLSConnection(_SentinelConnection, SSLConnection):
    """_SentinelConnection over TLS."""


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Redis Sentinel's pool (each new connection asks the Sentinels where the primary
    is; a connection to a primary demoted since is closed and made again) with the
    blocking pool's bounded wait for a free connection."""

    async def get_master_address(self):
        before = self.master_address
        address = await super().get_master_address()
        if address != before:
            log.info("redis primary %r is %s:%s (%s)", self.service_name, *address,
                     "found by its Sentinels" if before is None
                     else f"failed over from {before[0]}:{before[1]}")
        return address


class Script:
    """A Lua script, run by EVALSHA (redis-py's registered script: on NOSCRIPT it loads
    the script and asks again), and by EVAL, the script sent whole, when the server
    still does not know it: the load reached another server than the call, as
    when a connection still points at a primary just demoted."""

    def __init__(self, client: aioredis.Redis, source: str):
        self._registered = client.register_script(source)

    async def __call__(self, keys: list, args: list):
        try:
            return await self._registered(keys=keys, args=args)
        except NoScriptError:
            script = self._registered
            return await script.registered_client.eval(script.script, len(keys), *keys, *args)


class _Sentinels(Sentinel):
    """redis-py's client of the Sentinels, saying in a line which Sentinel answered
    what when none names a reachable primary."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for sentinel in self.sentinels:  # also a Sentinel may die as it is connected to
            pool = sentinel.connection_pool
            pool.connection_class = _reset_aware(pool.connection_class)

    async def discover_master(self, service_name: str):
        problems = []
        for i, sentinel in enumerate(self.sentinels):
            kw = sentinel.connection_pool.connection_kwargs
            where = f"{kw.get('host')}:{kw.get('port')}"
            try:
                masters = await sentinel.sentinel_masters()
            except (RedisError, OSError) as exc:
                problems.append(f"{where}: {exc}")
                continue
            state = masters.get(service_name)
            if state is None:
                problems.append(f"{where}: monitors no {service_name!r}")
            elif not self.check_master_state(state, service_name):
                problems.append(f"{where}: the primary is down")
            else:
                self.sentinels[0], self.sentinels[i] = sentinel, self.sentinels[0]
                return state["ip"], state["port"]
        raise MasterNotFoundError(f"no Sentinel names a primary {service_name!r} "
                                  f"({'; '.join(problems)})")


class _BoundedCluster(RedisClusterClient):
    """redis-py's Redis Cluster client, whose connection pools fail a call at once
    (MaxConnectionsError) when all of a node's connections are busy. Here, as with
    one Redis's blocking pool, a burst waits (up to `wait`) for one of at most
    `max_connections` commands or pipelines in flight."""

    def __init__(self, *args, wait: float, **kwargs):
        super().__init__(*args, **kwargs)
        # redis-py fixes the cluster's connection class; the nodes found later are
        # made from these arguments, the seed nodes were made already.
        kw = self.nodes_manager.connection_kwargs
        kw["connection_class"] = _reset_aware(kw["connection_class"])
        for seed in self.nodes_manager.startup_nodes.values():
            seed.connection_class = _reset_aware(seed.connection_class)
        self._limit = kwargs["max_connections"]
        self._in_flight = asyncio.Semaphore(self._limit)
        self._wait = wait

    @contextlib.asynccontextmanager
    async def _slot(self):
        if self._in_flight.locked():
            try:
                await asyncio.wait_for(self._in_flight.acquire(), self._wait)
            except asyncio.TimeoutError:
                raise RedisConnectionError(f"no free connection within {self._wait:g}s "
                                           f"(all {self._limit} busy)") from None
        else:
            await self._in_flight.acquire()
        try:
            yield
        finally:
            self._in_flight.release()

    async def execute_command(self, *args, **kwargs):
        async with self._slot():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, *args, **kwargs):
        pipe = super().pipeline(*args, **kwargs)
        execute = pipe.execute

        async def bounded(*a, **kw):
            async with self._slot():
                return await execute(*a, **kw)
        pipe.execute = bounded
        return pipe


def _address(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def _tls_options(config: RedisConfig) -> dict:
    """redis-py's TLS arguments for `config` (none without TLS)."""
    if not config.tls:
        return {}
    return {"ssl_ca_certs": config.tls_ca or None, "ssl_certfile": config.tls_certificate or None,
            "ssl_keyfile": config.tls_key or None, "ssl_cert_reqs": "required",
            "ssl_check_hostname": config.tls_check_hostname}


def redis_client(config: RedisConfig, *, max_connections: int, timeout: float,
                 socket_timeout: float, **options) -> aioredis.Redis:
    """A client of the Redis that `config` names: the one at `url`, or the primary
    that its `sentinels` name, followed across failovers, or the cluster of
    `cluster_nodes`; over TLS with a rediss:// url. At most `max_connections`;
    a caller beyond them waits up to `timeout` for one."""
    tls = _tls_options(config)
    if not (config.sentinels or config.cluster_nodes):
        pool = aioredis.BlockingConnectionPool.from_url(
            config.url, max_connections=max_connections, timeout=timeout,
            socket_timeout=socket_timeout, **tls, **options)
        pool.connection_class = _reset_aware(pool.connection_class)  # tcp, tls or unix
        return aioredis.Redis.from_pool(pool)
    # With Sentinels or a cluster the URL only gives the credentials and the database.
    target = {k: v for k, v in (parse_url(config.url) if config.url else {}).items()
              if k in ("username", "password", "db")}
    if config.cluster_nodes:
        # Connections per node; the cluster client routes each key to its slot's
        # node and follows MOVED/ASK and failovers by itself.
        target.pop("db", None)
        return _BoundedCluster(startup_nodes=[ClusterNode(*_address(a))
                                              for a in config.cluster_nodes],
                               max_connections=max_connections, wait=timeout,
                               socket_timeout=socket_timeout, ssl=config.tls, **tls,
                               **target, **options)
    password = config.sentinel_password
    sentinels = _Sentinels([_address(a) for a in config.sentinels], sentinel_kwargs=dict(
        socket_timeout=timeout, socket_connect_timeout=timeout,
        password=password.get_secret_value() if password else None,
        retry=Retry(NoBackoff(), 0),  # the next Sentinel is the retry
        **({"ssl": True, **tls} if tls else {})))
    return aioredis.Redis.from_pool(_BlockingSentinelPool(
        config.sentinel_master, sentinels, max_connections=max_connections, timeout=timeout,
        socket_timeout=socket_timeout,
        connection_class=_SentinelTLSConnection if tls else _SentinelConnection,
        **tls, **target, **options))


class _Link:
    """The clients and the health state the three parts share."""

    def __init__(self, config: RedisConfig, node: str, timeout: float):
        self.url = config.describe()
        self.closed = True
        # Set by close(): closing a pool does not wake a read blocked in
        # XREADGROUP, so blocked consumers also wait on this.
        self.stopping = asyncio.Event()
        self.healthy = True
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=2,
                      supported_errors=(RedisConnectionError,))
        common = dict(decode_responses=False, socket_connect_timeout=timeout, retry=retry,
                      health_check_interval=30, socket_keepalive=True,
                      client_name="ocsd-" + re.sub(r"[^A-Za-z0-9._-]", "_", node))
        # Bounded pools where a burst waits (up to the timeout) for a free
        # connection, instead of failing as soon as the pool is exhausted.
        self.client = redis_client(config, max_connections=POOL_SIZE, timeout=timeout,
                                   socket_timeout=timeout, **common)
        self.blocking = redis_client(config, max_connections=BLOCKING_POOL_SIZE,
                                     timeout=timeout,
                                     socket_timeout=timeout + MAX_BLOCK_MS / 1000, **common)

    @contextlib.contextmanager
    def guard(self, what: str):
        """Run one operation: typed errors out, outage transitions logged."""
        if self.closed:
            raise ClusterUnavailable(f"redis cluster state is stopped ({what})")
        try:
            yield
        except UNAVAILABLE as exc:
            if self.healthy:
                self.healthy = False
                log.warning("redis at %s unavailable (%s): %s", self.url, what, exc)
            raise ClusterUnavailable(f"redis at {self.url} unavailable ({what}): {exc}") \
                from exc
        except ResponseError as exc:
            raise ClusterError(f"redis {what}: {exc}") from exc
        except RedisError as exc:
            raise ClusterUnavailable(f"redis at {self.url} ({what}): {exc}") from exc
        if not self.healthy:
            self.healthy = True
            log.info("redis at %s reachable again", self.url)

    def open(self) -> None:
        self.closed = False
        self.stopping = asyncio.Event()

    async def interruptible(self, read, what: str):
        """Await a blocking read, or give up with ClusterUnavailable on close()."""
        task = asyncio.ensure_future(read)
        stopped = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        raise ClusterUnavailable(f"redis cluster state stopped while {what}")

    async def close(self) -> None:
        self.closed = True
        self.stopping.set()
        await close_redis(self.client, f"cluster state at {self.url}")
        await close_redis(self.blocking, f"cluster state at {self.url}")


CLOSE_TIMEOUT = 2.0  # seconds


async def close_redis(client, what: str) -> None:
    """Close a client's connections, never waiting longer than CLOSE_TIMEOUT: closing a
    connection whose blocking read was just cancelled can wait forever for the socket
    to report closed (redis-py's disconnect awaits wait_closed), and a stopping ocsd
    must not hang on it."""
    sentinels = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    try:
        await asyncio.wait_for(client.aclose(), CLOSE_TIMEOUT)
        if sentinels is not None:
            await asyncio.wait_for(sentinels.aclose(), CLOSE_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("closing the redis connections of the %s took over %.0fs; abandoned",
                    what, CLOSE_TIMEOUT)
    except (RedisError, OSError) as exc:
        log.warning("closing the redis connections of the %s: %s", what, exc)


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisSessionDirectory(SessionDirectory):
    def __init__(self, link: _Link, keys: Keys, node: str):
        self._link = link
        self._keys = keys
        self._node = node

    def _decode(self, raw: bytes | None, session_id: str) -> dict | None:
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ClusterError(f"session record {session_id!r} is not JSON") from None

    async def put(self, session_id, data, ttl, *, account_id=None):
        check_name(session_id, "session_id")
        text = encode_json({**data, "node": self._node} if isinstance(data, dict) else data,
                           "session record")
        px = ttl_ms(ttl)
        r = self._link.client
        with self._link.guard("session put"):
            if account_id is None:
                await r.set(self._keys.session(session_id), text, px=px)
                return
            # Two keys in two slots: not atomic, and need not be. The index
            # is written second and read first; a record without its index
            # is found by account-tagged lookups, an index without a record
            # reads as "no session", and both expire together.
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(self._keys.session(session_id, account_id), text, px=px)
                pipe.set(self._keys.session_index(session_id), str(account_id), px=px)
                await pipe.execute()

    async def _account_of(self, session_id: str) -> bytes | None:
        return await self._link.client.get(self._keys.session_index(session_id))

    async def get(self, session_id, *, account_id=None):
        check_name(session_id, "session_id")
        r = self._link.client
        with self._link.guard("session get"):
            if account_id is not None:
                raw = await r.get(self._keys.session(session_id, account_id))
                return self._decode(raw, session_id)
            async with r.pipeline(transaction=False) as pipe:
                pipe.get(self._keys.session(session_id))
                pipe.get(self._keys.session_index(session_id))
                raw, account = await pipe.execute()
            if raw is None and account is not None:
                raw = await r.get(self._keys.session(session_id, account.decode()))
        return self._decode(raw, session_id)

    async def touch(self, session_id, ttl, *, account_id=None):
        check_name(session_id, "session_id")
        px = ttl_ms(ttl)
        r = self._link.client
        with self._link.guard("session touch"):
            if account_id is None:
                async with r.pipeline(transaction=False) as pipe:
                    pipe.pexpire(self._keys.session(session_id), px)
                    pipe.get(self._keys.session_index(session_id))
                    found, account = await pipe.execute()
                if found or account is None:
                    return bool(found)
                account_id = account.decode()
            # The index follows only if the record exists: a call naming the
            # wrong account must not change how long the right one is found.
            if not await r.pexpire(self._keys.session(session_id, account_id), px):
                return False
            await r.pexpire(self._keys.session_index(session_id), px)
            return True

    async def delete(self, session_id, *, account_id=None):
        check_name(session_id, "session_id")
        r = self._link.client
        with self._link.guard("session delete"):
            if account_id is None:
                account = await self._account_of(session_id)
                if account is None:
                    return bool(await r.delete(self._keys.session(session_id)))
                account_id = account.decode()
            # One DEL per key: on Redis Cluster a multi-key DEL must stay in one slot.
            if not await r.delete(self._keys.session(session_id, account_id)):
                return False
            await r.delete(self._keys.session_index(session_id))
            return True

    async def count(self):
        n = 0
        with self._link.guard("session count"):
            async for _ in self._link.client.scan_iter(match=self._keys.session_pattern(),
                                                       count=1000):
                n += 1
        return n


class RedisDuplicateCache(DuplicateCache):
    def __init__(self, link: _Link, keys: Keys, node: str, answer_ttl: float,
                 claim_ttl: float):
        self._link = link
        self._keys = keys
        self._ttl, self._claim_ttl = answer_ttl, claim_ttl
        self._token_base = f"C{node}:".encode()
        self._claim = Script(link.client, _CLAIM)
        self._release = Script(link.client, _RELEASE)
        # Tokens of this node's claims not yet answered or released, so
        # release(key) can prove ownership. Pruned of expired claims as it grows.
        self._mine: dict[str, tuple[bytes, float]] = {}
        self._prune_at = 1024

    def _remember(self, key: str, token: bytes, ttl: float) -> None:
        now = time.monotonic()
        self._mine[key] = (token, now + ttl)
        if len(self._mine) >= self._prune_at:
            self._mine = {k: v for k, v in self._mine.items() if v[1] > now}
            self._prune_at = max(1024, 2 * len(self._mine))

    async def claim(self, key, ttl=None):
        check_name(key, "duplicate-cache key")
        px = ttl_ms(self._claim_ttl if ttl is None else ttl)
        token = self._token_base + os.urandom(8).hex().encode()
        with self._link.guard("dedup claim"):
            previous = await self._claim(keys=[self._keys.dedup(key)], args=[token, px])
        if previous is None or previous == token:
            self._remember(key, token, px / 1000)
            return True
        return False

    async def store(self, key, answer, ttl=None):
        check_name(key, "duplicate-cache key")
        if not isinstance(answer, (bytes, bytearray, memoryview)):
            raise TypeError(f"answer must be bytes, not {type(answer).__name__}")
        px = ttl_ms(self._ttl if ttl is None else ttl)
        with self._link.guard("dedup store"):
            await self._link.client.set(self._keys.dedup(key), b"A" + bytes(answer), px=px)
        self._mine.pop(key, None)

    async def get(self, key):
        check_name(key, "duplicate-cache key")
        with self._link.guard("dedup get"):
            raw = await self._link.client.get(self._keys.dedup(key))
        if raw is not None and raw[:1] == b"A":
            return raw[1:]
        return None

    async def release(self, key):
        check_name(key, "duplicate-cache key")
        mine = self._mine.get(key)
        if mine is None:
            return False
        with self._link.guard("dedup release"):
            dropped = await self._release(keys=[self._keys.dedup(key)], args=[mine[0]])
        self._mine.pop(key, None)
        return bool(dropped)


class RedisEventStream(EventStream):
    # A Redis without persistence (or restored from an older snapshot) loses what
    # was published: the relay waits until the consumers acknowledged an event.
    durable = False

    def __init__(self, link: _Link, keys: Keys, maxlen: int):
        self._link = link
        self._key = keys.stream
        self._epoch_key = keys.stream_epoch
        self._maxlen = maxlen
        # The stream's epoch when an entry was published, for the entries `handled`
        # will be asked about (the last of each batch); forgotten once answered.
        self._epochs: dict[str, str] = {}

    def _decode(self, entries) -> list[tuple[str, dict]]:
        out = []
        for entry_id, fields in entries or ():
            if fields is None:  # deleted entry still pending (Redis < 7 XAUTOCLAIM)
                continue
            entry_id = _text(entry_id)
            raw = fields.get(EVENT_FIELD)
            try:
                event = json.loads(raw) if raw is not None else None
            except ValueError:
                event = None
            if not isinstance(event, dict):
                log.warning("event stream %s: entry %s is not an ocsd event; delivered as "
                            "invalid", self._key, entry_id)
                event = invalid_event("not an ocsd event",
                                      raw if raw is not None else
                                      {_text(k): _text(v) for k, v in fields.items()})
            out.append((entry_id, event))
        return out

    async def publish(self, event):
        text = encode_json(event, "event")
        with self._link.guard("event publish"):
            entry_id = await self._link.client.xadd(self._key, {EVENT_FIELD: text},
                                                    maxlen=self._maxlen, approximate=True)
        return _text(entry_id)

    async def publish_many(self, events):
        texts = [encode_json(event, "event") for event in events]
        if not texts:
            return []
        with self._link.guard("event publish"):
            async with self._link.client.pipeline(transaction=False) as pipe:
                pipe.set(self._epoch_key, os.urandom(8).hex(), nx=True)
                pipe.get(self._epoch_key)
                for text in texts:
                    pipe.xadd(self._key, {EVENT_FIELD: text}, maxlen=self._maxlen,
                              approximate=True)
                _, epoch, *ids = await pipe.execute()
        ids = [_text(i) for i in ids]
        if len(self._epochs) >= 100_000:  # nobody asks about them: do not keep them all
            self._epochs.clear()
        self._epochs[ids[-1]] = _text(epoch)
        return ids

    async def handled(self, entry_id, *, group=None):
        parsed = parse_entry_id(entry_id)
        if parsed is None:
            return False
        with self._link.guard("event handled"):
            async with self._link.client.pipeline(transaction=False) as pipe:
                pipe.get(self._epoch_key)
                pipe.xinfo_groups(self._key)
                pipe.xrange(self._key, entry_id, entry_id, count=1)
                epoch, groups, entry = await pipe.execute(raise_on_error=False)
            published_in = self._epochs.get(entry_id)
            if (isinstance(groups, ResponseError) or _text(epoch) is None
                    or (published_in is not None and _text(epoch) != published_in)):
                # The stream (or its epoch) is gone, or is another one: Redis lost it.
                self._epochs.pop(entry_id, None)
                return None
            if isinstance(entry, ResponseError):
                raise entry
            groups = [g for g in groups if group is None or _text(g["name"]) == group]
            if not groups:
                return False  # no consumer yet: it has handled nothing
            for g in groups:
                last = parse_entry_id(_text(g["last-delivered-id"])) or (0, 0)
                if last < parsed:
                    if not entry:  # neither delivered nor in the stream: lost
                        self._epochs.pop(entry_id, None)
                        return None
                    return False
                if int(g["pending"]):
                    summary = await self._link.client.xpending(self._key, _text(g["name"]))
                    oldest = parse_entry_id(_text(summary["min"])) if summary["min"] else None
                    if oldest is not None and oldest <= parsed:
                        return False
        self._epochs.pop(entry_id, None)
        return True

    async def ensure_group(self, group, *, start="0"):
        check_name(group, "group")
        check_start(start)
        with self._link.guard("event group create"):
            try:
                await self._link.client.xgroup_create(self._key, group, id=start, mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    async def consume(self, group, consumer, count=100, block_ms=1000):
        check_name(group, "group")
        check_name(consumer, "consumer")
        check_count(count)
        check_block(block_ms)
        # BLOCK 0 would mean "forever" to Redis; here 0 means "do not wait".
        block = block_ms or None
        client = self._link.blocking if block else self._link.client
        for attempt in (1, 2):
            missing = False
            with self._link.guard("event consume"):
                try:
                    read = client.xreadgroup(group, consumer, {self._key: ">"},
                                             count=count, block=block)
                    reply = await (self._link.interruptible(read, f"{self._key} was read")
                                   if block else read)
                except ResponseError as exc:
                    if attempt == 2 or not str(exc).startswith("NOGROUP"):
                        raise
                    missing = True
            if not missing:
                break
            # The group (or the whole stream) is gone, e.g. Redis restarted
            # without persistence: recreate it and read again.
            log.warning("event stream %s: consumer group %s missing; recreating it",
                        self._key, group)
            await self.ensure_group(group)
        # RESP2: [[stream, [(id, fields), ...]]], or nil when nothing came.
        return self._decode(reply[0][1] if reply else [])

    async def ack(self, group, ids):
        check_name(group, "group")
        if not ids:
            return 0
        with self._link.guard("event ack"):
            try:
                return await self._link.client.xack(self._key, group, *ids)
            except ResponseError as exc:
                if str(exc).startswith("NOGROUP"):
                    return 0
                raise

    async def pending(self, group):
        check_name(group, "group")
        with self._link.guard("event pending"):
            try:
                summary = await self._link.client.xpending(self._key, group)
            except ResponseError as exc:
                if str(exc).startswith("NOGROUP"):
                    return 0
                raise
        return int(summary["pending"])

    async def reclaim(self, group, consumer, min_idle_ms, count=100):
        check_name(group, "group")
        check_name(consumer, "consumer")
        check_count(count)
        out: list[tuple[str, dict]] = []
        trimmed = 0
        cursor = "0-0"
        with self._link.guard("event reclaim"):
            # XAUTOCLAIM scans a bounded part of the pending list per call;
            # follow the cursor until enough entries are claimed or it wraps.
            while len(out) < count:
                try:
                    reply = await self._link.client.xautoclaim(
                        self._key, group, consumer, min_idle_ms, start_id=cursor,
                        count=count - len(out))
                except ResponseError as exc:
                    if str(exc).startswith("NOGROUP"):
                        return []
                    raise
                cursor = _text(reply[0])
                out.extend(self._decode(reply[1]))
                if len(reply) > 2:
                    trimmed += len(reply[2])
                if cursor == "0-0":
                    break
        if trimmed:
            log.warning("event stream %s: %d pending event(s) of group %s were trimmed before "
                        "being processed; they are lost", self._key, trimmed, group)
        return out

    async def length(self):
        with self._link.guard("event length"):
            return await self._link.client.xlen(self._key)


class RedisNodeCalls(NodeCalls):
    #: An answer nobody took (its caller gave up) is gone after this long.
    REPLY_TTL_MS = 60_000

    def __init__(self, link: _Link, keys: Keys, node: str):
        self._link = link
        self._keys = keys
        self._node = node
        self._handlers: dict[str, CallHandler] = {}
        self._listener: asyncio.Task | None = None
        self._heart: asyncio.Task | None = None
        self._answering: set[asyncio.Task] = set()
        # call id -> the future its answer resolves (calls this node is waiting on)
        self._waiting: dict[str, asyncio.Future] = {}
        self._token = '{"token":"%s"' % secrets.token_hex(12)
        self._heartbeat = Script(link.client, _HEARTBEAT)
        self._leave = Script(link.client, _LEAVE)
        self._warnings = Throttled(log)

    async def begin(self) -> None:
        """The node is running: listed at once and kept fresh; answers what it serves."""
        key = self._keys.member(self._node)
        record = self._token + "," + encode_json(member_record(self._node), "node")[1:]
        beat = functools.partial(self._heartbeat, [key],
                                 [self._token, record, ttl_ms(HEARTBEAT_TTL)])
        try:
            with self._link.guard("node heartbeat"):
                other = await beat()
        except ClusterError:
            other = None
        if self._heart is None or self._heart.done():
            self._heart = asyncio.get_running_loop().create_task(
                self._beat(beat, other), name=f"ocs-node-heartbeat-{self._node}")
        self.listen()

    async def _beat(self, beat, other) -> None:
        other_since: float | None = None
        while not self._link.closed:
            if other is None:
                other_since = None
            else:
                now = time.monotonic()
                other_since = other_since or now
                # A record left by this node's previous run (it crashed) lapses by itself;
                # one still refreshed after that is another process using the same name.
                if now - other_since > HEARTBEAT_TTL + HEARTBEAT:
                    self._warnings.warning(
                        "name", "another ocsd runs as node %r too (%s): give each node its "
                        "own [daemon] node_name, or RAR/ASR for Diameter clients may be asked "
                        "of the wrong node", self._node, _describe_member(other))
            try:
                await asyncio.wait_for(self._link.stopping.wait(), HEARTBEAT)
            except asyncio.TimeoutError:
                pass
            if self._link.closed:
                return
            try:
                with self._link.guard("node heartbeat"):
                    other = await beat()
            except ClusterError:
                other = None  # an outage is logged by the guard; a name is not in question

    async def nodes(self):
        found = []
        with self._link.guard("node list"):
            keys = [k async for k in self._link.client.scan_iter(
                match=self._keys.member_pattern(), count=1000)]
            for key in keys:
                raw = await self._link.client.get(key)
                try:
                    record = json.loads(raw) if raw is not None else None
                except ValueError:
                    record = None
                if isinstance(record, dict) and record.get("node"):
                    record.pop("token", None)
                    found.append(record)
        return sorted(found, key=lambda r: str(r["node"]))

    def listen(self) -> None:
        """Wait for calls and answers while the link is open."""
        if not self._link.closed and (self._listener is None or self._listener.done()):
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name=f"ocs-node-calls-{self._node}")

    async def _listen(self) -> None:
        """One blocking read for the node's calls and for the answers to its own:
        however many calls are waiting, they hold no connection each."""
        calls, replies = self._keys.calls(self._node), self._keys.replies(self._node)
        while not self._link.closed:
            try:
                with self._link.guard("node calls"):
                    got = await self._link.interruptible(
                        self._link.blocking.brpop([calls, replies], 1), f"{calls} was read")
            except ClusterUnavailable:
                if self._link.closed:
                    return
                await asyncio.sleep(0.5)  # the outage is logged once, by the guard
                continue
            except ClusterError as exc:
                log.error("waiting for calls on %s: %s", calls, exc)
                await asyncio.sleep(1.0)
                continue
            if not got:
                continue
            key, raw = _text(got[0]), got[1]
            if key == replies:
                self._answered(raw)
            else:
                task = asyncio.get_running_loop().create_task(self._answer(raw))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)

    def _answered(self, raw: bytes) -> None:
        try:
            answer = json.loads(raw)
            waiting = self._waiting.pop(answer["id"], None)
        except (ValueError, KeyError, TypeError):
            log.warning("a malformed answer to node %s was dropped: %r", self._node, raw[:200])
            return
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)  # else its caller gave up: dropped

    async def _answer(self, raw: bytes) -> None:
        try:
            call = json.loads(raw)
            call_id, kind, reply, body = call["id"], call["kind"], call["reply"], call["body"]
            deadline, caller = float(call["deadline"]), str(call.get("from"))
        except (ValueError, KeyError, TypeError):
            log.warning("a malformed call to node %s was dropped: %r", self._node, raw[:200])
            return
        if time.time() > deadline:
            log.info("a %s call from node %s was dropped: it came after its caller gave up",
                     kind, caller)
            return
        handler = self._handlers.get(kind)
        if handler is None:
            answer = {"id": call_id, "not_served": True,
                      "error": f"node {self._node} does not serve {kind} calls"}
        else:
            try:
                answer = {"id": call_id, "answer": await handler(body)}
            except Exception as exc:  # noqa: BLE001 - the caller is told
                log.exception("a %s call from node %s failed", kind, caller)
                answer = {"id": call_id, "error": f"{type(exc).__name__}: {exc}"}
        try:
            with self._link.guard("node call answer"):
                await self._link.client.lpush(reply, encode_json(answer, "call answer"))
                await self._link.client.pexpire(reply, self.REPLY_TTL_MS)
        except (ClusterError, ValueError) as exc:
            log.warning("the answer to a %s call from node %s was lost: %s", kind, caller, exc)

    async def call(self, node, kind, body, timeout):
        check_name(node, "node")
        if node == self._node:
            return await self._here(kind, body, timeout)
        call_id = secrets.token_hex(12)
        message = encode_json({"id": call_id, "kind": kind, "from": self._node,
                               "reply": self._keys.replies(self._node),
                               "deadline": time.time() + timeout, "body": body}, "call")
        key = self._keys.calls(node)
        waiting = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = waiting
        try:
            self.listen()  # (a listener that died with an error is started again)
            with self._link.guard("node call"):
                if not await self._link.client.exists(self._keys.member(node)):
                    raise NodeUnreachable(f"node {node} is not running (it is not in the "
                                          "list of nodes)")
                await self._link.client.lpush(key, message)
                # Calls nobody takes go with the list, soon after the last caller gave up.
                await self._link.client.pexpire(key, ttl_ms(timeout) + 1000)
            try:
                answer = await asyncio.wait_for(asyncio.shield(waiting), timeout)
            except asyncio.TimeoutError:
                raise NodeUnreachable(f"node {node} did not answer within {timeout:g}s") \
                    from None
        finally:
            self._waiting.pop(call_id, None)
        if answer.get("not_served"):
            raise CallNotServed(answer.get("error") or f"node {node} does not serve {kind} calls")
        if "error" in answer:
            raise NodeUnreachable(f"node {node} failed the {kind} call: {answer['error']}")
        return answer.get("answer")

    async def stop(self) -> None:
        for task in (self._heart, self._listener, *self._answering):
            if task is not None and not task.done():
                task.cancel()
        self._heart = self._listener = None
        for waiting in self._waiting.values():  # their answers can no longer be read
            if not waiting.done():
                waiting.set_exception(ClusterUnavailable("redis cluster state stopped while "
                                                         "waiting for another node"))
        try:  # the node leaves the list at once, not when its record lapses
            with self._link.guard("node leave"):
                await self._leave([self._keys.member(self._node)], [self._token])
        except ClusterError as exc:
            log.debug("node record not removed (it lapses by itself): %s", exc)


def _describe_member(raw: bytes) -> str:
    try:
        other = json.loads(raw)
        return (f"on {other.get('host')}, pid {other.get('pid')}, version "
                f"{other.get('version')}, started {time.ctime(other.get('started_at', 0))}")
    except (ValueError, TypeError, AttributeError):
        return "its record is unreadable"


class RedisCluster(Cluster):
    """Shared state of several ocsd nodes on one Redis (or a Sentinel-managed
    primary behind one address)."""

    kind = "redis"

    def __init__(self, config: RedisConfig, *, node: str, timeout: float = DEFAULT_TIMEOUT):
        self.node = node
        self.keys = Keys(config.key_prefix, config.event_stream)
        self._link = _Link(config, node, timeout)
        self.sessions = RedisSessionDirectory(self._link, self.keys, node)
        self.dedup = RedisDuplicateCache(self._link, self.keys, node, config.dedup_ttl,
                                         config.dedup_claim_ttl)
        self.events = RedisEventStream(self._link, self.keys, config.stream_maxlen)
        self.calls = RedisNodeCalls(self._link, self.keys, node)

    def describe(self) -> str:
        return self._link.url

    async def start(self) -> None:
        if not self._link.closed:
            return
        self._link.open()
        try:
            with self._link.guard("start"):
                info = await self._link.client.info("server")
            version = str(info.get("redis_version", "0"))
            parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
            if parts < MIN_VERSION:
                raise ClusterError(f"redis at {self._link.url} is version {version}; ocsd needs "
                                   f"{MIN_VERSION[0]}.{MIN_VERSION[1]} or later (XAUTOCLAIM)")
        except BaseException:
            await self._link.close()
            raise
        log.info("cluster state: redis at %s (version %s), key prefix %r, node %s",
                 self._link.url, version, self.keys.prefix, self.node)
        await self.calls.begin()

    async def stop(self) -> None:
        if not self._link.closed:
            await self.calls.stop()
            await self._link.close()

    async def ping(self) -> bool:
        with self._link.guard("ping"):
            return bool(await self._link.client.ping())

"""Cross-node state: session directory, duplicate cache, event stream.

What several ocsd nodes must agree on beyond the database, so that any node
can continue any session and a retransmission is recognised whichever node
it reaches:

* `Cluster.sessions` (`SessionDirectory`): which node last handled a session
  and the small protocol state needed to continue it;
* `Cluster.dedup` (`DuplicateCache`): exactly-once claim of a request and
  the cached answer for its duplicates (RFC 5080, RFC 6733 §5.5.4);
* `Cluster.events` (`EventStream`): charging events for policy/, delivered
  at least once per consumer group;
* `Cluster.calls` (`NodeCalls`): a call from one node to another, for what
  only that node can do (a Re-Auth-Request to a Diameter client connected
  to it alone).

With ``[redis] url`` set, all of it lives in Redis (`redis_backend`); without
it, in this process (`local`): one node needs nothing shared. Both follow one
contract (`base`) and pass one test suite, so callers never know which runs.

Usage, as a daemon component::

    cluster = build(config.redis, node=config.daemon.node_name)
    await cluster.start()          # connects, checks the server
    ...
    await cluster.stop()

or ``cluster = await connect(config.redis, node=...)`` for build + start.
Every operation raises `ClusterUnavailable` (a `StoreUnavailable`) when the
shared state cannot be reached: protocol layers then do not answer.
"""

from __future__ import annotations

from ..config import RedisConfig
from .base import (DIAMETER_PEERS, DIAMETER_SERVER_REQUEST, MAX_BLOCK_MS, POLICY_ATTEMPT,
                   CallNotServed, Cluster, ClusterError, ClusterUnavailable, DuplicateCache,
                   EventStream, Keys, NodeCalls, NodeUnreachable, SessionDirectory)

__all__ = ["build", "connect", "Cluster", "SessionDirectory", "DuplicateCache", "EventStream",
           "NodeCalls", "ClusterError", "ClusterUnavailable", "NodeUnreachable",
           "CallNotServed", "Keys", "MAX_BLOCK_MS",
           "DIAMETER_SERVER_REQUEST", "DIAMETER_PEERS", "POLICY_ATTEMPT"]


def build(config: RedisConfig, *, node: str, timeout: float | None = None) -> Cluster:
    """The adapter `config` asks for, not yet started (no I/O).

    `node` names this ocsd instance (``[daemon] node_name``); it is recorded
    in session records and claims. `timeout` bounds each Redis command in
    seconds (default `redis_backend.DEFAULT_TIMEOUT`).
    """
    if not node:
        raise ValueError("node must be a non-empty name")
    if config.enabled:
        from .redis_backend import DEFAULT_TIMEOUT, RedisCluster
        return RedisCluster(config, node=node,
                            timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
    from .local import LocalCluster
    return LocalCluster(config, node=node)


async def connect(config: RedisConfig, *, node: str, timeout: float | None = None) -> Cluster:
    """`build` and `start`: a ready adapter, Redis-backed when ``config.url``
    or ``config.sentinels`` is set, in-process otherwise. Raises
    ClusterUnavailable if Redis does not answer."""
    cluster = build(config, node=node, timeout=timeout)
    await cluster.start()
    return cluster

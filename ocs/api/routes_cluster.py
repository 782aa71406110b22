"""/v1/cluster/nodes: the ocsd nodes running on the shared state.

Each running node keeps a record in Redis, refreshed every few seconds and
removed when it stops; one that died drops out within 15 seconds. Without
Redis the list is this node alone.
"""

from __future__ import annotations

import logging

from pydantic import Field

from ..cluster import ClusterUnavailable
from ..components import CONTEXT
from ..model import Role
from . import views as v
from .problems import ApiError
from .routing import Call, route
from .wire import Out, iso

log = logging.getLogger("ocs.api")


class NodeView(Out):
    node: str = Field(description="[daemon] node_name")
    host: str
    pid: int
    version: str
    started_at: str
    this: bool = Field(description="the node answering this request")


@route("GET", "/v1/cluster/nodes", role=Role.READ_ONLY, tag="cluster",
       summary="The ocsd nodes running on the shared state", response=v.Page[NodeView])
async def list_nodes(call: Call):
    ctx = call.request.app.get(CONTEXT)
    cluster = getattr(ctx, "cluster", None)
    if cluster is None:
        raise ApiError(503, "the cluster state has not started", code="store_unavailable")
    try:
        found = await cluster.calls.nodes()
    except ClusterUnavailable as exc:
        raise ApiError(503, f"the list of running nodes cannot be read: {exc}",
                       code="store_unavailable") from exc
    items = []
    for n in found:
        try:
            items.append(NodeView(node=str(n["node"]), host=str(n.get("host", "")),
                                  pid=int(n.get("pid", 0)), version=str(n.get("version", "")),
                                  started_at=iso(int(float(n.get("started_at", 0)) * 1_000_000)),
                                  this=n["node"] == cluster.node))
        except (TypeError, ValueError, OverflowError):  # written by something else
            log.warning("the record of node %r in Redis is unreadable; left out", n.get("node"))
    return v.Page[NodeView](items=items, count=len(items))

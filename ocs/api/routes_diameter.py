"""/v1/diameter/peers: the Diameter connections of the node answering, or of every node.

Each node serves its own peers. By default the list is this node's (on a
node where Diameter is off: 503 ``diameter_disabled``); ``?nodes=all`` asks
every running node (through Redis) and names the node of each connection,
which tells where a client is connected, and so which node sends its
RAR/ASR. A node that does not answer within two seconds is listed under
``unreachable``.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field

from ..cluster import DIAMETER_PEERS, CallNotServed, ClusterUnavailable, NodeUnreachable
from ..components import CONTEXT
from ..model import Role
from .problems import ApiError
from .routing import Call, route
from .wire import Out, Query, iso

#: Seconds another node has to list its peers.
PEERS_TIMEOUT = 2.0


class DiameterPeerView(Out):
    """One connection, and who is at its other end as its CER said."""

    origin_host: str | None = Field(description="null until the peer has sent its CER")
    origin_realm: str | None
    address: str = Field(description="the peer's IP address")
    local_address: str
    transport: Literal["tcp", "tls"]
    state: Literal["connecting", "wait-cer", "open", "closing", "closed"]
    watchdog: Literal["okay", "suspect", "down"] | None = Field(
        description="RFC 3539: suspect once a watchdog went unanswered, down after two")
    connected_at: str | None
    product_name: str | None
    vendor_id: int | None
    origin_state_id: int | None = Field(description="changes when the peer restarts")
    applications: list[int] = Field(description="application ids both sides support")
    node: str = Field(description="the ocsd node the peer is connected to")


class NodeProblem(Out):
    node: str
    error: str


class DiameterPeersPage(Out):
    items: list[DiameterPeerView]
    count: int
    unreachable: list[NodeProblem] = Field(
        description="with nodes=all: running nodes that did not list their peers, and why")


class DiameterPeersQuery(Query):
    nodes: Literal["this", "all"] = Field(
        "this", description="all: the peers of every running node (asked through Redis)")


def _view(peer: dict, node: str) -> DiameterPeerView:
    at = peer.get("connected_at")
    return DiameterPeerView(**{**peer, "node": node,
                               "connected_at": iso(int(at * 1_000_000)) if at is not None
                               else None})


@route("GET", "/v1/diameter/peers", role=Role.READ_ONLY, tag="diameter",
       summary="The Diameter peers connected to this node, or to every node",
       query=DiameterPeersQuery, response=DiameterPeersPage)
async def list_diameter_peers(call: Call):
    ctx = call.request.app.get(CONTEXT)
    component = getattr(ctx, "diameter", None) if ctx is not None else None
    server = getattr(component, "server", None)
    cluster = getattr(ctx, "cluster", None)
    if call.query.nodes == "this" or cluster is None:
        if server is None:
            raise ApiError(503, "Diameter is disabled on this node ([diameter] enabled = false, "
                                "or it has not started)", code="diameter_disabled")
        items = [_view(p, cluster.node if cluster else "") for p in server.peers()]
        return DiameterPeersPage(items=items, count=len(items), unreachable=[])
    try:
        members = [m["node"] for m in await cluster.calls.nodes()]
    except ClusterUnavailable as exc:
        raise ApiError(503, f"the list of running nodes cannot be read: {exc}",
                       code="store_unavailable") from exc

    async def ask(node: str) -> list[DiameterPeerView] | str:
        if node == cluster.node:
            if server is None:
                return "Diameter is not running there"
            return [_view(p, node) for p in server.peers()]
        try:
            got = await cluster.calls.call(node, DIAMETER_PEERS, {}, PEERS_TIMEOUT)
        except CallNotServed:
            return "Diameter is not running there"
        except (NodeUnreachable, ClusterUnavailable) as exc:
            return str(exc)
        try:  # another node, maybe another version: what it says is checked
            return [_view(p, node) for p in got["items"]]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            return f"its answer is not a list of peers: {exc}"

    items, unreachable = [], []
    for node, got in zip(members, await asyncio.gather(*(ask(n) for n in members))):
        if isinstance(got, str):
            unreachable.append(NodeProblem(node=node, error=got))
        else:
            items.extend(got)
    return DiameterPeersPage(items=items, count=len(items), unreachable=unreachable)

"""/v1/diameter/peers: the Diameter connections of the node answering.

Each node serves its own peers, so the list is this node's: ask each node (or
read the `ocs_diameter_connections` gauge of each) for the whole picture. On a
node where Diameter is off it answers 503 ``diameter_disabled``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..components import CONTEXT
from ..model import Role
from . import views as v
from .problems import ApiError
from .routing import Call, route
from .wire import Out, iso


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


@route("GET", "/v1/diameter/peers", role=Role.READ_ONLY, tag="diameter",
       summary="The Diameter peers connected to this node",
       response=v.Page[DiameterPeerView])
async def list_diameter_peers(call: Call):
    ctx = call.request.app.get(CONTEXT)
    component = getattr(ctx, "diameter", None) if ctx is not None else None
    server = getattr(component, "server", None)
    if server is None:
        raise ApiError(503, "Diameter is disabled on this node ([diameter] enabled = false, "
                            "or it has not started)", code="diameter_disabled")
    items = [DiameterPeerView(**{**p, "connected_at": iso(int(p["connected_at"] * 1_000_000))
                                 if p["connected_at"] is not None else None})
             for p in server.peers()]
    return v.Page[DiameterPeerView](items=items, count=len(items))

"""Enforcement by operators: disconnect a session, throttle or restore a subscriber,
and the action queue (pending and dead-lettered actions, retry).

These routes reach the daemon's running enforcement service (``ctx.policy``,
see `policy.service`); actions are queued and carried out asynchronously, so
the answers are 202 with the queued actions. On a node where enforcement is
off (``[policy] enabled = false``) they answer 503 ``policy_disabled``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

from ..components import CONTEXT
from ..model import Role
from . import views as v
from .problems import ApiError
from .routing import ID, Call, route
from .wire import Body, Out, Query, int_in, iso

TAG = "policy"
Kbps = int_in(1, 100_000_000)
ProfileName = Annotated[str, StringConstraints(min_length=1, max_length=100,
                                               pattern=r"^[^\x00-\x1f\x7f]*$")]
STATUSES = ("pending", "running", "dead", "done", "superseded", "replaced")


class PolicyActionView(Out):
    """One enforcement action: what is to be done to which session, through which back-end."""

    id: str | None = Field(description="queue id (use it to retry a dead-lettered action)")
    key: str = Field(description="session|action|generation|backend: the action's identity")
    session: str
    account_id: int
    nas: str | None
    backend: Literal["coa", "diameter", "freeswitch", "asterisk", "kamailio", "snmp", "tc"]
    action: Literal["disconnect", "throttle", "redirect", "restore"]
    generation: int = Field(description="counts the decisions made for the session")
    reason: str = Field(description="the charging event behind it, or \"operator\"")
    status: Literal["pending", "running", "dead", "done", "superseded", "replaced"]
    attempts: int
    next_at: str | None = Field(description="when a waiting retry is due")
    result: str | None = Field(description="outcome of the last attempt: ack, nak, "
                                           "timeout, error, gone, confirmed, ...")
    last_error: str | None
    params: dict[str, Any] = Field(description="what it applies (speed profile, redirect) "
                                               "and the session as the NAS knows it")
    created_at: str | None
    updated_at: str | None


class ThrottleIn(Body):
    """A speed profile for this throttle; without one, the plan's throttle profile."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "dependentRequired": {"down_kbps": ["up_kbps"], "up_kbps": ["down_kbps"]}})

    down_kbps: Kbps | None = None
    up_kbps: Kbps | None = None
    name: ProfileName | None = None

    @model_validator(mode="after")
    def _both(self):
        if (self.down_kbps is None) != (self.up_kbps is None):
            raise PydanticCustomError("both_rates", "give both down_kbps and up_kbps, or neither")
        return self


class PolicyActionsQuery(Query):
    status: Literal["queue", "pending", "running", "dead", "done", "superseded", "replaced",
                    "all"] = Field("queue", description="queue = pending, running and dead")
    limit: int = Field(100, ge=1, le=1000)


def _service(call: Call):
    ctx = call.request.app.get(CONTEXT)
    service = getattr(ctx, "policy", None) if ctx is not None else None
    if service is None:
        raise ApiError(503, "enforcement is disabled on this node ([policy] enabled = false, "
                            "or it has not started)", code="policy_disabled")
    return service


def _view(e: dict[str, Any]) -> PolicyActionView:
    return PolicyActionView(**{**e, "next_at": iso(e.get("next_at")),
                               "created_at": iso(e.get("created_at")),
                               "updated_at": iso(e.get("updated_at"))})


def _page(entries: list[dict[str, Any]]) -> v.Page[PolicyActionView]:
    items = [_view(e) for e in entries]
    return v.Page[PolicyActionView](items=items, count=len(items))


@route("POST", "/v1/sessions/{id:.+}/kill", role=Role.OPERATOR, tag=TAG,
       summary="Disconnect a session", response=v.Page[PolicyActionView], status=202,
       target="session")
async def kill_session(call: Call):
    """Queues a disconnect through the session's equipment (RADIUS Disconnect-Request,
    Diameter ASR or the softswitch's hang-up); 409 if the session is not active."""
    return _page(await _service(call).kill(call.params["id"]))


@route("POST", f"/v1/subscribers/{ID}/throttle", role=Role.OPERATOR, tag=TAG,
       summary="Throttle every active session of a subscriber", body=ThrottleIn,
       response=v.Page[PolicyActionView], status=202, target="subscriber")
async def throttle_subscriber(call: Call):
    """To the speed given, else to the plan's throttle profile (or its fair-usage one)."""
    b = call.body
    profile = ({"down_kbps": b.down_kbps, "up_kbps": b.up_kbps, "name": b.name}
               if b.down_kbps is not None else None)
    return _page(await _service(call).apply_to_subscriber(call.params["id"], "throttle",
                                                          profile=profile))


@route("POST", f"/v1/subscribers/{ID}/restore", role=Role.OPERATOR, tag=TAG,
       summary="Restore the plan's speed on every active session of a subscriber",
       response=v.Page[PolicyActionView], status=202, target="subscriber")
async def restore_subscriber(call: Call):
    return _page(await _service(call).apply_to_subscriber(call.params["id"], "restore"))


@route("GET", "/v1/policy/actions", role=Role.READ_ONLY, tag=TAG,
       summary="Enforcement actions: waiting, running, dead-lettered or finished",
       query=PolicyActionsQuery, response=v.Page[PolicyActionView])
async def list_policy_actions(call: Call):
    """Newest first. `status=queue` (the default) lists what is not finished."""
    q = call.query
    statuses = {"queue": ("pending", "running", "dead"), "all": STATUSES}.get(q.status,
                                                                              (q.status,))
    return _page(await _service(call).listing(statuses, q.limit))


@route("POST", "/v1/policy/actions/{id:[0-9][0-9-]*}/retry", role=Role.OPERATOR, tag=TAG,
       summary="Queue a dead-lettered action again", response=PolicyActionView,
       target="policy-action")
async def retry_policy_action(call: Call):
    """With a fresh attempt count; 404 if no dead-lettered action has this id."""
    return _view(await _service(call).retry(call.params["id"]))

"""/v1/plans and /v1/nas: what is sold and which network elements may talk to us.

Changing either needs the admin role. NAS secrets are write-only. After each
change the `CATALOG_CHANGED` listeners run (the daemon reloads its registry).
"""

from __future__ import annotations

from typing import Any

from ..model import Role
from . import schemas as s
from . import views as v
from .app import catalog_changed
from .routing import ID, Call, route

# ---------------------------------------------------------------------------- plans


def _plan_values(body: s.PlanCreate | s.PlanUpdate, fields: set[str]) -> dict[str, Any]:
    """Store values of the given body fields (allowances as plain dicts, money in micro)."""
    values: dict[str, Any] = {}
    for name in fields:
        value = getattr(body, name)
        if name == "allowances":
            value = [a.model_dump() for a in value]
        elif name in ("speed_profile", "fair_usage", "final_unit", "policy") \
                and value is not None:
            value = value.model_dump()
        values[name] = value
    return values


@route("GET", "/v1/plans", role=Role.READ_ONLY, tag="plans", summary="List plans",
       response=v.Page[v.PlanView])
async def list_plans(call: Call):
    plans = await call.store.list_plans()
    return v.Page[v.PlanView](items=[v.plan_view(p) for p in plans], count=len(plans))


@route("POST", "/v1/plans", role=Role.ADMIN, tag="plans", summary="Create a plan",
       body=s.PlanCreate, response=v.PlanView, status=201, target="plan")
async def create_plan(call: Call):
    """Money (the recurring fee, money allowances) is in the plan's currency."""
    b = call.body
    plan = await call.store.create_plan(**_plan_values(b, set(type(b).model_fields)))
    call.target = f"plan:{plan.id}"
    await catalog_changed(call.request, "plan")
    return v.plan_view(plan)


@route("GET", f"/v1/plans/{ID}", role=Role.READ_ONLY, tag="plans", summary="Show a plan",
       response=v.PlanView)
async def get_plan(call: Call):
    return v.plan_view(await call.store.get_plan(call.params["id"]))


@route("PATCH", f"/v1/plans/{ID}", role=Role.ADMIN, tag="plans", summary="Change a plan",
       body=s.PlanUpdate, response=v.PlanView, target="plan")
async def update_plan(call: Call):
    """Changed allowances apply to subscribers provisioned afterwards and to the next
    period; buckets already granted stay as they are."""
    b = call.body
    plan = await call.store.update_plan(call.params["id"], **_plan_values(b, b.model_fields_set))
    await catalog_changed(call.request, "plan")
    return v.plan_view(plan)


# ---------------------------------------------------------------------------- NAS


@route("GET", "/v1/nas", role=Role.READ_ONLY, tag="nas", summary="List NAS and peers",
       response=v.Page[v.NasView])
async def list_nas(call: Call):
    items = await call.store.list_nas()
    return v.Page[v.NasView](items=[v.nas_view(n) for n in items], count=len(items))


@route("POST", "/v1/nas", role=Role.ADMIN, tag="nas", summary="Add a NAS or peer",
       body=s.NasCreate, response=v.NasView, status=201, target="nas")
async def create_nas(call: Call):
    """`address` is the source address (or CIDR prefix) the element sends from. The
    secret is stored and never returned; the answer says `has_secret`."""
    nas = await call.store.create_nas(**call.body.model_dump())
    call.target = f"nas:{nas.id}"
    await catalog_changed(call.request, "nas")
    return v.nas_view(nas)


@route("GET", f"/v1/nas/{ID}", role=Role.READ_ONLY, tag="nas", summary="Show a NAS or peer",
       response=v.NasView)
async def get_nas(call: Call):
    return v.nas_view(await call.store.get_nas(call.params["id"]))


@route("PATCH", f"/v1/nas/{ID}", role=Role.ADMIN, tag="nas", summary="Change a NAS or peer",
       body=s.NasUpdate, response=v.NasView, target="nas")
async def update_nas(call: Call):
    changes = call.body.model_dump(exclude_unset=True)
    nas = await call.store.update_nas(call.params["id"], **changes)
    await catalog_changed(call.request, "nas")
    return v.nas_view(nas)


@route("DELETE", f"/v1/nas/{ID}", role=Role.ADMIN, tag="nas", summary="Remove a NAS or peer",
       target="nas")
async def delete_nas(call: Call):
    await call.store.delete_nas(call.params["id"])
    await catalog_changed(call.request, "nas")

"""/v1/subscribers: provisioning, lookup by any identity, and CSV bulk import.

Password material never leaves the store through here: responses are built
from `Subscriber.public()` and only say `has_password`.
"""

from __future__ import annotations

from ..model import Role
from ..store import IDENTITIES
from . import schemas as s
from . import views as v
from .problems import ApiError
from .routing import ID, Call, route

TAG = "subscribers"
BASE = "/v1/subscribers"


async def _detail(call: Call, sub) -> v.SubscriberDetail:
    account = await call.store.get_account(sub.account_id)
    plan = await call.store.get_plan(sub.plan_id) if sub.plan_id is not None else None
    return v.subscriber_detail(sub, account, await call.store.balance(account.id), plan)


@route("GET", BASE, role=Role.READ_ONLY, tag=TAG, summary="List subscribers",
       query=s.SubscribersQuery, response=v.Page[v.SubscriberView])
async def list_subscribers(call: Call):
    q = call.query
    subs = await call.store.list_subscribers(account_id=q.account_id, limit=q.limit,
                                             offset=q.offset)
    return v.Page[v.SubscriberView](items=[v.subscriber_view(x) for x in subs],
                                    count=len(subs))


@route("POST", BASE, role=Role.OPERATOR, tag=TAG, summary="Create a subscriber",
       body=s.SubscriberCreate, response=v.SubscriberDetail, status=201, target="subscriber")
async def create_subscriber(call: Call):
    """Give the account as `account_id` or `account` (its name) and the plan as `plan_id`
    or `plan` (its name). The plan's allowances are credited to the account."""
    b = call.body
    if (b.account_id is None) == (b.account is None):
        raise _one_of("account_id", "account")
    if b.plan_id is not None and b.plan is not None:
        raise _one_of("plan_id", "plan", required=False)
    account = (await call.store.get_account(b.account_id) if b.account_id is not None
               else await call.store.find_account(b.account))
    plan_id = b.plan_id
    if b.plan is not None:
        plan_id = (await call.store.find_plan(b.plan)).id
    elif plan_id is not None:
        await call.store.get_plan(plan_id)
    sub = await call.store.create_subscriber(
        account_id=account.id, plan_id=plan_id, username=b.username, msisdn=b.msisdn,
        imsi=b.imsi, sip_user=b.sip_user, password=b.password, framed_ip=b.framed_ip,
        max_sessions=b.max_sessions, actor=call.actor)
    call.target = f"subscriber:{sub.id}"
    return await _detail(call, sub)


def _one_of(a: str, b: str, *, required: bool = True) -> ApiError:
    need = "exactly one" if required else "at most one"
    return ApiError(422, f"invalid body: give {need} of {a} and {b}", details=[
        {"field": a, "message": f"{need} of {a} and {b}", "type": "one_of"},
        {"field": b, "message": f"{need} of {a} and {b}", "type": "one_of"}])


@route("GET", f"{BASE}/find", role=Role.READ_ONLY, tag=TAG,
       summary="Find the subscriber with an identity, framed IP or session",
       query=s.FindQuery, response=v.SubscriberDetail)
async def find_subscriber(call: Call):
    """Exactly one of username, msisdn, imsi, sip_user, framed_ip (current session's
    address first, then the static one) or session (ocsd's or the NAS's session id)."""
    given = call.query.model_dump(exclude_none=True)
    if len(given) != 1:
        names = ", ".join(s.FindQuery.model_fields)
        raise ApiError(422, f"invalid query: give exactly one of {names}", details=[
            {"field": k, "message": "give exactly one", "type": "one_of"}
            for k in (given or s.FindQuery.model_fields)])
    return await _detail(call, await call.store.find_subscriber(**given))


@route("GET", f"{BASE}/{ID}", role=Role.READ_ONLY, tag=TAG,
       summary="Show a subscriber with its account's balance and its plan",
       response=v.SubscriberDetail)
async def get_subscriber(call: Call):
    return await _detail(call, await call.store.get_subscriber(call.params["id"]))


@route("PATCH", f"{BASE}/{ID}", role=Role.OPERATOR, tag=TAG, summary="Change a subscriber",
       body=s.SubscriberUpdate, response=v.SubscriberDetail, target="subscriber")
async def update_subscriber(call: Call):
    """A new `password` replaces all password material; null removes it."""
    sub_id = call.params["id"]
    changes = call.body.model_dump(exclude_unset=True)
    current = await call.store.get_subscriber(sub_id)
    if not any(changes.get(k, getattr(current, k)) for k in IDENTITIES):
        raise ApiError(422, "a subscriber needs at least one of " + ", ".join(IDENTITIES),
                       code="invalid")
    if changes.get("account_id") is not None:
        await call.store.get_account(changes["account_id"])
    if changes.get("plan_id") is not None:
        await call.store.get_plan(changes["plan_id"])
    password_given = "password" in changes
    password = changes.pop("password", None)
    if password_given and password is None:
        changes.update(password_hash=None, nt_hash=None, cleartext=None)
    sub = await call.store.update_subscriber(sub_id, password=password, **changes)
    return await _detail(call, sub)


@route("DELETE", f"{BASE}/{ID}", role=Role.OPERATOR, tag=TAG, summary="Delete a subscriber",
       target="subscriber")
async def delete_subscriber(call: Call):
    """Refused (422) while the subscriber has active sessions."""
    await call.store.delete_subscriber(call.params["id"])


@route("POST", f"{BASE}/import", role=Role.OPERATOR, tag=TAG,
       summary="Bulk-provision subscribers from CSV (all or nothing)",
       content_type="text/csv", response=v.ImportResult)
async def import_subscribers(call: Call):
    """The body is the CSV file (columns: see `ocsctl subscriber import --help`).
    Nothing is imported if any line is wrong; the 422 answer lists every problem
    with its line and column."""
    from .. import provisioning  # written beside the API; imported when used

    try:
        result = await provisioning.import_csv(call.store, call.body, actor=call.actor)
    except provisioning.ImportRejected as exc:
        details = [{"line": e.line, "column": e.column, "message": e.message}
                   for e in exc.errors]
        first = "; ".join(f"line {d['line']}"
                          + (f" column {d['column']}" if d["column"] else "")
                          + f": {d['message']}" for d in details[:3])
        total = getattr(exc, "total", len(details))
        more = f" (and {total - 3} more)" if total > 3 else ""
        raise ApiError(422, f"import rejected, nothing imported: {first}{more}",
                       code="import_rejected", details=details) from None
    return v.ImportResult(imported=result.imported, accounts_created=result.accounts_created)


"""/v1/accounts: accounts, their balance, top-ups, adjustments, buckets, ledger and CDRs."""

from __future__ import annotations

from ..balance import Outcome, Result
from ..errors import Conflict, NotFound
from ..model import AccountStatus, Kind, Role
from ..money import format_money
from . import schemas as s
from . import views as v
from .problems import ApiError
from .routing import ID, Call, route

TAG = "accounts"
BASE = "/v1/accounts"


async def _detail(call: Call, account_id: int) -> v.AccountDetail:
    account = await call.store.get_account(account_id)
    return v.account_detail(account, await call.store.balance(account_id))


@route("GET", BASE, role=Role.READ_ONLY, tag=TAG, summary="List accounts",
       query=s.AccountsQuery, response=v.Page[v.AccountView])
async def list_accounts(call: Call):
    """`name` finds the account with exactly that name (an empty page if none)."""
    q = call.query
    if q.name is not None:
        try:
            found = [await call.store.find_account(q.name)]
        except NotFound:
            found = []
        items = [a for a in found if q.status in (None, a.status.value)][q.offset:][:q.limit]
    else:
        items = await call.store.list_accounts(status=q.status, limit=q.limit, offset=q.offset)
    return v.Page[v.AccountView](items=[v.account_view(a) for a in items], count=len(items))


@route("POST", BASE, role=Role.OPERATOR, tag=TAG, summary="Create an account",
       body=s.AccountCreate, response=v.AccountDetail, status=201, target="account")
async def create_account(call: Call):
    """Opening balance and credit limit are in the account's currency."""
    b = call.body
    if b.parent_id is not None:
        await call.store.get_account(b.parent_id)  # 404 names the missing parent
    account = await call.store.create_account(
        name=b.name, currency=b.currency, billing=b.billing, credit_limit=b.credit_limit,
        parent_id=b.parent_id, language=b.language, tax_profile=b.tax_profile,
        low_balance_threshold=b.low_balance_threshold, opening_balance=b.opening_balance,
        actor=call.actor)
    call.target = f"account:{account.id}"
    return await _detail(call, account.id)


@route("GET", f"{BASE}/{ID}", role=Role.READ_ONLY, tag=TAG,
       summary="Show an account with its balance and buckets", response=v.AccountDetail)
async def get_account(call: Call):
    return await _detail(call, call.params["id"])


@route("PATCH", f"{BASE}/{ID}", role=Role.OPERATOR, tag=TAG, summary="Change an account",
       body=s.AccountUpdate, response=v.AccountDetail, target="account")
async def update_account(call: Call):
    account_id = call.params["id"]
    changes = call.body.model_dump(exclude_unset=True)
    if changes.get("parent_id") is not None:
        if changes["parent_id"] == account_id:
            raise ApiError(422, "an account cannot be its own parent", code="invalid")
        await call.store.get_account(changes["parent_id"])
    await call.store.update_account(account_id, **changes)
    return await _detail(call, account_id)


def _balance_result(result: Result, amount: int, account, bal) -> v.BalanceResult:
    if result.outcome is Outcome.UNKNOWN_ACCOUNT:
        raise NotFound(result.message or f"account {account.id} not found")
    if result.outcome is not Outcome.OK:
        raise Conflict(result.message or f"refused: {result.outcome.value}")
    return v.BalanceResult(outcome=result.outcome.value, replayed=result.replayed,
                           bucket_id=result.bucket_id,
                           amount=format_money(amount, account.currency),
                           message=result.message, balance=v.balance_view(bal))


@route("POST", f"{BASE}/{ID}/topup", role=Role.OPERATOR, tag=TAG,
       summary="Top up the money balance", body=s.Topup, response=v.BalanceResult,
       target="account")
async def topup(call: Call):
    """A credit to the main money bucket, recorded in the ledger. Repeating a request
    with the same `ref` changes nothing and answers the first result (`replayed`)."""
    account = await call.store.get_account(call.params["id"])
    b = call.body
    result = await call.store.credit(account.id, b.amount, ref=b.ref,
                                     reason=b.reason or "top-up", actor=call.actor)
    return _balance_result(result, b.amount, account, await call.store.balance(account.id))


@route("POST", f"{BASE}/{ID}/adjust", role=Role.OPERATOR, tag=TAG,
       summary="Correct a balance by a signed amount", body=s.Adjust, response=v.BalanceResult,
       target="account")
async def adjust(call: Call):
    """A decrease that would take the bucket below its floor is refused (409) unless
    `force` is set. `bucket_id` picks a bucket other than the main money bucket."""
    account = await call.store.get_account(call.params["id"])
    b = call.body
    result = await call.store.adjust(account.id, b.amount, bucket_id=b.bucket_id, ref=b.ref,
                                     reason=b.reason, actor=call.actor, force=b.force)
    return _balance_result(result, b.amount, account, await call.store.balance(account.id))


async def _set_status(call: Call, status: AccountStatus) -> v.AccountDetail:
    account = await call.store.get_account(call.params["id"])
    if account.status is AccountStatus.CLOSED:
        raise Conflict(f"account {account.id} is closed")
    if account.status is not status:
        # The change and its event (enforcement follows it) commit together.
        await call.store.set_account_status(account.id, status, reason=call.body.reason,
                                            actor=call.actor)
    return await _detail(call, account.id)


@route("POST", f"{BASE}/{ID}/suspend", role=Role.OPERATOR, tag=TAG,
       summary="Suspend an account", body=s.Suspend, response=v.AccountDetail,
       target="account")
async def suspend_account(call: Call):
    """No new grants while suspended; usage already reported is still charged.
    Suspending a suspended account changes nothing."""
    return await _set_status(call, AccountStatus.SUSPENDED)


@route("POST", f"{BASE}/{ID}/resume", role=Role.OPERATOR, tag=TAG,
       summary="Resume a suspended account", body=s.Resume, response=v.AccountDetail,
       target="account")
async def resume_account(call: Call):
    return await _set_status(call, AccountStatus.ACTIVE)


@route("GET", f"{BASE}/{ID}/buckets", role=Role.READ_ONLY, tag=TAG,
       summary="List an account's buckets", response=v.Page[v.BucketView])
async def list_buckets(call: Call):
    account = await call.store.get_account(call.params["id"])
    buckets = await call.store.buckets(account.id)
    return v.Page[v.BucketView](items=[v.bucket_view(b, account.currency) for b in buckets],
                                count=len(buckets))


@route("POST", f"{BASE}/{ID}/buckets", role=Role.OPERATOR, tag=TAG,
       summary="Add a bucket of units", body=s.BucketCreate, response=v.BucketView,
       status=201, target="account")
async def create_bucket(call: Call):
    """Creates a new bucket credited with `units` (a ledger credit)."""
    account = await call.store.get_account(call.params["id"])
    b = call.body
    # An explicit priority always makes Store.credit open a new bucket.
    result = await call.store.credit(
        account.id, b.units, kind=Kind(b.kind), service=b.service, valid_from=b.valid_from,
        valid_to=b.valid_to, priority=b.priority if b.priority is not None else 10,
        name=b.name, reason=f"bucket {b.name}".strip(), actor=call.actor)
    if result.outcome is not Outcome.OK:
        raise Conflict(result.message or f"refused: {result.outcome.value}")
    for bucket in await call.store.buckets(account.id, include_empty=True):
        if bucket.id == result.bucket_id:
            return v.bucket_view(bucket, account.currency)
    raise NotFound(f"bucket {result.bucket_id} not found")


@route("GET", f"{BASE}/{ID}/ledger", role=Role.READ_ONLY, tag=TAG,
       summary="An account's ledger, newest first", query=s.PageQuery,
       response=v.Page[v.LedgerView])
async def account_ledger(call: Call):
    account = await call.store.get_account(call.params["id"])
    q = call.query
    entries = await call.store.ledger(account.id, limit=q.limit, before_id=q.before_id)
    return v.Page[v.LedgerView](items=[v.ledger_view(e, account.currency) for e in entries],
                                count=len(entries))


@route("GET", f"{BASE}/{ID}/cdrs", role=Role.READ_ONLY, tag=TAG,
       summary="An account's rated CDRs, newest first", query=s.PageQuery,
       response=v.Page[v.CdrView])
async def account_cdrs(call: Call):
    account = await call.store.get_account(call.params["id"])
    q = call.query
    cdrs = await call.store.list_cdrs(account_id=account.id, limit=q.limit,
                                      before_id=q.before_id)
    return v.Page[v.CdrView](items=[v.cdr_view(c) for c in cdrs], count=len(cdrs))

"""What happened: /v1/sessions, /v1/ledger, /v1/cdrs, /v1/accounting/unmatched and the
admin-only /v1/audit."""

from __future__ import annotations

from ..errors import NotFound
from ..model import Role
from . import schemas as s
from . import views as v
from .routing import Call, route


class _Currencies:
    """Account currencies for formatting money across accounts, one lookup each."""

    def __init__(self, store):
        self.store = store
        self.known: dict[int, str] = {}

    async def __call__(self, account_id: int) -> str:
        if account_id not in self.known:
            try:
                self.known[account_id] = (await self.store.get_account(account_id)).currency
            except NotFound:  # cannot happen with foreign keys; format with 2 decimals
                self.known[account_id] = "XXX"
        return self.known[account_id]


@route("GET", "/v1/sessions", role=Role.READ_ONLY, tag="sessions", summary="List sessions",
       query=s.SessionsQuery, response=v.Page[v.SessionView])
async def list_sessions(call: Call):
    """Active sessions unless `status` says otherwise; newest first."""
    q = call.query
    items = await call.store.list_sessions(
        status=q.status or "active", account_id=q.account_id, subscriber_id=q.subscriber_id,
        nas=q.nas, limit=q.limit, offset=q.offset)
    return v.Page[v.SessionView](items=[v.session_view(x) for x in items], count=len(items))


@route("GET", "/v1/sessions/{id:.+}", role=Role.READ_ONLY, tag="sessions",
       summary="Show a session with its reservations and what it was charged so far",
       response=v.SessionDetail)
async def get_session(call: Call):
    session = await call.store.get_session(call.params["id"])
    reservations = await call.store.reservations(session=session.id)
    charges = await call.store.session_charges(session.id)
    currency = await _Currencies(call.store)(session.account_id)
    return v.session_detail(session, reservations, currency, charges)


@route("GET", "/v1/ledger", role=Role.READ_ONLY, tag="ledger",
       summary="Ledger entries, newest first", query=s.LedgerQuery,
       response=v.Page[v.LedgerView])
async def ledger(call: Call):
    q = call.query
    entries = await call.store.ledger(q.account_id, session=q.session, limit=q.limit,
                                      before_id=q.before_id)
    currency = _Currencies(call.store)
    items = [v.ledger_view(e, await currency(e.account_id)) for e in entries]
    return v.Page[v.LedgerView](items=items, count=len(items))


@route("GET", "/v1/cdrs", role=Role.READ_ONLY, tag="cdrs", summary="Rated CDRs, newest first",
       query=s.LedgerQuery, response=v.Page[v.CdrView])
async def cdrs(call: Call):
    q = call.query
    items = await call.store.list_cdrs(account_id=q.account_id, session=q.session,
                                       limit=q.limit, before_id=q.before_id)
    return v.Page[v.CdrView](items=[v.cdr_view(c) for c in items], count=len(items))


@route("GET", "/v1/accounting/unmatched", role=Role.READ_ONLY, tag="cdrs",
       summary="Accounting for unknown subscribers, latest first", query=s.UnmatchedQuery,
       response=v.Page[v.UnmatchedAccountingView])
async def list_unmatched(call: Call):
    """Usage a NAS reported (and ocsd acknowledged) for a subscriber nobody knows:
    one entry per session with its latest cumulative usage, to reconcile by hand
    (provision the subscriber and bill it, or write it off)."""
    q = call.query
    items = await call.store.list_unmatched(nas=q.nas, status=q.status, limit=q.limit,
                                            offset=q.offset)
    return v.Page[v.UnmatchedAccountingView](items=[v.unmatched_view(x) for x in items],
                                             count=len(items))


@route("DELETE", "/v1/accounting/unmatched/{id:.+}", role=Role.OPERATOR, tag="cdrs",
       summary="Forget one session's unmatched accounting (reconciled)",
       target="unmatched-accounting")
async def delete_unmatched(call: Call):
    await call.store.delete_unmatched(call.params["id"])


@route("GET", "/v1/audit", role=Role.ADMIN, tag="audit",
       summary="The audit log of mutating calls, newest first", query=s.AuditQuery,
       response=v.Page[v.AuditView])
async def audit(call: Call):
    q = call.query
    items = await call.store.list_audit(actor=q.actor, limit=q.limit, before_id=q.before_id)
    return v.Page[v.AuditView](items=[v.audit_view(e) for e in items], count=len(items))

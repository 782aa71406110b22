"""What the REST API answers: response models and the functions that fill them.

Every response body is built as one of these models (`extra="forbid"`), so a
field the document does not describe cannot slip out, and /openapi.json
publishes their schemas. Password material and NAS secrets have no field
here at all.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import Field

from ..model import (Account, ApiToken, AuditEntry, Bucket, Kind, LedgerEntry, Nas, Plan,
                     RatedCdr, Reservation, Session, Subscriber, UnmatchedAccounting)
from .wire import Out, iso, money, units

T = TypeVar("T")

MoneyStr = str
UnitsValue = str | int  # decimal string for money, integer for usage


class Page(Out, Generic[T]):
    """One page of a list: the items and how many are on this page."""

    items: list[T]
    count: int


class ErrorDetail(Out):
    """One problem: a field of the body or query (`field`), or a line of a CSV file."""

    field: str | None = None
    line: int | None = None
    column: str | None = None
    message: str
    type: str | None = None


class ErrorInfo(Out):
    status: int
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(Out):
    """The body of every error answer."""

    error: ErrorInfo


# ---------------------------------------------------------------------------- accounts

class BucketView(Out):
    id: int
    kind: Literal["money", "octets", "seconds", "events"]
    service: str | None
    balance: UnitsValue
    reserved: UnitsValue
    priority: int
    valid_from: str | None
    valid_to: str | None
    main: bool
    name: str
    created_at: str


class BalanceView(Out):
    """The money position of an account (decimal strings) and its buckets."""

    currency: str
    balance: MoneyStr
    reserved: MoneyStr
    available: MoneyStr = Field(description="balance - reserved - floor")
    floor: MoneyStr
    buckets: list[BucketView]


class AccountView(Out):
    id: int
    name: str
    currency: str
    billing: Literal["prepaid", "postpaid"]
    credit_limit: MoneyStr
    status: Literal["active", "suspended", "closed"]
    parent_id: int | None
    language: str
    tax_profile: str | None
    low_balance_threshold: MoneyStr | None
    created_at: str
    updated_at: str


class AccountDetail(AccountView):
    balance: BalanceView


class BalanceResult(Out):
    """What a top-up or adjustment did, and the balance afterwards."""

    outcome: str
    replayed: bool = Field(description="true when `ref` was seen before: nothing changed")
    bucket_id: int | None
    amount: MoneyStr
    message: str
    balance: BalanceView


def bucket_view(b: Bucket, currency: str) -> BucketView:
    return BucketView(
        id=b.id, kind=b.kind.value, service=b.service,
        balance=units(b.kind, b.balance, currency), reserved=units(b.kind, b.reserved, currency),
        priority=b.priority, valid_from=iso(b.valid_from), valid_to=iso(b.valid_to),
        main=b.main, name=b.name, created_at=iso(b.created_at))


def balance_view(bal: dict[str, Any]) -> BalanceView:
    """From `Store.balance`."""
    cur = bal["currency"]
    return BalanceView(currency=cur, balance=money(bal["balance"], cur),
                       reserved=money(bal["reserved"], cur),
                       available=money(bal["available"], cur), floor=money(bal["floor"], cur),
                       buckets=[bucket_view(b, cur) for b in bal["buckets"]])


def _account_fields(a: Account) -> dict[str, Any]:
    return dict(
        id=a.id, name=a.name, currency=a.currency, billing=a.billing.value,
        credit_limit=money(a.credit_limit, a.currency), status=a.status.value,
        parent_id=a.parent_id, language=a.language, tax_profile=a.tax_profile,
        low_balance_threshold=money(a.low_balance_threshold, a.currency),
        created_at=iso(a.created_at), updated_at=iso(a.updated_at))


def account_view(a: Account) -> AccountView:
    return AccountView(**_account_fields(a))


def account_detail(a: Account, bal: dict[str, Any]) -> AccountDetail:
    return AccountDetail(**_account_fields(a), balance=balance_view(bal))


# ---------------------------------------------------------------------------- ledger, CDRs

class LedgerView(Out):
    id: int
    account_id: int
    bucket_id: int
    kind: Literal["money", "octets", "seconds", "events"]
    amount: UnitsValue
    balance_after: UnitsValue
    entry_type: Literal["debit", "credit", "adjust", "expire"]
    session: str | None
    op_key: str | None
    reason: str | None
    actor: str | None
    created_at: str


def ledger_view(e: LedgerEntry, currency: str) -> LedgerView:
    return LedgerView(
        id=e.id, account_id=e.account_id, bucket_id=e.bucket_id, kind=e.kind.value,
        amount=units(e.kind, e.amount, currency),
        balance_after=units(e.kind, e.balance_after, currency), entry_type=e.entry_type.value,
        session=e.session, op_key=e.op_key, reason=e.reason, actor=e.actor,
        created_at=iso(e.created_at))


class CdrView(Out):
    id: int
    session: str | None
    account_id: int
    subscriber_id: int | None
    service: str
    kind: Literal["money", "octets", "seconds", "events"]
    started_at: str
    ended_at: str
    units: UnitsValue
    cost: MoneyStr
    currency: str
    details: dict[str, Any]
    created_at: str


def cdr_view(c: RatedCdr) -> CdrView:
    return CdrView(
        id=c.id, session=c.session, account_id=c.account_id, subscriber_id=c.subscriber_id,
        service=c.service, kind=c.kind.value, started_at=iso(c.started_at),
        ended_at=iso(c.ended_at), units=units(c.kind, c.units, c.currency),
        cost=money(c.cost, c.currency), currency=c.currency, details=c.details,
        created_at=iso(c.created_at))


# ---------------------------------------------------------------------------- subscribers

class SubscriberView(Out):
    id: int
    account_id: int
    plan_id: int | None
    username: str | None
    msisdn: str | None
    imsi: str | None
    sip_user: str | None
    framed_ip: str | None
    max_sessions: int
    has_password: bool
    created_at: str
    updated_at: str


class PlanRef(Out):
    id: int
    name: str


class AccountSummary(Out):
    id: int
    name: str
    status: Literal["active", "suspended", "closed"]
    billing: Literal["prepaid", "postpaid"]
    currency: str
    balance: BalanceView


class SubscriberDetail(SubscriberView):
    account: AccountSummary
    plan: PlanRef | None


def subscriber_view(s: Subscriber) -> SubscriberView:
    d = s.public()  # never the password material
    d["created_at"], d["updated_at"] = iso(s.created_at), iso(s.updated_at)
    return SubscriberView(**d)


def subscriber_detail(s: Subscriber, a: Account, bal: dict[str, Any],
                      plan: Plan | None) -> SubscriberDetail:
    return SubscriberDetail(
        **subscriber_view(s).model_dump(),
        account=AccountSummary(id=a.id, name=a.name, status=a.status.value,
                               billing=a.billing.value, currency=a.currency,
                               balance=balance_view(bal)),
        plan=PlanRef(id=plan.id, name=plan.name) if plan else None)


class ImportResult(Out):
    imported: int
    accounts_created: int


# ---------------------------------------------------------------------------- plans

class AllowanceView(Out):
    kind: Literal["money", "octets", "seconds", "events"]
    units: UnitsValue
    service: str | None
    validity_days: int | None
    priority: int


class SpeedProfileView(Out):
    down_kbps: int
    up_kbps: int
    name: str | None


class FairUsageView(Out):
    threshold_octets: int
    throttle_profile: SpeedProfileView


class FinalUnitView(Out):
    action: Literal["terminate", "redirect", "restrict"]
    redirect_url: str | None
    filter_id: str | None


class PolicyView(Out):
    on_exhausted: str
    on_fair_usage: str
    on_suspended: str
    on_restored: str
    throttle_profile: SpeedProfileView | None
    redirect_url: str | None
    fallback_disconnect: bool


class PlanView(Out):
    id: int
    name: str
    currency: str
    recurring_fee: MoneyStr
    period: Literal["day", "week", "month"]
    allowances: list[AllowanceView]
    tariff: str | None
    speed_profile: SpeedProfileView | None
    fair_usage: FairUsageView | None
    description: str
    final_unit: FinalUnitView
    policy: PolicyView
    created_at: str
    updated_at: str


def _speed(p) -> SpeedProfileView | None:
    return SpeedProfileView(down_kbps=p.down_kbps, up_kbps=p.up_kbps, name=p.name) if p else None


def plan_view(p: Plan) -> PlanView:
    return PlanView(
        id=p.id, name=p.name, currency=p.currency,
        recurring_fee=money(p.recurring_fee, p.currency), period=p.period,
        allowances=[AllowanceView(kind=a.kind.value, units=units(a.kind, a.units, p.currency),
                                  service=a.service, validity_days=a.validity_days,
                                  priority=a.priority) for a in p.allowances],
        tariff=p.tariff, speed_profile=_speed(p.speed_profile),
        fair_usage=FairUsageView(threshold_octets=p.fair_usage.threshold_octets,
                                 throttle_profile=_speed(p.fair_usage.throttle_profile))
        if p.fair_usage else None,
        description=p.description,
        final_unit=FinalUnitView(action=p.final_unit.action,
                                 redirect_url=p.final_unit.redirect_url,
                                 filter_id=p.final_unit.filter_id),
        policy=PolicyView(on_exhausted=p.policy.on_exhausted, on_fair_usage=p.policy.on_fair_usage,
                          on_suspended=p.policy.on_suspended, on_restored=p.policy.on_restored,
                          throttle_profile=_speed(p.policy.throttle_profile),
                          redirect_url=p.policy.redirect_url,
                          fallback_disconnect=p.policy.fallback_disconnect),
        created_at=iso(p.created_at), updated_at=iso(p.updated_at))


# ---------------------------------------------------------------------------- NAS

SECRET_WORDS = ("secret", "password", "passwd", "token", "key")


def redact(value: Any) -> Any:
    """`value` with every mapping entry whose name suggests a secret replaced by "***"."""
    if isinstance(value, dict):
        return {k: ("***" if isinstance(k, str) and any(w in k.lower() for w in SECRET_WORDS)
                    else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class NasView(Out):
    """A network element. The shared secret is never returned, only whether one is set."""

    id: int
    name: str
    kind: Literal["nas", "diameter", "softswitch"]
    address: str
    has_secret: bool
    vendor: str
    coa_port: int
    require_message_authenticator: Literal["yes", "no", "auto"]
    control: dict[str, Any] = Field(description="control endpoints; secret-like keys are "
                                                "shown as \"***\"")
    created_at: str
    updated_at: str


def nas_view(n: Nas) -> NasView:
    return NasView(id=n.id, name=n.name, kind=n.kind.value, address=n.address,
                   has_secret=bool(n.secret), vendor=n.vendor, coa_port=n.coa_port,
                   require_message_authenticator=n.require_message_authenticator,
                   control=redact(n.control), created_at=iso(n.created_at),
                   updated_at=iso(n.updated_at))


# ---------------------------------------------------------------------------- sessions

class ReservationView(Out):
    session: str
    service: str
    account_id: int
    kind: Literal["money", "octets", "seconds", "events"]
    units: UnitsValue
    holds: list[tuple[int, int]] = Field(description="[bucket id, amount held in micro-units "
                                                     "or units of the bucket's kind]")
    seq: int
    expires_at: str
    created_at: str


class SessionView(Out):
    id: str
    account_id: int
    subscriber_id: int
    proto: str
    nas: str | None
    nas_session_id: str | None
    framed_ip: str | None
    status: Literal["active", "closed"]
    last_seq: int
    started_at: str
    updated_at: str
    ended_at: str | None
    attrs: dict[str, Any]


class ChargeView(Out):
    """What one service of a session has been charged so far."""

    service: str
    kind: Literal["money", "octets", "seconds", "events"]
    units: UnitsValue = Field(description="usage reported so far (for money: the amount)")
    cost: MoneyStr
    unpaid: UnitsValue = Field(description="of `units`, those nothing could pay (not charged)")
    closed: bool = Field(description="the session ended and its CDR is written")


class SessionDetail(SessionView):
    reservations: list[ReservationView]
    charges: list[ChargeView]


def session_view(s: Session) -> SessionView:
    return SessionView(
        id=s.id, account_id=s.account_id, subscriber_id=s.subscriber_id, proto=s.proto,
        nas=s.nas, nas_session_id=s.nas_session_id, framed_ip=s.framed_ip, status=s.status,
        last_seq=s.last_seq, started_at=iso(s.started_at), updated_at=iso(s.updated_at),
        ended_at=iso(s.ended_at), attrs=s.attrs)


def session_detail(s: Session, reservations: list[Reservation], currency: str,
                   charges: dict[str, dict[str, Any]]) -> SessionDetail:
    return SessionDetail(
        **session_view(s).model_dump(),
        reservations=[ReservationView(
            session=r.session, service=r.service, account_id=r.account_id, kind=r.kind.value,
            units=units(r.kind, r.units, currency), holds=[list(h) for h in r.holds],
            seq=r.seq, expires_at=iso(r.expires_at), created_at=iso(r.created_at))
            for r in reservations],
        charges=[ChargeView(service=service, kind=c["kind"],
                            units=units(Kind(c["kind"]), c["units"], currency),
                            cost=money(c["cost"], currency),
                            unpaid=units(Kind(c["kind"]), c["unpaid"], currency),
                            closed=c["closed"])
                 for service, c in sorted(charges.items())])


# ---------------------------------------------------------------------------- audit, tokens

class AuditView(Out):
    id: int
    at: str
    actor: str
    role: str
    action: str = Field(description="method and path, e.g. \"POST /v1/accounts/7/topup\"")
    target: str | None
    request: Any = Field(description="the request body, secrets shown as \"***\"")
    status: int
    remote: str | None


def audit_view(e: AuditEntry) -> AuditView:
    return AuditView(id=e.id, at=iso(e.at), actor=e.actor, role=e.role, action=e.action,
                     target=e.target, request=e.request, status=e.status, remote=e.remote)


class TokenView(Out):
    id: int
    name: str
    role: Literal["read-only", "operator", "admin"]
    created_at: str


class TokenCreated(TokenView):
    token: str = Field(description="the bearer secret; shown only in this answer")


def token_view(t: ApiToken) -> TokenView:
    return TokenView(id=t.id, name=t.name, role=t.role.value, created_at=iso(t.created_at))


class UnmatchedAccountingView(Out):
    session: str
    proto: str
    nas: str | None
    nas_session_id: str | None
    identity: str = Field(description="who the NAS named, e.g. username=alice,msisdn=4179...")
    status: Literal["active", "closed"]
    units: dict[str, int] = Field(description="service -> units, cumulative as last reported")
    attrs: dict[str, Any]
    reports: int
    first_at: str
    last_at: str


def unmatched_view(u: UnmatchedAccounting) -> UnmatchedAccountingView:
    return UnmatchedAccountingView(
        session=u.session, proto=u.proto, nas=u.nas, nas_session_id=u.nas_session_id,
        identity=u.identity, status=u.status, units=u.units, attrs=u.attrs,
        reports=u.reports, first_at=iso(u.first_at), last_at=iso(u.last_at))

"""The domain model: the names every layer uses (see DESIGN.md, "Domain model").

Records are frozen dataclasses built from store rows. Conventions that hold in
every record:

* money is an integer number of micro-units of the account's currency
  (1.00 EUR == 1_000_000);
* usage is an integer number of octets, seconds or events;
* instants are integer microseconds since the Unix epoch (UTC), the same on
  both storage backends, so that no layer ever converts time zones or floats.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

MICRO = 1_000_000
#: The largest usage (octets, seconds, events) of one report or one request: exact
#: in every JSON implementation, and far below what the 64-bit columns hold. A NAS
#: counter or an AVP beyond it is not usage, it is a broken or hostile client.
MAX_USAGE = 2**53 - 1
#: The most one bucket may hold (micro-units of money, or usage units): half of
#: what the 64-bit columns hold, so that no sum of a few balances overflows them.
#: 4.6 million million currency units; a credit beyond it is refused.
MAX_BALANCE = 2**62


def now_us() -> int:
    """The current instant in microseconds since the epoch."""
    return time.time_ns() // 1000


class Kind(str, enum.Enum):
    """What a bucket, reservation or ledger entry counts."""

    MONEY = "money"
    OCTETS = "octets"
    SECONDS = "seconds"
    EVENTS = "events"


#: Kind by its stored text: a dict lookup costs a tenth of calling Kind(text).
KIND_OF = {k.value: k for k in Kind}


class Billing(str, enum.Enum):
    PREPAID = "prepaid"
    POSTPAID = "postpaid"


class AccountStatus(str, enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class Role(str, enum.Enum):
    """API token roles, from least to most privileged."""

    READ_ONLY = "read-only"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: "Role") -> bool:
        order = (Role.READ_ONLY, Role.OPERATOR, Role.ADMIN)
        return order.index(self) >= order.index(needed)


class PeerKind(str, enum.Enum):
    """What a network element is to us."""

    NAS = "nas"                # RADIUS client (BRAS, NAS, softswitch sending RADIUS)
    DIAMETER = "diameter"      # Diameter credit-control client (PGW, SMF IWF, IMS AS)
    SOFTSWITCH = "softswitch"  # control endpoint only (ESL, AMI, JSON-RPC)


def _loads(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return value
    return json.loads(value)


@dataclass(frozen=True, slots=True)
class Account:
    """Who pays."""

    id: int
    name: str
    currency: str
    billing: Billing
    credit_limit: int  # micro-units; the money floor of a postpaid account is -credit_limit
    status: AccountStatus
    parent_id: int | None
    language: str
    tax_profile: str | None
    low_balance_threshold: int | None
    created_at: int
    updated_at: int

    @property
    def floor(self) -> int:
        """Lowest money balance reservations may reach (invariant 4)."""
        return -self.credit_limit if self.billing is Billing.POSTPAID else 0

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "Account":
        return cls(
            id=r["id"], name=r["name"], currency=r["currency"],
            billing=Billing(r["billing"]), credit_limit=r["credit_limit"],
            status=AccountStatus(r["status"]), parent_id=r["parent_id"],
            language=r["language"], tax_profile=r["tax_profile"],
            low_balance_threshold=r["low_balance_threshold"],
            created_at=r["created_at"], updated_at=r["updated_at"],
        )


@dataclass(frozen=True, slots=True)
class Allowance:
    """A bucket a plan grants each period: `units` of `kind`, optionally for one service."""

    kind: Kind
    units: int
    service: str | None = None
    validity_days: int | None = 30
    priority: int = 10

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Allowance":
        return cls(kind=Kind(d["kind"]), units=int(d["units"]), service=d.get("service"),
                   validity_days=d.get("validity_days", 30), priority=int(d.get("priority", 10)))


@dataclass(frozen=True, slots=True)
class SpeedProfile:
    """Up/down rates a NAS applies; vendor attributes are written from it by `policy/`."""

    down_kbps: int
    up_kbps: int
    name: str | None = None


@dataclass(frozen=True, slots=True)
class FairUsage:
    """After `threshold_octets` in a period, throttle to `throttle_profile`."""

    threshold_octets: int
    throttle_profile: SpeedProfile


@dataclass(frozen=True, slots=True)
class FinalUnit:
    """What the network does when the balance cannot grant more (RFC 8506 §5.6)."""

    action: str = "terminate"  # terminate | redirect | restrict
    redirect_url: str | None = None
    filter_id: str | None = None


PolicyAction = str  # "disconnect" | "throttle" | "redirect" | "restore" | "none"


@dataclass(frozen=True, slots=True)
class EnforcementPolicy:
    """What the network should do on each charging event (`policy/` carries it out).

    `throttle_profile` defaults to the fair-usage profile; `fallback_disconnect`
    lets policy disconnect a session whose NAS refuses the CoA that would
    throttle or redirect it.
    """

    on_exhausted: PolicyAction = "disconnect"
    on_fair_usage: PolicyAction = "throttle"
    on_suspended: PolicyAction = "disconnect"
    on_restored: PolicyAction = "restore"
    throttle_profile: SpeedProfile | None = None
    redirect_url: str | None = None
    fallback_disconnect: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "EnforcementPolicy":
        if not d:
            return cls()
        d = dict(d)
        if d.get("throttle_profile"):
            d["throttle_profile"] = SpeedProfile(**d["throttle_profile"])
        return cls(**d)


@dataclass(frozen=True, slots=True)
class Plan:
    id: int
    name: str
    currency: str
    recurring_fee: int  # micro-units per period
    period: str  # "month" | "week" | "day"
    allowances: tuple[Allowance, ...]
    tariff: str | None
    speed_profile: SpeedProfile | None
    fair_usage: FairUsage | None
    description: str
    created_at: int
    updated_at: int
    final_unit: FinalUnit = FinalUnit()
    policy: EnforcementPolicy = EnforcementPolicy()

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "Plan":
        speed = _loads(r["speed_profile"])
        fair = _loads(r["fair_usage"])
        final = _loads(r["final_unit"])
        return cls(
            id=r["id"], name=r["name"], currency=r["currency"],
            recurring_fee=r["recurring_fee"], period=r["period"],
            allowances=tuple(Allowance.from_dict(a) for a in _loads(r["allowances"]) or ()),
            tariff=r["tariff"],
            speed_profile=SpeedProfile(**speed) if speed else None,
            fair_usage=FairUsage(fair["threshold_octets"], SpeedProfile(**fair["throttle_profile"]))
            if fair else None,
            description=r["description"], created_at=r["created_at"], updated_at=r["updated_at"],
            final_unit=FinalUnit(**final) if final else FinalUnit(),
            policy=EnforcementPolicy.from_dict(_loads(r["policy"])),
        )


@dataclass(frozen=True, slots=True)
class Subscriber:
    """An identity on the network that charges to an account.

    Password material (see `ocs.passwords`): `password_hash` verifies PAP,
    `nt_hash` answers MS-CHAPv2, `cleartext` is kept only where CHAP needs it.
    """

    id: int
    account_id: int
    plan_id: int | None
    username: str | None
    msisdn: str | None
    imsi: str | None
    sip_user: str | None
    password_hash: str | None = field(repr=False)
    nt_hash: str | None = field(repr=False)
    cleartext: str | None = field(repr=False)
    framed_ip: str | None
    max_sessions: int
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "Subscriber":
        return cls(**{k: r[k] for k in cls.__dataclass_fields__})

    def public(self) -> dict[str, Any]:
        """The record without password material, for APIs and logs."""
        d = asdict(self)
        for k in ("password_hash", "nt_hash", "cleartext"):
            d.pop(k)
        d["has_password"] = self.password_hash is not None
        return d


@dataclass(frozen=True, slots=True)
class Bucket:
    """Units of one kind an account can spend.

    `balance` is what the ledger says (invariant 3); `reserved` is held by open
    reservations. The account's *main* bucket is its money balance: drained
    last, never expires, and may go down to the account floor.
    """

    id: int
    account_id: int
    kind: Kind
    service: str | None
    balance: int
    reserved: int
    priority: int
    valid_from: int | None
    valid_to: int | None
    main: bool
    name: str
    created_at: int

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "Bucket":
        # Positional, in field order: every Access-Request builds these.
        return cls(r["id"], r["account_id"], KIND_OF[r["kind"]], r["service"], r["balance"],
                   r["reserved"], r["priority"], r["valid_from"], r["valid_to"],
                   bool(r["main"]), r["name"], r["created_at"])


@dataclass(frozen=True, slots=True)
class Reservation:
    """Units held for one service of one session, not yet spent."""

    session: str
    service: str
    account_id: int
    kind: Kind
    units: int
    holds: tuple[tuple[int, int], ...]  # (bucket id, amount held in that bucket's kind)
    seq: int
    expires_at: int
    created_at: int

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "Reservation":
        return cls(
            session=r["session"], service=r["service"], account_id=r["account_id"],
            kind=Kind(r["kind"]), units=r["units"],
            holds=tuple(holds_of(r["holds"])),
            seq=r["seq"], expires_at=r["expires_at"], created_at=r["created_at"],
        )


def holds_of(value: Any) -> list[tuple[int, int]]:
    """A reservation's stored holds (JSON text, or decoded by the driver) as
    (bucket id, amount) pairs."""
    return [(int(b), int(a)) for b, a in _loads(value)]


class EntryType(str, enum.Enum):
    DEBIT = "debit"      # usage charged
    CREDIT = "credit"    # top-up, allowance, opening balance
    ADJUST = "adjust"    # operator correction
    EXPIRE = "expire"    # units lost when a bucket expired


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One immutable change of one bucket. Balances are sums of these."""

    id: int
    account_id: int
    bucket_id: int
    kind: Kind
    amount: int  # signed
    balance_after: int
    entry_type: EntryType
    session: str | None
    op_key: str | None
    reason: str | None
    actor: str | None
    created_at: int

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "LedgerEntry":
        return cls(
            id=r["id"], account_id=r["account_id"], bucket_id=r["bucket_id"],
            kind=Kind(r["kind"]), amount=r["amount"], balance_after=r["balance_after"],
            entry_type=EntryType(r["entry_type"]), session=r["session"], op_key=r["op_key"],
            reason=r["reason"], actor=r["actor"], created_at=r["created_at"],
        )


@dataclass(slots=True)
class Session:
    """One network session (Acct-Session-Id or Diameter Session-Id).

    A value like the other records, but not frozen: two are built per charged
    request, and a frozen dataclass costs several times as much to build."""

    id: str  # globally unique session key chosen by the protocol layer
    account_id: int
    subscriber_id: int
    proto: str  # "radius" | "diameter"
    nas: str | None
    nas_session_id: str | None
    framed_ip: str | None
    status: str  # "active" | "closed"
    last_seq: int
    started_at: int
    updated_at: int
    ended_at: int | None
    attrs: dict[str, Any]

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "Session":
        d = {k: r[k] for k in cls.__dataclass_fields__}
        d["attrs"] = _loads(d["attrs"]) or {}
        return cls(**d)


@dataclass(frozen=True, slots=True)
class RatedCdr:
    """The record of one finished session or event: input of invoices and reports."""

    id: int
    session: str | None
    account_id: int
    subscriber_id: int | None
    service: str
    kind: Kind
    started_at: int
    ended_at: int
    units: int
    cost: int
    currency: str
    details: dict[str, Any]
    created_at: int

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "RatedCdr":
        d = {k: r[k] for k in cls.__dataclass_fields__}
        d["kind"] = Kind(d["kind"])
        d["details"] = _loads(d["details"]) or {}
        return cls(**d)


@dataclass(frozen=True, slots=True)
class UnmatchedAccounting:
    """Accounting reported for a subscriber nobody knows, kept for reconciliation:
    one per session, with its latest cumulative usage (service -> units)."""

    session: str
    proto: str
    nas: str | None
    nas_session_id: str | None
    identity: str
    status: str            # "active" | "closed" (a Stop was reported)
    units: dict[str, int]
    attrs: dict[str, Any]
    seq: int
    reports: int           # reports received (retransmissions answered from cache excluded)
    first_at: int
    last_at: int

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "UnmatchedAccounting":
        d = {k: r[k] for k in cls.__dataclass_fields__}
        d["units"] = _loads(d["units"]) or {}
        d["attrs"] = _loads(d["attrs"]) or {}
        return cls(**d)


@dataclass(frozen=True, slots=True)
class Nas:
    """A network element: RADIUS client, Diameter peer or softswitch control endpoint.

    `address` is an IP address or CIDR prefix the element sends from. The
    secret is never logged and never returned by the API.
    """

    id: int
    name: str
    kind: PeerKind
    address: str
    secret: str = field(repr=False)
    vendor: str
    coa_port: int
    require_message_authenticator: str  # "yes" | "no" | "auto"
    control: dict[str, Any]
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "Nas":
        d = {k: r[k] for k in cls.__dataclass_fields__}
        d["kind"] = PeerKind(d["kind"])
        d["control"] = _loads(d["control"]) or {}
        return cls(**d)

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("secret")
        return d


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: int
    actor: str
    role: str
    action: str
    target: str | None
    request: Any
    status: int
    remote: str | None

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "AuditEntry":
        d = {k: r[k] for k in cls.__dataclass_fields__}
        try:
            d["request"] = _loads(d["request"])
        except ValueError:
            pass  # a bare-string body stored unencoded by earlier versions: shown as is
        return cls(**d)


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: int
    name: str
    role: Role
    created_at: int

    @classmethod
    def from_row(cls, r: Mapping[str, Any]) -> "ApiToken":
        return cls(id=r["id"], name=r["name"], role=Role(r["role"]), created_at=r["created_at"])


def to_jsonable(obj: Any) -> Any:
    """A record (or list of records) as plain JSON types; enums become their values."""
    if hasattr(obj, "public"):
        obj = obj.public()
    elif hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj

"""Request bodies and query strings of the REST API, as pydantic models.

These classes are both the validators the handlers use and the schemas
/openapi.json publishes (see `ocs.api.openapi`), so the two cannot drift.
Bodies are strict (no type coercion, unknown fields refused); a rule that
pydantic cannot derive from the annotations is written into the schema by
hand next to the validator that enforces it (see `BucketCreate`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, Field, StringConstraints, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from ..model import MAX_USAGE, MICRO
from ..money import parse_money
from .wire import (MAX_WHOLE_UNITS, MONEY_PATTERNS, Body, Instant, IpAddress,
                   IpOrCidr, NonNegativeMoney, NonZeroMoney, PositiveMoney, Query, int_in)

# ---------------------------------------------------------------------------- field types

# Names are one line of printable text; free text may hold newlines but never NUL
# (PostgreSQL cannot store it), so both backends accept exactly what the schema says.
_LINE = r"^[^\x00-\x1f\x7f]*$"
_TEXT = r"^[^\x00]*$"


def line(min_length: int = 1, max_length: int = 200):
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length,
                                            pattern=_LINE)]


Name = line()
Text = Annotated[str, StringConstraints(max_length=2000, pattern=_TEXT)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$", min_length=3, max_length=3)]
Language = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$",
                                            max_length=35)]
Id = int_in(1, 2**62)
Priority = int_in(0, 1_000_000)
Usage = int_in(1, MAX_USAGE)
Kbps = int_in(1, 100_000_000)
Username = line(1, 253)
# The same rules as CSV provisioning (ocs.provisioning): E.164 without '+', IMSI of
# 14-15 digits, SIP users without spaces, passwords of at most 128 octets' worth of
# characters (RFC 2865 §5.2) or a stored hash.
Msisdn = Annotated[str, StringConstraints(pattern=r"^[0-9]{6,15}$", max_length=15)]
Imsi = Annotated[str, StringConstraints(pattern=r"^[0-9]{14,15}$", max_length=15)]
SipUser = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x20\x7f]+$", min_length=1,
                                           max_length=128)]
Password = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_LINE)]
Ref = line(1, 200)
Kind = Literal["money", "octets", "seconds", "events"]

# A body field that is optional but, when given, must not be null.
NOT_NULL = None


# ---------------------------------------------------------------------------- units of a kind

def _units_schema() -> dict[str, Any]:
    return {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_USAGE},
                      {"type": "string", "pattern": MONEY_PATTERNS["positive"]}],
            "description": "Units of the kind: an integer for octets, seconds and events; "
                           "for money a decimal string or an integer of whole units."}


def _kind_units_rule() -> dict[str, Any]:
    """JSON Schema for `units` depending on `kind` (enforced by `_units_of_kind`)."""
    return {
        "if": {"properties": {"kind": {"const": "money"}}, "required": ["kind"]},
        "then": {"properties": {"units": {"anyOf": [
            {"type": "integer", "minimum": 1, "maximum": MAX_WHOLE_UNITS},
            {"type": "string"}]}}},
        "else": {"properties": {"units": {"type": "integer"}}},
    }


_POSITIVE_MONEY = re.compile(MONEY_PATTERNS["positive"][1:-1])


def _units_of_kind(value: Any, kind: str | None) -> Any:
    """Validate `units` for its kind; money becomes micro-units."""
    if kind is None:  # the kind itself was invalid and is reported on its own
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PydanticCustomError("units_type", "units must be an integer (or, for money, "
                                  "a decimal string)")
    if kind == "money":
        if isinstance(value, int):
            if not 1 <= value <= MAX_WHOLE_UNITS:
                raise PydanticCustomError("units_range", "money units must be between 1 and "
                                          "{limit} whole units", {"limit": MAX_WHOLE_UNITS})
            return value * MICRO
        if not _POSITIVE_MONEY.fullmatch(value):
            raise PydanticCustomError("money_format", "{value} is not a positive amount "
                                      "written like \"10.50\"", {"value": repr(value[:40])})
        return parse_money(value)
    if isinstance(value, str):
        raise PydanticCustomError("units_type", "units of kind {kind} must be an integer",
                                  {"kind": kind})
    if not 1 <= value <= MAX_USAGE:
        raise PydanticCustomError("units_range", "units must be between 1 and {limit}",
                                  {"limit": MAX_USAGE})
    return value


class _KindUnits(Body):
    """Shared by bucket credits and plan allowances: `units` depends on `kind`."""

    kind: Kind
    units: Annotated[Any, Field(json_schema_extra=_units_schema())]

    @field_validator("units", mode="plain")
    @classmethod
    def _check_units(cls, value, info):
        return _units_of_kind(value, info.data.get("kind"))


# ---------------------------------------------------------------------------- accounts

class AccountCreate(Body):
    """A new account. Money fields are in `currency`."""

    name: Name
    currency: Currency
    billing: Literal["prepaid", "postpaid"]
    credit_limit: NonNegativeMoney = 0
    opening_balance: NonNegativeMoney = 0
    parent_id: Id | None = None
    language: Language = "en"
    tax_profile: Name | None = None
    low_balance_threshold: NonNegativeMoney | None = None


class AccountUpdate(Body):
    """Fields to change; absent fields stay as they are, null clears an optional one."""

    name: Name = NOT_NULL
    credit_limit: NonNegativeMoney = NOT_NULL
    language: Language = NOT_NULL
    tax_profile: Name | None = None
    low_balance_threshold: NonNegativeMoney | None = None
    parent_id: Id | None = None


class Topup(Body):
    """Credit the main money balance. `ref` (e.g. a payment id) makes it idempotent."""

    amount: PositiveMoney
    ref: Ref | None = None
    reason: Text | None = None


class Adjust(Body):
    """Operator correction of a balance by a signed amount; the reason is required."""

    amount: NonZeroMoney
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=_TEXT)]
    ref: Ref | None = None
    force: bool = False
    bucket_id: Id | None = None


class Suspend(Body):
    reason: Text | None = None


class Resume(Body):
    reason: Text | None = None


class BucketCreate(_KindUnits):
    """A new bucket credited with `units` (money: decimal string or whole units)."""

    model_config = {"json_schema_extra": _kind_units_rule()}

    service: Name | None = None
    valid_from: Instant | None = None
    valid_to: Instant | None = None
    priority: Priority | None = None
    name: line(0, 200) = ""

    @model_validator(mode="after")
    def _window(self):
        if (self.valid_from is not None and self.valid_to is not None
                and self.valid_to <= self.valid_from):
            raise PydanticCustomError("validity_window", "valid_to must be after valid_from")
        return self


# ---------------------------------------------------------------------------- subscribers

class SubscriberCreate(Body):
    """A subscriber charging to an account (by id or name) on a plan (by id or name).

    At least one identity (username, msisdn, imsi, sip_user) is required.
    """

    account_id: Id | None = None
    account: Name | None = None
    plan_id: Id | None = None
    plan: Name | None = None
    username: Username | None = None
    msisdn: Msisdn | None = None
    imsi: Imsi | None = None
    sip_user: SipUser | None = None
    password: Password | None = None
    framed_ip: IpAddress | None = None
    max_sessions: int_in(1, 10_000) = 1


class SubscriberUpdate(Body):
    """Fields to change; null clears an identity, the plan or the password."""

    account_id: Id = NOT_NULL
    plan_id: Id | None = None
    username: Username | None = None
    msisdn: Msisdn | None = None
    imsi: Imsi | None = None
    sip_user: SipUser | None = None
    password: Password | None = None
    framed_ip: IpAddress | None = None
    max_sessions: int_in(1, 10_000) = NOT_NULL


# ---------------------------------------------------------------------------- plans

class AllowanceIn(_KindUnits):
    """A bucket the plan grants each period."""

    model_config = {"json_schema_extra": _kind_units_rule()}

    service: Name | None = None
    validity_days: int_in(1, 3660) | None = 30
    priority: Priority = 10


class SpeedProfileIn(Body):
    down_kbps: Kbps
    up_kbps: Kbps
    name: Name | None = None


class FairUsageIn(Body):
    threshold_octets: Usage
    throttle_profile: SpeedProfileIn


Url = Annotated[str, StringConstraints(min_length=1, max_length=2048,
                                        pattern=r"^https?://[^\s]+$")]
Action = Literal["disconnect", "throttle", "redirect", "restore", "none"]


class FinalUnitIn(Body):
    """What the network does when the balance cannot grant more (RFC 8506 §5.6)."""

    action: Literal["terminate", "redirect", "restrict"] = "terminate"
    redirect_url: Url | None = None
    filter_id: line(1, 253) | None = None


class PolicyIn(Body):
    """What enforcement does on each charging event."""

    on_exhausted: Action = "disconnect"
    on_fair_usage: Action = "throttle"
    on_suspended: Action = "disconnect"
    on_restored: Action = "restore"
    throttle_profile: SpeedProfileIn | None = None
    redirect_url: Url | None = None
    fallback_disconnect: bool = True


class PlanCreate(Body):
    name: Name
    currency: Currency
    recurring_fee: NonNegativeMoney = 0
    period: Literal["day", "week", "month"] = "month"
    allowances: Annotated[list[AllowanceIn], Field(max_length=100)] = []
    tariff: Name | None = None
    speed_profile: SpeedProfileIn | None = None
    fair_usage: FairUsageIn | None = None
    description: Text = ""
    final_unit: FinalUnitIn | None = None
    policy: PolicyIn | None = None


class PlanUpdate(Body):
    """Fields to change. New allowances apply to subscribers provisioned afterwards."""

    name: Name = NOT_NULL
    recurring_fee: NonNegativeMoney = NOT_NULL
    period: Literal["day", "week", "month"] = NOT_NULL
    allowances: Annotated[list[AllowanceIn], Field(max_length=100)] = NOT_NULL
    tariff: Name | None = None
    speed_profile: SpeedProfileIn | None = None
    fair_usage: FairUsageIn | None = None
    description: Text = NOT_NULL
    final_unit: FinalUnitIn | None = None
    policy: PolicyIn | None = None


# ---------------------------------------------------------------------------- NAS / peers

Secret = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_TEXT)]
def _control(value: dict[str, Any]) -> dict[str, Any]:
    for flag in ("proxy", "unique_framed_ip"):
        if flag in value and not isinstance(value[flag], bool):
            raise ValueError(f"control.{flag} is true or false")
    coa = value.get("coa_address")
    if coa is not None:
        try:
            ipaddress.ip_address(coa if isinstance(coa, str) else "")
        except ValueError:
            raise ValueError("control.coa_address is the IP address CoA and Disconnect "
                             "requests go to") from None
    host = value.get("origin_host")
    if host is not None and not (isinstance(host, str) and 0 < len(host) <= 255):
        raise ValueError("control.origin_host is the Diameter peer's Origin-Host")
    node = value.get("policy_node")
    if node is not None and not (isinstance(node, str) and 0 < len(node) <= 200):
        raise ValueError("control.policy_node is the [daemon] node_name of the node that "
                         "carries out this element's actions")
    return value


Control = Annotated[dict[str, Any], Field(max_length=100, description=(
    "How ocsd deals with this element, by key: `proxy` (true: a RADIUS proxy in front of "
    "several NAS, told apart by their NAS-Identifier), `coa_address` (the IP address CoA "
    "and Disconnect requests go to), `enforce`, "
    "`origin_host` (a Diameter peer's), `snmp`, the softswitch control endpoints "
    "`freeswitch`, `asterisk`, `kamailio`, `policy_node` (the node that carries out "
    "its enforcement actions: the one its CoA client list or its routing accepts), and "
    "`unique_framed_ip` (true: the NAS never gives one address to two sessions at once, so "
    "a Start with the Framed-IP-Address of a session still open here closes that one)."
    )), AfterValidator(_control)]


class NasCreate(Body):
    """A network element. The secret is write-only: responses say only `has_secret`."""

    name: Name
    address: IpOrCidr
    secret: Secret
    kind: Literal["nas", "diameter", "softswitch"] = "nas"
    vendor: line(1, 64) = "generic"
    coa_port: int_in(1, 65535) = 3799
    require_message_authenticator: Literal["yes", "no", "auto"] = "yes"
    control: Control = {}


class NasUpdate(Body):
    name: Name = NOT_NULL
    address: IpOrCidr = NOT_NULL
    secret: Secret = NOT_NULL
    kind: Literal["nas", "diameter", "softswitch"] = NOT_NULL
    vendor: line(1, 64) = NOT_NULL
    coa_port: int_in(1, 65535) = NOT_NULL
    require_message_authenticator: Literal["yes", "no", "auto"] = NOT_NULL
    control: Control = NOT_NULL


# ---------------------------------------------------------------------------- tokens

class TokenCreate(Body):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", max_length=64)]
    role: Literal["read-only", "operator", "admin"]


# ---------------------------------------------------------------------------- query strings

Limit = Annotated[int, Field(ge=1, le=1000, description="Page size (at most 1000).")]
Offset = Annotated[int, Field(ge=0, le=2**62, description="Items to skip.")]
BeforeId = Annotated[int, Field(ge=1, le=2**62,
                                description="Only items with a smaller id (newest first).")]
QId = Annotated[int, Field(ge=1, le=2**62)]
QText = line(1, 253)


class AccountsQuery(Query):
    name: QText | None = None
    status: Literal["active", "suspended", "closed"] | None = None
    limit: Limit = 100
    offset: Offset = 0


class SubscribersQuery(Query):
    account_id: QId | None = None
    limit: Limit = 100
    offset: Offset = 0


class FindQuery(Query):
    """Exactly one of the identities, a framed IP or a session id."""

    username: QText | None = None
    msisdn: QText | None = None
    imsi: QText | None = None
    sip_user: QText | None = None
    framed_ip: QText | None = None
    session: QText | None = None


class SessionsQuery(Query):
    status: Literal["active", "closed"] | None = None
    account_id: QId | None = None
    subscriber_id: QId | None = None
    nas: QText | None = None
    limit: Limit = 100
    offset: Offset = 0


class UnmatchedQuery(Query):
    status: Literal["active", "closed"] | None = None
    nas: QText | None = None
    limit: Limit = 100
    offset: Offset = 0


class PageQuery(Query):
    limit: Limit = 100
    before_id: BeforeId | None = None


class LedgerQuery(PageQuery):
    account_id: QId | None = None
    session: QText | None = None


class AuditQuery(PageQuery):
    actor: QText | None = None

"""The protocol-neutral request and answer that cross into the charging core.

RADIUS and Diameter translate their packets into a `ChargeRequest` and the
core's `ChargeDecision` back into their replies (through each protocol's
outcome table); neither invents charging of its own, and the core never sees
an attribute or an AVP.

Requests, usages, grants and decisions are values nobody changes once built;
they are plain (not frozen) dataclasses only because one is built per request
and a frozen one costs several times as much to build.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..model import Account, FinalUnit, Kind, Plan, Subscriber


class RequestKind(str, enum.Enum):
    INITIAL = "initial"      # session starts: reserve (Diameter CCR-I, RADIUS Start)
    UPDATE = "update"        # report usage, reserve more (CCR-U, Interim-Update)
    TERMINATE = "terminate"  # final usage, session ends (CCR-T, Stop)
    EVENT = "event"          # one-off direct debit (CCR-Event DIRECT_DEBITING, SMS)
    REFUND = "refund"        # give back the price of units (CCR-Event REFUND_ACCOUNT)


class ResultCode(str, enum.Enum):
    """What happened, per service and for the request as a whole."""

    SUCCESS = "success"
    CREDIT_LIMIT_REACHED = "credit_limit_reached"   # nothing (more) can be granted
    UNKNOWN_SUBSCRIBER = "unknown_subscriber"
    SERVICE_DENIED = "service_denied"               # suspended or closed account
    RATING_FAILED = "rating_failed"                 # no price for this service
    UNKNOWN_SESSION = "unknown_session"             # an update for a session we never saw


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the request is for; any one identity is enough, the first found wins."""

    username: str | None = None
    msisdn: str | None = None
    imsi: str | None = None
    sip_user: str | None = None

    def lookups(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in (("username", self.username), ("msisdn", self.msisdn),
                                    ("imsi", self.imsi), ("sip_user", self.sip_user)) if v]

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.lookups()) or "-"


@dataclass(slots=True)
class ServiceUsage:
    """One service of a request: a data rating group, a voice destination or an event.

    `service` is the key the session's charging is tracked under (e.g. "rg:10",
    "voice", "event:sms"); `destination` is the called number for voice/SMS
    rating; `used` is what was consumed since the last report, or the session
    total when the request says `cumulative`; `requested` is what the client
    asks for next (None: the configured default quota).
    """

    service: str
    kind: Kind
    used: int = 0
    requested: int | None = None
    destination: str | None = None
    rating_group: int | None = None
    service_id: int | None = None
    # What a cumulative `used` wraps at when the network counts without high words
    # (RADIUS octets without Gigawords: 2**32 per direction); 0 = it never wraps.
    wraps: int = 0


@dataclass(slots=True)
class ChargeRequest:
    identity: Identity
    session_id: str
    kind: RequestKind
    seq: int
    services: tuple[ServiceUsage, ...]
    timestamp: int                  # microseconds since the epoch, when the usage was reported
    proto: str = "internal"         # "radius" | "diameter" | ...
    nas: str | None = None          # the network element's name
    nas_session_id: str | None = None
    framed_ip: str | None = None
    cumulative: bool = False        # `used` are session totals (RADIUS counters)
    require_session: bool = False   # an update for an unknown session is UNKNOWN_SESSION
    # An unknown subscriber's usage is kept for reconciliation (Store.record_unmatched)
    # before the answer: for protocols whose answer tells the client the report is stored.
    keep_unmatched: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)  # kept on the session and its CDR


@dataclass(slots=True)
class ServiceGrant:
    service: str
    kind: Kind
    result: ResultCode
    granted: int = 0
    validity_time: int = 0          # seconds
    threshold: int | None = None    # ask for more when this much is left
    final_unit: FinalUnit | None = None  # set when this grant is the last one
    charged: int = 0
    cost: int = 0
    session_units: int = 0
    session_cost: int = 0
    unpaid: int = 0                 # of the units reported, those nothing could pay


@dataclass(slots=True)
class ChargeDecision:
    result: ResultCode
    services: tuple[ServiceGrant, ...] = ()
    cost: int = 0
    currency: str | None = None
    balance: int | None = None
    available: int | None = None
    account_id: int | None = None
    subscriber_id: int | None = None
    events: tuple[str, ...] = ()
    replayed: bool = False
    message: str = ""

    def grant(self, service: str) -> ServiceGrant | None:
        return next((g for g in self.services if g.service == service), None)


@dataclass(slots=True)
class Authorization:
    """The answer to "may this subscriber start, and for how much?" (no reservation)."""

    result: ResultCode
    subscriber: Subscriber | None = None
    account: Account | None = None
    plan: Plan | None = None
    max_units: int | None = None
    message: str = ""
    # The subscriber's active sessions, counted up to its max_sessions, when the
    # caller asked (count_sessions) and the balance was read: None otherwise.
    active_sessions: int | None = None

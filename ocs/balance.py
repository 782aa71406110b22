"""The balance engine: reserve, commit, release, credit and adjust, in memory.

This module decides; it does no I/O. A storage backend loads the state a batch
of operations touches (accounts locked, their buckets, the sessions'
reservations, the idempotency records of the batch), hands it to `apply`, and
writes back the `Writes` in the same transaction before anybody is answered.
Both backends therefore share one implementation of the invariants
(DESIGN.md):

* a balance never goes below its floor through reservations; only usage the
  network reports as already consumed (`Commit.used`) may push the main money
  bucket below the floor, and the result says by how much;
* every change of a bucket is a ledger entry, so balance == sum(ledger);
* an operation is applied once per key: a replayed operation returns the first
  result (`replayed=True`) and changes nothing;
* a session's usage is charged once: each (session, service) remembers the
  units and money charged so far, so a commit may report cumulative counters
  (RADIUS interims) and a repeated or reordered report charges only what is
  new, and prices see the cumulative usage (increments are never rounded twice).

Drawing order: buckets of the usage's kind that match the service (a bucket
with no service matches all), by priority (lower first), then soonest expiry,
then age; then money, non-main money buckets the same way and the main bucket
last. Holds are recorded per bucket, so releasing a reservation gives back
exactly what it held.
"""

from __future__ import annotations

import enum
import json
import operator
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from .model import MAX_BALANCE, AccountStatus, Billing, EntryType, Kind, Session
from .pricing import MONEY, Price


class Outcome(str, enum.Enum):
    OK = "ok"
    INSUFFICIENT = "insufficient"            # nothing (or less than the minimum) can be granted
    UNKNOWN_ACCOUNT = "unknown_account"
    ACCOUNT_SUSPENDED = "account_suspended"  # usage charged, no new grant
    ACCOUNT_CLOSED = "account_closed"
    REJECTED = "rejected"                    # the operation itself is not allowed (see message)
    UNKNOWN_SESSION = "unknown_session"      # a composite that requires a session we never saw


# --------------------------------------------------------------------------- operations
# Operations and results are values: nothing changes them once built, except the
# engine filling in a result it has just made. They are not frozen dataclasses
# because a frozen one costs several microseconds to build, per request.

@dataclass(slots=True)
class Reserve:
    """Hold up to `units` of `kind` for (session, service), replacing any earlier hold."""

    account_id: int
    session: str
    units: int
    kind: Kind = Kind.MONEY
    service: str = ""
    seq: int = 0
    ttl: int = 3600           # seconds until supervision may release it
    price: Price | None = None  # how money pays for units; None = buckets only
    min_units: int = 1        # grant nothing unless at least this much fits
    match: str | None = None  # what bucket filters see (e.g. "voice:4179..."); default service
    tier_counter: str | None = None  # price on this counter's units, not the session's

    def __post_init__(self):
        _check_units(self.units, "units")
        _check_units(self.min_units, "min_units")
        if self.ttl <= 0:
            raise ValueError("ttl must be positive")

    @property
    def op_key(self) -> str:
        return f"reserve|{self.session}|{self.service}|{self.seq}"


@dataclass(slots=True)
class Commit:
    """Charge `used` units for (session, service), then optionally reserve `reserve` more.

    `used` may exceed what was reserved: it is what the network already
    delivered. With `cumulative=True`, `used` is the session's total so far
    and only what exceeds the units already charged is charged. `counter`
    names a usage counter (e.g. the subscriber's fair-usage period) that the
    charged units are added to. `final=True` closes the reservation and the
    session's charging record whatever `reserve` says.
    """

    account_id: int
    session: str
    used: int
    kind: Kind = Kind.MONEY
    service: str = ""
    seq: int = 0
    price: Price | None = None
    reserve: int = 0
    min_units: int = 1
    ttl: int = 3600
    final: bool = False
    cumulative: bool = False
    counter: str | None = None
    counter_threshold: int | None = None  # emit "fair_usage" when the counter crosses it
    strict: bool = False  # all or nothing: refuse (INSUFFICIENT) rather than overdraw
    match: str | None = None  # what bucket filters see (e.g. "voice:4179..."); default service
    # Price on this usage counter's units (e.g. the subscriber's usage of the service in
    # the billing period: tiers across sessions) rather than the session's; it advances
    # with the usage charged.
    tier_counter: str | None = None
    # A cumulative `used` from a counter that wraps at this many units (0: never).
    # A newer report (higher seq) below what was charged then means the counter
    # wrapped, if the units gained that way are plausible (at most half a wrap).
    wraps: int = 0

    def __post_init__(self):
        _check_units(self.used, "used")
        _check_units(self.reserve, "reserve")
        if self.ttl <= 0:
            raise ValueError("ttl must be positive")

    @property
    def op_key(self) -> str:
        return f"commit|{self.session}|{self.service}|{self.seq}"


@dataclass(slots=True)
class Release:
    """Give back what (session, service) holds; `service=None` releases every service."""

    account_id: int
    session: str
    service: str | None = None
    seq: int | None = None   # with a seq the release is idempotent under its key
    reason: str = "released"
    expired_only: bool = False  # supervision: only if the hold expired meanwhile

    @property
    def op_key(self) -> str | None:
        if self.seq is None:
            return None
        return f"release|{self.session}|{self.service or '*'}|{self.seq}"


@dataclass(slots=True)
class Credit:
    """Add `amount` to a bucket: the main money bucket by default, or a new bucket
    when a kind other than money, a service, a validity or a priority is given."""

    account_id: int
    amount: int
    kind: Kind = Kind.MONEY
    bucket_id: int | None = None
    service: str | None = None
    valid_from: int | None = None
    valid_to: int | None = None
    priority: int | None = None
    name: str = ""
    ref: str | None = None    # idempotency key (e.g. payment id)
    reason: str = "top-up"
    actor: str | None = None

    def __post_init__(self):
        if not isinstance(self.amount, int) or self.amount <= 0:
            raise ValueError("credit amount must be a positive integer")

    @property
    def op_key(self) -> str | None:
        return f"credit|{self.ref}" if self.ref else None

    @property
    def new_bucket(self) -> bool:
        return self.bucket_id is None and (
            self.kind is not Kind.MONEY or self.service is not None
            or self.valid_to is not None or self.valid_from is not None
            or self.priority is not None)


@dataclass(slots=True)
class Adjust:
    """Operator correction by a signed `amount` on a bucket (main money bucket by default).

    A decrease that would take the bucket below its floor is refused unless
    `force` is set.
    """

    account_id: int
    amount: int
    bucket_id: int | None = None
    ref: str | None = None
    reason: str = "adjustment"
    actor: str | None = None
    force: bool = False

    def __post_init__(self):
        if not isinstance(self.amount, int) or self.amount == 0:
            raise ValueError("adjust amount must be a non-zero integer")

    @property
    def op_key(self) -> str | None:
        return f"adjust|{self.ref}" if self.ref else None


@dataclass(slots=True)
class Composite:
    """The operations of one request of one session, applied atomically under
    one key (session, seq), with the session's record written in the same
    transaction. A replay returns every part's first result."""

    account_id: int
    session: str
    seq: int
    parts: tuple["Reserve | Commit | Release | Credit | Adjust", ...]
    record: Session | None = None
    close: bool = False  # session ends: write a rated CDR per service, close its charges
    # UNKNOWN_SESSION if never opened (nothing applied), or if it ended and this is
    # not its end (only the usage it reports is charged)
    require_session: bool = False
    opens: bool = False  # the request starts the session (may reopen a closed id)
    # An opening request that is no replay, for a session still open here, starts a
    # new run of a reused id when it is later than that run's start and the run has
    # been silent (RADIUS: a NAS restarted without Stop or Accounting-On and hands
    # out its session ids again); see _Engine._restarted.
    restarts: bool = False
    # Whether the result is stored under op_key for replays. A mid-session report of
    # cumulative counters (a RADIUS Interim-Update) does without: its commits charge
    # only what exceeds the session's charged units and re-hold what they release,
    # so applying it again charges nothing, whichever node gets it and however
    # late. Its events keep op_key in their ids.
    keep_result: bool = True

    def __post_init__(self):
        for p in self.parts:
            if p.account_id != self.account_id or isinstance(p, Composite):
                raise ValueError("parts of a composite operation charge its own account")

    @property
    def op_key(self) -> str:
        return f"request|{self.session}|{self.seq}"


Operation = Reserve | Commit | Release | Credit | Adjust | Composite
_OP_TYPE = {cls: cls.__name__.lower() for cls in (Reserve, Commit, Release, Credit, Adjust,
                                                  Composite)}


def flatten(ops: list[Operation]) -> Iterator[Operation]:
    """Every operation, with composites replaced by their parts."""
    for op in ops:
        if isinstance(op, Composite):
            yield from op.parts
        else:
            yield op


def _check_units(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")


# --------------------------------------------------------------------------- results

@dataclass(slots=True)
class Result:
    """What an operation did. Stored as JSON under its key for replays."""

    outcome: Outcome
    granted: int = 0            # units now reserved for (session, service)
    expires_at: int | None = None
    charged: int = 0            # units of usage debited
    cost: int = 0               # money debited for that usage
    unpaid: int = 0             # units reported with no bucket and no price to pay them
    behind: int = 0             # a newer cumulative report was this far below the session's
                                # total, not as a counter wrap explains: a counter reset
    below_floor: int = 0        # money the account went below its floor by
    released: int = 0           # units given back
    draws: tuple[tuple[int, int], ...] = ()  # (bucket id, amount) debited or credited
    balance: int = 0            # money balance of the account afterwards
    available: int = 0          # money still spendable (balance - reserved - floor)
    bucket_id: int | None = None  # bucket credited/adjusted
    session_units: int = 0      # units charged to (session, service) so far
    session_cost: int = 0       # money charged to (session, service) so far
    counter_units: int | None = None  # the named usage counter after this op
    parts: tuple["Result", ...] = ()  # a composite's results, one per part
    events: tuple[str, ...] = ()      # types of the events this operation emitted
    message: str = ""
    service: str = ""           # the service of the operation (a composite's parts: theirs)
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    def to_json(self) -> str:
        return _encode(self._stored())

    def _stored(self) -> list:
        # Positional (see _STORED): one of these is stored per request, and a list
        # costs a third of a dict of the fields that differ from their defaults.
        return [self.outcome.value, *_stored_values(self), [p._stored() for p in self.parts]]

    @classmethod
    def from_json(cls, text: str, *, replayed: bool = True) -> "Result":
        data = json.loads(text)
        if isinstance(data, dict):  # written before results were stored positionally
            return cls._from_plain(data, replayed)
        return cls._from_stored(data, replayed)

    @classmethod
    def _from_stored(cls, data: list, replayed: bool) -> "Result":
        values = dict(zip(_STORED, data[1:-1]))
        values["draws"] = tuple(tuple(x) for x in values.get("draws", ()))
        values["events"] = tuple(values.get("events", ()))
        return cls(Outcome(data[0]), **values,
                   parts=tuple(cls._from_stored(p, replayed) for p in data[-1]),
                   replayed=replayed)

    @classmethod
    def _from_plain(cls, d: dict, replayed: bool) -> "Result":
        d["outcome"] = Outcome(d["outcome"])
        d["draws"] = tuple(tuple(x) for x in d.get("draws", ()))
        d["parts"] = tuple(cls._from_plain(p, replayed) for p in d.get("parts", ()))
        d["events"] = tuple(d.get("events", ()))
        return cls(**d, replayed=replayed)


# The stored order of a result's fields between its outcome and its parts. New
# fields go at the end: a shorter stored list reads with the defaults.
_STORED = ("granted", "expires_at", "charged", "cost", "unpaid", "below_floor", "released",
           "draws", "balance", "available", "bucket_id", "session_units", "session_cost",
           "counter_units", "events", "message", "service", "behind")
_stored_values = operator.attrgetter(*_STORED)
_encode = json.JSONEncoder(separators=(",", ":")).encode


# --------------------------------------------------------------------------- state

@dataclass(slots=True)
class BucketState:
    id: int
    kind: Kind
    service: str | None
    balance: int
    reserved: int
    priority: int
    valid_from: int | None
    valid_to: int | None
    main: bool
    created_at: int
    floor: int = 0
    dirty: bool = False
    name: str = ""

    def usable(self, now: int) -> bool:
        return ((self.valid_from is None or self.valid_from <= now)
                and (self.valid_to is None or now < self.valid_to))

    def pays(self, kind: Kind, service: str, now: int, match: str | None = None) -> bool:
        return bucket_pays(self, kind, service, now, match)

    @property
    def available(self) -> int:
        return max(0, self.balance - self.reserved - self.floor)

    def order_key(self) -> tuple:
        return (self.main, self.priority, self.valid_to is None, self.valid_to or 0,
                self.created_at, self.id)


@dataclass(slots=True)
class AccountState:
    id: int
    billing: Billing
    credit_limit: int
    status: AccountStatus
    buckets: dict[int, BucketState] = field(default_factory=dict)
    low_balance_threshold: int | None = None
    currency: str = ""

    @property
    def floor(self) -> int:
        return -self.credit_limit if self.billing is Billing.POSTPAID else 0

    def main_bucket(self) -> BucketState:
        for b in self.buckets.values():
            if b.main:
                return b
        raise LookupError(f"account {self.id} has no main bucket")

    def money(self) -> tuple[int, int]:
        """(balance, available) of all money buckets usable now or holding a reservation."""
        bal = avail = 0
        for b in self.buckets.values():
            if b.kind is Kind.MONEY:
                bal += b.balance
                avail += b.available
        return bal, avail


@dataclass(slots=True)
class ReservationState:
    session: str
    service: str
    account_id: int
    kind: Kind
    units: int
    holds: list[tuple[int, int]]
    seq: int
    expires_at: int
    created_at: int


@dataclass(slots=True)
class ChargeState:
    """What one (session, service) has been charged so far."""

    session: str
    service: str
    account_id: int
    kind: Kind
    units: int = 0
    cost: int = 0
    seq: int = 0
    closed: bool = False  # the session ended and its rated CDR is written
    unpaid: int = 0       # of `units`, those nothing could pay (Result.unpaid)


@dataclass(slots=True)
class LedgerRow:
    account_id: int
    bucket_id: int  # negative: a bucket created in this batch (see Writes.new_buckets)
    kind: Kind
    amount: int
    balance_after: int
    entry_type: EntryType
    session: str | None
    op_key: str | None
    reason: str | None
    actor: str | None
    created_at: int


@dataclass(slots=True)
class BatchState:
    """Everything a batch may read; filled by the backend inside its transaction."""

    now: int
    accounts: dict[int, AccountState] = field(default_factory=dict)
    # session -> service -> reservation
    reservations: dict[str, dict[str, ReservationState]] = field(default_factory=dict)
    # op_key -> first result: JSON as stored, or a Result from earlier in this batch
    done: dict[str, "str | Result"] = field(default_factory=dict)
    # (session, service) -> charged so far
    charges: dict[tuple[str, str], ChargeState] = field(default_factory=dict)
    # usage counter key -> units
    counters: dict[str, int] = field(default_factory=dict)
    # session id -> its record as stored (for composites that carry a record)
    sessions: dict[str, Session] = field(default_factory=dict)


@dataclass(slots=True)
class Writes:
    """What the backend must persist, in this order: new buckets (mapping their
    temporary negative ids to real ones), bucket updates, ledger rows,
    reservation deletes and upserts, operation records."""

    new_buckets: list[tuple[int, int, BucketState]] = field(default_factory=list)  # (tmp id, account, bucket)
    ledger: list[LedgerRow] = field(default_factory=list)
    deleted_reservations: set[tuple[str, str]] = field(default_factory=set)
    upserted_reservations: dict[tuple[str, str], ReservationState] = field(default_factory=dict)
    operations: list[tuple[str, int, str, Result]] = field(default_factory=list)  # key, account, type
    charges: dict[tuple[str, str], ChargeState] = field(default_factory=dict)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (account, units)
    sessions: dict[str, Session] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # for the outbox
    cdrs: list[dict[str, Any]] = field(default_factory=list)

    def remap(self, ids: dict[int, int]) -> None:
        """Replace the temporary ids of new buckets with the ids the store gave them."""
        for row in self.ledger:
            row.bucket_id = ids.get(row.bucket_id, row.bucket_id)
        for res in self.upserted_reservations.values():
            res.holds = [(ids.get(b, b), a) for b, a in res.holds]
        self.operations = [(k, a, t, remap_result(r, ids)) for k, a, t, r in self.operations]

    def dirty_buckets(self, state: BatchState) -> list[BucketState]:
        return [b for a in state.accounts.values() for b in a.buckets.values()
                if b.dirty and b.id > 0]


# --------------------------------------------------------------------------- engine

def apply(state: BatchState, ops: list[Operation]) -> tuple[list[Result], Writes]:
    """Apply `ops` in order to `state`; return one result per op and the writes."""
    engine = _Engine(state)
    results = [engine.run(op) for op in ops]
    return results, engine.writes


class _Engine:
    def __init__(self, state: BatchState):
        self.state = state
        self.now = state.now
        self.writes = Writes()
        self._next_tmp = -1

    # -- dispatch -----------------------------------------------------------------------
    def run(self, op: Operation) -> Result:
        key = op.op_key
        if key is not None and key in self.state.done:
            prior = self.state.done[key]
            if isinstance(prior, str):
                return Result.from_json(prior)
            return replace(prior, replayed=True)
        acct = self.state.accounts.get(op.account_id)
        self._emitted: list[str] = []
        if acct is None:
            result = Result(Outcome.UNKNOWN_ACCOUNT, message=f"account {op.account_id} not found")
        else:
            before = acct.money()[1]
            if isinstance(op, Composite):
                result = self._composite(acct, op, key)
            else:
                result = self._one(acct, op, key)
            bal, avail = acct.money()
            self._account_events(acct, op, key, before, avail)
            result.balance, result.available = bal, avail
            result.events = tuple(self._emitted)
        if key is not None:
            self.state.done[key] = result
            if getattr(op, "keep_result", True):
                self.writes.operations.append((key, op.account_id, _OP_TYPE[type(op)], result))
        return result

    def _composite(self, acct: AccountState, op: Composite, key: str) -> Result:
        known = self.state.sessions.get(op.session)
        if op.require_session and known is None:
            return Result(Outcome.UNKNOWN_SESSION, message=f"unknown session {op.session}")
        if op.require_session and not op.close and known.status == "closed":
            # An update of a session that ended here (terminated, aborted, closed by
            # supervision or because its client restarted): what it reports was used
            # and is charged, nothing more is held, and it is unknown to the client
            # (Diameter 5002), which then ends it.
            parts = tuple(self._one(acct, replace(part, reserve=0, final=True), key)
                          for part in op.parts if isinstance(part, Commit))
            return Result(Outcome.UNKNOWN_SESSION, parts=parts,
                          message=f"session {op.session} has ended")
        reused = op.opens and known is not None and known.status == "closed"
        if op.opens and op.restarts and self._restarted(known, op.record):
            # The earlier run ends here, with what it reported: its CDR, its holds given
            # back. The request opens a new session under the same id.
            self._release(acct, Release(acct.id, op.session))
            self._close_session(acct, op.session, replace(
                known, status="closed", updated_at=self.now, ended_at=self.now,
                attrs={**known.attrs, "closed_by": "session id reused"}))
            known, reused = None, True
        if reused:
            # The id was reused (a NAS restarted its counter): a new session, whose
            # cumulative counters start again from zero.
            for charge_key in [k for k, c in self.state.charges.items()
                               if k[0] == op.session and c.closed]:
                del self.state.charges[charge_key]
        parts = tuple(self._one(acct, part, key) for part in op.parts)
        bad = next((p.outcome for p in parts if p.outcome is not Outcome.OK), Outcome.OK)
        record = _merge_session(known, op.record, op.opens) if op.record else known
        if op.record is not None and (op.close or not _same_session(known, record)):
            self.state.sessions[op.session] = record
            self.writes.sessions[op.session] = record
        if op.close:
            self._close_session(acct, op.session, record)
        return Result(bad, parts=parts)

    RESTART_SILENCE_US = 5_000_000

    def _restarted(self, known: Session | None, record: Session | None) -> bool:
        """Whether an opening request starts a new run of a session id still open here:
        it began after that run did (a reordered Start of the same run is older than
        the report that opened it), and the run has been silent for a while (a NAS
        that flushes buffered reports sends them within moments; a restart takes
        longer). The earlier run's end was never reported."""
        return (known is not None and record is not None and known.status != "closed"
                and record.started_at > known.started_at
                and self.now - known.updated_at >= self.RESTART_SILENCE_US)

    def _one(self, acct: AccountState, op: Operation, key: str | None) -> Result:
        counter_before = (self.state.counters.get(op.counter, 0)
                          if isinstance(op, Commit) and op.counter else 0)
        result = getattr(self, "_" + _OP_TYPE[type(op)])(acct, op)
        result.service = getattr(op, "service", None) or ""
        self._service_events(acct, op, key, result, counter_before)
        return result

    # -- events (written to the outbox in the same transaction) --------------------------
    def _emit(self, acct: AccountState, etype: str, key: str | None, op, **data) -> None:
        service = getattr(op, "service", None)
        event_id = f"{key}:{etype}:{service or ''}" if key else f"{uuid.uuid4().hex}:{etype}"
        self._emitted.append(etype)
        self.writes.events.append({
            "id": event_id, "type": etype, "account_id": acct.id,
            "session": getattr(op, "session", None), "service": service, "at": self.now,
            **data})

    def _service_events(self, acct, op, key, result: Result, counter_before: int) -> None:
        if result.outcome in (Outcome.ACCOUNT_SUSPENDED, Outcome.ACCOUNT_CLOSED):
            self._emit(acct, "suspended_seen", key, op, status=acct.status.value)
        elif isinstance(op, (Reserve, Commit)) and result.outcome is Outcome.INSUFFICIENT:
            self._emit(acct, "exhausted", key, op, kind=op.kind.value)
        if (isinstance(op, Commit) and op.counter and op.counter_threshold is not None
                and result.counter_units is not None
                and counter_before < op.counter_threshold <= result.counter_units):
            self._emit(acct, "fair_usage", key, op, counter=op.counter,
                       threshold=op.counter_threshold, units=result.counter_units)

    def _account_events(self, acct, op, key, before: int, after: int) -> None:
        threshold = acct.low_balance_threshold
        if threshold is not None and before >= threshold > after:
            self._emit(acct, "low_balance", key, op, available=after, threshold=threshold)
        credits = [p for p in (op.parts if isinstance(op, Composite) else (op,))
                   if isinstance(p, (Credit, Adjust)) and p.amount > 0]
        if credits and after > before:
            self._emit(acct, "topped_up", key, op, available_before=before, available=after)

    # -- reservations -------------------------------------------------------------------
    def _reserve(self, acct: AccountState, op: Reserve) -> Result:
        released = self._drop_reservation(op.session, op.service)
        if acct.status is not AccountStatus.ACTIVE:
            return Result(_status_outcome(acct.status), released=released,
                          message=f"account is {acct.status.value}")
        return self._hold(acct, op.session, op.service, op.kind, op.units, op.min_units,
                          op.price, op.seq, op.ttl, released=released, match=op.match,
                          base=self._tier_base(op.tier_counter))

    @staticmethod
    def _wrapped(op: Commit, charge: ChargeState, behind: int) -> int:
        """The units a cumulative report below the session's total adds: none for an
        older or repeated report; for a newer one from a counter that wraps, what it
        gained across the fewest wraps that bring it past the total. More than half a
        wrap in one report is not believed (a counter reset, not traffic)."""
        if not op.wraps or op.seq <= charge.seq:
            return 0
        gained = behind + -(behind // op.wraps) * op.wraps  # behind < 0: ceil division
        return gained if gained <= op.wraps // 2 else 0

    def _tier_base(self, counter: str | None) -> int | None:
        return self.state.counters.get(counter, 0) if counter is not None else None

    def _commit(self, acct: AccountState, op: Commit) -> Result:
        # Give back what this service held, then draw the usage in the normal order:
        # the hold guarantees the usage it covered is there to draw.
        held = self._session_reservations(op.session).get(op.service)
        self._drop_reservation(op.session, op.service)
        fresh = (op.session, op.service) not in self.state.charges
        charge = self._charge_state(acct, op.session, op.service, op.kind)
        used = op.used - charge.units if op.cumulative else op.used
        behind = 0
        if used < 0:
            gained = self._wrapped(op, charge, used)
            if not gained and op.seq > charge.seq:
                behind = -used  # nothing is charged until the counters pass the total again
            used = gained
        # What the price counts as already used: the session's units, or the tier counter's.
        priced_after = self._tier_base(op.tier_counter)
        if priced_after is None:
            priced_after = charge.units
        if op.strict and self._affordable(acct, op.kind, op.service, used, op.price,
                                          priced_after, op.match) < used:
            if held is not None:
                self._restore_reservation(acct, held)
            if fresh:  # nothing was charged: no charging record, no CDR
                del self.state.charges[(op.session, op.service)]
            return Result(Outcome.INSUFFICIENT, session_units=charge.units,
                          session_cost=charge.cost,
                          message=f"balance cannot pay {used} {op.kind.value}")
        charged, cost, unpaid, below, draws = self._draw(
            acct, op.kind, op.service, used, op.price, op.session, op.op_key, priced_after,
            op.match)
        charge.units += used
        charge.cost += cost
        charge.unpaid += unpaid
        charge.seq = max(charge.seq, op.seq)
        self.writes.charges[(op.session, op.service)] = charge
        counter = None
        if op.counter is not None:
            counter = self._advance(acct, op.counter, used)
        if op.tier_counter is not None and op.tier_counter != op.counter:
            self._advance(acct, op.tier_counter, used)
        base = Result(Outcome.OK, charged=charged, cost=cost, unpaid=unpaid,
                      below_floor=below, draws=tuple(draws), session_units=charge.units,
                      session_cost=charge.cost, counter_units=counter, behind=behind)
        if op.final or op.reserve == 0 or charge.closed:
            # A report arriving after the session ended (a reordered interim) is
            # charged for anything new, but nothing is held for a session that is over.
            return base
        if acct.status is not AccountStatus.ACTIVE:
            base.outcome = _status_outcome(acct.status)
            base.message = f"account is {acct.status.value}"
            return base
        grant = self._hold(acct, op.session, op.service, op.kind, op.reserve, op.min_units,
                           op.price, op.seq, op.ttl, match=op.match,
                           base=self._tier_base(op.tier_counter))
        base.outcome, base.granted = grant.outcome, grant.granted
        base.expires_at, base.message = grant.expires_at, grant.message
        return base

    def _advance(self, acct: AccountState, key: str, units: int) -> int:
        value = self.state.counters.get(key, 0) + units
        self.state.counters[key] = value
        self.writes.counters[key] = (acct.id, value)
        return value

    def _affordable(self, acct, kind, service, units, price, already, match=None) -> int:
        """How many of `units` the balance can pay without going below a floor."""
        from_buckets = 0
        if kind is not Kind.MONEY:
            from_buckets = min(units, sum(b.available
                                          for b in self._candidates(acct, kind, service, match)))
        rest = units - from_buckets
        if rest == 0:
            return units
        price = MONEY if kind is Kind.MONEY else price
        if price is None:
            return from_buckets
        money = sum(b.available for b in self._candidates(acct, Kind.MONEY, service, match))
        return from_buckets + min(rest, price.max_units(money, already + from_buckets))

    def _restore_reservation(self, acct: AccountState, res: ReservationState) -> None:
        for bucket_id, amount in res.holds:
            b = acct.buckets[bucket_id]
            b.reserved += amount
            b.dirty = True
        self.state.reservations.setdefault(res.session, {})[res.service] = res
        self.writes.deleted_reservations.discard((res.session, res.service))

    def _close_session(self, acct: AccountState, op_session: str,
                       record: Session | None) -> None:
        for (session, service), charge in self.state.charges.items():
            if session != op_session or charge.closed:
                continue  # another session, or its CDR is already written
            charge.closed = True
            self.writes.charges[(session, service)] = charge
            details = dict(record.attrs) if record else {}
            if charge.unpaid:
                details["unpaid_units"] = charge.unpaid
            self.writes.cdrs.append({
                "session": session, "account_id": acct.id,
                "subscriber_id": record.subscriber_id if record else None,
                "service": service, "kind": charge.kind.value,
                "started_at": record.started_at if record else self.now,
                "ended_at": self.now, "units": charge.units, "cost": charge.cost,
                "currency": acct.currency, "details": details})

    def _charge_state(self, acct, session, service, kind) -> ChargeState:
        key = (session, service)
        charge = self.state.charges.get(key)
        if charge is None:
            charge = self.state.charges[key] = ChargeState(session, service, acct.id, kind)
        return charge

    def _release(self, acct: AccountState, op: Release) -> Result:
        if op.service is None:
            services = list(self._session_reservations(op.session))
        else:
            services = [op.service]
        if op.expired_only:
            held = self._session_reservations(op.session)
            services = [s for s in services if s in held and held[s].expires_at <= self.now]
        released = sum(self._drop_reservation(op.session, s) for s in services)
        return Result(Outcome.OK, released=released)

    def _hold(self, acct, session, service, kind, units, min_units, price, seq, ttl,
              released=0, match=None, base=None) -> Result:
        holds: list[tuple[int, int]] = []
        remaining = units
        if base is None:
            charge = self.state.charges.get((session, service))
            already = charge.units if charge else 0
        else:
            already = base
        if kind is not Kind.MONEY:
            for b in self._candidates(acct, kind, service, match):
                if remaining == 0:
                    break
                take = min(b.available, remaining)
                if take > 0:
                    holds.append((b.id, take))
                    remaining -= take
        if remaining > 0:
            if kind is Kind.MONEY:
                price = MONEY
            if price is not None:
                money_buckets = self._candidates(acct, Kind.MONEY, service, match)
                total = sum(b.available for b in money_buckets)
                paid_before = already + (units - remaining)
                need = price.cost(remaining, paid_before)
                if need > total:
                    affordable = min(remaining, price.max_units(total, paid_before))
                    need = price.cost(affordable, paid_before)
                    remaining -= affordable
                else:
                    remaining = 0
                left = need
                for b in money_buckets:
                    if left == 0:
                        break
                    take = min(b.available, left)
                    if take > 0:
                        holds.append((b.id, take))
                        left -= take
        granted = units - remaining
        if granted == 0 or granted < min_units:
            return Result(Outcome.INSUFFICIENT, released=released,
                          message=f"balance cannot cover {min_units or 1} {kind.value}")
        for bucket_id, amount in holds:
            b = acct.buckets[bucket_id]
            b.reserved += amount
            b.dirty = True
        res = ReservationState(session, service, acct.id, kind, granted, holds, seq,
                               self.now + ttl * 1_000_000, self.now)
        self.state.reservations.setdefault(session, {})[service] = res
        self.writes.upserted_reservations[(session, service)] = res
        self.writes.deleted_reservations.discard((session, service))
        return Result(Outcome.OK, granted=granted, expires_at=res.expires_at, released=released)

    def _drop_reservation(self, session: str, service: str) -> int:
        by_service = self.state.reservations.get(session)
        res = by_service.pop(service, None) if by_service else None
        if res is None:
            return 0
        acct = self.state.accounts.get(res.account_id)
        for bucket_id, amount in res.holds:
            b = acct.buckets.get(bucket_id) if acct else None
            if b is not None:
                b.reserved = max(0, b.reserved - amount)
                b.dirty = True
        self.writes.upserted_reservations.pop((session, service), None)
        self.writes.deleted_reservations.add((session, service))
        return res.units

    def _session_reservations(self, session: str) -> dict[str, ReservationState]:
        return self.state.reservations.get(session, {})

    # -- debits -------------------------------------------------------------------------
    def _draw(self, acct, kind, service, used, price, session, op_key, already, match=None):
        """Debit `used` units after `already`; returns (charged, cost, unpaid, below, draws)."""
        draws: list[tuple[int, int]] = []
        remaining = used
        if kind is not Kind.MONEY:
            for b in self._candidates(acct, kind, service, match):
                if remaining == 0:
                    break
                take = min(b.available, remaining)
                if take > 0:
                    self._post(acct, b, -take, EntryType.DEBIT, session, op_key, "usage", None)
                    draws.append((b.id, take))
                    remaining -= take
        cost = unpaid = below = 0
        if remaining > 0:
            if kind is Kind.MONEY:
                price = MONEY
            if price is None:
                unpaid = remaining
            else:
                cost = price.cost(remaining, already + used - remaining)
                left = cost
                for b in self._candidates(acct, Kind.MONEY, service, match):
                    if left == 0:
                        break
                    take = min(b.available, left)
                    if take > 0:
                        self._post(acct, b, -take, EntryType.DEBIT, session, op_key, "usage", None)
                        draws.append((b.id, take))
                        left -= take
                if left > 0:
                    # Usage the network already delivered: the main bucket pays it even
                    # below the floor (invariant 4's one exception), and we say so.
                    main = acct.main_bucket()
                    headroom = max(0, main.balance - main.reserved - main.floor)
                    below = left - headroom if left > headroom else 0
                    self._post(acct, main, -left, EntryType.DEBIT, session, op_key, "usage", None)
                    draws.append((main.id, left))
        return used - unpaid, cost, unpaid, below, draws

    # -- credits and adjustments --------------------------------------------------------
    def _credit(self, acct: AccountState, op: Credit) -> Result:
        if acct.status is AccountStatus.CLOSED:
            return Result(Outcome.ACCOUNT_CLOSED, message="account is closed")
        if op.bucket_id is not None:
            b = acct.buckets.get(op.bucket_id)
            if b is None:
                return Result(Outcome.REJECTED, message=f"bucket {op.bucket_id} not in account")
        elif op.new_bucket:
            if op.amount > MAX_BALANCE:
                return _too_full(None)
            b = BucketState(
                id=self._next_tmp, kind=op.kind, service=op.service, balance=0, reserved=0,
                priority=op.priority if op.priority is not None else 10,
                valid_from=op.valid_from, valid_to=op.valid_to, main=False,
                created_at=self.now, name=op.name)
            self._next_tmp -= 1
            acct.buckets[b.id] = b
            self.writes.new_buckets.append((b.id, acct.id, b))
        else:
            b = acct.main_bucket()
        if b.balance + op.amount > MAX_BALANCE:
            return _too_full(b)
        self._post(acct, b, op.amount, EntryType.CREDIT, None, op.op_key, op.reason, op.actor)
        return Result(Outcome.OK, bucket_id=b.id, draws=((b.id, op.amount),))

    def _adjust(self, acct: AccountState, op: Adjust) -> Result:
        b = acct.buckets.get(op.bucket_id) if op.bucket_id is not None else acct.main_bucket()
        if b is None:
            return Result(Outcome.REJECTED, message=f"bucket {op.bucket_id} not in account")
        if op.amount < 0 and not op.force and b.balance + op.amount - b.reserved < b.floor:
            return Result(Outcome.REJECTED, bucket_id=b.id,
                          message="adjustment would take the bucket below its floor")
        if b.balance + op.amount > MAX_BALANCE:
            return _too_full(b)
        self._post(acct, b, op.amount, EntryType.ADJUST, None, op.op_key, op.reason, op.actor)
        return Result(Outcome.OK, bucket_id=b.id, draws=((b.id, op.amount),))

    # -- helpers ------------------------------------------------------------------------
    def _candidates(self, acct: AccountState, kind: Kind, service: str,
                    match: str | None = None) -> list[BucketState]:
        found = [b for b in acct.buckets.values()
                 if bucket_pays(b, kind, service, self.now, match)]
        if len(found) > 1:
            found.sort(key=BucketState.order_key)
        return found

    def _post(self, acct, b: BucketState, amount, entry_type, session, op_key, reason, actor):
        b.balance += amount
        b.dirty = True
        self.writes.ledger.append(LedgerRow(
            acct.id, b.id, b.kind, amount, b.balance, entry_type, session, op_key, reason,
            actor, self.now))


def _too_full(b: BucketState | None) -> Result:
    return Result(Outcome.REJECTED, bucket_id=b.id if b is not None else None,
                  message="the bucket would hold more than a balance may (2^62 micro-units "
                          "of money, about 4.6 million million in the currency, or 2^62 "
                          "octets, seconds or events)")


def bucket_pays(bucket, kind: Kind, service: str, now: int, match: str | None = None) -> bool:
    """Whether `bucket` (a BucketState or an ocs.model.Bucket) can pay usage of
    `kind` for `service` at `now`: same kind, within its validity (the main
    bucket never expires), and a filter that admits it. A bucket's filter is
    none (everything), a service key ("rg:10", "voice"), or a prefix ending in
    "*" tried against `match`, the usage as bucket filters see it (e.g.
    "voice:4179*" admits a call to 41791234567 whose match is "voice:41791234567";
    `match` defaults to the service key)."""
    if bucket.kind is not kind:
        return False
    wanted = bucket.service
    if wanted is not None and wanted != service:
        if not wanted.endswith("*") or not (match or service).startswith(wanted[:-1]):
            return False
    return bucket.main or ((bucket.valid_from is None or bucket.valid_from <= now)
                           and (bucket.valid_to is None or now < bucket.valid_to))


SESSION_TOUCH_US = 60_000_000


def _same_session(known: Session | None, merged: Session) -> bool:
    """Whether rewriting the session row can wait: nothing but the sequence and a
    clock less than a minute newer changed. Supervision measures silence in
    hours, so one write a minute per session is enough."""
    return (known is not None
            and merged.updated_at - known.updated_at < SESSION_TOUCH_US
            and _session_fields(merged) == _session_fields(known))


_session_fields = operator.attrgetter(*(f for f in Session.__dataclass_fields__
                                        if f not in ("updated_at", "last_seq")))


def _merge_session(known: Session | None, new: Session, opens: bool) -> Session:
    """The session record after a request: what the request says, on top of what
    was stored (start time, attributes, the highest sequence). A closed session
    stays closed unless the request opens it again (the id was reused)."""
    if known is None or (opens and known.status == "closed"):
        return new
    status = "closed" if known.status == "closed" else new.status
    return Session(id=new.id, account_id=new.account_id, subscriber_id=new.subscriber_id,
                   proto=new.proto, nas=new.nas, nas_session_id=new.nas_session_id,
                   framed_ip=new.framed_ip or known.framed_ip, status=status,
                   last_seq=max(new.last_seq, known.last_seq), started_at=known.started_at,
                   updated_at=new.updated_at,
                   ended_at=known.ended_at if known.status == "closed" else new.ended_at,
                   attrs={**known.attrs, **new.attrs} if new.attrs else known.attrs)


def remap_result(result: Result, ids: dict[int, int]) -> Result:
    if not ids:
        return result
    return replace(result, bucket_id=ids.get(result.bucket_id, result.bucket_id),
                   draws=tuple((ids.get(b, b), a) for b, a in result.draws))


def _status_outcome(status: AccountStatus) -> Outcome:
    return Outcome.ACCOUNT_CLOSED if status is AccountStatus.CLOSED else Outcome.ACCOUNT_SUSPENDED

"""The charging core: one protocol-neutral path from a request to a durable decision.

For each `ChargeRequest` the core finds the subscriber, prices each service
(`PriceResolver`), sizes the grants, and submits ONE composite balance
operation keyed by (session, sequence): the usage of every service is
committed, the next grants reserved, the session record written, events put in
the outbox and, at the end of a session, the rated CDRs written, all in one
group-committed transaction. The decision is built from what that transaction
did, so a repeated request (same session and sequence) gets the first
decision back and charges nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, Callable, Protocol

from ..balance import (Adjust, Commit, Composite, Credit, Outcome, Release, Reserve, Result,
                       bucket_pays)
from ..config import ChargingConfig
from ..errors import NotFound, OcsError
from ..logs import Throttled
from ..model import MAX_USAGE, Account, Kind, Plan, Session, Subscriber, now_us
from ..pricing import Price
from .types import (Authorization, ChargeDecision, ChargeRequest, Identity, RequestKind,
                    ResultCode, ServiceGrant, ServiceUsage)

log = logging.getLogger("ocs.charging")


class RatingFailed(OcsError):
    """The tariff cannot price this service (e.g. no rate for the destination)."""


class PriceResolver(Protocol):
    def price(self, *, plan: Plan | None, account: Account, usage: ServiceUsage,
              at: int) -> Price | None:
        """The price of `usage` for this account at instant `at`.

        None means the plan has no out-of-bundle price for it: only buckets
        can pay. Raises RatingFailed when the tariff cannot rate it at all.
        """


class LookupCache:
    """Lookups on the request path (subscribers by identity, accounts by id), kept
    until the store says accounts, subscribers or plans changed.

    A point read costs about as much as the rest of a request, and in production
    a session's next interim comes minutes later, so a cache that expired entries
    by age would miss nearly always. Instead the core asks the store's
    provisioning version at most every `[charging] cache_ttl` seconds and forgets every
    entry when it moved. Bounded in size: when full it starts over.
    """

    def __init__(self, max_size: int = 200_000):
        self.max_size = max_size
        self._data: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        return self._data.get(key)

    def put(self, key: Any, value: Any) -> None:
        if len(self._data) >= self.max_size:
            self._data.clear()  # crude but bounded; refills from the store
        self._data[key] = value

    def clear(self) -> None:
        self._data.clear()


_OUTCOME = {
    Outcome.OK: ResultCode.SUCCESS,
    Outcome.INSUFFICIENT: ResultCode.CREDIT_LIMIT_REACHED,
    Outcome.ACCOUNT_SUSPENDED: ResultCode.SERVICE_DENIED,
    Outcome.ACCOUNT_CLOSED: ResultCode.SERVICE_DENIED,
    Outcome.UNKNOWN_ACCOUNT: ResultCode.UNKNOWN_SUBSCRIBER,
    Outcome.REJECTED: ResultCode.RATING_FAILED,
    Outcome.UNKNOWN_SESSION: ResultCode.UNKNOWN_SESSION,
}


def _stored_outcomes(result: Result) -> Callable[[Any], Result | None]:
    """For a replayed request: the first answer's result for each part, by service, so
    a client repeating a request number with other services gets no answer it never
    had (None). Results stored without services are taken in order."""
    stored = list(result.parts)
    if stored and not any(r.service for r in stored):
        return _in_order(stored)
    by_service: dict[str, list[Result]] = {}
    for r in stored:
        by_service.setdefault(r.service, []).append(r)
    return lambda part: (by_service.get(getattr(part, "service", "")) or [None]).pop(0)


def _in_order(results) -> Callable[[Any], Result | None]:
    queue = iter(results)
    return lambda part: next(queue, None)


def bucket_match(usage: ServiceUsage) -> str | None:
    """What bucket filters see of a usage: "voice:41791234567" for a call, so a
    bucket filtered "voice:4179*" pays calls to that range (ocs.balance.bucket_pays)."""
    if not usage.destination:
        return None
    digits = "".join(ch for ch in usage.destination if ch.isdigit())
    if usage.destination.lstrip().startswith("00"):
        digits = digits[2:]
    return f"{usage.service}:{digits}"


def fair_usage_period(at_us: int, period: str) -> str:
    t = time.gmtime(at_us // 1_000_000)
    if period == "day":
        return time.strftime("%Y-%m-%d", t)
    if period == "week":
        return time.strftime("%G-W%V", t)
    return time.strftime("%Y-%m", t)


class ChargingCore:
    def __init__(self, store, prices: PriceResolver, config: ChargingConfig, *,
                 on_events: Callable[[], Any] | None = None, metrics=None):
        self.store = store
        self.metrics = metrics
        self.prices = prices
        self.config = config
        self._on_events = on_events
        self._plans: dict[int, Plan] = {}
        self._subscribers = LookupCache()
        self._accounts = LookupCache()
        self._version: int | None = None   # the store's provisioning version seen last
        self._next_check = 0.0             # time.monotonic() of the next look at it
        self._resets = Throttled(log)      # counters gone back: once a minute a session

    # ------------------------------------------------------------------ lookups
    async def reload(self) -> None:
        """Reload plans, forget cached subscribers (SIGHUP, catalog changed)."""
        self._plans = {p.id: p for p in await self.store.list_plans()}
        self.forget()

    async def _check_changes(self) -> None:
        """Forget cached lookups when accounts, subscribers or plans changed anywhere
        (checked at most every `cache_ttl` seconds; 0: the caches are off)."""
        ttl = self.config.cache_ttl
        if ttl <= 0:
            self.forget()
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + ttl
        version = await self.store.provisioning_version()
        if version != self._version:
            if self._version is not None:
                self._plans = {}  # refetched one by one as requests name them
            self._version = version
            self.forget()

    async def plan(self, plan_id: int | None) -> Plan | None:
        if plan_id is None:
            return None
        plan = self._plans.get(plan_id)
        if plan is None:
            plan = self._plans[plan_id] = await self.store.get_plan(plan_id)
        return plan

    async def subscriber(self, identity: Identity) -> Subscriber | None:
        """The subscriber with any of these identities (cached; see LookupCache)."""
        await self._check_changes()
        for key, value in identity.lookups():
            found = self._subscribers.get((key, value))
            if found is not None:
                return found
            try:
                sub = await self.store.find_subscriber(**{key: value})
            except NotFound:
                continue
            self._subscribers.put((key, value), sub)
            return sub
        return None

    async def account(self, account_id: int) -> Account:
        """The account (cached; see LookupCache). Its status is enforced again inside
        every balance transaction, so a suspension stops new grants at once."""
        await self._check_changes()
        found = self._accounts.get(account_id)
        if found is None:
            found = await self.store.get_account(account_id)
            self._accounts.put(account_id, found)
        return found

    def forget(self) -> None:
        """Drop cached subscribers and accounts (after changes through the API)."""
        self._subscribers.clear()
        self._accounts.clear()

    # ------------------------------------------------------------------ authorisation
    async def authorize(self, identity: Identity, usage: ServiceUsage | None = None, *,
                        at: int | None = None, count_sessions: bool = False
                        ) -> Authorization:
        """May this subscriber start a session, and how much of `usage` can it pay now?

        Reserves nothing (RADIUS Access-Request: the reservation comes with
        Accounting-Start). `max_units` sizes Session-Timeout or a volume quota:
        what the matching buckets hold plus what the available money buys at
        the service's price (inverse rating), or None when no usage was named.
        `count_sessions`: count the subscriber's active sessions (up to its
        max_sessions) in the same read as the balance (`active_sessions`).
        """
        sub = await self.subscriber(identity)
        if sub is None:
            return Authorization(ResultCode.UNKNOWN_SUBSCRIBER,
                                 message=f"no subscriber {identity}")
        account = await self.account(sub.account_id)
        plan = await self.plan(sub.plan_id)
        found = dict(subscriber=sub, account=account, plan=plan)
        if account.status.value != "active":
            return Authorization(ResultCode.SERVICE_DENIED, **found,
                                 message=f"account is {account.status.value}")
        if usage is None:
            return Authorization(ResultCode.SUCCESS, **found)
        at = at if at is not None else now_us()
        try:
            price = self.prices.price(plan=plan, account=account, usage=usage, at=at)
        except RatingFailed as exc:
            return Authorization(ResultCode.RATING_FAILED, **found, message=str(exc))
        sessions_of = ((sub.id, sub.max_sessions) if count_sessions and sub.max_sessions > 0
                       else None)
        position = await self.store.balance(account.id, account=account,
                                            sessions_of=sessions_of)
        found["active_sessions"] = position.get("active_sessions")
        match = bucket_match(usage)
        from_buckets = sum(max(0, b.balance - b.reserved) for b in position["buckets"]
                           if not b.main and bucket_pays(b, usage.kind, usage.service, at,
                                                         match))
        money = max(0, position["available"])
        if usage.kind is Kind.MONEY:
            more = money
        else:
            more = price.max_units(money, from_buckets) if price is not None else 0
        total = from_buckets + more
        if total <= 0:
            return Authorization(ResultCode.CREDIT_LIMIT_REACHED, **found, max_units=0,
                                 message="no balance for this service")
        return Authorization(ResultCode.SUCCESS, **found, max_units=total)

    async def quote(self, identity: Identity, usage: ServiceUsage, *,
                    at: int | None = None) -> ChargeDecision:
        """What `usage.requested` units (else `used`, else one unit) would cost this
        subscriber now at its plan's price: a price enquiry. Nothing is reserved or
        charged and no bucket is counted; the one grant carries the units priced
        and `cost` their price, in the account's currency."""
        sub = await self.subscriber(identity)
        if sub is None:
            return ChargeDecision(ResultCode.UNKNOWN_SUBSCRIBER,
                                  message=f"no subscriber {identity}")
        account = await self.account(sub.account_id)
        found = dict(account_id=account.id, subscriber_id=sub.id, currency=account.currency)
        if account.status.value != "active":
            return ChargeDecision(ResultCode.SERVICE_DENIED, **found,
                                  message=f"account is {account.status.value}")
        units = usage.requested or usage.used or 1
        if usage.kind is Kind.MONEY:
            cost = units
        else:
            plan = await self.plan(sub.plan_id)
            try:
                price = self.prices.price(plan=plan, account=account, usage=usage,
                                          at=at if at is not None else now_us())
            except RatingFailed as exc:
                return ChargeDecision(ResultCode.RATING_FAILED, **found, message=str(exc))
            if price is None:
                return ChargeDecision(ResultCode.RATING_FAILED, **found,
                                      message=f"{usage.service} has no price outside bundles")
            cost = price.cost(units)
        grant = ServiceGrant(usage.service, usage.kind, ResultCode.SUCCESS, granted=units,
                             cost=cost)
        return ChargeDecision(ResultCode.SUCCESS, (grant,), cost=cost, **found)

    # ------------------------------------------------------------------ charging
    async def charge(self, req: ChargeRequest) -> ChargeDecision:
        sub = await self.subscriber(req.identity)
        if sub is None:
            log.info("unknown subscriber %s", req.identity, extra={"session": req.session_id})
            if req.keep_unmatched:
                await self.store.record_unmatched(
                    session=req.session_id, proto=req.proto, nas=req.nas,
                    nas_session_id=req.nas_session_id, identity=str(req.identity),
                    closed=req.kind is RequestKind.TERMINATE,
                    units={u.service: u.used for u in req.services}, attrs=req.attrs,
                    seq=req.seq, at=req.timestamp)
            return ChargeDecision(ResultCode.UNKNOWN_SUBSCRIBER,
                                  message=f"no subscriber {req.identity}")
        account = await self.account(sub.account_id)
        plan = await self.plan(sub.plan_id)

        parts, failed, rating = self._parts(req, account, plan, sub)
        # A session's end, or a one-off event, writes its rated CDR(s).
        closing = req.kind in (RequestKind.TERMINATE, RequestKind.EVENT)
        if req.kind is RequestKind.TERMINATE:
            parts.append(Release(account.id, req.session_id))
        # The stored session (start, attributes, sequence) is merged with this
        # request's view inside the transaction: no read here on the hot path.
        result = await self.store.apply(Composite(
            account.id, req.session_id, req.seq, tuple(parts),
            record=self._record(req, sub, closing, rating), close=closing,
            require_session=req.require_session and req.kind in (RequestKind.UPDATE,
                                                                 RequestKind.TERMINATE),
            opens=req.kind is RequestKind.INITIAL,
            restarts=req.cumulative and req.kind is RequestKind.INITIAL,
            keep_result=not (req.cumulative and req.kind is RequestKind.UPDATE)))
        if result.events and self._on_events is not None:
            self._on_events()  # e.g. a late update of an ended session crossing a limit
        if result.outcome is Outcome.UNKNOWN_SESSION:
            return ChargeDecision(ResultCode.UNKNOWN_SESSION, account_id=account.id,
                                  subscriber_id=sub.id, replayed=result.replayed,
                                  message=f"unknown session {req.session_id}")
        return self._decide(req, account, plan, sub, parts, result, failed)

    def _parts(self, req: ChargeRequest, account: Account, plan: Plan | None,
               sub: Subscriber) -> tuple[list, dict[str, ResultCode], dict[str, Any]]:
        """The balance operations of a request, the services that failed rating, and
        how each service is priced (kept on the session and its CDR). There is one
        operation per service not in `failed`, in the order of `req.services`."""
        cfg = self.config
        ttl = cfg.validity_time + cfg.reservation_grace
        parts: list = []
        failed: dict[str, ResultCode] = {}
        rating: dict[str, Any] = {}
        for usage in req.services:
            if not 0 <= usage.used <= MAX_USAGE:  # a protocol layer should have refused it
                log.warning("%s: %d units used is out of range; not charged", usage.service,
                            usage.used, extra={"session": req.session_id, "account": account.id})
                failed[usage.service] = ResultCode.RATING_FAILED
                continue
            try:
                price = self.prices.price(plan=plan, account=account, usage=usage,
                                          at=req.timestamp)
            except RatingFailed as exc:
                log.warning("rating failed for %s: %s", usage.service, exc,
                            extra={"session": req.session_id, "account": account.id})
                failed[usage.service] = ResultCode.RATING_FAILED
                continue
            kind = usage.kind
            want = usage.requested if usage.requested is not None else cfg.default_quota.of(
                kind.value)
            want = min(want, cfg.max_quota.of(kind.value))
            counter = threshold = tier_counter = None
            fair_use = kind is Kind.OCTETS and plan is not None and plan.fair_usage is not None
            period_tiers = getattr(price, "tier_scope", "session") == "period"
            if fair_use or period_tiers:  # only then is the billing period needed
                period = fair_usage_period(req.timestamp, cfg.fair_usage_period)
                if fair_use:
                    counter = f"fup:{sub.id}:{period}"
                    threshold = plan.fair_usage.threshold_octets
                if period_tiers:
                    tier_counter = f"tier:{sub.id}:{usage.service}:{period}"
            common = dict(kind=kind, service=usage.service, seq=req.seq, price=price,
                          match=bucket_match(usage), tier_counter=tier_counter)
            if hasattr(price, "describe"):  # how it was priced, kept on the CDR
                rating[usage.service] = price.describe()
            if req.kind is RequestKind.INITIAL and usage.used == 0:
                parts.append(Reserve(account.id, req.session_id, want, ttl=ttl, **common))
            elif req.kind in (RequestKind.INITIAL, RequestKind.UPDATE):
                parts.append(Commit(account.id, req.session_id, usage.used, reserve=want,
                                    ttl=ttl, cumulative=req.cumulative, counter=counter,
                                    counter_threshold=threshold, wraps=usage.wraps, **common))
            elif req.kind is RequestKind.TERMINATE:
                parts.append(Commit(account.id, req.session_id, usage.used, final=True,
                                    cumulative=req.cumulative, counter=counter,
                                    counter_threshold=threshold, wraps=usage.wraps, **common))
            elif req.kind is RequestKind.EVENT:
                units = usage.used or (usage.requested or 1)
                parts.append(Commit(account.id, req.session_id, units, final=True,
                                    strict=True, **common))
            else:  # REFUND: give back what the units cost
                units = usage.used or (usage.requested or 0)
                amount = price.cost(units) if price is not None else 0
                if amount > 0:
                    parts.append(Credit(account.id, amount, reason=f"refund {usage.service}",
                                        ref=f"refund|{req.session_id}|{usage.service}|{req.seq}"))
                else:
                    failed[usage.service] = ResultCode.RATING_FAILED
        return parts, failed, rating

    def _record(self, req: ChargeRequest, sub: Subscriber, closing: bool,
                rating: dict[str, Any]) -> Session:
        now = now_us()
        one_off = req.kind in (RequestKind.EVENT, RequestKind.REFUND)
        attrs = dict(req.attrs)
        for service, how in rating.items():  # one key per service: merges across requests
            attrs[f"rating:{service}"] = how
        return Session(
            id=req.session_id, account_id=sub.account_id, subscriber_id=sub.id,
            proto=req.proto, nas=req.nas, nas_session_id=req.nas_session_id,
            framed_ip=req.framed_ip, status="closed" if closing or one_off else "active",
            last_seq=req.seq, started_at=req.timestamp, updated_at=now,
            ended_at=now if closing or one_off else None, attrs=attrs)

    def _decide(self, req, account, plan, sub, parts, result: Result,
                failed: dict[str, ResultCode]) -> ChargeDecision:
        if result.outcome is Outcome.UNKNOWN_ACCOUNT:
            return ChargeDecision(ResultCode.UNKNOWN_SUBSCRIBER, message=result.message)
        cfg = self.config
        final_unit = plan.final_unit if plan is not None else None
        grants: list[ServiceGrant] = []
        outcome_of = _stored_outcomes(result) if result.replayed else _in_order(result.parts)
        remaining = iter(parts)  # one part per service that did not fail, in order
        for usage in req.services:
            if usage.service in failed:
                grants.append(ServiceGrant(usage.service, usage.kind, failed[usage.service]))
                continue
            part = next(remaining)
            r = outcome_of(part)
            if r is None:
                log.warning("request %d repeated with service %s it did not have: not charged",
                            req.seq, usage.service, extra={"session": req.session_id})
                grants.append(ServiceGrant(usage.service, usage.kind, ResultCode.RATING_FAILED))
                continue
            code = _OUTCOME[r.outcome]
            wanted = getattr(part, "reserve", None) or getattr(part, "units", 0)
            if isinstance(part, Commit) and part.final:
                wanted = 0
            last = code is ResultCode.CREDIT_LIMIT_REACHED or (
                code is ResultCode.SUCCESS and 0 < r.granted < wanted)
            grants.append(ServiceGrant(
                service=usage.service, kind=usage.kind, result=code, granted=r.granted,
                validity_time=cfg.validity_time if r.granted else 0,
                threshold=(r.granted * cfg.quota_threshold_percent // 100
                           if r.granted and cfg.quota_threshold_percent else None),
                final_unit=final_unit if last and final_unit is not None else None,
                charged=r.charged, cost=r.cost, session_units=r.session_units,
                session_cost=r.session_cost, unpaid=r.unpaid))
            if r.unpaid and not result.replayed:
                self._unpaid(req, usage, r.unpaid, account.id)
            if r.behind and not result.replayed:
                self._counter_reset(req, usage, r.behind, account.id)
        codes = {g.result for g in grants}
        if not grants or ResultCode.SUCCESS in codes:
            overall = ResultCode.SUCCESS
        elif len(codes) == 1:
            overall = codes.pop()
        else:  # a mix of failures: the most telling one
            overall = next(c for c in (ResultCode.SERVICE_DENIED,
                                       ResultCode.CREDIT_LIMIT_REACHED,
                                       ResultCode.RATING_FAILED) if c in codes)
        events = result.events
        return ChargeDecision(
            overall, tuple(grants), cost=sum(g.cost for g in grants),
            currency=account.currency, balance=result.balance, available=result.available,
            account_id=account.id, subscriber_id=sub.id, events=events,
            replayed=result.replayed)

    def _unpaid(self, req: ChargeRequest, usage: ServiceUsage, units: int,
                account_id: int) -> None:
        """Usage nothing could pay: kept on the session (its CDR's `unpaid_units`),
        counted, and said once per report."""
        if self.metrics is not None:
            self.metrics.unpaid_units.labels(kind=usage.kind.value).inc(units)
        log.info("%d %s of %s reported beyond what the balance could pay: not charged",
                 units, usage.kind.value, usage.service,
                 extra={"session": req.session_id, "account": account_id})

    def _counter_reset(self, req: ChargeRequest, usage: ServiceUsage, behind: int,
                       account_id: int) -> None:
        """A newer report whose cumulative counters are below what the session already
        reported, by more than a counter wrap explains: the NAS reset them mid-session.
        Nothing is charged until they pass the old total again, so the usage in between
        goes uncharged. Counted, and said once a minute per session."""
        if self.metrics is not None:
            self.metrics.counter_resets.labels(proto=req.proto).inc()
        self._resets.warning(
            req.session_id, "session %s reported %d %s of %s below its total so far: its "
            "counters went back (reset by the NAS?); nothing is charged until they pass "
            "the total again", req.session_id, behind, usage.kind.value, usage.service,
            extra={"session": req.session_id, "account": account_id, "nas": req.nas})

    # ------------------------------------------------------------------ supervision
    SUPERVISION_PAGE = 500     # idle sessions closed together (one group commit)
    SUPERVISION_PAGES = 40     # at most this many pages a run; the next run goes on

    async def supervise(self, idle: dict[str, int] | None = None) -> dict[str, int]:
        """Release expired reservations and close sessions silent past idle_timeout,
        or past `idle[proto]` seconds for the protocols it names (RADIUS: a number of
        missed interims).

        Idle sessions are closed a page at a time, each page concurrently, so a
        backlog (a NAS that vanished with thousands of sessions) is cleared in one
        run rather than 500 per sweep. A session that cannot be closed is logged
        and left for the next run."""
        released = await self.store.release_expired()
        now, idle = now_us(), idle or {}
        closed = await self._close_idle(now - self.config.idle_timeout * 1_000_000,
                                        other_than=tuple(idle))
        for proto, seconds in idle.items():
            closed += await self._close_idle(now - seconds * 1_000_000, proto=proto)
        return {"released_units": released, "closed_sessions": closed}

    async def _close_idle(self, cutoff: int, **which) -> int:
        closed = 0
        for _ in range(self.SUPERVISION_PAGES):
            page = await self.store.stale_sessions(cutoff, limit=self.SUPERVISION_PAGE,
                                                   **which)
            outcomes = await asyncio.gather(
                *(self.close_session(x, "supervision") for x in page), return_exceptions=True)
            failed = 0
            for session, outcome in zip(page, outcomes):
                if isinstance(outcome, BaseException):
                    failed += 1
                    log.error("idle session not closed: %s", outcome,
                              extra={"session": session.id, "account": session.account_id})
                else:
                    closed += 1
                    log.info("closed idle session", extra={"session": session.id,
                                                           "account": session.account_id})
            if failed or len(page) < self.SUPERVISION_PAGE:
                break
        return closed

    async def close_session(self, session: Session, reason: str) -> None:
        """Close a session nobody will report on again: release what it holds,
        charge nothing more, mark its record closed (`closed_by`: reason)."""
        at = now_us()
        record = replace(session, status="closed", updated_at=at, ended_at=at,
                         attrs={**session.attrs, "closed_by": reason})
        # A negative sequence no protocol uses: the close never collides with
        # (or replays) a request of the session itself.
        await self.store.apply(Composite(
            session.account_id, session.id, -at,
            (Release(session.account_id, session.id),), record=record, close=True))


__all__ = ["ChargingCore", "PriceResolver", "RatingFailed", "fair_usage_period", "Adjust"]

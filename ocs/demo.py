"""The demo dataset: one of each kind of customer, for the quickstart and examples.

`seed(store)` creates what is missing and leaves alone what exists, so it is
safe to run any number of times: a second run changes nothing (it never
"refills" a demo balance that was spent). Everything is in EUR.

================  ============================================  ==========================
What              Identity                                      Account
================  ============================================  ==========================
NAS               ``127.0.0.1`` (``localhost-nas``),            -
                  secret ``testing123``, vendor generic
prepaid           username ``demo``, password ``demo``          ``demo``: 10.00, plan
                                                                ``demo-data``
postpaid          username ``demo-post``, password ``demo``     ``demo-post``: credit limit
                                                                100.00, plan ``demo-data``
VoIP              SIP user ``1001``, password ``demo``          ``demo-voip``: 5.00, plan
                                                                ``demo-voice``
mobile data       MSISDN ``41780000001``,                       ``demo-mobile``: 5.00, plan
                  IMSI ``228010000000001``                      ``demo-data``
mobile, empty     MSISDN ``41780000002``,                       ``demo-empty``: 0.00, no
                  IMSI ``228010000000002``                      plan: every request refused
API token         ``demo-admin``, role admin                    secret shown once
================  ============================================  ==========================

Plans: ``demo-data`` grants 10 GiB valid 30 days, speed 20000/5000 kbps, and
throttles to 1024/512 kbps after 8 GiB (fair usage); ``demo-voice`` grants
100 minutes valid 30 days. Neither has a recurring fee, so the demo balances
stay what this table says until the subscribers use them.

The empty subscriber has neither money (prepaid, floor 0) nor a plan, so
nothing can be reserved for it: it is the example of a refusal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .errors import Conflict, NotFound
from .model import MICRO
from .money import format_money

log = logging.getLogger("ocs.demo")

GIB = 2**30
CURRENCY = "EUR"
NAS_NAME = "localhost-nas"
NAS_ADDRESS = "127.0.0.1"
NAS_SECRET = "testing123"
TOKEN_NAME = "demo-admin"
PASSWORD = "demo"

PLANS = {
    "demo-data": dict(
        allowances=[{"kind": "octets", "units": 10 * GIB, "validity_days": 30}],
        speed_profile={"down_kbps": 20000, "up_kbps": 5000, "name": "20M"},
        fair_usage={"threshold_octets": 8 * GIB,
                    "throttle_profile": {"down_kbps": 1024, "up_kbps": 512, "name": "fup-1M"}},
        description="Demo data plan: 10 GiB for 30 days at 20/5 Mbit/s, 1 Mbit/s after 8 GiB"),
    "demo-voice": dict(
        allowances=[{"kind": "seconds", "units": 100 * 60, "validity_days": 30}],
        description="Demo voice plan: 100 minutes for 30 days"),
}


@dataclass(frozen=True)
class _Spec:
    label: str
    account: str
    billing: str
    opening: int        # micro-units, only when the account is created
    credit_limit: int
    plan: str | None
    identity: dict[str, str]
    password: str | None


SUBSCRIBERS = (
    _Spec("prepaid", "demo", "prepaid", 10 * MICRO, 0, "demo-data",
          {"username": "demo"}, PASSWORD),
    _Spec("postpaid", "demo-post", "postpaid", 0, 100 * MICRO, "demo-data",
          {"username": "demo-post"}, PASSWORD),
    _Spec("voip", "demo-voip", "prepaid", 5 * MICRO, 0, "demo-voice",
          {"sip_user": "1001"}, PASSWORD),
    _Spec("mobile data", "demo-mobile", "prepaid", 5 * MICRO, 0, "demo-data",
          {"msisdn": "41780000001", "imsi": "228010000000001"}, None),
    _Spec("mobile, empty", "demo-empty", "prepaid", 0, 0, None,
          {"msisdn": "41780000002", "imsi": "228010000000002"}, None),
)


@dataclass(frozen=True)
class DemoSubscriber:
    label: str
    identity: dict[str, str]
    password: str | None
    account: str
    account_id: int
    billing: str
    balance: str       # money, formatted ("10.00")
    credit_limit: str
    plan: str | None


@dataclass
class DemoInfo:
    """What the demo dataset holds now, and what this run created."""

    nas: dict[str, str]
    plans: list[str]
    subscribers: list[DemoSubscriber]
    token_name: str
    token: str | None = None   # the secret, only when created by this run
    created: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable summary, as `ocsctl demo` prints it."""
        out = []
        if self.created:
            out.append("Created: " + ", ".join(self.created))
        else:
            out.append("Demo data already present: nothing changed.")
        out.append(f"NAS {self.nas['address']} ({self.nas['name']}), secret "
                   f"{self.nas['secret']}")
        out.append("Plans: " + ", ".join(self.plans))
        for s in self.subscribers:
            who = " / ".join(f"{k} {v}" for k, v in s.identity.items())
            if s.password:
                who += f", password {s.password}"
            money = f"balance {s.balance} {CURRENCY}"
            if s.billing == "postpaid":
                money += f", credit limit {s.credit_limit}"
            out.append(f"  {s.label:<14} {who}; account {s.account} ({s.billing}), {money}, "
                       f"plan {s.plan or '-'}")
        if self.token:
            out.append(f"API token {self.token_name} (admin): {self.token}")
            out.append("  (shown only now; it cannot be read back later)")
        else:
            out.append(f"API token {self.token_name} exists (its secret was shown when it was "
                       "created); make another with:\n"
                       "  ocsctl token add NAME --role admin --direct --save")
        return "\n".join(out)


async def _ensure_nas(store, created: list[str]):
    for nas in await store.list_nas():
        if nas.name == NAS_NAME or nas.address == NAS_ADDRESS:
            return nas
    try:
        nas = await store.create_nas(name=NAS_NAME, address=NAS_ADDRESS, secret=NAS_SECRET,
                                     vendor="generic", require_message_authenticator="auto")
    except Conflict:  # a concurrent seed won the race
        return next(n for n in await store.list_nas() if n.name == NAS_NAME)
    created.append(f"NAS {NAS_ADDRESS}")
    return nas


async def _ensure_plan(store, name: str, created: list[str]):
    try:
        return await store.find_plan(name)
    except NotFound:
        pass
    plan = await store.create_plan(name=name, currency=CURRENCY, **PLANS[name])
    created.append(f"plan {name}")
    return plan


async def _ensure_account(store, spec: _Spec, created: list[str]):
    try:
        return await store.find_account(spec.account)
    except NotFound:
        pass
    account = await store.create_account(
        name=spec.account, currency=CURRENCY, billing=spec.billing,
        credit_limit=spec.credit_limit, opening_balance=spec.opening, actor="demo")
    created.append(f"account {spec.account}")
    return account


async def _ensure_subscriber(store, spec: _Spec, account, plans, created: list[str]):
    key, value = next(iter(spec.identity.items()))
    try:
        return await store.find_subscriber(**{key: value})
    except NotFound:
        pass
    sub = await store.create_subscriber(
        account_id=account.id, plan_id=plans[spec.plan].id if spec.plan else None,
        password=spec.password, actor="demo", **spec.identity)
    created.append(f"subscriber {value}")
    return sub


async def seed(store) -> DemoInfo:
    """Create the demo dataset where missing; return what it is now."""
    created: list[str] = []
    nas = await _ensure_nas(store, created)
    plans = {name: await _ensure_plan(store, name, created) for name in PLANS}
    plan_names = {p.id: p.name for p in plans.values()}
    subscribers = []
    for spec in SUBSCRIBERS:
        account = await _ensure_account(store, spec, created)
        sub = await _ensure_subscriber(store, spec, account, plans, created)
        account = await store.get_account(sub.account_id)
        balance = await store.balance(account.id)
        if sub.plan_id is not None and sub.plan_id not in plan_names:  # changed by hand
            plan_names[sub.plan_id] = (await store.get_plan(sub.plan_id)).name
        subscribers.append(DemoSubscriber(
            label=spec.label, identity=dict(spec.identity), password=spec.password,
            account=account.name, account_id=account.id, billing=account.billing.value,
            balance=format_money(balance["balance"], account.currency),
            credit_limit=format_money(account.credit_limit, account.currency),
            plan=plan_names.get(sub.plan_id)))
    token = None
    if not any(t.name == TOKEN_NAME for t in await store.list_tokens()):
        _, token = await store.create_token(TOKEN_NAME, "admin")
        created.append(f"API token {TOKEN_NAME}")
    if created:
        log.info("demo data: created %s", ", ".join(created))
    return DemoInfo(nas={"name": nas.name, "address": nas.address, "secret": nas.secret},
                    plans=list(PLANS), subscribers=subscribers, token_name=TOKEN_NAME,
                    token=token, created=created)


__all__ = ["seed", "DemoInfo", "DemoSubscriber", "TOKEN_NAME"]

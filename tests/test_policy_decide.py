"""The decision step: which charging event makes which plan ask for what, on which
back-end of the session's equipment; and what is never done twice or undone late."""

from __future__ import annotations

import pytest

from ocs.model import (EnforcementPolicy, FairUsage, FinalUnit, Nas, PeerKind, Plan, Session,
                       SpeedProfile)
from policy import decide
from policy.decide import Decision, Skip, State
from policy.model import Target

NOW = 1_800_000_000_000_000


def plan(**policy) -> Plan:
    return Plan(id=1, name="p", currency="EUR", recurring_fee=0, period="month", allowances=(),
                tariff=None, speed_profile=SpeedProfile(20000, 5000, "20M"),
                fair_usage=FairUsage(8 * 2**30, SpeedProfile(1024, 512, "fup")),
                description="", created_at=0, updated_at=0,
                final_unit=FinalUnit("redirect", "http://pay.example/", "garden"),
                policy=EnforcementPolicy(**policy))


def session(proto="radius", nas="bras") -> Session:
    return Session(id="s1", account_id=7, subscriber_id=3, proto=proto, nas=nas,
                   nas_session_id="a1", framed_ip="10.0.0.1", status="active", last_seq=0,
                   started_at=0, updated_at=0, ended_at=None, attrs={})


def nas(kind=PeerKind.NAS, vendor="mikrotik", control=None) -> Nas:
    return Nas(id=1, name="bras", kind=kind, address="192.0.2.1", secret="x" * 20,
               vendor=vendor, coa_port=3799, require_message_authenticator="yes",
               control=control or {}, created_at=0, updated_at=0)


def event(etype: str, at: int = NOW, **extra) -> dict:
    return {"id": f"e-{etype}-{at}", "type": etype, "account_id": 7, "session": "s1",
            "at": at, **extra}


def run(ev, *, p=None, state=None, n=None, s=None):
    s = s or session()
    return decide.decide(ev, s, p or plan(), state, n if n is not None else nas(),
                         Target(s.id, s.proto, s.nas))


def state(action: str, reason: str = "exhausted", generation: int = 1, at: int = NOW - 10,
          **params) -> State:
    return State("s1", 7, action, reason, generation, at, params)


@pytest.mark.parametrize("etype, policy, action", [
    ("exhausted", {}, "disconnect"),
    ("exhausted", {"on_exhausted": "throttle"}, "throttle"),
    ("exhausted", {"on_exhausted": "redirect"}, "redirect"),
    ("fair_usage", {}, "throttle"),
    ("suspended_seen", {}, "disconnect"),
    ("account_suspended", {"on_suspended": "redirect"}, "redirect"),
    ("account_closed", {"on_suspended": "none"}, "disconnect"),
])
def test_each_event_reads_its_plan_setting(etype, policy, action):
    d = run(event(etype), p=plan(**policy))
    assert isinstance(d, Decision) and d.action == action and d.generation == 1
    assert d.backends == (("coa", action),) and d.reason == etype


def test_throttle_profile_defaults_to_fair_usage_and_redirect_to_final_unit():
    d = run(event("exhausted"), p=plan(on_exhausted="throttle"))
    assert d.params["profile"] == {"down_kbps": 1024, "up_kbps": 512, "name": "fup"}
    d = run(event("exhausted"), p=plan(on_exhausted="throttle",
                                       throttle_profile=SpeedProfile(256, 128)))
    assert d.params["profile"] == {"down_kbps": 256, "up_kbps": 128, "name": None}
    d = run(event("exhausted"), p=plan(on_exhausted="redirect"))
    assert (d.params["redirect_url"], d.params["filter_id"]) == ("http://pay.example/",
                                                                 "garden")


def test_nothing_for_notices_none_and_unknown_events():
    assert run(event("low_balance")) == Skip("s1", "none")
    assert run(event("exhausted"), p=plan(on_exhausted="none")) == Skip("s1", "none")
    assert run(event("mystery")) == Skip("s1", "none")
    assert decide.affected(event("low_balance")) == "none"
    assert decide.affected(event("fair_usage")) == "subscriber"
    assert decide.affected(event("topped_up")) == "account"
    assert decide.affected({"type": "exhausted", "session": None}) == "none"


def test_the_same_state_is_not_asked_for_twice_and_late_events_are_ignored():
    p = plan(on_exhausted="throttle")
    first = run(event("exhausted"), p=p)
    now = state("throttle", profile=first.params["profile"])
    assert run(event("exhausted", at=NOW + 5), p=p, state=now) == Skip("s1", "unchanged")
    # Another profile is a new decision.
    other = state("throttle", profile={"down_kbps": 1, "up_kbps": 1, "name": None})
    assert run(event("exhausted", at=NOW + 5), p=p, state=other).generation == 2
    # An event older than the decision in force cannot undo it.
    newer = state("restore", "topped_up", generation=4, at=NOW + 100)
    assert run(event("exhausted", at=NOW), p=p, state=newer) == Skip("s1", "stale")


def test_restores_lift_only_what_their_counterpart_imposed():
    throttled = state("throttle", "exhausted")
    d = run(event("topped_up", available=5_000_000), state=throttled)
    assert d.action == "restore" and d.params["profile"]["down_kbps"] == 20000
    assert run(event("topped_up", available=0), state=throttled) == Skip("s1", "not_enforced")
    assert run(event("topped_up", available=1), state=None) == Skip("s1", "not_enforced")
    fup = state("throttle", "fair_usage")
    assert run(event("topped_up", available=1), state=fup) == Skip("s1", "not_enforced")
    suspended = state("redirect", "account_suspended")
    assert run(event("account_restored"), state=suspended).action == "restore"
    assert run(event("account_restored"), state=throttled) == Skip("s1", "not_enforced")


def test_back_ends_follow_the_equipment():
    diameter = run(event("exhausted"), s=session(proto="diameter"), n=nas(PeerKind.DIAMETER))
    assert diameter.backends == (("diameter", "disconnect"),)
    fs = nas(PeerKind.SOFTSWITCH, "freeswitch", {"freeswitch": {"password": "x"}})
    assert run(event("exhausted"), n=fs).backends == (("freeswitch", "disconnect"),)
    # A softswitch cannot throttle: a disconnect instead, when the plan allows.
    assert run(event("exhausted"), p=plan(on_exhausted="throttle"), n=fs).backends == (
        ("freeswitch", "disconnect"),)
    assert run(event("exhausted"), p=plan(on_exhausted="throttle", fallback_disconnect=False),
               n=fs) == Skip("s1", "unsupported")
    both = nas(control={"enforce": ["coa", "tc"]})
    assert run(event("exhausted"), p=plan(on_exhausted="throttle"), n=both).backends == (
        ("coa", "throttle"), ("tc", "throttle"))
    snmp = nas(control={"enforce": ["snmp"], "snmp": {"templates": {"disconnect": []}}})
    assert run(event("exhausted"), n=snmp).backends == (("snmp", "disconnect"),)
    assert decide.decide(event("exhausted"), session(nas="gone"), plan(), None, None,
                         Target("s1", "radius", "gone")) == Skip("s1", "no_route")


def test_throttle_without_any_profile_disconnects_or_skips():
    from dataclasses import replace
    bare = Plan(id=2, name="bare", currency="EUR", recurring_fee=0, period="month",
                allowances=(), tariff=None, speed_profile=None, fair_usage=None,
                description="", created_at=0, updated_at=0,
                policy=EnforcementPolicy(on_exhausted="throttle"))
    assert run(event("exhausted"), p=bare).action == "disconnect"
    strict = replace(bare, policy=EnforcementPolicy(on_exhausted="throttle",
                                                    fallback_disconnect=False))
    assert run(event("exhausted"), p=strict) == Skip("s1", "no_profile")


def test_operator_requests_are_always_new_decisions():
    now = state("disconnect", "operator", generation=3)
    s = session()
    d = decide.decide_operator("disconnect", s, plan(), now, nas(),
                               Target("s1", "radius", "bras"), NOW)
    assert d.generation == 4 and d.reason == "operator"
    d = decide.decide_operator("throttle", s, plan(), None, nas(),
                               Target("s1", "radius", "bras"), NOW,
                               profile={"down_kbps": 1000, "up_kbps": 500, "name": None})
    assert d.params["profile"]["down_kbps"] == 1000


def test_plan_change_gives_the_new_speed_unless_the_session_is_enforced():
    ev = {"id": "pc-1", "type": "plan_changed", "account_id": 7, "subscriber_id": 3,
          "session": None, "at": NOW}
    assert decide.affected(ev) == "subscriber"
    d = run(ev)
    assert d.action == "restore" and d.params["profile"]["down_kbps"] == 20000
    assert run(ev, state=state("restore", "topped_up", profile={"down_kbps": 1})).action == \
        "restore"
    assert run(ev, state=state("throttle", "exhausted")) == Skip("s1", "enforced")

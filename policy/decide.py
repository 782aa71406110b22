"""The decision step: (charging event, plan policy, session, current state) -> actions.

Pure functions, no I/O: the consumer (`policy.consumer`) gathers the session
records, plans, NAS records and the enforcement state of each session, and
this module says what to do. Charging already decided *whether* the
subscriber may continue; this step only maps that outcome to what the plan
asks the network to do and to the back-ends that can do it on the session's
equipment.

Which plan setting each event reads (`ocs.model.EnforcementPolicy`):

=====================  ==========================  =================================
event                  sessions                    action
=====================  ==========================  =================================
exhausted              the session that ran dry    ``on_exhausted``
suspended_seen         the session that reported   ``on_suspended``
fair_usage             every active session of     ``on_fair_usage``
                       the subscriber
account_suspended      every active session        ``on_suspended``
account_closed         every active session        disconnect, whatever the plan says
topped_up              sessions enforced because   ``on_restored``, if money is
                       they ran dry                available again
account_restored       sessions enforced because   ``on_restored``
                       of the suspension
plan_changed           every active session of     restore: the new plan's speed,
                       the subscriber              unless the session is enforced
low_balance            -                           nothing (notification, not enforcement)
=====================  ==========================  =================================

``plan_changed`` (``{"type": "plan_changed", "subscriber_id": ..., "account_id":
..., "plan_id": ..., "at": ...}``) is put in the outbox by the store in the
same transaction as the subscriber's new plan.

A decision equal to the session's current state is not repeated (a throttled
session keeps reporting and keeps being "exhausted": one CoA, not one per
interim), and an event older than the decision in force is ignored (a late
redelivery must not undo a newer decision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ocs.model import EnforcementPolicy, Nas, PeerKind, Plan, Session

from .model import (ACTIONS, BACKENDS, COA, DIAMETER, DISCONNECT, OPERATOR, REDIRECT, RESTORE,
                    SNMP, SOFTSWITCHES, TC, THROTTLE, Action, Target)

#: Events about one session, and the plan setting they read.
SESSION_EVENTS = {"exhausted": "on_exhausted", "suspended_seen": "on_suspended",
                  "fair_usage": "on_fair_usage"}
#: Events about a whole account.
ACCOUNT_EVENTS = {"account_suspended": "on_suspended", "account_closed": None,
                  "account_restored": "on_restored", "topped_up": "on_restored"}
#: Restoring events lift only what their counterpart imposed.
RESTORES = {"topped_up": frozenset({"exhausted"}),
            "account_restored": frozenset({"account_suspended", "suspended_seen"})}
#: Events about a subscriber's plan: its sessions get the new plan's speed.
PLAN_EVENTS = frozenset({"plan_changed"})
#: Events that never cause enforcement.
NOTICES = frozenset({"low_balance"})

#: What each back-end can carry out (SNMP: what its templates define).
SUPPORTS = {
    COA: frozenset(ACTIONS),
    DIAMETER: frozenset({DISCONNECT, REDIRECT, RESTORE}),
    TC: frozenset({THROTTLE, RESTORE}),
    **{s: frozenset({DISCONNECT}) for s in SOFTSWITCHES},
}


@dataclass(frozen=True, slots=True)
class State:
    """The enforcement state of one session (a row of ``policy_sessions``)."""

    session: str
    account_id: int
    action: str
    reason: str
    generation: int
    event_at: int
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """A new state for one session and the actions that bring the network to it."""

    session: str
    account_id: int
    nas: str | None
    action: str
    reason: str
    event_at: int
    params: Mapping[str, Any]
    backends: tuple[tuple[str, str], ...]   # (backend, action it carries out)
    generation: int                          # the new generation; the old one is this - 1

    def actions(self, now: int) -> list[Action]:
        return [Action(session=self.session, account_id=self.account_id, action=action,
                       backend=backend, generation=self.generation, reason=self.reason,
                       nas=self.nas, params=self.params, created_at=now)
                for backend, action in self.backends]

    def state(self) -> State:
        return State(self.session, self.account_id, self.action, self.reason,
                     self.generation, self.event_at,
                     {k: v for k, v in self.params.items() if k != "target"})


@dataclass(frozen=True, slots=True)
class Skip:
    """No action for this session, and why (a metric label and a log word)."""

    session: str
    why: str   # unchanged | stale | none | no_route | unsupported | not_enforced | enforced |
    #            no_profile


def wanted(event_type: str, policy: EnforcementPolicy) -> str | None:
    """The plan's action for an event type ("none" and unknown types: None)."""
    if event_type == "account_closed":
        return DISCONNECT
    if event_type in PLAN_EVENTS:
        return RESTORE
    setting = SESSION_EVENTS.get(event_type) or ACCOUNT_EVENTS.get(event_type)
    if setting is None:
        return None
    action = getattr(policy, setting)
    return action if action in ACTIONS else None


def _profile(p) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"down_kbps": p.down_kbps, "up_kbps": p.up_kbps, "name": p.name}


def params_for(action: str, plan: Plan | None, *,
               profile: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the action applies, from the plan (or `profile` given by an operator)."""
    policy = plan.policy if plan is not None else EnforcementPolicy()
    params: dict[str, Any] = {"fallback_disconnect": policy.fallback_disconnect}
    if action == THROTTLE:
        chosen = profile or _profile(policy.throttle_profile) or (
            _profile(plan.fair_usage.throttle_profile)
            if plan is not None and plan.fair_usage is not None else None)
        params["profile"] = dict(chosen) if chosen else None
    elif action == RESTORE:
        params["profile"] = _profile(plan.speed_profile) if plan is not None else None
    elif action == REDIRECT:
        final = plan.final_unit if plan is not None else None
        params["redirect_url"] = policy.redirect_url or (final.redirect_url if final else None)
        params["filter_id"] = final.filter_id if final else None
    return params


def backends_for(session: Session, nas: Nas | None) -> list[str]:
    """The back-ends that reach this session's equipment, in the NAS record's order.

    ``control.enforce`` (a list of back-end names) overrides the default:
    Diameter sessions by RAR/ASR; a softswitch by the control endpoints its
    record names (``freeswitch``, ``asterisk``, ``kamailio``); any other NAS
    by RADIUS CoA.
    """
    control = nas.control if nas is not None else {}
    enforce = control.get("enforce") if isinstance(control, Mapping) else None
    if isinstance(enforce, str):
        enforce = [enforce]
    if enforce:
        return [b for b in enforce if b in BACKENDS]
    if session.proto == "diameter":
        return [DIAMETER]
    if nas is None:
        return []
    vendor = (nas.vendor or "").lower()
    switches = [s for s in SOFTSWITCHES if s in control]
    if nas.kind is PeerKind.SOFTSWITCH or vendor in SOFTSWITCHES:
        return switches or ([vendor] if vendor in SOFTSWITCHES else [])
    if nas.kind is PeerKind.DIAMETER:
        return [DIAMETER]
    return [COA]


def supported(backend: str, action: str, nas: Nas | None) -> bool:
    if backend == SNMP:
        templates = ((nas.control or {}).get("snmp") or {}).get("templates") or {} \
            if nas is not None else {}
        return action in templates
    return action in SUPPORTS.get(backend, frozenset())


def route(action: str, backends: list[str], nas: Nas | None,
          fallback: bool) -> list[tuple[str, str]]:
    """(backend, action) pairs: each back-end does the action, or a disconnect
    instead when it cannot and the plan allows falling back to one."""
    out = []
    for backend in backends:
        if supported(backend, action, nas):
            out.append((backend, action))
        elif fallback and action in (THROTTLE, REDIRECT) and supported(backend, DISCONNECT,
                                                                       nas):
            out.append((backend, DISCONNECT))
    return out


def _same(state: State | None, action: str, params: Mapping[str, Any]) -> bool:
    if state is None or state.action != action:
        return False
    keys = ("profile", "redirect_url", "filter_id")
    return all(state.params.get(k) == params.get(k) for k in keys)


def decide(event: Mapping[str, Any], session: Session, plan: Plan | None,
           state: State | None, nas: Nas | None, target: Target) -> Decision | Skip:
    """What to do to `session` for a charging event."""
    etype = event.get("type", "")
    at = int(event.get("at") or 0)
    if state is not None and at and at < state.event_at:
        return Skip(session.id, "stale")
    policy = plan.policy if plan is not None else EnforcementPolicy()
    action = wanted(etype, policy)
    if action is None:
        return Skip(session.id, "none")
    if etype in RESTORES:
        if state is None or state.reason not in RESTORES[etype] or state.action == RESTORE:
            return Skip(session.id, "not_enforced")
        if etype == "topped_up" and int(event.get("available", 1)) <= 0:
            return Skip(session.id, "not_enforced")
    if etype in PLAN_EVENTS and state is not None and state.action != RESTORE:
        return Skip(session.id, "enforced")   # the new speed applies once it is lifted
    return _decision(session, action, etype, at, plan, state, nas, target)


def decide_operator(action: str, session: Session, plan: Plan | None, state: State | None,
                    nas: Nas | None, target: Target, at: int, *,
                    profile: Mapping[str, Any] | None = None) -> Decision | Skip:
    """An operator's explicit request: always a new decision, never "unchanged"."""
    return _decision(session, action, OPERATOR, at, plan, state, nas, target,
                     profile=profile, force=True)


def _decision(session, action, reason, at, plan, state, nas, target, *, profile=None,
              force=False) -> Decision | Skip:
    params = params_for(action, plan, profile=profile)
    if action == THROTTLE and not params.get("profile"):
        if not params["fallback_disconnect"]:
            return Skip(session.id, "no_profile")
        action, params = DISCONNECT, params_for(DISCONNECT, plan)
    if not force and _same(state, action, params):
        return Skip(session.id, "unchanged")
    backends = backends_for(session, nas)
    if not backends:
        return Skip(session.id, "no_route")
    pairs = route(action, backends, nas, params["fallback_disconnect"])
    if not pairs:
        return Skip(session.id, "unsupported")
    params["target"] = target.to_dict()
    generation = (state.generation if state is not None else 0) + 1
    return Decision(session.id, session.account_id, session.nas, action, reason, at, params,
                    tuple(pairs), generation)


def redo(state: State, session: Session, nas: Nas | None, target: Target) -> Decision | None:
    """The decision `state` records, rebuilt to queue its actions again (a crash
    came between recording it and queueing them). None if no back-end fits now."""
    params = {k: v for k, v in state.params.items() if k != "event_id"}
    params["target"] = target.to_dict()
    pairs = route(state.action, backends_for(session, nas), nas,
                  bool(params.get("fallback_disconnect")))
    if not pairs:
        return None
    return Decision(session.id, session.account_id, session.nas, state.action, state.reason,
                    state.event_at, params, tuple(pairs), state.generation)


def fallback(action: Action, why: str) -> Decision:
    """A disconnect replacing `action`, which its element refused (the plan allows it)."""
    params = {k: v for k, v in action.params.items() if k not in ("profile", "redirect_url",
                                                                  "filter_id")}
    return Decision(action.session, action.account_id, action.nas, DISCONNECT,
                    f"{action.reason}; {why}", action.created_at, params,
                    ((action.backend, DISCONNECT),), action.generation + 1)


def affected(event: Mapping[str, Any]) -> str:
    """Which sessions an event concerns: "session", "subscriber", "account" or "none"."""
    etype = event.get("type", "")
    if etype == "fair_usage" or etype in PLAN_EVENTS:
        return "subscriber"
    if etype in SESSION_EVENTS:
        return "session" if event.get("session") else "none"
    if etype in ACCOUNT_EVENTS:
        return "account"
    return "none"


__all__ = ["Decision", "Skip", "State", "decide", "decide_operator", "wanted", "params_for",
           "backends_for", "route", "affected", "fallback", "redo", "NOTICES", "PLAN_EVENTS"]

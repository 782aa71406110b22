"""The vocabulary of enforcement: actions, their targets, attempts and errors.

An `Action` is one thing to do to one session through one back-end: "throttle
session S to 256/128 kbit/s by RADIUS CoA", "hang up call C through Asterisk
AMI". It is decided once (`policy.decide`), queued durably (`policy.queue`)
and carried out, retried if need be, by the worker (`policy.worker`), which
hands it to the back-end's actuator and records every `Attempt`.

Identity: an action is idempotent per ``(session, action, generation,
backend)`` (its `key`). `generation` counts the decisions made for a
session; a newer decision supersedes the actions of older ones that have not
run yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ocs.errors import OcsError

DISCONNECT, THROTTLE, REDIRECT, RESTORE = "disconnect", "throttle", "redirect", "restore"
ACTIONS = (DISCONNECT, THROTTLE, REDIRECT, RESTORE)

#: Back-ends, named as in a NAS record's ``control.enforce`` list.
COA, DIAMETER, FREESWITCH, ASTERISK, KAMAILIO, SNMP, TC = (
    "coa", "diameter", "freeswitch", "asterisk", "kamailio", "snmp", "tc")
BACKENDS = (COA, DIAMETER, FREESWITCH, ASTERISK, KAMAILIO, SNMP, TC)
SOFTSWITCHES = (FREESWITCH, ASTERISK, KAMAILIO)

#: Reason of actions an operator asked for (API/CLI) rather than an event.
OPERATOR = "operator"


class PolicyError(OcsError):
    """Enforcement cannot be carried out as asked (bad request, unknown target)."""


class ActuatorError(OcsError):
    """One attempt failed before an answer: no route, refused connection, bad config.

    `retry` says whether trying again later may help (a timeout may; a NAS
    record without a CoA secret will not until an operator fixes it).
    """

    def __init__(self, message: str, *, retry: bool = True):
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True, slots=True)
class Target:
    """What identifies the session on its network element, captured at decision time."""

    session: str
    proto: str
    nas: str | None
    nas_session_id: str | None = None
    username: str | None = None
    framed_ip: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"session": self.session, "proto": self.proto, "nas": self.nas,
                "nas_session_id": self.nas_session_id, "username": self.username,
                "framed_ip": self.framed_ip, "attrs": dict(self.attrs)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Target":
        return cls(session=d["session"], proto=d.get("proto", "radius"), nas=d.get("nas"),
                   nas_session_id=d.get("nas_session_id"), username=d.get("username"),
                   framed_ip=d.get("framed_ip"), attrs=dict(d.get("attrs") or {}))


@dataclass(frozen=True, slots=True)
class Action:
    """One enforcement step for one session through one back-end.

    `params` holds what to apply: ``profile`` ({down_kbps, up_kbps, name}) for
    throttle and restore, ``redirect_url``/``filter_id`` for redirect,
    ``fallback_disconnect`` (the plan allows a disconnect when the element
    refuses a CoA), and ``target`` (a `Target` as a dict).
    """

    session: str
    account_id: int
    action: str
    backend: str
    generation: int
    reason: str
    nas: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None        # queue id: a row id or a stream entry id, as text
    attempts: int = 0            # attempts made before this one
    created_at: int = 0

    @property
    def key(self) -> str:
        return f"{self.session}|{self.action}|{self.generation}|{self.backend}"

    @property
    def target(self) -> Target:
        return Target.from_dict(self.params.get("target") or {"session": self.session,
                                                              "nas": self.nas})

    @property
    def profile(self) -> dict[str, Any] | None:
        return self.params.get("profile")

    def to_json(self) -> str:
        # "attempts" first: the Redis queue's revive script rewrites its first occurrence.
        return json.dumps({
            "attempts": self.attempts, "session": self.session, "account_id": self.account_id,
            "action": self.action, "backend": self.backend, "generation": self.generation,
            "reason": self.reason, "nas": self.nas, "params": dict(self.params),
            "created_at": self.created_at}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, *, id: str | None = None) -> "Action":
        d = json.loads(text)
        return cls(session=d["session"], account_id=int(d["account_id"]), action=d["action"],
                   backend=d["backend"], generation=int(d["generation"]), reason=d["reason"],
                   nas=d.get("nas"), params=d.get("params") or {}, id=id,
                   attempts=int(d.get("attempts", 0)), created_at=int(d.get("created_at", 0)))

    def but(self, **changes) -> "Action":
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one try of an action did: the audit log records it whole.

    `result` is a short word for metrics and listings: ``ack``, ``nak``,
    ``timeout``, ``error``, ``gone`` (the element no longer knows the
    session: nothing left to do) or ``unsupported``. `request` and `answer`
    are JSON-able descriptions of what went over the wire, never secrets.
    """

    ok: bool
    result: str
    request: Any = None
    answer: Any = None
    retry: bool = False          # a failure worth trying again
    fallback: bool = False       # refused: a disconnect may do instead (plan permitting)
    confirm: bool = False        # wait for the session's Stop (a disconnect was acked)
    error: str | None = None
    latency_ms: float = 0.0

    @classmethod
    def failed(cls, error: str, *, retry: bool = True, request: Any = None,
               result: str = "error", latency_ms: float = 0.0) -> "Attempt":
        return cls(False, result, request=request, retry=retry, error=error,
                   latency_ms=latency_ms)


__all__ = ["Action", "ActuatorError", "Attempt", "PolicyError", "Target", "ACTIONS",
           "BACKENDS", "SOFTSWITCHES", "DISCONNECT", "THROTTLE", "REDIRECT", "RESTORE",
           "COA", "DIAMETER", "FREESWITCH", "ASTERISK", "KAMAILIO", "SNMP", "TC", "OPERATOR"]

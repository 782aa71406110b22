"""Diameter Gy sessions: Abort-Session-Request to end one, Re-Auth-Request to make its
client ask for credit again (RFC 6733 §8.5 / §8.3, RFC 8506 §5.5).

The Diameter front-end owns the peer connections and the session directory
(which client a session belongs to); this back-end only calls its API
(`diameter.component.DiameterComponent.re_auth` / ``abort_session``), found
at run time as ``ctx.diameter`` because that component starts after this one.

Mapping: disconnect -> ASR; redirect and restore -> RAR (the client's next
CCR-Update gets what charging decides now: the final-unit redirect while the
account is dry, quota again after a top-up). Gy cannot throttle (that is the
PCRF's Gx); the decision step falls back to a disconnect when the plan
allows. Answers: 2001 done; 5002 DIAMETER_UNKNOWN_SESSION_ID, or a session
the directory no longer knows, means the session is gone (done); other codes
are refusals (dead-lettered); no answer or no connection to the client from
this node is retried. A client connected to another node only gets the
request from that node (the front-end asks it), and the answer names it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ocs.model import Nas

from .model import DIAMETER, DISCONNECT, REDIRECT, RESTORE, Action, ActuatorError, Attempt

SUCCESS, UNKNOWN_SESSION = 2001, 5002


class DiameterActuator:
    backend = DIAMETER

    def __init__(self, provider: Callable[[], Any]):
        self.provider = provider   # -> the Diameter front-end's policy API, or None

    @property
    def longest(self) -> float:
        """Seconds one attempt may take: the front-end's own tries, or another
        node's when it is asked (see `DiameterServer._ask_node`)."""
        api = self.provider()
        return api.longest if api is not None else 0.0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def execute(self, action: Action, nas: Nas | None) -> Attempt:
        api = self.provider()
        if api is None:
            return Attempt.failed("the Diameter front-end is not running on this node",
                                  result="unsupported")
        session_id = action.target.nas_session_id or action.session
        if action.action == DISCONNECT:
            command, call = "ASR", api.abort_session(session_id)
        elif action.action in (REDIRECT, RESTORE):
            command, call = "RAR", api.re_auth(session_id)
        else:
            raise ActuatorError(f"Diameter cannot {action.action}", retry=False)
        started = time.perf_counter()
        result = await call
        ms = (time.perf_counter() - started) * 1000
        request = {"command": command, "session_id": session_id}
        answer = {"answered": result.answered, "result_code": result.result_code,
                  "peer": result.peer, "attempts": result.attempts, "error": result.error}
        if result.node is not None:  # sent by the node the client is connected to
            answer["node"] = result.node
        if result.answered and result.result_code == SUCCESS:
            return Attempt(True, "ok", request=request, answer=answer, latency_ms=ms)
        if (result.answered and result.result_code == UNKNOWN_SESSION) or (
                not result.answered and "unknown to the session directory" in result.error):
            return Attempt(True, "gone", request=request, answer=answer, latency_ms=ms)
        if result.answered:
            return Attempt(False, "refused", request=request, answer=answer, retry=False,
                           fallback=action.action == REDIRECT,
                           error=f"{command} answered {result.result_code}", latency_ms=ms)
        return Attempt(False, "timeout" if "no answer" in result.error else "error",
                       request=request, answer=answer, retry=True,
                       error=f"{command}: {result.error}", latency_ms=ms)


__all__ = ["DiameterActuator"]

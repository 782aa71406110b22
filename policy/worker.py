"""Carries out queued actions: takes them, hands them to their back-end, records
every attempt, and retries, falls back or dead-letters.

One worker per node, bounded by ``[policy] max_in_flight`` concurrent
attempts (the queue applies ``per_nas_concurrency``). For each action taken:

1. an action whose session has a newer decision is dropped (superseded), and one
   whose session has ended by its own Stop or termination is finished unsent
   ("gone");
2. the back-end's actuator tries it once (`Attempt`);
3. the attempt goes to the audit log (actor ``policy``) with what was sent,
   what came back and how long it took, and to the metrics;
4. success finishes it (a Disconnect-ACK is then confirmed by the session's
   Stop: the session record turns closed within ``confirm_timeout``);
   a refused throttle or redirect becomes a disconnect when the plan allows
   (`policy.decide.fallback`); a failure worth retrying comes back after an
   exponential back-off with jitter; anything else, or the
   ``max_attempts``-th failure, is dead-lettered and counted.

A worker that dies mid-attempt holds nothing for long: its lease runs out and
another worker (or this one, restarted) takes the action again; attempts are
idempotent on the equipment (a second Disconnect of a gone session is
answered "Session-Context-Not-Found", which counts as done).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import replace
from typing import Any, Callable

from ocs.cluster import POLICY_ATTEMPT
from ocs.config import attempt_bound, handed_over_bound
from ocs.errors import NotFound, OcsError, StoreError
from ocs.logs import log_context
from ocs.model import Nas
from ocs.tasks import cancel_and_wait

from . import decide
from .model import RESTORE, TC, Action, ActuatorError, Attempt

log = logging.getLogger("ocs.policy")

#: Audit status of an attempt, by result (HTTP-like, so audit readers know them).
AUDIT_STATUS = {"ack": 200, "gone": 200, "ok": 200, "nak": 409, "refused": 409,
                "timeout": 504, "unsupported": 501, "error": 502}


def backoff(attempt: int, initial: float, maximum: float, rand=random.uniform) -> float:
    """Seconds before retry number `attempt` (1-based): initial * 2**(n-1), capped,
    with +-10% jitter so a NAS that was down is not hit by every retry at once."""
    base = min(maximum, initial * (2 ** min(attempt - 1, 30)))
    return max(0.0, base * (1 + rand(-0.1, 0.1)))


class Worker:
    def __init__(self, *, queue, actuators: dict[str, Any], store, config: Callable[[], Any],
                 nas_lookup: Callable[[str | None], Nas | None], metrics=None,
                 unavailable: dict[str, str] | None = None, cluster=None):
        self.queue = queue
        self.cluster = cluster        # to hand an attempt to the node a NAS names
        self.actuators = actuators
        self.store = store
        self.config = config          # returns the live PolicyConfig
        self.nas_lookup = nas_lookup
        self.metrics = metrics
        self.unavailable = unavailable or {}   # backend -> why it is not on this node
        self._running: set[asyncio.Task] = set()
        self._confirming: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._slot = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name="ocs-policy-worker")

    async def stop(self, timeout: float = 2.5) -> None:
        """Stop taking actions; let attempts in flight finish within `timeout`
        (the rest are cancelled and come back when their lease runs out)."""
        self._stopping = True  # ends the loop even if its cancellation were lost
        await cancel_and_wait([self._task], "policy worker")
        self._task = None
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=timeout)
            await cancel_and_wait(pending, "policy action")
        await cancel_and_wait(list(self._confirming), "policy confirmation")

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # ------------------------------------------------------------ loop
    async def _loop(self) -> None:
        while not self._stopping:
            cfg = self.config()
            free = cfg.max_in_flight - len(self._running)
            taken: list[Action] = []
            if free > 0:
                self.queue.wakeup.clear()
                try:
                    taken = await self.queue.take(free)
                except StoreError as exc:
                    log.warning("policy queue unavailable: %s", exc)
                except OcsError as exc:
                    log.error("policy queue: %s", exc)
                for action in taken:
                    task = asyncio.create_task(self._guarded(action),
                                               name=f"ocs-policy-{action.key}")
                    self._running.add(task)
                    task.add_done_callback(self._finished)
            if taken and len(taken) >= free:
                continue  # more may be due; look again as soon as a slot frees
            await self._wait(cfg.poll_interval)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slot.set()

    async def _wait(self, seconds: float) -> None:
        self._slot.clear()
        waits = [asyncio.ensure_future(self.queue.wakeup.wait()),
                 asyncio.ensure_future(self._slot.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _guarded(self, action: Action) -> None:
        with log_context(session=action.session, nas=action.nas, account=action.account_id):
            try:
                await self.carry_out(action)
            except StoreError as exc:
                # The outcome could not be recorded: the lease brings the action back.
                log.warning("policy %s of %s: outcome not recorded (%s); it will be tried "
                            "again when its lease runs out", action.action, action.session, exc)
            except Exception:  # noqa: BLE001 - a bug must not kill the worker; logged whole
                log.exception("policy %s of %s failed unexpectedly", action.action,
                              action.session)

    # ------------------------------------------------------------ one action
    async def carry_out(self, action: Action) -> Attempt | None:
        """Try `action` once and record the outcome. None when it was superseded."""
        cfg = self.config()
        current = (await self.queue.states([action.session])).get(action.session)
        if current is not None and current.generation > action.generation:
            await self.queue.supersede(action)
            self._count(action, "superseded")
            log.info("policy %s via %s of %s superseded by a newer decision (%s)",
                     action.action, action.backend, action.session, current.action)
            return None
        if await self._ended(action):
            await self.queue.done(action, "gone")
            self._count(action, "gone")
            log.info("policy %s via %s of %s not sent: the session ended first (its Stop or "
                     "termination was reported)", action.action, action.backend, action.session)
            return None
        nas = self.nas_lookup(action.nas)
        attempt = await self._attempt(action, nas, cfg)
        number = action.attempts + 1
        self._count(action, attempt.result)
        if self.metrics is not None:
            self.metrics.policy_attempt_duration.labels(backend=action.backend).observe(
                attempt.latency_ms / 1000)
        await self._audit(action, nas, attempt, number)
        if attempt.ok:
            await self.queue.done(action, attempt.result)
            log.info("policy %s via %s of %s: %s in %.0f ms (attempt %d)", action.action,
                     action.backend, action.session, attempt.result, attempt.latency_ms,
                     number)
            if attempt.confirm and cfg.confirm_timeout > 0:
                task = asyncio.create_task(self._confirm(action, cfg.confirm_timeout),
                                           name=f"ocs-policy-confirm-{action.key}")
                self._confirming.add(task)
                task.add_done_callback(self._confirming.discard)
        elif attempt.fallback and action.params.get("fallback_disconnect"):
            why = f"{action.backend} refused {action.action}: {attempt.error}"
            replaced = await self.queue.replace(action, attempt.result, attempt.error or "",
                                                decide.fallback(action, why))
            log.warning("policy %s of %s refused (%s); %s", action.action, action.session,
                        attempt.error, "falling back to disconnect" if replaced else
                        "a newer decision replaced it meanwhile")
        elif attempt.retry and number < cfg.max_attempts:
            delay = backoff(number, cfg.backoff_initial, cfg.backoff_max)
            await self.queue.retry(action, delay, attempt.result, attempt.error or "")
            log.warning("policy %s via %s of %s failed (%s), attempt %d of %d; retrying in "
                        "%.1fs", action.action, action.backend, action.session, attempt.error,
                        number, cfg.max_attempts, delay)
        else:
            await self.queue.bury(action, attempt.result, attempt.error or "")
            if self.metrics is not None:
                self.metrics.policy_dead_lettered.labels(action=action.action,
                                                         backend=action.backend).inc()
            log.error("policy %s via %s of %s dead-lettered after %d attempt(s): %s",
                      action.action, action.backend, action.session, number, attempt.error)
        return attempt

    async def _ended(self, action: Action) -> bool:
        """Has the session ended by its own report (RADIUS Stop, CCR-T, a call's end)?
        Then its NAS holds nothing to act on: a NAS that is down would only be sent
        the action until it is dead-lettered. A session closed here without its
        report (idle, Accounting-On, the same device again) may still run on its NAS,
        so it is acted on; and a tc restore still lifts the shaping of its address."""
        if action.backend == TC and action.action == RESTORE:
            return False
        try:
            session = await self.store.get_session(action.session)
        except (NotFound, StoreError):
            return False  # unknown here, or the store is away: act as decided
        return session.status == "closed" and "closed_by" not in session.attrs

    async def _attempt(self, action: Action, nas: Nas | None, cfg) -> Attempt:
        home = (nas.control or {}).get("policy_node") if nas is not None else None
        if home and self.cluster is not None and home != self.cluster.node:
            return await self._attempt_on(home, action, nas, cfg)
        return await self.attempt_here(action, nas, cfg)

    async def _attempt_on(self, node: str, action: Action, nas: Nas, cfg) -> Attempt:
        """The NAS names the node that carries out its actions (`control.policy_node`:
        the one whose address its CoA client list or its routing accepts): that node
        makes the attempt and reports it."""
        started = time.perf_counter()
        actuator = self.actuators.get(action.backend)
        timeout = handed_over_bound(cfg, getattr(actuator, "longest", 0.0))
        body = {"action": action.to_json(), "nas": nas.name}
        try:
            got = await self.cluster.calls.call(node, POLICY_ATTEMPT, body, timeout)
            attempt = Attempt(**got)
        except (StoreError, TypeError) as exc:  # the cluster's errors are StoreErrors
            return Attempt.failed(f"node {node}, which carries out the actions of NAS "
                                  f"{nas.name} (control.policy_node), was not reached: {exc}",
                                  latency_ms=(time.perf_counter() - started) * 1000)
        answer = attempt.answer if isinstance(attempt.answer, dict) else (
            {} if attempt.answer is None else {"answer": attempt.answer})
        return replace(attempt, answer={**answer, "node": node})

    async def attempt_here(self, action: Action, nas: Nas | None, cfg) -> Attempt:
        """One attempt by this node's own back-end."""
        actuator = self.actuators.get(action.backend)
        if actuator is None:
            why = self.unavailable.get(action.backend, "not configured")
            return Attempt.failed(f"back-end {action.backend} is not available on this node "
                                  f"({why})", retry=True, result="unsupported")
        started = time.perf_counter()
        bound = attempt_bound(cfg, getattr(actuator, "longest", 0.0))
        try:
            attempt = await asyncio.wait_for(actuator.execute(action, nas), bound)
        except ActuatorError as exc:
            attempt = Attempt.failed(str(exc), retry=exc.retry)
        except asyncio.TimeoutError:
            attempt = Attempt.failed(f"no outcome within {bound:.0f}s", result="timeout")
        except Exception as exc:  # noqa: BLE001 - an actuator bug: logged, retried
            log.exception("policy back-end %s failed unexpectedly", action.backend)
            attempt = Attempt.failed(f"internal error: {type(exc).__name__}: {exc}")
        if not attempt.latency_ms:
            attempt = replace(attempt, latency_ms=(time.perf_counter() - started) * 1000)
        return attempt

    def _count(self, action: Action, result: str) -> None:
        if self.metrics is not None:
            self.metrics.policy_actions.labels(action=action.action, backend=action.backend,
                                               result=result).inc()

    async def _audit(self, action: Action, nas: Nas | None, attempt: Attempt,
                     number: int) -> None:
        record = {"action_id": action.id, "key": action.key, "attempt": number,
                  "reason": action.reason, "nas": action.nas, "result": attempt.result,
                  "request": attempt.request, "answer": attempt.answer,
                  "error": attempt.error, "latency_ms": round(attempt.latency_ms, 3)}
        try:
            await self.store.add_audit(
                actor="policy", role="system",
                action=f"policy {action.action} via {action.backend}",
                status=AUDIT_STATUS.get(attempt.result, 200 if attempt.ok else 502),
                target=f"session:{action.session}", request=record,
                remote=nas.address if nas is not None else None)
        except OcsError as exc:
            log.error("audit record of policy %s of %s lost: %s", action.action,
                      action.session, exc)

    async def _confirm(self, action: Action, timeout: float) -> bool:
        """Wait for the Stop that follows a Disconnect-ACK (the session closes)."""
        deadline = time.monotonic() + timeout
        confirmed = False
        while True:
            try:
                session = await self.store.get_session(action.session)
                confirmed = session.status == "closed"
            except NotFound:
                confirmed = True
            except StoreError as exc:
                log.debug("confirmation of %s: %s", action.session, exc)
            if confirmed or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        result = "confirmed" if confirmed else "unconfirmed"
        if confirmed:
            log.info("disconnect of %s confirmed by its Stop", action.session)
        else:
            log.warning("disconnect of %s was acknowledged but no Stop came within %.0fs",
                        action.session, timeout)
        try:
            await self.queue.annotate(action, result)
            await self.store.add_audit(
                actor="policy", role="system", action=f"policy confirm {action.action}",
                status=200 if confirmed else 504, target=f"session:{action.session}",
                request={"action_id": action.id, "key": action.key, "result": result,
                         "waited_s": timeout if not confirmed else None})
        except OcsError as exc:
            log.warning("confirmation of %s not recorded: %s", action.session, exc)
        if self.metrics is not None:
            self.metrics.policy_confirmations.labels(result=result).inc()
        return confirmed


__all__ = ["Worker", "backoff", "AUDIT_STATUS"]

"""The running enforcement service: queue, actuators, worker and event consumer.

`PolicyService(ctx)` is what the daemon component starts and what the API
reaches as ``ctx.policy``. It owns:

* the action queue (`StoreQueue` or `StreamQueue`, per ``[policy] queue``);
* one actuator per back-end available on this node (RADIUS CoA always;
  Diameter when the Diameter front-end runs; softswitch, SNMP; tc when
  ``tc_interface`` is set);
* the worker that carries actions out, and the event consumer that decides;
* the operator requests of the API (`kill`, `apply_to_subscriber`, `listing`,
  `retry`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Awaitable, Callable, Mapping

from ocs.cluster import POLICY_ATTEMPT
from ocs.config import lease_warning
from ocs.errors import ConfigError, Conflict, NotFound, OcsError, ValidationError
from ocs.model import Nas, Plan, Session, Subscriber, now_us
from ocs.tasks import cancel_and_wait
from radius.dictionary import Dictionary

from . import decide, state
from .consumer import EventConsumer
from .diameter_rar import DiameterActuator
from .model import COA, DIAMETER, DISCONNECT, RESTORE, TC, THROTTLE, Action, PolicyError, Target
from .queue import DEAD, PENDING, RUNNING, entry
from .radius_dae import DaeActuator, Retransmission
from .snmp import SnmpActuator
from .softswitch import AsteriskActuator, FreeswitchActuator, KamailioActuator
from .store_queue import StoreQueue
from .tc import TcActuator
from .vendors import CoaWriter, load_profiles

log = logging.getLogger("ocs.policy")

GAUGE_INTERVAL = 2.0
PURGE_INTERVAL = 900.0
_SKIPS = {"no_route": "no back-end reaches it (NAS {nas}: set its vendor, kind or "
                      "control.enforce)",
          "unsupported": "none of its back-ends can {action} it",
          "no_profile": "the plan has no throttle profile and does not allow a disconnect "
                        "instead"}


class PolicyService:
    def __init__(self, ctx):
        self.ctx = ctx
        self.store = ctx.store
        self.cluster = ctx.cluster
        self.metrics = ctx.metrics
        self.node = ctx.config.daemon.node_name
        self.queue = None
        self.actuators: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        self.worker = None
        self.consumer: EventConsumer | None = None
        self._tasks: list[asyncio.Task] = []
        self._nas_index: tuple[Any, dict[str, Nas]] = (None, {})

    def config(self):
        """The live [policy] section."""
        return self.ctx.config.policy

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.config()
        shared = self.ctx.config.redis.enabled
        mode = cfg.queue if cfg.queue != "auto" else ("redis" if shared else "store")
        if mode == "redis" and not shared:
            raise ConfigError("the redis queue needs [redis] url or sentinels",
                              key="policy.queue")
        if mode == "redis":
            from .redis_queue import StreamQueue
            self.queue = StreamQueue(self.ctx.config.redis, self.store, owner=self.node,
                                     per_nas=cfg.per_nas_concurrency, lease=cfg.lease)
        else:
            self.queue = StoreQueue(self.store, owner=self.node,
                                    per_nas=cfg.per_nas_concurrency, lease=cfg.lease)
        await self.queue.start()
        try:
            await self._start_actuators(cfg)
            from .worker import Worker
            self.worker = Worker(queue=self.queue, actuators=self.actuators, store=self.store,
                                 config=self.config, nas_lookup=self.nas,
                                 metrics=self.metrics, unavailable=self.unavailable,
                                 cluster=self.ctx.cluster)
            await self.worker.start()
            if self.ctx.cluster is not None:  # other nodes hand over a NAS's attempts
                self.ctx.cluster.calls.serve(POLICY_ATTEMPT, self._attempt_asked)
            self.consumer = EventConsumer(self, consumer=self.node)
            await self.consumer.start()
        except BaseException:
            await self.stop()
            raise
        self._tasks = [asyncio.create_task(self._gauges(), name="ocs-policy-gauges"),
                       asyncio.create_task(self._purge(), name="ocs-policy-purge")]
        log.info("enforcement ready: %s queue, back-ends %s%s", self.queue.kind,
                 ", ".join(sorted(self.actuators)),
                 "".join(f"; {b} unavailable ({why})" for b, why in
                         sorted(self.unavailable.items())))
        short = lease_warning(self.ctx.config)
        if short:
            log.warning("%s", short)

    async def _start_actuators(self, cfg) -> None:
        dictionary = Dictionary(self.ctx.config.radius.dictionary or None)
        profiles = load_profiles(cfg.coa_profiles or None, dictionary=dictionary)
        timing = Retransmission(cfg.coa_timeout, cfg.coa_max_timeout, cfg.coa_retransmissions,
                                cfg.coa_max_duration)
        self.actuators[COA] = DaeActuator(CoaWriter(profiles, dictionary), timing,
                                          self.metrics)
        for actuator in (FreeswitchActuator(cfg.control_timeout),
                         AsteriskActuator(cfg.control_timeout),
                         KamailioActuator(cfg.control_timeout),
                         SnmpActuator(cfg.control_timeout / 2, retries=1)):
            self.actuators[actuator.backend] = actuator
        # The Diameter front-end starts after policy: reached when an action runs.
        self.actuators[DIAMETER] = DiameterActuator(lambda: getattr(self.ctx, "diameter", None))
        for actuator in self.actuators.values():
            await actuator.start()
        if cfg.tc_interface:
            tc = TcActuator(cfg.tc_interface, cfg.tc_rate_kbit, cleanup=cfg.tc_cleanup)
            await tc.start()
            self.actuators[TC] = tc
            await self._resync_tc(tc)
        else:
            self.unavailable[TC] = "policy.tc_interface is not set"

    async def _resync_tc(self, tc) -> None:
        """Shaping lives in the kernel: re-apply the throttles the store says are in force."""
        rows = await self.store.driver.run(state.throttled_program, write=False)
        applied = 0
        for session, nas_name, framed_ip, params in rows:
            nas = self.nas(nas_name)
            enforce = (nas.control or {}).get("enforce") if nas is not None else None
            profile = params.get("profile") or {}
            if framed_ip and TC in (enforce or ()) and profile.get("down_kbps"):
                await tc.apply(framed_ip, int(profile["down_kbps"]))
                applied += 1
        if applied:
            log.info("tc: re-applied %d throttle(s) in force", applied)

    async def _attempt_asked(self, body: dict) -> dict:
        """Another node asks this one, named by the NAS (`control.policy_node`), to make
        an attempt of one of the NAS's actions."""
        if self.worker is None:
            raise PolicyError("enforcement is stopping on this node")
        action = Action.from_json(body["action"])
        nas = self.nas(body.get("nas"))
        if nas is None:
            raise PolicyError(f"no NAS {body.get('nas')!r} here")
        attempt = await self.worker.attempt_here(action, nas, self.config())
        return dataclasses.asdict(attempt)

    async def stop(self) -> None:
        if self.ctx.cluster is not None:
            self.ctx.cluster.calls.serve(POLICY_ATTEMPT, None)
        await cancel_and_wait(self._tasks, "policy")
        self._tasks = []
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None
        for name, actuator in list(self.actuators.items()):
            try:
                await actuator.stop()
            except OcsError as exc:
                log.error("stopping the %s back-end: %s", name, exc)
        self.actuators.clear()
        if self.queue is not None:
            await self.queue.stop()

    # ------------------------------------------------------------ lookups
    def nas(self, name: str | None) -> Nas | None:
        """The registered NAS of that name, from the registry in force."""
        registry = self.ctx.registry
        if self._nas_index[0] is not registry:
            self._nas_index = (registry, {n.name: n for n in registry.nas})
        return self._nas_index[1].get(name) if name else None

    async def _subscriber_plan(self, session: Session) -> tuple[Subscriber | None, Plan | None]:
        try:
            sub = await self.store.get_subscriber(session.subscriber_id)
        except NotFound:
            return None, None
        if sub.plan_id is None:
            return sub, None
        plan = self.ctx.registry.plan(sub.plan_id)
        if plan is None:
            try:
                plan = await self.store.get_plan(sub.plan_id)
            except NotFound:
                plan = None
        return sub, plan

    @staticmethod
    def target(session: Session, sub: Subscriber | None) -> Target:
        username = None
        if sub is not None:
            username = sub.username or sub.sip_user or sub.msisdn or sub.imsi
        return Target(session=session.id, proto=session.proto, nas=session.nas,
                      nas_session_id=session.nas_session_id, username=username,
                      framed_ip=session.framed_ip or (sub.framed_ip if sub else None),
                      attrs=dict(session.attrs))

    def count_event(self, etype: str, decision: str) -> None:
        if self.metrics is not None:
            self.metrics.policy_events.labels(type=etype, decision=decision).inc()

    # ------------------------------------------------------------ deciding
    async def decide_and_queue(
            self, sessions: list[Session],
            decide_one: Callable[..., decide.Decision | decide.Skip], *,
            event_id: str | None, label: str,
            skips: list[tuple[Session, decide.Skip]] | None = None) -> list[decide.Decision]:
        """Decide for each session and record + queue the decisions.

        A decision that lost a race with another node's (the session's state
        moved meanwhile) is made again from the new state, up to 3 times.
        """
        recorded: list[decide.Decision] = []
        pending = list(sessions)
        for _round in range(3):
            states = await self.queue.states([s.id for s in pending])
            decisions = []
            for session in pending:
                sub, plan = await self._subscriber_plan(session)
                nas = self.nas(session.nas)
                target = self.target(session, sub)
                state = states.get(session.id)
                result = decide_one(session, plan, state, nas, target)
                if isinstance(result, decide.Skip):
                    if (result.why == "unchanged" and event_id and state is not None
                            and state.params.get("event_id") == event_id):
                        await self._requeue(state, session, nas, target)
                    self.count_event(label, result.why)
                    if skips is not None:
                        skips.append((session, result))
                    continue
                decisions.append((result, event_id))
            saved = await self.queue.commit(decisions, now_us())
            for d in saved:
                self.count_event(label, "act")
            recorded += saved
            lost = {d.session for d, _ in decisions} - {d.session for d in saved}
            if not lost:
                break
            log.info("%d decision(s) raced with another node's; deciding again", len(lost))
            pending = [s for s in pending if s.id in lost]
        return recorded

    async def _requeue(self, state, session, nas, target) -> None:
        """The event that set this state is seen again: queue its actions again in
        case the first try crashed between recording and queueing (idempotent)."""
        again = decide.redo(state, session, nas, target)
        if again is not None:
            await self.queue.requeue(again.actions(now_us()))

    # ------------------------------------------------------------ operators (API)
    async def _operator(self, sessions: list[Session], action: str, *,
                        profile: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        at = now_us()
        skips: list[tuple[Session, decide.Skip]] = []
        decisions = await self.decide_and_queue(
            sessions, lambda s, plan, state, nas, target: decide.decide_operator(
                action, s, plan, state, nas, target, at, profile=profile),
            event_id=None, label="operator", skips=skips)
        if not decisions and skips:
            session, skip = skips[0]
            why = _SKIPS.get(skip.why, skip.why).format(nas=session.nas, action=action)
            raise ValidationError(f"cannot {action} session {session.id}: {why}")
        return [entry(a, status=PENDING) for d in decisions for a in d.actions(at)]

    async def kill(self, session_id: str) -> list[dict[str, Any]]:
        """Disconnect one session (``ocsctl session kill``)."""
        session = await self.store.get_session(session_id)
        if session.status != "active":
            raise Conflict(f"session {session_id} is {session.status}; nothing to disconnect")
        return await self._operator([session], DISCONNECT)

    async def apply_to_subscriber(self, subscriber_id: int, action: str, *,
                                  profile: Mapping[str, Any] | None = None
                                  ) -> list[dict[str, Any]]:
        """Throttle (to `profile`, else the plan's throttle profile) or restore
        every active session of a subscriber."""
        if action not in (THROTTLE, RESTORE, DISCONNECT):
            raise ValidationError(f"unknown action {action!r}")
        await self.store.get_subscriber(subscriber_id)
        sessions = await self.store.list_sessions(status="active", subscriber_id=subscriber_id,
                                                  limit=1000)
        if not sessions:
            raise Conflict(f"subscriber {subscriber_id} has no active session")
        return await self._operator(sessions, action, profile=profile)

    async def listing(self, statuses: tuple[str, ...], limit: int = 100) -> list[dict[str, Any]]:
        return await self.queue.listing(statuses, limit)

    async def retry(self, action_id: str) -> dict[str, Any]:
        revived = await self.queue.revive(action_id)
        if revived is None:
            raise NotFound(f"no dead-lettered action {action_id}")
        log.info("dead-lettered action %s (%s of %s) queued again by an operator",
                 action_id, revived["action"], revived["session"])
        return revived

    # ------------------------------------------------------------ housekeeping
    async def refresh_gauges(self) -> dict[str, int]:
        counts = await self.queue.counts()
        if self.metrics is not None:
            for state in (PENDING, RUNNING):
                self.metrics.policy_queue.labels(state=state).set(counts.get(state, 0))
            self.metrics.policy_dead_letters.set(counts.get(DEAD, 0))
        return counts

    async def _gauges(self) -> None:
        await self._every(GAUGE_INTERVAL, self.refresh_gauges, "queue gauges")

    async def _purge(self) -> None:
        async def purge():
            before = now_us() - int(self.config().retention_hours * 3600 * 1_000_000)
            n = await self.queue.purge(before)
            if n:
                log.info("purged %d finished enforcement records", n)
        await self._every(PURGE_INTERVAL, purge, "purge")

    @staticmethod
    async def _every(seconds: float, job: Callable[[], Awaitable[Any]], what: str) -> None:
        while True:
            try:
                await job()
            except OcsError as exc:
                log.debug("policy %s: %s", what, exc)
            await asyncio.sleep(seconds)


__all__ = ["PolicyService"]

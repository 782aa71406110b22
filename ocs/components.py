"""The parts the daemon starts and stops, and what they share.

Every component has async `start()` and `stop()`; `ocs.daemon` starts them in
order and stops the started ones in reverse, so listeners close before the
work behind them and the store closes last, after it has drained. They share
one `Context`: the running configuration, the metrics, the open store and
the `Registry` (NAS and plans as of the last load), which a reload replaces
as a whole so readers never see half of one.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__, accel, logs
from .config import Config
from .errors import OcsError, StoreError
from .metrics import Metrics
from .model import Nas, Plan
from .store import Store, store_from_config
from .tasks import cancel_and_wait

log = logging.getLogger("ocs.daemon")

#: How long /healthz and /metrics wait for the store before calling it unhealthy.
STORE_PROBE_TIMEOUT = 2.0
#: Protocols whose session gauge exists even at zero (dashboards want the series).
SESSION_PROTOS = ("radius", "diameter")


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class ServesTls(Protocol):
    """A component with TLS listeners (RADIUS/TLS, Diameter/TLS): on SIGHUP it
    reads its certificate, key and CA files again (rotated files, same paths)."""

    def reload_certificates(self) -> None: ...


# ---------------------------------------------------------------------- registry
def unmapped(address: str) -> str:
    """`address` as its sender has it: an IPv4-mapped IPv6 address
    ("::ffff:192.0.2.1", what a dual-stack socket on "[::]" reports for an IPv4
    sender) is the IPv4 address it maps; any other is returned as it is."""
    if address.startswith(("::ffff:", "::FFFF:")) and "." in address:
        try:
            return str(ipaddress.IPv6Address(address).ipv4_mapped)
        except ValueError:
            return address
    return address


@dataclass(frozen=True)
class Registry:
    """NAS (by source address) and plans as last loaded from the store.

    Immutable: SIGHUP builds a new one and swaps it in, so a packet being
    handled keeps the NAS and plan it started with. (Tariffs join when the
    rating engine stores them.)
    """

    nas: tuple[Nas, ...] = ()
    plans: Mapping[int, Plan] = field(default_factory=dict)
    by_address: Mapping[str, Nas] = field(default_factory=dict)
    networks: tuple[tuple[Any, Nas], ...] = ()  # (ip_network, nas), longest prefix first

    @classmethod
    async def load(cls, store: Store) -> "Registry":
        nas_list = await store.list_nas()
        plans = {p.id: p for p in await store.list_plans()}
        by_address: dict[str, Nas] = {}
        networks: list[tuple[Any, Nas]] = []
        for nas in nas_list:
            key = nas.address
            try:
                if "/" in key:
                    net = ipaddress.ip_network(key, strict=False)
                    if net.num_addresses > 1:
                        networks.append((net, nas))
                        continue
                    key = str(net.network_address)
                else:
                    key = str(ipaddress.ip_address(key))
            except ValueError:
                pass  # a host name (Diameter peers): matched as written
            if key in by_address:
                log.warning("NAS %r and %r share address %s; using %r",
                            by_address[key].name, nas.name, key, by_address[key].name)
                continue
            by_address[key] = nas
        networks.sort(key=lambda item: item[0].prefixlen, reverse=True)
        return cls(tuple(nas_list), plans, by_address, tuple(networks))

    def nas_for(self, address: str) -> Nas | None:
        """The NAS a packet from `address` belongs to: exact address, else longest prefix.
        An IPv4-mapped IPv6 address is the IPv4 address it maps (`unmapped`)."""
        try:
            ip = ipaddress.ip_address(unmapped(address))
        except ValueError:
            return self.by_address.get(address)
        found = self.by_address.get(str(ip))
        if found is not None:
            return found
        for net, nas in self.networks:
            if ip.version == net.version and ip in net:
                return nas
        return None

    def plan(self, plan_id: int) -> Plan | None:
        return self.plans.get(plan_id)

    def changes_since(self, old: "Registry") -> str:
        """'NAS 3 (+1 -0 ~1), plans 2 (+0 -0 ~0)': what a reload changed."""
        def diff(new: Mapping[Any, Any], before: Mapping[Any, Any]) -> str:
            added = len(new.keys() - before.keys())
            removed = len(before.keys() - new.keys())
            changed = sum(1 for k in new.keys() & before.keys() if new[k] != before[k])
            return f"{len(new)} (+{added} -{removed} ~{changed})"
        return (f"NAS {diff({n.id: n for n in self.nas}, {n.id: n for n in old.nas})}, "
                f"plans {diff(self.plans, old.plans)}")

    def secrets(self) -> list[str]:
        return [n.secret for n in self.nas if n.secret]


# ---------------------------------------------------------------------- context
@dataclass
class Context:
    """What the components share. The daemon owns it; reload swaps fields whole."""

    config: Config
    config_path: str
    metrics: Metrics
    started_at: float = field(default_factory=time.monotonic)
    store: Store | None = None
    cluster: Any = None   # ocs.cluster.Cluster once started
    relay: Any = None     # ocs.charging.EventRelay once started
    charging: Any = None  # ocs.charging.ChargingCore once started
    policy: Any = None    # policy.PolicyService while enforcement runs
    diameter: Any = None  # diameter.DiameterComponent (RAR/ASR for policy) while it runs
    tariffs: Any = None   # ocs.rating.TariffBook: the compiled tariffs in force
    registry: Registry = field(default_factory=Registry)
    generation: int = 1
    stopping: bool = False
    last_health_problem: str | None = None
    _session_protos: set[str] = field(default_factory=lambda: set(SESSION_PROTOS))

    async def load_registry(self) -> Registry:
        """Load NAS and plans from the store; their secrets are never logged."""
        assert self.store is not None
        registry = await Registry.load(self.store)
        for secret in registry.secrets():
            logs.register_secret(secret)
        return registry

    async def refresh_sessions(self) -> None:
        """Set ocs_sessions_active from the store; keep the last values if it fails."""
        if self.store is None:
            return
        try:
            counts = await asyncio.wait_for(self.store.count_sessions(), STORE_PROBE_TIMEOUT)
        except (OcsError, asyncio.TimeoutError) as exc:
            log.debug("session count unavailable: %s", exc)
            return
        self._session_protos.update(counts)
        for proto in self._session_protos:
            self.metrics.sessions_active.labels(proto=proto).set(counts.get(proto, 0))


CONTEXT = web.AppKey("ocs.context", Context)


# ---------------------------------------------------------------------- store
class StoreComponent:
    """Opens the store (migrating when configured); closing drains queued operations."""

    name = "store"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def start(self) -> None:
        store = store_from_config(self.ctx.config, metrics=self.ctx.metrics)
        await store.open(migrate_schema=self.ctx.config.store.auto_migrate)
        self.ctx.store = store
        log.info("store open: %s", store.describe())

    async def stop(self) -> None:
        store = self.ctx.store
        if store is None:
            return
        pending = store.pending_operations
        if pending:
            log.info("draining %d queued balance operations", pending)
        # Operations not committed within the bound are failed, never acknowledged.
        await store.close(self.ctx.config.daemon.drain_timeout)
        log.info("store closed")


class ClusterComponent:
    """Cross-node session directory, duplicate cache and event stream (Redis, or
    in process on a single node)."""

    name = "cluster"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def start(self) -> None:
        from .cluster import build
        cfg = self.ctx.config
        cluster = build(cfg.redis, node=cfg.daemon.node_name, timeout=cfg.redis.timeout)
        await cluster.start()
        self.ctx.cluster = cluster
        log.info("cluster state: %s", cluster.describe())

    async def stop(self) -> None:
        if self.ctx.cluster is not None:
            await self.ctx.cluster.stop()
            self.ctx.cluster = None


class EventRelayComponent:
    """Relays charging events from the store's outbox to the cluster event stream."""

    name = "events"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def start(self) -> None:
        from .charging import EventRelay
        events = self.ctx.cluster.events
        # Neither stream keeps what it has for sure (the in-process one dies with the
        # process, Redis may restart empty): an event counts as published once policy/
        # handled it. With policy off here nobody may, and none is waited for.
        from policy.consumer import GROUP
        waits = not events.durable and self.ctx.config.policy.enabled
        relay = EventRelay(self.ctx.store, events.publish_many,
                           handled=functools.partial(events.handled, group=GROUP)
                           if waits else None)
        await relay.start()
        self.ctx.relay = relay

    async def stop(self) -> None:
        if self.ctx.relay is not None:
            await self.ctx.relay.stop()  # what was committed still goes out
            self.ctx.relay = None


class ChargingComponent:
    """The charging core every protocol front-end calls, with the tariffs in force."""

    name = "charging"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def start(self) -> None:
        from .charging import ChargingCore
        from .charging.tariffs import PlanTariffs
        from .rating import TariffBook
        from .rating.storage import reload_tariffs
        book = TariffBook()
        await reload_tariffs(self.ctx.store, book)
        log.info("tariffs in force: %s", ", ".join(book.names()) or "none")
        self.ctx.tariffs = book
        core = ChargingCore(self.ctx.store, PlanTariffs(book), self.ctx.config.charging,
                            on_events=self.ctx.relay.notify if self.ctx.relay else None,
                            metrics=self.ctx.metrics)
        await core.reload()
        self.ctx.charging = core

    async def reload(self) -> None:
        """SIGHUP: recompile changed tariffs (swapped whole), reload plans, and read
        balances afresh (in case the database was edited by hand)."""
        from .rating.storage import reload_tariffs
        if self.ctx.tariffs is not None:
            await reload_tariffs(self.ctx.store, self.ctx.tariffs)
        if self.ctx.charging is not None:
            await self.ctx.charging.reload()
        if self.ctx.store is not None:
            self.ctx.store.balance_cache.clear()

    async def stop(self) -> None:
        self.ctx.charging = None


class RegistryComponent:
    """Loads the NAS and plan registry once the store is open (SIGHUP reloads it)."""

    name = "registry"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def start(self) -> None:
        self.ctx.registry = await self.ctx.load_registry()
        log.info("loaded %d NAS and %d plans", len(self.ctx.registry.nas),
                 len(self.ctx.registry.plans))

    async def stop(self) -> None:
        pass


# ---------------------------------------------------------------------- supervision
class Supervision:
    """Releases expired reservations and purges old operation results, periodically.

    Intervals are read from the live configuration on every round, so a
    reload changes them. Stopping cancels the rounds: a release already
    handed to the store is still committed when the store drains.
    """

    name = "supervision"
    PURGE_EVERY = 900.0

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._sweep_loop(), name="ocs-sweep"),
                       asyncio.create_task(self._purge_loop(), name="ocs-purge")]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks, "supervision")
        self._tasks = []

    async def _sweep_loop(self) -> None:
        while True:
            await self._guarded("reservation sweep", self.sweep_once)
            await asyncio.sleep(self.ctx.config.store.reservation_sweep_interval)

    async def _purge_loop(self) -> None:
        while True:
            retention_h = self.ctx.config.store.operation_retention_hours
            await asyncio.sleep(min(self.PURGE_EVERY, retention_h * 1800))
            await self._guarded("operation purge", self.purge_once)

    def _idle(self) -> dict[str, int]:
        """Silence, by protocol, after which supervision closes a session when it is not
        [charging] idle_timeout: RADIUS sessions after `[radius] stale_after_intervals`
        missed interims (of the Acct-Interim-Interval ocsd sends)."""
        radius = self.ctx.config.radius
        if radius.enabled and radius.stale_after_intervals and radius.acct_interim_interval:
            # plus a minute: a session's record is rewritten at most once a minute
            # (ocs.balance.SESSION_TOUCH_US), so its last report may be that much newer
            return {"radius": radius.stale_after_intervals * radius.acct_interim_interval + 60}
        return {}

    async def sweep_once(self) -> int:
        """Release expired reservations and close idle sessions (with their CDRs)."""
        assert self.ctx.store is not None
        if self.ctx.charging is not None:
            report = await self.ctx.charging.supervise(self._idle())
            units, closed = report["released_units"], report["closed_sessions"]
        else:
            units, closed = await self.ctx.store.release_expired(), 0
        if units:
            self.ctx.metrics.reservations_expired.inc(units)
            log.info("released %d units of expired reservations", units)
        if closed:
            log.info("closed %d idle sessions", closed)
        if not units and not closed:
            log.debug("supervision: nothing expired, no idle session")
        return units

    async def purge_once(self) -> int:
        assert self.ctx.store is not None
        retention_s = int(self.ctx.config.store.operation_retention_hours * 3600)
        purged = await self.ctx.store.purge_operations(retention_s)
        log.debug("purged %d operation results older than %ds", purged, retention_s)
        days = self.ctx.config.store.unmatched_retention_days
        unmatched = await self.ctx.store.purge_unmatched(int(days * 86_400))
        if unmatched:
            log.info("forgot %d unmatched accounting entries not reported for %g days",
                     unmatched, days)
        return purged + unmatched

    async def _guarded(self, what: str, job) -> None:
        try:
            await job()
        except StoreError as exc:
            self.ctx.metrics.store_errors.labels(error=type(exc).__name__).inc()
            log.warning("%s failed: %s", what, exc)
        except OcsError as exc:
            log.error("%s failed: %s", what, exc)
        except Exception:  # noqa: BLE001 - the loop must outlive a bug; it is logged whole
            log.exception("%s failed unexpectedly", what)


# ---------------------------------------------------------------------- HTTP
async def healthz(request: web.Request) -> web.Response:
    """200 when the store answers, 503 ("degraded" or "stopping") with the reason otherwise."""
    ctx = request.app[CONTEXT]
    reason = None
    if ctx.stopping:
        reason = "stopping"
    elif ctx.store is None:
        reason = "store not open"
    else:
        try:
            if not await asyncio.wait_for(ctx.store.ping(), STORE_PROBE_TIMEOUT):
                reason = "store did not answer the probe"
        except asyncio.TimeoutError:
            reason = f"store did not answer within {STORE_PROBE_TIMEOUT:g}s"
        except OcsError as exc:
            reason = f"store unavailable: {exc}"
    cluster_state = None
    if ctx.cluster is not None:
        cluster_state = "ok"
        try:
            await asyncio.wait_for(ctx.cluster.ping(), STORE_PROBE_TIMEOUT)
        except (OcsError, asyncio.TimeoutError) as exc:
            cluster_state = f"unavailable: {exc or 'timeout'}"
            reason = reason or f"{ctx.cluster.kind} {cluster_state}"
    body = {
        "status": "ok" if reason is None else ("stopping" if ctx.stopping else "degraded"),
        "node": ctx.config.daemon.node_name,
        "version": __version__,
        "extensions": accel.ACTIVE,
        "store": "ok" if reason is None else reason,
        "config_generation": ctx.generation,
        "nas_loaded": len(ctx.registry.nas),
        "plans_loaded": len(ctx.registry.plans),
        "cluster": ctx.cluster.kind if ctx.cluster is not None else None,
        "cluster_state": cluster_state,
        "uptime_s": round(time.monotonic() - ctx.started_at, 3),
    }
    if not ctx.stopping and reason != ctx.last_health_problem:
        # Logged on change only: a load balancer probing every second must not
        # flood the log during an outage.
        if reason is None:
            log.info("health check ok again")
        else:
            log.warning("health check degraded: %s", reason)
        ctx.last_health_problem = reason
    return web.json_response(body, status=200 if reason is None else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the process's registry."""
    ctx = request.app[CONTEXT]
    await ctx.refresh_sessions()
    return web.Response(body=generate_latest(ctx.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def split_listen(listen: str) -> tuple[str | None, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); '[::1]:80' -> ('::1', 80); ':80' and
    '[::]:80' -> every interface of both families (asyncio binds "::" IPv6-only)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    return (None if host in ("", "::") else host), int(port)


def reloaded_tls_context(cfg, running: ssl.SSLContext, what: str) -> ssl.SSLContext:
    """SIGHUP: a section's certificate, key and CA files read again (rotated in
    place), for new connections; `running` kept, with an error logged, when a file
    cannot be loaded."""
    try:
        fresh = tls_server_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        log.error("%s TLS certificates not reloaded, keeping the running ones: %s", what, exc)
        return running
    log.info("%s TLS certificate, key and CA reloaded for new connections", what)
    return fresh


def tls_server_context(cfg) -> ssl.SSLContext:
    """Server-side TLS 1.2 or later from a section's tls_certificate, tls_key and
    tls_ca (RFC 6733 §13, RFC 6614 §2.3); with tls_ca, clients must present a
    certificate it verifies."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_certificate, cfg.tls_key)
    except OSError as exc:  # ssl.SSLError too; name the files, the error alone does not
        raise type(exc)(exc.errno, f"{cfg.tls_certificate} / {cfg.tls_key}: "
                                   f"{exc.strerror or exc}") from exc
    if cfg.tls_ca:
        try:
            ctx.load_verify_locations(cfg.tls_ca)
        except OSError as exc:
            raise type(exc)(exc.errno, f"{cfg.tls_ca}: {exc.strerror or exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _HttpServerLog(logging.LoggerAdapter):
    """aiohttp's server log, with malformed HTTP told apart from our own faults.

    aiohttp logs a request it cannot parse (a bad header, a scanner's garbage)
    with a traceback at ERROR, as if the server had failed. The client gets 400
    either way; here that is one warning line, at most one a minute, and a count
    (`ocs_api_requests_total{route="malformed",status="400"}`).
    """

    def __init__(self, metrics: Metrics):
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.metrics = metrics
        self._warnings = logs.Throttled(self.logger)

    def exception(self, msg, *args, exc_info=True, **kwargs):
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if not isinstance(exc, HttpProcessingError):
            return super().exception(msg, *args, exc_info=exc_info, **kwargs)
        self.metrics.api_requests.labels(method="-", route="malformed", status="400").inc()
        text = " ".join(str(exc.message or exc).split())[:200]
        remote = args[0] if args else "?"
        self._warnings.warning("malformed", "malformed HTTP request from %s answered 400: %s",
                               remote, text)


class HttpListeners:
    """The API listener (api.listen) and the optional metrics-only one (metrics.listen).

    Stopping closes every listening socket first, then lets in-flight
    requests finish within api.shutdown_timeout.
    """

    name = "http"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._runners: list[tuple[str, web.AppRunner]] = []
        self.addresses: dict[str, list[Any]] = {}

    def _app(self, *, with_api: bool) -> web.Application:
        cfg = self.ctx.config
        app = web.Application(client_max_size=cfg.api.max_body_mb * 1024 * 1024,
                              middlewares=[self._forget_cached] if with_api else [])
        app[CONTEXT] = self.ctx
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/metrics", metrics)
        if with_api:
            from .api import setup_api
            from .api import CATALOG_CHANGED
            setup_api(app, store=self.ctx.store, config=cfg, metrics=self.ctx.metrics)
            if CATALOG_CHANGED in app:
                app[CATALOG_CHANGED].append(self._catalog_changed)
        return app

    @web.middleware
    async def _forget_cached(self, request: web.Request, handler):
        """A change through the API (subscriber, account, password...) applies at once
        on this node: the charging core's lookup caches are dropped after it."""
        response = await handler(request)
        if (request.method in ("POST", "PATCH", "PUT", "DELETE") and response.status < 400
                and self.ctx.charging is not None):
            self.ctx.charging.forget()
        return response

    async def _catalog_changed(self, kind: str) -> None:
        """A NAS, plan or tariff changed through the API: reload now, not at SIGHUP."""
        if kind == "tariff":
            from .rating.storage import reload_tariffs
            if self.ctx.tariffs is not None:
                await reload_tariffs(self.ctx.store, self.ctx.tariffs)
            return
        before = self.ctx.registry
        self.ctx.registry = await self.ctx.load_registry()
        if self.ctx.charging is not None:
            await self.ctx.charging.reload()
        log.info("%s changed through the API: %s", kind, self.ctx.registry.changes_since(before))

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # release what was bound before the failure
            raise

    async def _start(self) -> None:
        cfg = self.ctx.config
        wanted = []
        if cfg.api.enabled:
            wanted.append(("api", cfg.api.listen, True))
        if cfg.metrics.listen:
            wanted.append(("metrics", cfg.metrics.listen, False))
        for name, listen, with_api in wanted:
            # aiohttp waits twice for a busy connection (graceful, then after
            # cancelling the request), each time up to its shutdown_timeout; half
            # of ours each keeps the whole wait within api.shutdown_timeout.
            runner = web.AppRunner(self._app(with_api=with_api), access_log=None,
                                   handle_signals=False, logger=_HttpServerLog(self.ctx.metrics),
                                   shutdown_timeout=cfg.api.shutdown_timeout / 2)
            await runner.setup()
            self._runners.append((name, runner))
            host, port = split_listen(listen)
            site = web.TCPSite(runner, host, port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                raise OSError(exc.errno, f"cannot listen on {listen} ({name}): {why}") from exc
            self.addresses[name] = list(runner.addresses)
            log.info("%s listening on %s", name, listen)

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        # Stop accepting everywhere before waiting for anyone's in-flight requests.
        for _, runner in runners:
            for site in list(runner.sites):
                await site.stop()
        await asyncio.gather(*(runner.cleanup() for _, runner in runners))
        if runners:
            log.info("HTTP listeners closed")

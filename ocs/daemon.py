"""`ocsd`: the process. Wires the components, handles signals, talks to systemd.

Start: the configuration is loaded and validated (a bad one stops here with
file, key and reason, exit 2); then, on uvloop, the components start in order
(store -> cluster -> event relay -> registry -> supervision -> [rating,
charging, policy, RADIUS/Diameter listeners] -> HTTP) and systemd hears READY=1 only once the
last listener is bound.

SIGTERM/SIGINT: STOPPING=1, the started components stop in reverse: listeners
close first, in-flight HTTP requests get api.shutdown_timeout, the store
commits what is queued within daemon.drain_timeout (what it cannot commit is
failed, never acknowledged), exit 0.

SIGHUP: RELOADING=1, the same file is read again. An invalid file is refused
with one error line and the running configuration stays. A valid one is
applied where it can be live (logging, supervision intervals, drain bound,
watchdog) together with a fresh NAS/plan registry from the store; settings
bound at start (listen addresses, store, Redis, ...) are logged as needing a
restart and keep their running value. Then READY=1 again.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import signal
import sys
from typing import Any

from pydantic import BaseModel, SecretStr

from . import __version__, accel, logs
from .components import (ChargingComponent, ClusterComponent, Component, Context,
                         EventRelayComponent, HttpListeners, RegistryComponent, ServesTls,
                         StoreComponent, Supervision)
from .collector import Collector
from .config import (DEFAULT_PATH, URL_PASSWORD, Config, hide_url_password, lease_warning,
                     load, secret_weakness)
from .errors import ConfigError, OcsError
from .metrics import Metrics
from .model import PeerKind
from .sdnotify import Notifier

log = logging.getLogger("ocs.daemon")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

#: Settings a SIGHUP applies; every other one needs a restart.
LIVE_KEYS = frozenset({
    "log.format", "log.level", "log.levels",
    "daemon.drain_timeout", "daemon.watchdog",
    "store.reservation_sweep_interval", "store.operation_retention_hours",
})


def version_string() -> str:
    """The version and which hot paths run compiled (cext/) or as pure-Python twins."""
    from diameter import codec as diameter_codec
    from radius import codec as radius_codec
    each = {"rating": accel.ACTIVE, "radius codec": radius_codec.IMPLEMENTATION,
            "diameter codec": diameter_codec.IMPLEMENTATION}
    kinds = set(each.values())
    overall = kinds.pop() if len(kinds) == 1 else "mixed"
    return (f"ocsd {__version__} (extensions: {overall}; "
            + ", ".join(f"{name} {how}" for name, how in each.items()) + ")")


def build_components(ctx: Context) -> list[Component]:
    """The start order. Stopping walks it backwards.

    The daemon is the one place where the charging core (ocs) meets the
    protocol front-ends and enforcement (radius/, diameter/, policy/): they are
    imported here and nowhere else in ocs.
    """
    from diameter.component import DiameterComponent
    from policy.component import PolicyComponent
    from radius.component import RadiusComponent
    return [
        StoreComponent(ctx),
        ClusterComponent(ctx),
        EventRelayComponent(ctx),
        RegistryComponent(ctx),
        ChargingComponent(ctx),
        Supervision(ctx),
        # Enforcement starts before the listeners and stops after them, so an
        # event caused by a listener's last request is still acted on.
        PolicyComponent(ctx),
        # Protocol listeners: after everything they call into, before the HTTP
        # API, so they are closed first on stop.
        RadiusComponent(ctx),
        DiameterComponent(ctx),
        HttpListeners(ctx),
    ]


# ---------------------------------------------------------------------- config helpers
def flatten(config: Config) -> dict[str, tuple[str, str, Any]]:
    """'section.key' -> (section, field name, value) for every setting."""
    out: dict[str, tuple[str, str, Any]] = {}
    for section_name in type(config).model_fields:
        section = getattr(config, section_name)
        if not isinstance(section, BaseModel):
            continue
        for field_name, info in type(section).model_fields.items():
            out[f"{section_name}.{info.alias or field_name}"] = (
                section_name, field_name, getattr(section, field_name))
    return out


def show(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, str):
        return repr(hide_url_password(value))
    return repr(value)


def merge_reload(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The configuration to run after a reload, what it applies, what needs a restart.

    Settings that cannot change live keep their running value in the
    returned config, so each later reload reports them again until a restart.
    """
    before, after = flatten(old), flatten(new)
    applied, restart = [], []
    keep: dict[str, dict[str, Any]] = {}
    for key, (section, field_name, value) in after.items():
        old_value = before[key][2]
        if value == old_value:
            continue
        change = f"{key}: {show(old_value)} -> {show(value)}"
        if key in LIVE_KEYS:
            applied.append(change)
        else:
            restart.append(change)
            keep.setdefault(section, {})[field_name] = old_value
    updates = {section: getattr(new, section).model_copy(update=fields)
               for section, fields in keep.items()}
    return new.model_copy(update=updates), applied, restart


def register_config_secrets(config: Config) -> None:
    for secret in (config.api.bootstrap_token, config.redis.sentinel_password):
        if secret is not None:
            logs.register_secret(secret.get_secret_value())
    for url in (config.store.url, config.redis.url):
        m = URL_PASSWORD.search(url)
        if m:
            logs.register_secret(m.group(2))


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------- the daemon
class Daemon:
    """One running ocsd: its context, components and signal handling."""

    def __init__(self, config: Config, config_path: str, notifier: Notifier | None = None):
        self.ctx = Context(config=config, config_path=config_path, metrics=Metrics())
        self.notifier = notifier or Notifier(None)
        self.components = build_components(self.ctx)
        self._started: list[Component] = []
        self._stop_requested: asyncio.Event | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._ready = False
        self._reload_pending = False
        self._tasks: set[asyncio.Task] = set()
        self.collector = Collector(config.daemon.gc_interval, config.daemon.gc_full_interval,
                                   self.ctx.metrics.gc_pause)

    # ------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. Returns the exit code."""
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        cfg = self.ctx.config
        register_config_secrets(cfg)
        self.ctx.metrics.build.info({"version": __version__, "extensions": accel.ACTIVE,
                                     "python": platform.python_version(),
                                     "node": cfg.daemon.node_name})
        log.info("%s starting on node %s with %s", version_string(), cfg.daemon.node_name,
                 self.ctx.config_path)
        code = EXIT_OK
        starting = asyncio.create_task(self._start_all(), name="ocs-start")
        stop_wait = asyncio.create_task(self._stop_requested.wait(), name="ocs-stop-wait")
        await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and not starting.cancelled() and starting.exception() is None \
                and not self._stop_requested.is_set():
            self._became_ready()
            await stop_wait
        elif not starting.done():
            log.info("stop requested while starting")
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        elif not starting.cancelled() and starting.exception() is not None:
            exc = starting.exception()
            if isinstance(exc, (OcsError, OSError)):
                log.error("cannot start: %s", describe_error(exc))
            else:
                log.error("cannot start", exc_info=exc)
            code = EXIT_FAILURE
        stop_wait.cancel()
        return max(code, await self._shutdown())

    async def _start_all(self) -> None:
        for component in self.components:
            self.notifier.status(f"starting {component.name}")
            await component.start()
            self._started.append(component)

    def _became_ready(self) -> None:
        self._ready = True
        _tune_gc()
        self.collector.start()
        self.ctx.metrics.up.set(1)
        log.info("ready: %s", self.status_line())
        self.notifier.ready(self.status_line())
        interval = self.notifier.watchdog_interval
        if interval:
            if not self.ctx.config.daemon.watchdog:
                log.warning("systemd watchdog is armed but daemon.watchdog = false: "
                            "systemd will restart ocsd when the watchdog expires")
            self._spawn(self._watchdog(interval), "ocs-watchdog")
        if self._reload_pending:
            self._spawn(self.reload(), "ocs-reload")

    def status_line(self) -> str:
        reg, cfg = self.ctx.registry, self.ctx.config
        api = f"API on {cfg.api.listen}" if cfg.api.enabled else "API disabled"
        return (f"serving: {api}, {len(reg.nas)} NAS, {len(reg.plans)} plans, "
                f"config generation {self.ctx.generation}")

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop itself: a blocked loop misses the deadline.
        while True:
            if self.ctx.config.daemon.watchdog:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _stop_bound(self, component: Component) -> float:
        cfg = self.ctx.config
        if isinstance(component, HttpListeners):
            return cfg.api.shutdown_timeout + 2
        if isinstance(component, StoreComponent):
            return cfg.daemon.drain_timeout + 5
        return 5.0

    async def _shutdown(self) -> int:
        cfg = self.ctx.config
        self.ctx.stopping = True
        self.ctx.metrics.up.set(0)
        bound = cfg.api.shutdown_timeout + cfg.daemon.drain_timeout + 10
        self.notifier.stopping("stopping: draining in-flight work", extend_timeout=bound)
        for task in list(self._tasks):
            if task.get_name() == "ocs-reload":
                task.cancel()
        code = EXIT_OK
        for component in reversed(self._started):
            try:
                await asyncio.wait_for(component.stop(), self._stop_bound(component))
            except asyncio.TimeoutError:
                log.error("%s did not stop within %.0fs", component.name,
                          self._stop_bound(component))
                code = EXIT_FAILURE
            except Exception:  # noqa: BLE001 - keep stopping the others; logged whole
                log.exception("stopping %s failed", component.name)
                code = EXIT_FAILURE
        self._started.clear()
        self.collector.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("stopped")
        self.notifier.close()
        return code

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ signals
    def _on_stop_signal(self, sig: signal.Signals) -> None:
        assert self._stop_requested is not None
        if self._stop_requested.is_set():
            log.info("%s: already stopping", sig.name)
            return
        log.info("%s: stopping", sig.name)
        self._stop_requested.set()

    def _on_hup(self) -> None:
        if self.ctx.stopping or (self._stop_requested and self._stop_requested.is_set()):
            log.info("SIGHUP ignored: stopping")
        elif not self._ready:
            log.info("SIGHUP while starting: reloading once ready")
            self._reload_pending = True
        else:
            self._spawn(self.reload(), "ocs-reload")

    # ------------------------------------------------------------ reload
    async def reload(self) -> bool:
        """Re-read the configuration file and the NAS/plan registry. True when applied."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            self._reload_pending = False
            self.notifier.reloading("reloading configuration")
            try:
                ok = await self._reload()
            finally:
                if not self.ctx.stopping:
                    self.notifier.ready(self.status_line())
            self.ctx.metrics.config_reloads.labels(result="ok" if ok else "failed").inc()
            return ok

    async def _reload(self) -> bool:
        try:
            new = load(self.ctx.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False
        register_config_secrets(new)
        effective, applied, restart = merge_reload(self.ctx.config, new)
        try:
            registry = await self.ctx.load_registry()
        except OcsError as exc:
            log.error("reload failed, keeping the running configuration: cannot load NAS "
                      "and plans from the store: %s", exc)
            return False
        logs.setup(effective.log)
        before = self.ctx.registry
        self.ctx.config, self.ctx.registry = effective, registry
        for component in self._started:
            if isinstance(component, ChargingComponent):
                await component.reload()  # tariffs recompiled, plans reloaded
            elif isinstance(component, ServesTls):
                component.reload_certificates()
        self.ctx.generation += 1
        for change in restart:
            log.warning("%s needs restart; still running with the old value", change)
        log.info("configuration reloaded (generation %d): %s; %s", self.ctx.generation,
                 "; ".join(applied) or "no live setting changed",
                 registry.changes_since(before))
        return True


# ---------------------------------------------------------------------- --check-config
def check_config(path: str) -> int:
    """Validate the file, summarise it, warn about weak secrets. Never prints a secret."""
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"ocsd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    api = config.api.listen if config.api.enabled else "disabled"
    print(f"{path}: configuration is valid")
    for label, value in (
            ("node", config.daemon.node_name),
            ("store", hide_url_password(config.store.url)
             + (f" (schema {config.store.schema_})" if config.store.schema_ else "")),
            ("redis", config.redis.describe() if config.redis.enabled
             else "none (single node)"),
            ("api", api),
            ("metrics", config.metrics.listen or "on the API listener"),
            ("log", f"{config.log.format}, level {config.log.level}"),
            ("extensions", accel.ACTIVE)):
        print(f"  {label + ':':<12}{value}")

    warnings: list[str] = []
    short = lease_warning(config)
    if short:
        warnings.append(short)
    if config.api.bootstrap_token is not None:
        why = secret_weakness(config.api.bootstrap_token.get_secret_value())
        if why:
            warnings.append(f"api.bootstrap_token is weak: {why}")
    nas_list, note = asyncio.run(_nas_from_store(config))
    if note:
        print(f"  {'secrets:':<12}{note}")
    for nas in nas_list:
        if nas.kind is not PeerKind.NAS and not nas.secret:
            continue  # Diameter peers and control endpoints may have no shared secret
        why = secret_weakness(nas.secret)
        if why:
            warnings.append(f"NAS {nas.name!r} ({nas.address}): shared secret is weak: {why}")
    for warning in warnings:
        print(f"ocsd: warning: {path}: {warning}", file=sys.stderr)
    return EXIT_OK


async def _nas_from_store(config: Config) -> tuple[list, str | None]:
    """The NAS in the store, or ([], why they could not be checked)."""
    from .store import store_from_config

    if config.store.url.startswith("sqlite:"):
        path = config.store.url[len("sqlite:"):]
        path = path[2:] if path.startswith("//") else path
        if not os.path.exists(path):
            return [], f"store {path} does not exist yet; NAS secrets not checked"
    store = store_from_config(config)
    try:
        await store.open(migrate_schema=False)
    except OcsError as exc:
        return [], f"NAS secrets not checked: {exc}"
    try:
        return await store.list_nas(), None
    except OcsError as exc:
        return [], f"NAS secrets not checked: {exc}"
    finally:
        await store.close()


# ---------------------------------------------------------------------- entry point
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ocsd", description="Online charging server: RADIUS, Diameter, REST API.")
    parser.add_argument("--config", metavar="PATH",
                        help=f"configuration file (default: $OCS_CONFIG or {DEFAULT_PATH})")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, warn about weak secrets, and exit")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser.parse_args(argv)


def _tune_gc() -> None:
    """What start-up allocated (modules, tariffs, dictionaries) lives as long as the
    process: move it out of the cyclic collector's reach. A request allocates
    hundreds of objects and the default threshold (700) ran a young collection
    every few requests, about a tenth of the request path; collect less often.
    (With `[daemon] gc_interval` set, ocs.collector runs the collections instead.)"""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.version:
        print(version_string())
        sys.exit(EXIT_OK)
    path = args.config or os.environ.get("OCS_CONFIG") or DEFAULT_PATH
    if args.check_config:
        sys.exit(check_config(path))
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"ocsd: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    logs.setup(config.log)
    import uvloop

    daemon = Daemon(config, path, Notifier.from_env(unset_environment=True))
    sys.exit(uvloop.run(daemon.run()))


if __name__ == "__main__":
    main()

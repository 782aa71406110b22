"""Wiring of the REST API into an aiohttp application.

One middleware does, for every request, in this order: route matching
errors as JSON (404/405), authentication and role check, the handler, the
mapping of typed errors to JSON answers, then the audit record (mutating
calls of an authenticated caller, whatever their outcome), one access-log
line on `ocs.api` and the metrics. Doing it in one place keeps the order
obvious: an audit record always carries the status the client really got.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..errors import OcsError
from ..model import Role
from . import problems
from .auth import authenticate, authorize, ensure_bootstrap_token
from .routing import (MUTATING, Call, Endpoint, exchange, parse_json_body, parse_query,
                      parse_text_body, path_params, read_body)

log = logging.getLogger("ocs.api")

# Routes the daemon serves beside the API that need no token.
PUBLIC_ROUTES = frozenset({"/healthz", "/metrics", "/openapi.json"})
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass
class ApiState:
    store: Any
    config: Any
    metrics: Any
    endpoints: list[Endpoint] = field(default_factory=list)
    openapi: dict | None = None   # built on first request (see ocs.api.openapi)

    @property
    def max_body(self) -> int:
        return self.config.api.max_body_mb * 1024 * 1024


STATE = web.AppKey("ocs.api.state", ApiState)

CatalogListener = Callable[[str], Awaitable[None]]
CATALOG_CHANGED = web.AppKey("ocs.api.catalog_changed", list[CatalogListener])
"""Async callbacks `listener(kind)` awaited after a NAS ("nas") or plan ("plan") was
created, changed or removed through the API, e.g. to reload the daemon's registry
without waiting for SIGHUP. A failing listener is logged; the change stands."""


async def catalog_changed(request: web.Request, kind: str) -> None:
    for listener in request.app.get(CATALOG_CHANGED, ()):
        try:
            await listener(kind)
        except Exception:  # the change is committed; a listener must not undo the answer
            log.exception("catalog listener failed after a %s change", kind)


def endpoint_of(request: web.Request) -> Endpoint | None:
    return getattr(request.match_info.route.handler, "endpoint", None)


def route_label(request: web.Request) -> str:
    """The route template (bounded label set), never the concrete path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def api_middleware(request: web.Request, handler) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.perf_counter()
    label = route_label(request)
    endpoint = endpoint_of(request)
    token = None
    status = 500
    try:
        try:
            if request.match_info.http_exception is not None:
                raise request.match_info.http_exception
            if not _is_public(request, endpoint, label):
                token = await authenticate(request, state.store, state.metrics)
                exchange(request).token = token
                needed = endpoint.role if endpoint is not None else (
                    Role.READ_ONLY if request.method in ("GET", "HEAD") else Role.ADMIN)
                authorize(token, needed, f"{request.method} {label}", state.metrics)
            response = await handler(request)
        except asyncio.CancelledError:
            status = 499  # the client went away; nothing was answered
            raise
        except web.HTTPException as exc:
            if exc.status >= 400:
                response = problems.response(problems.from_exception(exc))
            else:  # a redirect or similar from a route the daemon added: not an error
                status = exc.status
                raise
        except Exception as exc:  # every error becomes a JSON answer, never a traceback
            err = problems.from_exception(exc)
            if err is None:
                log.exception("unexpected error in %s %s", request.method, request.path)
                err = problems.ApiError(500, "internal error; the server log has the details")
            response = problems.response(err)
        status = response.status
        return response
    finally:
        elapsed = time.perf_counter() - started
        changes = endpoint.changes if endpoint is not None and endpoint.changes is not None \
            else request.method in MUTATING
        if token is not None and changes:
            await _audit(state, request, token, status)
        method = request.method if request.method in _KNOWN_METHODS else "other"
        state.metrics.api_requests.labels(method=method, route=label, status=str(status)).inc()
        state.metrics.request_duration.labels(proto="api", op=label).observe(elapsed)
        # The text format appends the extras ("actor=ops remote=..."), JSON has them as keys.
        log.info("%s %s %d %.1fms", request.method, request.path, status, elapsed * 1000,
                 extra={"actor": token.name if token is not None else "-",
                        "remote": request.remote, "route": label, "status": status,
                        "duration_ms": round(elapsed * 1000, 3)})


def _is_public(request: web.Request, endpoint: Endpoint | None, label: str) -> bool:
    if request.method not in ("GET", "HEAD"):
        return False
    if endpoint is not None:
        return endpoint.role is None
    return label in PUBLIC_ROUTES


async def _audit(state: ApiState, request: web.Request, token, status: int) -> None:
    try:
        await state.store.add_audit(
            actor=token.name, role=token.role.value,
            action=f"{request.method} {request.path}", target=exchange(request).audit_target,
            request=exchange(request).audit_body, status=status, remote=request.remote)
    except OcsError as exc:
        # The call itself is done; losing its audit record is logged loudly.
        log.error("audit record lost for %s %s by %s (status %d): %s", request.method,
                  request.path, token.name, status, exc)


def make_handler(endpoint: Endpoint):
    """The aiohttp handler serving `endpoint`: input validation, then the domain handler."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        token = exchange(request).token
        params = path_params(request, endpoint)
        call = Call(request=request, store=state.store, config=state.config,
                    metrics=state.metrics, actor=token.name if token else "",
                    role=token.role if token else Role.READ_ONLY, params=params)
        key = params.get("id", params.get("name"))
        if endpoint.target and key is not None:
            call.target = f"{endpoint.target}:{key}"
        try:
            if endpoint.method in MUTATING and (endpoint.body is not None
                                                or endpoint.content_type != "application/json"):
                raw = await read_body(request, state.max_body)
                if endpoint.content_type == "application/json":
                    call.body = parse_json_body(request, raw, endpoint.body)
                else:
                    call.body = parse_text_body(request, raw, endpoint.content_type)
            if endpoint.query is not None:
                call.query = parse_query(request, endpoint.query)
            result = await endpoint.handler(call)
        finally:
            exchange(request).audit_target = call.target
        return render(endpoint, result)

    handle.endpoint = endpoint  # type: ignore[attr-defined]
    handle.__name__ = endpoint.operation_id
    return handle


def render(endpoint: Endpoint, result: Any) -> web.Response:
    if isinstance(result, web.Response):
        return result
    if endpoint.response is None:
        return web.Response(status=204)
    if not isinstance(result, endpoint.response):
        raise TypeError(f"{endpoint.operation_id} answered {type(result).__name__}, "
                        f"documented as {endpoint.response.__name__}")
    return web.Response(body=result.model_dump_json().encode(), status=endpoint.status,
                        content_type="application/json")


def install(app: web.Application, *, store, config, metrics, endpoints: list[Endpoint]) -> None:
    app[STATE] = ApiState(store=store, config=config, metrics=metrics, endpoints=endpoints)
    app[CATALOG_CHANGED] = []
    app.middlewares.append(api_middleware)
    for ep in endpoints:
        app.router.add_route(ep.method, ep.path, make_handler(ep))
    secret = config.api.bootstrap_token
    if secret is not None and secret.get_secret_value():
        async def bootstrap(app: web.Application) -> None:
            await ensure_bootstrap_token(store, secret.get_secret_value())
        app.on_startup.append(bootstrap)

"""The REST API on a real socket: the harness the other API tests use, and what
holds for every request (public routes, JSON errors, limits, logs, metrics).

`api` serves `setup_api` on an application shaped like the daemon's (with its
own /healthz and /metrics) on a free TCP port, over the parametrized `store`
(SQLite and PostgreSQL), with one token per role.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from ocs.api import setup_api
from ocs.config import from_dict
from ocs.metrics import Metrics

ADMIN_SECRET = "admin-bootstrap-secret-0123456789"
METRICS = web.AppKey("test.metrics", Metrics)


@dataclass
class Reply:
    status: int
    headers: Any
    text: str

    @property
    def json(self) -> Any:
        import json
        return json.loads(self.text)

    @property
    def error(self) -> dict:
        return self.json["error"]

    def fields(self) -> set[str]:
        """Fields a 422 names in its details."""
        return {d.get("field") for d in self.error["details"]}


class Client:
    def __init__(self, session: aiohttp.ClientSession, token: str | None):
        self.session = session
        self.token = token

    async def request(self, method: str, path: str, *, json: Any = None, data: Any = None,
                      headers: dict | None = None, params: dict | None = None) -> Reply:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        h.update(headers or {})
        async with self.session.request(method, path, json=json, data=data, headers=h,
                                        params=params) as r:
            return Reply(r.status, r.headers, await r.text())

    async def get(self, path, **kw):
        return await self.request("GET", path, **kw)

    async def post(self, path, json=None, **kw):
        return await self.request("POST", path, json=json, **kw)

    async def patch(self, path, json=None, **kw):
        return await self.request("PATCH", path, json=json, **kw)

    async def delete(self, path, **kw):
        return await self.request("DELETE", path, **kw)


class Api:
    """A running API: `admin`, `operator`, `reader` and `anon` clients."""

    def __init__(self, store, metrics, runner, base, session):
        self.store = store
        self.metrics = metrics
        self.runner = runner
        self.base = base
        self.session = session
        self.anon = Client(session, None)
        self.admin = Client(session, ADMIN_SECRET)
        self.operator: Client
        self.reader: Client

    def client(self, token: str | None) -> Client:
        return Client(self.session, token)

    def sample(self, name: str, **labels) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def daemon_like_app(**client_args) -> web.Application:
    """An application with the routes the daemon adds beside the API."""
    app = web.Application(**client_args)

    async def healthz(request):
        return web.json_response({"status": "ok"})

    async def metrics(request):
        registry = request.app[METRICS].registry
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_api(store, *, config: dict | None = None,
                    context: Any = None) -> tuple[Api, web.AppRunner]:
    """`context`: what the daemon's components would be to the routes that ask
    for them (ocs.components.CONTEXT: its cluster, its Diameter front-end)."""
    cfg = from_dict({"api": {"bootstrap_token": ADMIN_SECRET, **(config or {})}})
    metrics = Metrics()
    app = daemon_like_app()
    app[METRICS] = metrics
    if context is not None:
        from ocs.components import CONTEXT
        app[CONTEXT] = context
    setup_api(app, store=store, config=cfg, metrics=metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # runs on_startup: the bootstrap admin token
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    session = aiohttp.ClientSession(base, timeout=aiohttp.ClientTimeout(total=20))
    return Api(store, metrics, runner, base, session), runner


async def stop_api(api: Api) -> None:
    await api.session.close()
    await api.runner.cleanup()


@pytest.fixture
async def api(store):
    api, _ = await start_api(store)
    _, op = await store.create_token("ops", "operator")
    _, ro = await store.create_token("viewer", "read-only")
    api.operator = api.client(op)
    api.reader = api.client(ro)
    yield api
    await stop_api(api)


async def make_account(api: Api, name: str = "acme", **fields) -> dict:
    body = {"name": name, "currency": "EUR", "billing": "prepaid", **fields}
    r = await api.operator.post("/v1/accounts", body)
    assert r.status == 201, r.text
    return r.json


# ---------------------------------------------------------------------------- tests


async def test_public_routes_need_no_token_and_the_rest_does(api):
    assert (await api.anon.get("/healthz")).status == 200
    metrics = await api.anon.get("/metrics")
    assert metrics.status == 200 and "ocs_api_requests_total" in metrics.text
    doc = await api.anon.get("/openapi.json")
    assert doc.status == 200 and doc.json["openapi"] == "3.1.0"
    r = await api.anon.get("/v1/accounts")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.error["code"] == "unauthorized"


async def test_unknown_route_and_wrong_method_answer_json(api):
    r = await api.admin.get("/v1/nothing-here")
    assert r.status == 404 and r.headers["Content-Type"].startswith("application/json")
    assert r.error == {"status": 404, "code": "not_found", "message": "no such route",
                       "details": []}
    r = await api.admin.request("PUT", "/v1/accounts")
    assert r.status == 405 and r.error["code"] == "method_not_allowed"
    assert set(r.headers["Allow"].split(",")) == {"GET", "POST"}
    r = await api.admin.get("/v1/accounts/not-a-number")
    assert r.status == 404
    r = await api.admin.get("/v1/accounts/" + "9" * 30)
    assert r.status == 404


async def test_bad_json_wrong_content_type_and_oversized_body(store):
    api, _ = await start_api(store, config={"max_body_mb": 1})
    try:
        r = await api.admin.post("/v1/accounts", data=b'{"name": "x",',
                                 headers={"Content-Type": "application/json"})
        assert r.status == 400 and "not valid JSON" in r.error["message"]
        r = await api.admin.post("/v1/accounts", data=b"name=x",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status == 400 and "application/json" in r.error["message"]
        big = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
        r = await api.admin.post("/v1/accounts", data=big,
                                 headers={"Content-Type": "application/json"})
        assert r.status == 413 and r.error["code"] == "payload_too_large"
        # Each refused call is in the audit log with who sent it and what they got.
        statuses = [e.status for e in await store.list_audit(actor="bootstrap")]
        assert statuses == [413, 400, 400]
        assert await store.list_accounts() == []
    finally:
        await stop_api(api)


async def test_store_unavailable_is_503_with_retry_after(api):
    acct = await make_account(api)
    await api.store.driver.close()  # the database goes away under the running API
    r = await api.operator.get(f"/v1/accounts/{acct['id']}")
    assert r.status == 503
    assert int(r.headers["Retry-After"]) > 0
    assert r.error["code"] == "store_unavailable"
    assert "sqlite" not in r.text and "postgres" not in r.text
    r = await api.operator.post(f"/v1/accounts/{acct['id']}/topup", {"amount": "1.00"})
    assert r.status == 503
    # The process is still serving.
    assert (await api.anon.get("/healthz")).status == 200


async def test_unexpected_error_is_500_json_without_traceback_and_logged(api, caplog,
                                                                          monkeypatch):
    async def broken():
        raise ZeroDivisionError("internal detail 42")

    monkeypatch.setattr(api.store, "list_plans", broken)
    with caplog.at_level(logging.ERROR, logger="ocs.api"):
        r = await api.reader.get("/v1/plans")
    assert r.status == 500 and r.error["code"] == "internal_error"
    assert "Traceback" not in r.text and "internal detail" not in r.text
    logged = [rec for rec in caplog.records if rec.name == "ocs.api" and rec.exc_info]
    assert logged and logged[0].exc_info[0] is ZeroDivisionError


async def test_one_access_line_and_metrics_per_request(api, caplog):
    acct = await make_account(api)
    with caplog.at_level(logging.INFO, logger="ocs.api"):
        r = await api.reader.get(f"/v1/accounts/{acct['id']}")
        assert r.status == 200
        await api.anon.get(f"/v1/accounts/{acct['id']}")
    records = [rec for rec in caplog.records if rec.name == "ocs.api"]
    assert len(records) == 2
    assert records[0].getMessage().startswith(f"GET /v1/accounts/{acct['id']} 200 ")
    assert (records[0].actor, records[0].route, records[0].status) == (
        "viewer", "/v1/accounts/{id}", 200)
    assert records[1].getMessage().startswith(f"GET /v1/accounts/{acct['id']} 401 ")
    assert records[1].actor == "-"
    assert api.sample("ocs_api_requests_total", method="GET", route="/v1/accounts/{id}",
                      status="200") == 1
    assert api.sample("ocs_api_requests_total", method="GET", route="/v1/accounts/{id}",
                      status="401") == 1
    assert api.sample("ocs_request_duration_seconds_count", proto="api",
                      op="/v1/accounts/{id}") == 2
    assert api.sample("ocs_api_auth_failures_total", reason="missing_token") == 1

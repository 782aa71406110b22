"""The REST admin API of ocsd (aiohttp), mounted by the daemon on its application.

`setup_api(app, store=..., config=..., metrics=...)` adds the /v1 routes,
GET /openapi.json and the middleware that authenticates (bearer tokens with
roles), audits every mutating call, logs one access line per request on
`ocs.api`, counts requests in the metrics and turns every error into the
JSON error shape. The daemon adds GET /healthz and GET /metrics itself; they
and /openapi.json need no token. `app[CATALOG_CHANGED]` is a list of async
callbacks awaited after NAS or plans change through the API.

Layout: `routing` (the route table), `schemas` (request models), `views`
(response models), `wire` (money, instants and addresses on the wire),
`problems` (errors), `auth`, `app` (middleware and wiring), `openapi`, and
one `routes_*` module per group of resources.
"""

from __future__ import annotations

from aiohttp import web

from . import (openapi, routes_accounts, routes_activity, routes_catalog,  # noqa: F401
               routes_policy, routes_subscribers, routes_tokens)
from . import routes_cluster, routes_diameter, routes_tariffs  # noqa: F401
from .app import CATALOG_CHANGED, install
from .routing import ROUTES


def setup_api(app: web.Application, *, store, config, metrics) -> None:
    """Add the /v1 routes, /openapi.json and the auth/audit middleware to `app`.

    If `config.api.bootstrap_token` is set, an admin token named "bootstrap"
    with that secret is created (or re-keyed) when the application starts.
    """
    install(app, store=store, config=config, metrics=metrics, endpoints=list(ROUTES))


__all__ = ["setup_api", "CATALOG_CHANGED"]

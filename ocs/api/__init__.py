"""REST admin API (placeholder until the API lands: adds no routes)."""

from aiohttp import web


def setup_api(app: web.Application, *, store, config, metrics) -> None:
    """Add the /v1 routes, /openapi.json and the auth/audit middlewares to `app`."""

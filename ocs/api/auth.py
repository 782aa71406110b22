"""Bearer-token authentication, role checks and the bootstrap token.

Tokens live in the store, hashed (`Store.create_token`). A request carries
`Authorization: Bearer <token>`; the token's role decides what it may do
(`ocs.model.Role`: read-only < operator < admin). Refusals are counted in
`ocs_api_auth_failures_total{reason}` and never echo the presented token.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import ConfigError
from ..model import ApiToken, Role
from .problems import ApiError

log = logging.getLogger("ocs.api")

BOOTSTRAP_NAME = "bootstrap"
_CHALLENGE = 'Bearer realm="ocsd"'


async def authenticate(request: web.Request, store, metrics) -> ApiToken:
    """The token of the request, or a 401 (RFC 6750 §3 challenge)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        metrics.api_auth_failures.labels(reason="missing_token").inc()
        raise ApiError(401, "authentication required: send 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": _CHALLENGE})
    found = await store.verify_token(token)
    if found is None:
        metrics.api_auth_failures.labels(reason="unknown_token").inc()
        raise ApiError(401, "unknown or revoked token",
                       headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'})
    return found


def authorize(token: ApiToken, needed: Role, what: str, metrics) -> None:
    """Raise 403 unless `token`'s role is at least `needed`."""
    if not token.role.allows(needed):
        metrics.api_auth_failures.labels(reason="forbidden").inc()
        raise ApiError(403, f"token {token.name!r} has role {token.role.value}; "
                            f"{what} needs {needed.value}")


async def ensure_bootstrap_token(store, secret: str) -> str:
    """Make sure an admin token named "bootstrap" with `secret` exists.

    Creates it, or re-keys it (delete + create) when the configured secret
    changed. Returns what was done: "kept", "created" or "rekeyed".
    """
    current = await store.verify_token(secret)
    if current is not None and current.name == BOOTSTRAP_NAME and current.role is Role.ADMIN:
        return "kept"
    if current is not None and current.name != BOOTSTRAP_NAME:
        raise ConfigError(f"the bootstrap token's secret is already the secret of token "
                          f"{current.name!r}; choose another", key="api.bootstrap_token")
    existing = {t.name for t in await store.list_tokens()}
    action = "created"
    if BOOTSTRAP_NAME in existing:
        await store.delete_token(BOOTSTRAP_NAME)
        action = "rekeyed"
    await store.create_token(BOOTSTRAP_NAME, Role.ADMIN, secret)
    log.info("bootstrap API token %s", action)
    return action

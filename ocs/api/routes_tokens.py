"""/v1/tokens: API tokens (admin only). A token's secret is shown once, at creation."""

from __future__ import annotations

from ..model import Role
from . import schemas as s
from . import views as v
from .routing import Call, route


@route("GET", "/v1/tokens", role=Role.ADMIN, tag="tokens", summary="List API tokens",
       response=v.Page[v.TokenView])
async def list_tokens(call: Call):
    tokens = await call.store.list_tokens()
    return v.Page[v.TokenView](items=[v.token_view(t) for t in tokens], count=len(tokens))


@route("POST", "/v1/tokens", role=Role.ADMIN, tag="tokens", summary="Create an API token",
       body=s.TokenCreate, response=v.TokenCreated, status=201, target="token")
async def create_token(call: Call):
    """The answer holds the bearer secret; it is stored hashed and cannot be shown again."""
    token, secret = await call.store.create_token(call.body.name, call.body.role)
    call.target = f"token:{token.name}"
    return v.TokenCreated(**v.token_view(token).model_dump(), token=secret)


@route("DELETE", "/v1/tokens/{name}", role=Role.ADMIN, tag="tokens",
       summary="Revoke an API token", target="token")
async def delete_token(call: Call):
    """Revocation is immediate: the next request with that token gets 401."""
    await call.store.delete_token(call.params["name"])

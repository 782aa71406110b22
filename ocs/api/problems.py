"""Error answers of the REST API: one JSON shape, one table from error to status.

Every error body is
`{"error": {"status": 422, "code": "validation_error", "message": "...", "details": [...]}}`
(`ocs.api.views.ErrorResponse`). Codes:

=====================  ======  ==================================================
code                   status  meaning
=====================  ======  ==================================================
bad_request            400     body is not JSON (or not UTF-8 CSV), wrong content type
unauthorized           401     missing or unknown bearer token
forbidden              403     the token's role may not do this
not_found              404     no such route or object
method_not_allowed     405     the route exists, not with this method
conflict               409     exists already, or contradicts the current state
payload_too_large      413     body over `api.max_body_mb`
validation_error       422     body or query does not match the schema (see details)
invalid                422     well-formed, but the domain refuses it (see message)
import_rejected        422     CSV import refused; details list line, column, message
internal_error         500     a bug; logged with its traceback, never shown
store_unavailable      503     the store did not answer; retry after Retry-After
=====================  ======  ==================================================
"""

from __future__ import annotations

from typing import Any, Iterable

import pydantic
from aiohttp import web

from .. import errors

RETRY_AFTER_S = 5

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
         422: "validation_error", 500: "internal_error", 503: "store_unavailable"}


class ApiError(Exception):
    """An error answer decided by the API itself."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 details: Iterable[dict[str, Any]] = (), headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.details = list(details)
        self.headers = headers or {}


def body(status: int, code: str, message: str, details: list[dict[str, Any]] = ()) -> dict:
    return {"error": {"status": status, "code": code, "message": message,
                      "details": list(details)}}


def response(err: ApiError) -> web.Response:
    return web.json_response(body(err.status, err.code, err.message, err.details),
                             status=err.status, headers=err.headers)


def from_pydantic(exc: pydantic.ValidationError, where: str) -> ApiError:
    """A 422 naming every field at fault (`where` is "body" or "query")."""
    details = []
    for e in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(p) for p in e["loc"]) or "(" + where + ")"
        details.append({"field": field, "message": e["msg"], "type": e["type"]})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    if len(details) > 5:
        summary += f"; and {len(details) - 5} more"
    return ApiError(422, f"invalid {where}: {summary}", details=details)


def from_exception(exc: BaseException) -> ApiError | None:
    """The API error for a typed error of the core, or None for an unexpected one."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, pydantic.ValidationError):
        return from_pydantic(exc, "body")
    if isinstance(exc, errors.ValidationError):
        return ApiError(422, str(exc), code="invalid")
    if isinstance(exc, errors.NotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, errors.Conflict):
        return ApiError(409, str(exc))
    if isinstance(exc, errors.StoreUnavailable):
        # The store's message may name hosts; the client only needs to retry.
        return ApiError(503, "the store is unavailable; nothing was changed, retry later",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, web.HTTPException):
        status = exc.status
        headers = {}
        if status == 405:
            headers["Allow"] = exc.headers.get("Allow", "")
            message = f"method not allowed here; allowed: {headers['Allow'] or 'none'}"
        elif status == 404:
            message = "no such route"
        elif status == 413:
            message = "request body too large"
        else:
            message = exc.reason
        return ApiError(status, message, headers=headers)
    return None

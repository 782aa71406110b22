"""The route table of the REST API: one `Endpoint` per method and path.

Handlers are declared with `@route(...)` next to their resource
(`routes_*.py`). An endpoint carries everything the API needs to serve it and
everything /openapi.json says about it: the role it needs, the body and query
models it validates with, the response model it answers with. `setup_api`
registers exactly this table with aiohttp, and `ocs.api.openapi` documents
exactly this table, so the document and the behaviour share one source.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import pydantic
from aiohttp import web

from ..model import Role
from .problems import ApiError, from_pydantic
from .views import redact
from .wire import Body, Query

MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})



@dataclass
class Exchange:
    """What the middleware and the handler share about one request."""

    token: Any = None          # ApiToken of the caller, once authenticated
    audit_body: Any = None     # the request body as the audit log records it
    audit_target: str | None = None


_RequestKey = getattr(web, "RequestKey", None)  # aiohttp >= 3.12; a string key before
EXCHANGE = _RequestKey("ocs.api.exchange", Exchange) if _RequestKey else "ocs.api.exchange"


def exchange(request: web.Request) -> Exchange:
    ex = request.get(EXCHANGE)
    if ex is None:
        ex = request[EXCHANGE] = Exchange()
    return ex

_PARAM = re.compile(r"\{(\w+)(?::([^}]*))?\}")
ID = r"{id:\d+}"


@dataclass
class Call:
    """What a handler gets: the validated input and who is asking."""

    request: web.Request
    store: Any
    config: Any
    metrics: Any
    actor: str
    role: Role
    params: dict[str, Any]
    body: Any = None
    query: Any = None
    target: str | None = None


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str                      # aiohttp path, id parameters constrained to digits
    handler: Handler
    role: Role | None              # None: public, no token needed
    summary: str
    tag: str
    body: type[Body] | None = None
    query: type[Query] | None = None
    response: type[pydantic.BaseModel] | None = None   # None: 204 No Content
    status: int = 200
    content_type: str = "application/json"
    target: str | None = None      # audit target kind: "account" -> "account:7"
    description: str = ""
    errors: tuple[int, ...] = field(default=())
    changes: bool | None = None    # audited; default: POST/PUT/PATCH/DELETE change state

    @property
    def template(self) -> str:
        """The path as documented and as labelled in metrics: /v1/accounts/{id}."""
        return _PARAM.sub(r"{\1}", self.path)

    @property
    def path_params(self) -> list[tuple[str, bool]]:
        """(name, is an integer) of each path parameter."""
        return [(m.group(1), (m.group(2) or "").startswith(r"\d"))
                for m in _PARAM.finditer(self.path)]

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


ROUTES: list[Endpoint] = []


def route(method: str, path: str, *, role: Role | None, summary: str, tag: str, **kw):
    """Declare a handler as the endpoint `method path`."""
    def register(handler: Handler) -> Handler:
        ROUTES.append(Endpoint(method=method, path=path, handler=handler, role=role,
                               summary=summary, tag=tag,
                               description=(handler.__doc__ or "").strip(), **kw))
        return handler
    return register


# ---------------------------------------------------------------------------- input

async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body of {request.content_length} bytes is over the "
                            f"limit of {limit} bytes (api.max_body_mb)")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes "
                                "(api.max_body_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(request: web.Request, raw: bytes, model: type[Body]) -> Body:
    """Validate a JSON body against `model`; the redacted body goes to the audit log."""
    if not raw.strip():
        raw = b"{}"  # e.g. POST .../resume with no body: every field takes its default
    elif request.content_type not in ("application/json",) and \
            not request.content_type.endswith("+json"):
        exchange(request).audit_body = {"content_type": request.content_type, "bytes": len(raw)}
        raise ApiError(400, f"expected Content-Type: application/json, "
                            f"not {request.content_type or 'none'}")
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        exchange(request).audit_body = {"unparseable": True, "bytes": len(raw)}
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    exchange(request).audit_body = redact(data)
    try:
        # Validated from JSON text (strict JSON types, not Python's); re-encoded first
        # so that a body json.loads accepted (UTF-16, a BOM) reads the same to pydantic.
        return model.model_validate_json(json.dumps(data))
    except pydantic.ValidationError as exc:
        raise from_pydantic(exc, "body") from None


def parse_text_body(request: web.Request, raw: bytes, content_type: str) -> str:
    exchange(request).audit_body = {"content_type": request.content_type, "bytes": len(raw),
                           "lines": raw.count(b"\n") + (1 if raw and not raw.endswith(b"\n")
                                                        else 0)}
    if request.content_type != content_type:
        raise ApiError(400, f"expected Content-Type: {content_type}, "
                            f"not {request.content_type or 'none'}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"body is not UTF-8: byte {exc.start}") from None


def parse_query(request: web.Request, model: type[Query]) -> Query:
    data: dict[str, str] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise ApiError(422, f"invalid query: {key}: given more than once",
                           details=[{"field": key, "message": "given more than once",
                                     "type": "duplicate"}])
        data[key] = values[0]
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise from_pydantic(exc, "query") from None


def path_params(request: web.Request, endpoint: Endpoint) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, is_int in endpoint.path_params:
        value = request.match_info[name]
        if is_int and len(value) > 18:  # no row has such an id (and it overflows BIGINT)
            raise ApiError(404, f"{name} {value[:30]}... does not exist")
        params[name] = int(value) if is_int else value
    return params

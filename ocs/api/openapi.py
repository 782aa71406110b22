"""GET /openapi.json: the OpenAPI 3.1 document, generated from the route table.

Nothing here is written by hand per route: paths and methods come from the
routes registered on the application, parameters from the query models and
the path templates, request and response schemas from the very pydantic
models the handlers validate and answer with (`ocs.api.schemas`,
`ocs.api.views`). Routes the daemon adds beside the API (/healthz, /metrics)
are listed with what is known of them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import RootModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from . import problems
from .app import PUBLIC_ROUTES, STATE
from .routing import Call, Endpoint, route
from .views import ErrorResponse

REF = "#/components/schemas/{model}"

_ERROR_RESPONSES = {
    400: ("BadRequest", "Body is not JSON, or not the expected content type"),
    401: ("Unauthorized", "Missing or unknown bearer token"),
    403: ("Forbidden", "The token's role may not do this"),
    404: ("NotFound", "No such route or object"),
    409: ("Conflict", "Exists already, or contradicts the current state"),
    413: ("PayloadTooLarge", "Body over api.max_body_mb"),
    422: ("Unprocessable", "Body or query invalid (details name the fields), or refused "
                           "by a domain rule"),
    500: ("InternalError", "A bug; logged on the server"),
    503: ("StoreUnavailable", "The store did not answer; retry after Retry-After seconds"),
}

_DAEMON_ROUTES = {
    "/healthz": "Liveness and readiness of the daemon",
    "/metrics": "Prometheus metrics (text exposition format)",
}


class OpenApiDocument(RootModel[dict[str, Any]]):
    """An OpenAPI 3.1 document."""


def _schemas(endpoints: list[Endpoint]) -> tuple[dict, dict[str, Any]]:
    """Schema references per (model, mode), and the shared component schemas."""
    wanted = {(ErrorResponse, "serialization")}
    for ep in endpoints:
        if ep.body is not None:
            wanted.add((ep.body, "validation"))
        if ep.response is not None and ep.response is not OpenApiDocument:
            wanted.add((ep.response, "serialization"))
    refs, defs = models_json_schema(sorted(wanted, key=lambda k: (k[0].__name__, k[1])),
                                    ref_template=REF)
    return refs, defs.get("$defs", {})


def _parameters(ep: Endpoint) -> list[dict[str, Any]]:
    params = []
    for name, is_int in ep.path_params:
        schema = ({"type": "integer", "minimum": 1, "maximum": 10**18 - 1} if is_int
                  else {"type": "string", "minLength": 1})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if ep.query is not None:
        q = ep.query.model_json_schema(ref_template=REF)
        required = set(q.get("required", ()))
        for name, schema in q.get("properties", {}).items():
            schema = {k: v for k, v in schema.items() if k != "title"}
            param = {"name": name, "in": "query", "required": name in required,
                     "schema": schema}
            if "description" in schema:
                param["description"] = schema["description"]
            params.append(param)
    return params


def _operation(ep: Endpoint, refs: dict) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": ep.operation_id, "summary": ep.summary,
                          "tags": [ep.tag]}
    if ep.description:
        op["description"] = ep.description
    params = _parameters(ep)
    if params:
        op["parameters"] = params
    if ep.content_type != "application/json":
        op["requestBody"] = {"required": True, "content": {
            ep.content_type: {"schema": {"type": "string", "minLength": 1}}}}
    elif ep.body is not None:
        # A missing body reads as {} (routing.parse_json_body), so it may be left
        # out where every field has a default.
        required = any(f.is_required() for f in ep.body.model_fields.values())
        op["requestBody"] = {"required": required, "content": {
            "application/json": {"schema": refs[(ep.body, "validation")]}}}
    if ep.response is None:
        responses = {str(ep.status if ep.status != 200 else 204): {"description": "Done"}}
    elif ep.response is OpenApiDocument:
        responses = {"200": {"description": "This document", "content": {
            "application/json": {"schema": {"type": "object"}}}}}
    else:
        responses = {str(ep.status): {"description": ep.response.__doc__.strip().split("\n")[0]
                                      if ep.response.__doc__ else "Success",
                                      "content": {"application/json": {
                                          "schema": refs[(ep.response, "serialization")]}}}}
    for status in _error_statuses(ep):
        responses[str(status)] = {"$ref": f"#/components/responses/{_ERROR_RESPONSES[status][0]}"}
    op["responses"] = responses
    if ep.role is None:
        op["security"] = []
    else:
        op["x-required-role"] = ep.role.value
    return op


def _error_statuses(ep: Endpoint) -> list[int]:
    statuses = [] if ep.role is None else [401, 403]
    if ep.path_params or ep.body is not None or ep.query is not None:
        statuses.append(404)  # the object in the path, or one the body or query refers to
    if ep.body is not None or ep.content_type != "application/json":
        statuses += [400, 413, 422]
    elif ep.query is not None:
        statuses.append(422)
    if ep.method in ("POST", "PUT", "PATCH", "DELETE"):  # PUT: a revision that moved on
        statuses.append(409)
    if ep.role is not None:
        statuses.append(503)
    statuses.append(500)
    return sorted(set(statuses))


def build(app: web.Application, endpoints: list[Endpoint]) -> dict[str, Any]:
    """The document for every route registered on `app`."""
    refs, components = _schemas(endpoints)
    error_ref = refs[(ErrorResponse, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for r in app.router.routes():
        resource = r.resource
        if resource is None:
            continue
        path = resource.canonical
        ep = getattr(r.handler, "endpoint", None)
        if ep is not None:
            op = _operation(ep, refs)
        else:
            op = {"summary": _DAEMON_ROUTES.get(path, "Served by the daemon"),
                  "tags": ["daemon"], "responses": {"200": {"description": "OK"}}}
            if path in PUBLIC_ROUTES:
                op["security"] = []
        paths.setdefault(path, {})[r.method.lower()] = op
    tags = sorted({ep.tag for ep in endpoints})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ocsd admin API",
            "version": __version__,
            "description": "Administration of the online charging server. Money is a "
                           "decimal string in the account's currency (inputs also accept "
                           "integers of whole units), usage an integer, instants ISO 8601 "
                           "UTC. Errors: " + problems.__doc__.split("Codes:")[1].strip(),
        },
        "tags": [{"name": t} for t in tags],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "responses": {name: {"description": text,
                                 "content": {"application/json": {"schema": error_ref}}}
                          for name, text in _ERROR_RESPONSES.values()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API token "
                                                          "(ocsctl token add / POST /v1/tokens)"}},
        },
        "security": [{"bearer": []}],
    }


@route("GET", "/openapi.json", role=None, tag="meta", summary="This OpenAPI document",
       response=OpenApiDocument)
async def openapi_document(call: Call):
    state = call.request.app[STATE]
    if state.openapi is None:
        state.openapi = build(call.request.app, state.endpoints)
    return OpenApiDocument(state.openapi)


__all__ = ["build", "OpenApiDocument"]

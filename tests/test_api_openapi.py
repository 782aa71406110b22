"""/openapi.json says what the API does: the same routes, the same schemas, the
same roles, and bodies the document calls valid are exactly the ones accepted.

The property test generates request bodies from the *published* document
(valid ones, and mutations of them), asks an independent JSON Schema
validator (the `jsonschema` package) whether the document allows each one,
and checks that the running API agrees: documented-valid bodies are never
refused for their shape (400/422), documented-invalid ones always get a 422
naming a field.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import re
import tempfile
import threading

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocs.api.openapi import REF
from ocs.api.routing import ROUTES
from ocs.api.views import ErrorResponse
from ocs.model import Role
from ocs.store import Store, make_driver
from tests.test_api_harness import (  # noqa: F401
    ADMIN_SECRET, Api, api, make_account, start_api, stop_api)


async def fetch_doc(api: Api) -> dict:
    r = await api.anon.get("/openapi.json")
    assert r.status == 200
    return r.json


def registered_routes(api: Api) -> set[tuple[str, str]]:
    app = api.runner.app
    return {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
            if r.resource is not None}


def resolve(doc: dict, ref: dict) -> tuple[str, dict]:
    name = ref["$ref"].rsplit("/", 1)[1]
    return name, doc["components"]["schemas"][name]


def assert_model_documented(doc: dict, ref: dict, model, mode: str) -> None:
    """The document's schema for `ref` is the model's own JSON schema, nested ones too."""
    name, documented = resolve(doc, ref)
    own = model.model_json_schema(ref_template=REF, mode=mode)
    nested = own.pop("$defs", {})
    assert documented == own, name
    for sub, schema in nested.items():
        assert doc["components"]["schemas"][sub] == schema, sub


# ---------------------------------------------------------------------------- structure


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_every_registered_route_is_documented_and_nothing_else(api: Api):
    doc = await fetch_doc(api)
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == registered_routes(api)
    # Every endpoint of the route table is served and documented under its template.
    assert {(ep.method.lower(), ep.template) for ep in ROUTES} <= documented
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert doc["paths"][path]["get"]["security"] == []
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"]}
    assert doc["security"] == [{"bearer": []}]
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_documented_schemas_are_the_validation_models(api: Api):
    doc = await fetch_doc(api)
    for ep in ROUTES:
        op = doc["paths"][ep.template][ep.method.lower()]
        if ep.body is not None:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert_model_documented(doc, schema, ep.body, "validation")
        elif ep.content_type != "application/json":
            assert list(op["requestBody"]["content"]) == [ep.content_type]
        else:
            assert "requestBody" not in op, ep.template
        query = {p["name"]: p for p in op.get("parameters", ()) if p["in"] == "query"}
        if ep.query is None:
            assert query == {}
        else:
            own = ep.query.model_json_schema(ref_template=REF)
            assert set(query) == set(own["properties"])
            for name, param in query.items():
                expected = {k: v for k, v in own["properties"][name].items() if k != "title"}
                assert param["schema"] == expected
                assert param["required"] == (name in own.get("required", ()))
        path_params = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
        assert path_params == {name for name, _ in ep.path_params}
        success = str(ep.status) if ep.response is not None else "204"
        if ep.response is not None and ep.role is not None:
            ref = op["responses"][success]["content"]["application/json"]["schema"]
            assert_model_documented(doc, ref, ep.response, "serialization")
        assert success in op["responses"]
        if ep.role is not None:
            assert op["x-required-role"] == ep.role.value
            assert {"401", "403", "500", "503"} <= set(op["responses"])
        if ep.body is not None:
            assert {"400", "413", "422"} <= set(op["responses"])
        for status, answer in op["responses"].items():
            if status.startswith(("4", "5")):
                name = answer["$ref"].rsplit("/", 1)[1]
                error = doc["components"]["responses"][name]["content"]["application/json"]
                assert_model_documented(doc, error["schema"], ErrorResponse, "serialization")


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_documented_roles_are_enforced(api: Api):
    doc = await fetch_doc(api)
    rank = {"read-only": 0, "operator": 1, "admin": 2}
    tokens = {"read-only": api.reader, "operator": api.operator}
    checked = 0
    for path, ops in doc["paths"].items():
        concrete = path.replace("{id}", "1").replace("{name}", "nobody")
        for method, op in ops.items():
            if op.get("security") == []:
                r = await api.anon.request(method.upper(), concrete)
                assert r.status != 401, (method, path)
                continue
            r = await api.anon.request(method.upper(), concrete)
            assert r.status == 401, (method, path)
            needed = rank[op["x-required-role"]]
            for role, client in tokens.items():
                if rank[role] < needed:
                    r = await client.request(method.upper(), concrete)
                    assert r.status == 403, (role, method, path, r.text)
                    checked += 1
    assert checked >= 20


# ---------------------------------------------------------------------------- property test
#
# Bodies are generated from the published schemas by the small generator below
# (it covers the JSON Schema the models produce: $ref, anyOf, enum, objects,
# integers, patterned strings, formats, arrays); whether a body is valid is
# decided by jsonschema, never by how it was generated.

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


def _anchorless(pattern: str) -> str:
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return pattern[1:-1]


def strategy(schema: dict, root: dict) -> st.SearchStrategy:
    if "$ref" in schema:
        return strategy(resolve(root, schema)[1], root)
    if "anyOf" in schema:
        return st.one_of([strategy(s, root) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum", -2**63), schema.get("maximum", 2**63 - 1))
    if kind == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 40)
        fmt = schema.get("format")
        if fmt == "ipv4":
            return st.ip_addresses(v=4).map(str)
        if fmt == "ipv6":
            return st.ip_addresses(v=6).map(str)
        if fmt == "ip-or-cidr":
            return st.one_of(st.ip_addresses().map(str),
                             st.ip_addresses(v=4).flatmap(
                                 lambda a: st.integers(0, 32).map(lambda n: f"{a}/{n}")))
        if "pattern" in schema:
            return st.from_regex(_anchorless(schema["pattern"]), fullmatch=True).filter(
                lambda s: lo <= len(s) <= hi)
        return st.text(min_size=lo, max_size=min(hi, 40))
    if kind == "array":
        return st.lists(strategy(schema["items"], root), max_size=min(schema.get("maxItems", 3),
                                                                       3))
    if kind == "object" and "properties" in schema:
        props = schema["properties"]
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: strategy(v, root) for k, v in props.items() if k in required},
            optional={k: strategy(v, root) for k, v in props.items() if k not in required})
    if kind == "object":
        return st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)
    return JSON_VALUES


def mutated(valid: st.SearchStrategy, schema: dict) -> st.SearchStrategy:
    """Bodies near a valid one: a field dropped, added, or given another value."""
    names = sorted(schema["properties"])

    def mutate(body: dict, how: int, name: str, value, extra: str) -> dict:
        body = dict(body)
        if how == 0:
            body.pop(name, None)
        elif how == 1:
            body["x-" + extra] = value
        elif how == 2:
            body[name] = value
        else:  # money and counts as fractional numbers
            body[name] = 10.123456789
        return body

    return st.builds(mutate, valid, st.integers(0, 3), st.sampled_from(names), JSON_VALUES,
                     st.text(max_size=5))


def _ecma_pattern(validator, pattern, instance, schema):
    """JSON Schema patterns are ECMA-262, where `$` is the end of the input; Python's
    `$` also matches before a final newline."""
    if isinstance(instance, str) and not re.search(pattern.replace("$", r"\Z"), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _ip_or_cidr(value) -> bool:
    if not isinstance(value, str):
        return True
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def answer_schema(doc: dict, op: dict, status: int) -> dict:
    """The documented body schema of answer `status` of operation `op`."""
    answer = op["responses"][str(status)]
    if "$ref" in answer:
        answer = doc["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    return answer["content"]["application/json"]["schema"]


def oracle(doc: dict, component: str | dict):
    checker = jsonschema.FormatChecker(formats=("ipv4", "ipv6"))
    checker.checks("ip-or-cidr")(_ip_or_cidr)
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                       {"pattern": _ecma_pattern})
    ref = {"$ref": f"#/components/schemas/{component}"} if isinstance(component, str) \
        else component
    return cls({**ref, "components": doc["components"]}, format_checker=checker)


class ServerThread:
    """The API on a real socket, served from its own thread and event loop so that
    hypothesis can drive it from a plain synchronous test."""

    def __init__(self):
        self.ready = threading.Event()
        self.tmp = tempfile.TemporaryDirectory()

    def __enter__(self):
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "API did not start"
        return self

    async def _serve(self):
        # NORMAL: WAL without an fsync per commit; durability is not under test here.
        self.store = Store(make_driver(f"sqlite:{self.tmp.name}/ocs.db",
                                       sqlite_synchronous="NORMAL"))
        await self.store.open(migrate_schema=True)
        api, _ = await start_api(self.store)
        self.port = int(api.base.rsplit(":", 1)[1])
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.ready.set()
        await self.stopping.wait()
        await stop_api(api)
        await self.store.close()

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(30)
        self.tmp.cleanup()

    def request(self, method: str, path: str, body=None) -> tuple[int, dict | None]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data,
                         headers={"Authorization": f"Bearer {ADMIN_SECRET}",
                                  "Content-Type": "application/json"})
            r = conn.getresponse()
            text = r.read()
            return r.status, json.loads(text) if text else None
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server():
    with ServerThread() as srv:
        status, doc = srv.request("GET", "/openapi.json")
        assert status == 200
        status, acct = srv.request("POST", "/v1/accounts", {
            "name": "target", "currency": "EUR", "billing": "postpaid",
            "credit_limit": 1_000_000, "opening_balance": 1000})
        assert status == 201
        srv.doc, srv.account_id = doc, acct["id"]
        yield srv


PROPERTY_TARGETS = [
    ("POST", "/v1/accounts", "AccountCreate"),
    ("POST", "/v1/accounts/{id}/topup", "Topup"),
    ("POST", "/v1/accounts/{id}/adjust", "Adjust"),
    ("POST", "/v1/nas", "NasCreate"),
    ("POST", "/v1/plans", "PlanCreate"),
]


@pytest.mark.parametrize("method,template,component", PROPERTY_TARGETS)
def test_documented_valid_bodies_are_accepted_and_invalid_ones_refused(
        server, method, template, component):
    doc = server.doc
    op = doc["paths"][template][method.lower()]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/{component}"}
    schema = doc["components"]["schemas"][component]
    valid = strategy(schema, doc)
    validator = oracle(doc, component)
    path = template.replace("{id}", str(server.account_id))
    seen = {"valid": 0, "invalid": 0}

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(st.one_of(valid, mutated(valid, schema), mutated(valid, schema)))
    def check(body):
        problems = list(validator.iter_errors(body))
        status, answer = server.request(method, path, body)
        assert status < 500, (body, answer)
        # Whatever the outcome, the answer has the documented shape for its status.
        oracle(doc, answer_schema(doc, op, status)).validate(answer)
        if problems:
            seen["invalid"] += 1
            assert status == 422, (body, [p.message for p in problems], status, answer)
            assert answer["error"]["code"] == "validation_error"
            assert answer["error"]["details"] and all(
                d["field"] for d in answer["error"]["details"])
        else:
            seen["valid"] += 1
            assert status not in (400, 422), (body, status, answer)

    check()
    assert seen["valid"] >= 5 and seen["invalid"] >= 5, seen


def test_role_ranks_match_the_model():
    """The document's x-required-role values are Role values, ordered as Role.allows."""
    assert [r.value for r in Role] == ["read-only", "operator", "admin"]
    assert {ep.role for ep in ROUTES} == {None, Role.READ_ONLY, Role.OPERATOR, Role.ADMIN}


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
async def test_a_body_is_required_where_leaving_it_out_is_refused(api: Api):
    # A missing JSON body reads as {}: documented as optional exactly where that passes.
    doc = await fetch_doc(api)
    ops = {(ep.method, ep.template): ep for ep in ROUTES}
    suspend = doc["paths"]["/v1/accounts/{id}/suspend"]["post"]["requestBody"]
    topup = doc["paths"]["/v1/accounts/{id}/topup"]["post"]["requestBody"]
    assert (suspend["required"], topup["required"]) == (False, True)
    acct = await make_account(api)
    assert (await api.operator.post(f"/v1/accounts/{acct['id']}/suspend")).status == 200
    r = await api.operator.post(f"/v1/accounts/{acct['id']}/topup")
    assert r.status == 422 and "amount" in r.fields()
    for (method, template), ep in ops.items():
        body = doc["paths"][template][method.lower()].get("requestBody")
        if body is not None and ep.content_type != "application/json":
            assert body["required"] is True
            assert body["content"][ep.content_type]["schema"]["minLength"] == 1

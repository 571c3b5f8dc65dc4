"""The OpenAPI document generated from the schema: valid OpenAPI 3.1, and true to the schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pier.facade.openapi import openapi_document
from pier.facade.routes import endpoints
from pier.rpc.errors import error_by_name
from pier.rpc.schema import Schema


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document(Schema.load())


def walk(node: Any, parent: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (parent key, key, value) in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield parent, key, value
            yield from walk(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, parent)


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)
    assert document["openapi"] == "3.1.0"


def test_info_comes_from_the_schema(document: dict[str, Any], schema: Schema) -> None:
    assert document["info"]["title"] == schema.info["title"]
    assert document["info"]["version"] == schema.info["version"]


def test_refs_point_into_components_and_pier_keys_are_gone(document: dict[str, Any], schema: Schema) -> None:
    components = document["components"]["schemas"]
    assert set(schema.defs) <= set(components)
    refs = [value for parent, key, value in walk(document) if key == "$ref" and parent != "properties"]
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in components
    assert not [key for parent, key, _ in walk(document) if key in ("optional", "$defs") and parent != "properties"]


def test_one_operation_per_route_with_unique_ids(document: dict[str, Any], schema: Schema) -> None:
    operations = [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]
    made = endpoints(schema.verbs)
    assert sorted((path, method.upper()) for path, method, _ in operations) == sorted(
        (e.path, e.route.method) for e in made)
    ids = [op["operationId"] for _, _, op in operations]
    assert len(ids) == len(set(ids))
    for endpoint in made:
        op = document["paths"][endpoint.path][endpoint.route.method.lower()]
        assert op["x-pier-verb"] == endpoint.verb.name
        assert op["operationId"].startswith(endpoint.verb.name)
        assert op["summary"] == endpoint.verb.summary
    firsts = {}
    for endpoint in made:
        firsts.setdefault(endpoint.verb.name, endpoint)
    for name, endpoint in firsts.items():
        assert document["paths"][endpoint.path][endpoint.route.method.lower()]["operationId"] == name


@pytest.mark.parametrize("endpoint", endpoints(Schema.load().verbs),
                         ids=lambda e: f"{e.route.method} {e.path}")
def test_operation_is_true_to_the_verb(document: dict[str, Any], endpoint: Any) -> None:
    verb, route = endpoint.verb, endpoint.route
    op = document["paths"][endpoint.path][route.method.lower()]
    parameters = {(p["name"], p["in"]): p for p in op.get("parameters", [])}
    for name in route.path_params:
        assert parameters[(name, "path")]["required"] is True
    if route.stream == "data":
        assert op["requestBody"]["content"] == {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}} if route.method == "PUT" else "requestBody" not in op
        assert [n for n, where in parameters if where == "query"] == [n for n in verb.params
                                                                      if n not in route.path_params]
        assert {"200", "404", "409"} <= set(op["responses"])  # the bytes, an unknown volume, a refused range
        return
    if route.method in ("GET", "DELETE"):
        assert "requestBody" not in op
        expected_query = [n for n in verb.params if n not in route.path_params]
    else:
        body = op["requestBody"]["content"]["application/json"]["schema"]
        if route.body:
            expected_query = [n for n in verb.params if n not in route.path_params and n != route.body]
            assert op["requestBody"]["required"] == (route.body in verb.required)
        else:
            expected_query = []
            assert set(body["properties"]) == set(verb.params) - set(route.path_params)
            assert body["additionalProperties"] is False
    assert [n for n, where in parameters if where == "query"] == expected_query
    for (name, where), parameter in parameters.items():
        assert parameter["required"] == (where == "path" or name in verb.required)

    responses = op["responses"]
    statuses = {400} | {error_by_name(name).http_status for name in verb.errors}
    if route.stream == "websocket":
        assert "101" in responses and "426" in responses and str(endpoint.status) not in responses
        assert statuses <= {int(code) for code in responses}
        return
    success = responses[str(endpoint.status)]
    if route.content:
        assert success["content"] == {route.content["type"]: {"schema": {"type": "string", "format": "binary"}}}
    else:
        assert "schema" in success["content"]["application/json"]
    if verb.task:
        assert endpoint.status == 202 and "Location" in success["headers"]
    if route.stream:
        assert "text/event-stream" in success["content"]
    assert statuses <= {int(code) for code in responses}
    for code in statuses:
        content = responses[str(code)]["content"]
        assert content == {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for name in verb.errors:
        assert error_by_name(name).name in responses[str(error_by_name(name).http_status)]["description"]


def test_a_verb_with_two_routes_gets_two_operation_ids(document: dict[str, Any], schema: Schema) -> None:
    shared = [verb for verb in schema.verbs.values() if len(verb.rest) > 1]
    assert shared, "the schema has no verb with two routes any more; drop this test"
    for verb in shared:
        ids = [document["paths"]["/api/v1" + r.path][r.method.lower()]["operationId"] for r in verb.rest]
        assert ids[0] == verb.name and len(set(ids)) == len(ids)

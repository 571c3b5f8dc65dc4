"""The OpenAPI 3.1 document of the REST facade, generated from the schema.

One operation per declared route: its path and query parameters and request body come from the
verb's params (their JSON Schemas as they are, `$ref`s pointing into `components.schemas`), its
success response from the verb's `returns`, and its error responses from the errors the verb
declares (plus those every route of its kind can give), each as `application/problem+json`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pier.facade.problems import PROBLEM_JSON, TYPE_BASE
from pier.facade.routes import BODY_METHODS, DATA_STREAM, JSON, Endpoint, endpoints
from pier.facade.stream import EVENT_STREAM
from pier.rpc.errors import (
    DataRefused,
    InvalidParams,
    InvalidRequest,
    ParseError,
    PierError,
    RequestTooLarge,
    Unavailable,
    error_by_name,
)
from pier.rpc.schema import Schema, ref_name

OPENAPI_VERSION = "3.1.0"
OCTET_STREAM = "application/octet-stream"
PROBLEM = "Problem"
_REF_TO = "#/components/schemas/"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details, with the error's VDSM code and name.",
    "properties": {
        "type": {"type": "string", "format": "uri", "description": TYPE_BASE + "<name>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "description": "The HTTP status."},
        "detail": {"type": "string", "description": "What went wrong, for a human."},
        "code": {"type": "integer", "description": "VDSM's error code."},
        "name": {"type": "string", "description": "VDSM's error name."},
        "data": {"description": "Details that depend on the error (e.g. `field` for invalid params)."},
    },
    "required": ["type", "title", "status", "detail", "code", "name"],
}


def openapi_document(schema: Schema) -> dict[str, Any]:
    """The OpenAPI 3.1.0 document of every route the schema declares."""
    if PROBLEM in schema.defs:
        raise ValueError(f"the schema's $defs may not define {PROBLEM!r}: the facade's error type")
    made = endpoints(schema.verbs)
    routes_per_verb = Counter(endpoint.verb.name for endpoint in made)
    methods_per_verb = Counter((endpoint.verb.name, endpoint.route.method) for endpoint in made)
    paths: dict[str, dict[str, Any]] = {}
    seen: Counter[str] = Counter()
    for endpoint in made:
        name, method = endpoint.verb.name, endpoint.route.method
        seen[name] += 1
        if seen[name] == 1:
            operation_id = name
        elif methods_per_verb[(name, method)] == 1:
            operation_id = f"{name}.{method.lower()}"
        else:
            operation_id = f"{name}.{seen[name]}"
        operation = _operation(endpoint, operation_id, routes_per_verb[name] > 1)
        paths.setdefault(endpoint.path, {})[method.lower()] = operation
    components = {name: _openapi_schema(value) for name, value in schema.defs.items()}
    components[PROBLEM] = PROBLEM_SCHEMA
    info = {key: schema.info[key] for key in ("title", "version", "description", "summary") if key in schema.info}
    info.setdefault("title", "Pier")
    info.setdefault("version", "0")
    return {
        "openapi": OPENAPI_VERSION,
        "info": info,
        "tags": [{"name": tag} for tag in dict.fromkeys(e.verb.namespace for e in made)],
        "paths": paths,
        "components": {"schemas": components},
    }


def _operation(endpoint: Endpoint, operation_id: str, shared: bool) -> dict[str, Any]:
    verb, route = endpoint.verb, endpoint.route
    description = f"Calls the verb `{verb.name}`"
    if shared:
        description += " (which other routes reach as well)"
    if verb.task:
        description += "; it runs as a task, whose state the `Location` URL answers"
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": verb.summary,
        "description": description + ".",
        "tags": [verb.namespace],
        "x-pier-verb": verb.name,
    }
    in_path = set(route.path_params)
    in_body = set()
    if route.stream == DATA_STREAM:
        if route.method in BODY_METHODS:
            operation["requestBody"] = {"required": True, "content": {OCTET_STREAM: {
                "schema": {"type": "string", "format": "binary"}}}}
    elif route.method in BODY_METHODS:
        operation["requestBody"] = _request_body(endpoint, in_path)
        in_body = {route.body} if route.body else set(verb.params) - in_path
    parameters = [_parameter(endpoint, name, "path") for name in route.path_params]
    parameters += [_parameter(endpoint, name, "query") for name in verb.params
                   if name not in in_path and name not in in_body]
    if parameters:
        operation["parameters"] = parameters
    if route.stream:
        operation["x-pier-stream"] = route.stream
    operation["responses"] = _responses(endpoint)
    return operation


def _parameter(endpoint: Endpoint, name: str, where: str) -> dict[str, Any]:
    schema = _openapi_schema(endpoint.verb.params[name])
    parameter: dict[str, Any] = {"name": name, "in": where,
                                 "required": where == "path" or name in endpoint.verb.required}
    description = schema.pop("description", None)
    if description:
        parameter["description"] = description
    if schema.get("type") == "array":
        parameter.update(style="form", explode=True)
    parameter["schema"] = schema
    return parameter


def _request_body(endpoint: Endpoint, in_path: set[str]) -> dict[str, Any]:
    verb, route = endpoint.verb, endpoint.route
    if route.body:
        schema = _openapi_schema(verb.params[route.body])
        required = route.body in verb.required
    else:
        names = [name for name in verb.params if name not in in_path]
        schema = {
            "type": "object",
            "properties": {name: _openapi_schema(verb.params[name]) for name in names},
            "additionalProperties": False,
        }
        wanted = [name for name in names if name in verb.required]
        if wanted:
            schema["required"] = wanted
        required = bool(wanted)
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _responses(endpoint: Endpoint) -> dict[str, Any]:
    verb, route = endpoint.verb, endpoint.route
    success: dict[str, Any] = {
        "description": "The verb's result." if not verb.task else "The task, accepted.",
        "content": {JSON: {"schema": _openapi_schema(verb.returns)}},
    }
    if endpoint.location is not None and endpoint.status in (201, 202):
        success["headers"] = {"Location": {
            "description": f"Where to read the result: {endpoint.location.path} under /api/v1.",
            "schema": {"type": "string"}}}
    if route.stream == "websocket":
        return _websocket_responses(endpoint)
    if route.stream == DATA_STREAM:
        return _data_responses(endpoint)
    if route.content:
        success["content"] = {route.content["type"]: {"schema": {"type": "string", "format": "binary"}}}
    elif route.stream:
        success["content"][EVENT_STREAM] = {"schema": {
            "type": "string",
            "description": "With `Accept: text/event-stream`: server-sent events (`id` is the sequence "
                           "number, `event` the event's name, `data` the event as JSON); resume with "
                           "`Last-Event-ID`."}}
    errors: list[type[PierError]] = [InvalidParams]
    if route.method in BODY_METHODS:
        errors += [ParseError, RequestTooLarge]
    if route.stream:
        errors.append(Unavailable)
    errors += [error_by_name(name) for name in verb.errors]
    return {str(endpoint.status): success, **_problems(errors)}


def _websocket_responses(endpoint: Endpoint) -> dict[str, Any]:
    """A route that upgrades to a WebSocket: 101, or a problem before the upgrade."""
    switching = {"description": "Switching to a binary WebSocket carrying the channel's bytes both ways; it closes "
                                "with 1000 when the channel ends (the VM stopped), 4001 when another client took "
                                "it over, 1011 when it broke, 1001 when the agent stops, 1008 when the caller's "
                                "credential is revoked."}
    errors: list[type[PierError]] = [InvalidParams, InvalidRequest, Unavailable]
    errors += [error_by_name(name) for name in endpoint.verb.errors]
    responses = {"101": switching, **_problems(errors)}
    responses["426"] = {"description": "The request did not ask for a WebSocket (Upgrade: websocket).",
                        "content": {PROBLEM_JSON: {"schema": {"$ref": _REF_TO + PROBLEM}}}}
    return responses


def _data_responses(endpoint: Endpoint) -> dict[str, Any]:
    """A route whose body or answer is bytes relayed to the endpoint its verb opens."""
    route = endpoint.route
    errors: list[type[PierError]] = [InvalidParams, InvalidRequest, Unavailable, DataRefused]
    errors += [error_by_name(name) for name in endpoint.verb.errors]
    if route.method == "GET":
        bytes_ = {"schema": {"type": "string", "format": "binary"}}
        responses: dict[str, Any] = {
            "200": {"description": "The bytes (or, with `checksum`, the checksum as JSON).",
                    "content": {OCTET_STREAM: bytes_, JSON: {"schema": {"type": "object"}}}},
            "206": {"description": "The bytes the Range header asked for; Content-Range says which.",
                    "content": {OCTET_STREAM: bytes_}}}
    else:
        responses = {"200": {"description": "The bytes were written where Content-Range said (from 0 without it)."}}
    return {**responses, **_problems(errors)}


def _problems(errors: list[type[PierError]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    by_status: dict[int, list[type[PierError]]] = {}
    for error in errors:
        if error not in by_status.setdefault(error.http_status, []):
            by_status[error.http_status].append(error)
    for status in sorted(by_status):
        described = "; ".join(f"{e.name} ({e.code}): {e.message}" for e in by_status[status])
        responses[str(status)] = {
            "description": described,
            "content": {PROBLEM_JSON: {"schema": {"$ref": _REF_TO + PROBLEM}}},
        }
    return responses


def _openapi_schema(node: Any, names: bool = False) -> Any:
    """A copy of a JSON Schema with `$ref`s into components and Pier's own keys removed.

    `names` is true for a mapping of names to schemas (`properties`), whose keys are kept.
    """
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if names:
                out[key] = _openapi_schema(value)
            elif key == "$ref" and (name := ref_name(node)) is not None:
                out[key] = _REF_TO + name
            elif key not in ("$defs", "optional"):
                out[key] = _openapi_schema(value, key in ("properties", "patternProperties"))
        return out
    if isinstance(node, list):
        return [_openapi_schema(item) for item in node]
    return node

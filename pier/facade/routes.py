"""REST routes made from the schema: every declared `rest:` route calls its verb.

Nothing here knows a verb. For each `Route` of each verb: `{param}` placeholders become bottle
wildcards; on GET and DELETE the other params come from the query string, coerced by their JSON
Schema type (integer, number, boolean as true/false/1/0, arrays as repeated keys or comma
separated); on POST, PUT and PATCH the JSON body is the params object, or, when the route says
`body: <param>`, the body is that one param and the other params come from the query string.
The params then go through `Registry.call`, which validates them against the schema. Success
answers with the route's status (202 for a task verb unless the route says otherwise) and, when
the route declares one (`location: /vms/{vmId}`), a `Location` filled from the result's fields.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote

import bottle

from pier.facade.problems import problem_response, unexpected
from pier.rpc.errors import InvalidParams, ParseError, PierError
from pier.rpc.jsonrpc import loads
from pier.rpc.limits import read_body
from pier.rpc.registry import CallContext, Registry
from pier.rpc.schema import Route, Verb, deref, path_shape, reading_routes

API_PREFIX = "/api/v1"
MAX_BODY = 1 << 20
JSON = "application/json"
BODY_METHODS = ("POST", "PUT", "PATCH")
DATA_STREAM = "data"  # `stream: data`: the body or the answer is bytes relayed to an endpoint (pier.facade.data)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class StreamOpener(Protocol):
    """Serves the routes of one `stream:` kind: the requests it `wants` (server-sent events asked
    for with Accept, a WebSocket upgrade), where other requests call the verb as any route does."""

    def wants(self, environ: Mapping[str, Any]) -> bool:
        ...

    def __call__(self, verb: Verb, params: dict[str, Any], environ: Mapping[str, Any],
                 context: CallContext) -> bottle.HTTPResponse:
        """Check the caller (`context`), validate `params` and answer with the stream."""
        ...


@dataclass(frozen=True)
class Endpoint:
    """One declared route of one verb, and the GET route its `location` points at."""

    verb: Verb
    route: Route
    location: Route | None = None

    @property
    def path(self) -> str:
        return API_PREFIX + self.route.path

    @property
    def bottle_path(self) -> str:
        return API_PREFIX + _PLACEHOLDER.sub(r"<\1>", self.route.path)

    @property
    def status(self) -> int:
        return 202 if self.verb.task and self.route.status == 200 else self.route.status


def endpoints(verbs: Mapping[str, Verb]) -> list[Endpoint]:
    """Every route the schema declares, in declaration order."""
    readers = reading_routes(verbs)
    return [Endpoint(verb, route, readers.get(path_shape(route.location)) if route.location else None)
            for verb in verbs.values() for route in verb.rest]


def install(app: bottle.Bottle, registry: Registry, streams: Mapping[str, StreamOpener], *,
            max_body: int = MAX_BODY) -> list[Endpoint]:
    """Add a bottle route for every schema route to `app`; returns what was added."""
    made = endpoints(registry.verbs)
    for endpoint in made:
        opener = None
        if endpoint.route.stream:
            if endpoint.route.stream not in streams:
                raise RuntimeError(f"{endpoint.verb.name}: no stream of kind {endpoint.route.stream!r}")
            opener = streams[endpoint.route.stream]
        app.route(endpoint.bottle_path, endpoint.route.method,
                  _handler(endpoint, registry, opener, max_body), name=f"{endpoint.verb.name} {endpoint.path}")
    return made


def _handler(endpoint: Endpoint, registry: Registry, opener: StreamOpener | None,
             max_body: int) -> Callable[..., bottle.HTTPResponse]:
    verb = endpoint.verb
    defs = registry.schema.defs

    def handle(**path_args: str) -> bottle.HTTPResponse:
        environ = bottle.request.environ
        try:
            params = read_params(endpoint, path_args, environ, defs, max_body)
            context = CallContext.for_wsgi(environ, "rest", prompt_tasks=True)
            if opener is not None and opener.wants(environ):
                return opener(verb, params, environ, context)
            result = registry.call(verb.name, params, context)
            if endpoint.route.content is not None:
                return _content(endpoint.route.content, result)
            return _success(endpoint, result)
        except PierError as exc:
            return problem_response(exc)
        except Exception as exc:
            return problem_response(unexpected(exc, f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}"))

    return handle


def wants_event_stream(environ: Mapping[str, Any]) -> bool:
    accept = environ.get("HTTP_ACCEPT", "")
    return any(part.split(";")[0].strip().lower() == "text/event-stream" for part in accept.split(","))


def _success(endpoint: Endpoint, result: Any) -> bottle.HTTPResponse:
    headers = {"Content-Type": JSON}
    if endpoint.route.location is not None:
        location = _fill(endpoint.route.location, result)
        if location:
            headers["Location"] = location
    return bottle.HTTPResponse(body=json.dumps(result, separators=(",", ":")), status=endpoint.status,
                               headers=headers)


def _content(content: Mapping[str, str], result: Any) -> bottle.HTTPResponse:
    """The bytes of the result's base64 field `content['field']`, as `content['type']`."""
    body = base64.b64decode(result[content["field"]])
    return bottle.HTTPResponse(body=body, status=200, headers={"Content-Type": content["type"],
                                                                "Cache-Control": "no-store"})


def _fill(template: str, result: Any) -> str | None:
    """The `template` path with each `{field}` taken from `result` (None when one is missing)."""
    if not isinstance(result, dict):
        return None
    path = template
    for name in _PLACEHOLDER.findall(template):
        if result.get(name) is None:
            return None
        path = path.replace("{" + name + "}", quote(str(result[name]), safe=""))
    return API_PREFIX + path


# -- reading params -------------------------------------------------------------------------


def read_params(endpoint: Endpoint, path_args: Mapping[str, str], environ: Mapping[str, Any],
                defs: Mapping[str, Any], max_body: int = MAX_BODY) -> dict[str, Any]:
    """The verb's params from the request's path, query string and body (not yet validated)."""
    verb, route = endpoint.verb, endpoint.route
    params: dict[str, Any] = {}
    if route.method in BODY_METHODS and route.stream != DATA_STREAM:  # a data route's body is its bytes
        field = f"params.{route.body}" if route.body else "params"
        body = read_json_body(environ, max_body, field)
        if route.body:
            if body is not None:
                params[route.body] = body
        elif isinstance(body, dict):
            params.update(body)
        elif body is not None:
            raise InvalidParams(f"the request body must be a JSON object of params, not {_json_type(body)}",
                                data={"field": "params"})
    for name, values in query_values(environ).items():
        if name in params:
            raise InvalidParams(f"params.{name} is given both in the body and in the query string",
                                data={"field": f"params.{name}"})
        params[name] = coerce(values, verb.params.get(name), defs)
    for name, text in path_args.items():
        value = coerce([text], verb.params.get(name), defs)
        if name in params and params[name] != value:
            raise InvalidParams(f"params.{name} is {params[name]!r} in the request but {text!r} in the path",
                                data={"field": f"params.{name}"})
        params[name] = value
    return params


def query_values(environ: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each query-string key with all the values it was given, in order."""
    values: dict[str, list[str]] = {}
    for key, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
        values.setdefault(key, []).append(value)
    return values


def read_json_body(environ: Mapping[str, Any], max_body: int, field: str) -> Any:
    """The request body parsed as JSON, or None when there is none."""
    raw = read_body(environ, max_body)
    if not raw.strip():
        return None
    media_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if media_type != JSON and not media_type.endswith("+json"):
        raise InvalidParams(f"the request body must be JSON sent with Content-Type: {JSON}, "
                            f"not {media_type or 'without a Content-Type'}",
                            data={"field": field, "contentType": media_type})
    try:
        body = loads(raw)
    except ValueError as exc:
        raise ParseError(f"the request body is not valid JSON: {exc}", data={"field": field}) from None
    except RecursionError:
        raise ParseError("the request body is JSON nested too deeply to parse", data={"field": field}) from None
    if body is None:
        raise InvalidParams("the request body is JSON null; send an object (or no body at all)",
                            data={"field": field})
    return body


def coerce(values: list[str], schema: Mapping[str, Any] | None, defs: Mapping[str, Any]) -> Any:
    """Turn query-string text into the JSON value `schema` expects.

    Text that does not fit is passed on as it is, so that validation names the field.
    """
    schema = deref(schema or {}, defs)
    types = _types(schema)
    if "array" in types:
        items = [item for value in values for item in value.split(",")]  # an empty item is refused by name
        item_schema = schema.get("items") if isinstance(schema.get("items"), dict) else None
        return [coerce([item], item_schema, defs) for item in items]
    if len(values) > 1:
        return values
    return _scalar(values[0], types)


def _scalar(text: str, types: list[str]) -> Any:
    if "boolean" in types and text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]
    if "integer" in types or "number" in types:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in types:
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):  # 'nan' and 'inf' stay text, and validation names the field
                return number
    if "null" in types and text in ("", "null"):
        return None
    if "object" in types and text.startswith("{"):
        try:
            return loads(text)
        except (ValueError, RecursionError):
            pass
    return text


def _types(schema: Mapping[str, Any]) -> list[str]:
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        return [t for t in declared if isinstance(t, str)]
    return []


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null")

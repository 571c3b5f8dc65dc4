"""XML-RPC at POST /RPC2, as VDSM's old clients speak it: positional params, VDSM's envelope.

Every call answers `{'status': {'code': 0, 'message': 'Done'}, <payload key>: result}`. The
payload key is the schema's: a legacy name (`list`, `getVdsStats`, ...) uses the key its legacy
entry declares, and none means status only, as VDSM did; a verb's own name (`Host.ping2`) uses
its legacy entry's key when it has one, else `result` (status only when it returns nothing). A failed call is the same envelope with
the error's VDSM code and message and no payload. That envelope is this wire's one error mapper.

What is not a call of anything gets an XML-RPC fault instead, as VDSM's server (the standard
library's dispatcher) answered: a body that is not XML or not a methodCall, or an unknown method.
The fault codes are those of the XML-RPC fault interoperability convention, which are also Pier's
own (-32700 parse error, -32600 invalid request, -32601 method not found).

Marshalling is the standard library's. Requests are parsed with defusedxml's expat parser (no DTD,
no entities, no external references) without monkey-patching anything global. Integers outside
XML-RPC's 32-bit range are sent as decimal strings, recursively, as VDSM did; incoming strings of
digits where the schema wants a number are read as numbers, since VDSM's clients sent them so.
`system.listMethods`, `system.methodHelp` and `system.methodSignature` describe the schema.
"""

from __future__ import annotations

import logging
import re
import xmlrpc.client
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.xmlrpc import DefusedExpatParser

from pier.rpc.errors import InvalidParams, InvalidRequest, MethodNotFound, ParseError, PierError, Unexpected
from pier.rpc.limits import read_body
from pier.rpc.registry import CallContext, Registry
from pier.rpc.schema import LegacyName, Schema, Verb, deref
from pier.transports.http import WsgiApp, peer_of

log = logging.getLogger("pier.transports.xmlrpc")

MAX_BYTES = 1 << 20
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
DONE = {"code": 0, "message": "Done"}
GENERIC_PAYLOAD = "result"
_PROTOCOL_ERRORS = (ParseError, InvalidRequest, MethodNotFound)
_XML = [("Content-Type", "text/xml; charset=utf-8")]
_NUMBER = re.compile(r"[+-]?\d+")
_XMLRPC_TYPES = {"string": "string", "integer": "int", "number": "double", "boolean": "boolean",
                 "array": "array", "object": "struct", "null": "nil"}


# -- marshalling ------------------------------------------------------------------------------


def to_wire(value: Any) -> Any:
    """`value` made marshallable: ints beyond 32 bits become strings, map keys become strings."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if INT_MIN <= value <= INT_MAX else str(value)
    if isinstance(value, dict):
        return {str(key): to_wire(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(item) for item in value]
    return value


def parse_request(body: bytes) -> tuple[tuple[Any, ...], str]:
    """The params and method name of a methodCall; ParseError or InvalidRequest otherwise."""
    unmarshaller = xmlrpc.client.Unmarshaller()
    parser = DefusedExpatParser(unmarshaller, forbid_dtd=True)
    try:
        parser.feed(body)
        parser.close()
        params = unmarshaller.close()
    except DefusedXmlException as exc:
        raise ParseError(f"Parse error: XML-RPC takes no DTD or entity declarations ({type(exc).__name__})") from None
    except Exception as exc:  # expat's ExpatError, and whatever the unmarshaller raises on a malformed value
        raise ParseError(f"Parse error: {type(exc).__name__}: {exc}") from None
    method = unmarshaller.getmethodname()
    if not method:
        raise InvalidRequest("Invalid request: the body is not an XML-RPC methodCall")
    return params, method


ENVELOPE_LEVEL = "*"


def envelope(result: Any, payload: str | None) -> dict[str, Any]:
    """VDSM's success answer: status Done, and the result under `payload` when there is one (its
    keys beside status when `payload` is ENVELOPE_LEVEL, as repoStats answered)."""
    answer: dict[str, Any] = {"status": dict(DONE)}
    if payload == ENVELOPE_LEVEL and isinstance(result, dict):
        answer.update({key: value for key, value in result.items() if key != "status"})
    elif payload is not None:
        answer[payload] = result
    return answer


def error_envelope(error: PierError) -> dict[str, Any]:
    """VDSM's failure answer: the error's code and message, no payload."""
    return {"status": {"code": error.code, "message": error.message}}


def _fault(error: PierError) -> bytes:
    return xmlrpc.client.dumps(xmlrpc.client.Fault(error.code, error.message), methodresponse=True,
                               allow_none=True).encode()


def _response(value: Any) -> bytes:
    return xmlrpc.client.dumps((to_wire(value),), methodresponse=True, allow_none=True).encode()


# -- schema-driven helpers ------------------------------------------------------------------


def _types(schema: dict[str, Any]) -> list[str]:
    declared = schema.get("type", [])
    return declared if isinstance(declared, list) else [declared]


def read_numbers(value: Any, schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """`value` with digit strings read as numbers wherever `schema` wants a number and no string."""
    schema = deref(schema, defs)
    types = _types(schema)
    if isinstance(value, str) and "string" not in types and _NUMBER.fullmatch(value.strip()):
        if "integer" in types or "number" in types:
            return int(value)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {key: read_numbers(item, properties[key], defs) if key in properties
                else read_numbers(item, extra, defs) if isinstance(extra, dict) else item
                for key, item in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [read_numbers(item, schema["items"], defs) for item in value]
    return value


def payload_key(schema: Schema, name: str, verb: Verb) -> str | None:
    """Where the result of calling `verb` as `name` goes in the envelope (see the module doc)."""
    legacy = schema.legacy.get(name)
    if legacy is not None:
        return legacy[1].payload
    declared = [entry.payload for entry in verb.legacy if entry.payload]
    if declared:
        return declared[0]
    return None if verb.returns == {"const": True} else GENERIC_PAYLOAD


def xmlrpc_type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """The XML-RPC type (int, string, struct, ...) of a value matching the JSON Schema `schema`."""
    schema = deref(schema, defs)
    kinds = [kind for kind in _types(schema) if kind != "null"]
    return _XMLRPC_TYPES.get(kinds[0], "undef") if kinds else "undef"


def positions(schema: Schema, name: str, verb: Verb) -> list[str]:
    """The params of a positional call of `name`, in order: VDSM's for a legacy name that declares
    it, else the verb's; LegacyName.IGNORED where VDSM took a param the verb has not."""
    legacy = schema.legacy.get(name)
    return legacy[1].positions(verb) if legacy is not None else list(verb.params)


def positional_text(names: list[str], verb: Verb, defs: dict[str, Any]) -> str:
    """`vmParams (struct), vmID? (string)`: the positional params, `?` marking optional ones."""
    return ", ".join("(ignored)" if param == LegacyName.IGNORED else
                     f"{param}{'' if param in verb.required else '?'} ({xmlrpc_type(verb.params[param], defs)})"
                     for param in names) or "none"


# -- the endpoint -----------------------------------------------------------------------------


class XmlRpc:
    """Turns one XML-RPC request body into a registry call, and its outcome into a response body."""

    def __init__(self, registry: Registry, *, max_bytes: int = MAX_BYTES) -> None:
        self.registry = registry
        self.max_bytes = max_bytes
        self._system: dict[str, Callable[..., Any]] = {
            "system.listMethods": self.list_methods,
            "system.methodHelp": self.method_help,
            "system.methodSignature": self.method_signature,
        }

    def handle(self, body: bytes, context: CallContext) -> bytes:
        """The methodResponse for one request body (a fault when it is not a call of anything)."""
        try:
            params, method = parse_request(body)
            if method in self._system:
                expected = len(self._system_signature(method)[0]) - 1
                if len(params) != expected:
                    raise InvalidParams(f"{method} takes {expected} param(s), got {len(params)}")
                answer = self._system[method](*params)
            else:
                answer = self.call(method, list(params), context)
        except _PROTOCOL_ERRORS as exc:
            log.info("XML-RPC request from %s refused: %s", context.describe(), exc.message)
            return _fault(exc)
        except PierError as exc:
            return _fault(exc)
        try:
            return _response(answer)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("the answer to %s could not be marshalled: %s", method, exc)
            return _response(error_envelope(Unexpected(f"the result of {method} could not be encoded as XML-RPC")))

    def call(self, name: str, params: list[Any], context: CallContext) -> dict[str, Any]:
        """Call verb `name` (a legacy name or the verb's own) and answer with VDSM's envelope."""
        verb = self.registry.schema.resolve(name)
        if verb is None:
            raise MethodNotFound(f'method "{name}" is not supported', data={"method": name})
        names = positions(self.registry.schema, name, verb)
        # A null in an optional position means "not given", as XML-RPC clients send it.
        named = {param: read_numbers(value, verb.params[param], self.registry.schema.defs)
                 for param, value in zip(names, params, strict=False)
                 if param != LegacyName.IGNORED and (value is not None or param in verb.required)}
        try:
            if len(params) > len(names):
                self.registry.admit(name, context)  # who may not call it is told so first
                raise InvalidParams(f"{name} takes at most {len(names)} positional params, got {len(params)}",
                                    data={"field": "params"})
            result = self.registry.call(name, named, context)
        except PierError as exc:
            return error_envelope(exc)
        payload = payload_key(self.registry.schema, name, verb)
        if payload == "uuid" and verb.task and isinstance(result, dict) and "taskID" in result:
            result = result["taskID"]  # VDSM's SPM verbs answered the id of the task they started
        return envelope(result, payload)

    # -- introspection ----------------------------------------------------------------------

    def list_methods(self) -> list[str]:
        """Every name callable here: legacy names, the verbs' own names, and system.*."""
        schema = self.registry.schema
        return sorted(schema.legacy) + sorted(schema.verbs) + sorted(self._system)

    def method_help(self, name: str) -> str:
        """A verb's summary, what it is called elsewhere, its positional params and its payload key."""
        name = _method_name(name)
        if name in self._system:
            return {"system.listMethods": "The names of every method callable here.",
                    "system.methodHelp": "The help text of a method.",
                    "system.methodSignature": "The signatures [return type, param types...] of a method.",
                    }[name]
        verb = self._verb(name)
        key = payload_key(self.registry.schema, name, verb)
        names = [entry.name for entry in verb.legacy]
        lines = [verb.summary, "",
                 f"Pier verb: {verb.name} (JSON-RPC)" + (f"; legacy names: {', '.join(names)}" if names else ""),
                 "Params, by position: " + positional_text(positions(self.registry.schema, name, verb), verb,
                                                           self.registry.schema.defs),
                 "Answer: {'status': {'code', 'message'}" + (f", '{key}': result" if key else "") + "}"]
        if verb.task:
            lines.append("The verb is slow: its result is a task; follow it with getTaskStatus.")
        return "\n".join(lines)

    def method_signature(self, name: str) -> list[list[str]]:
        """One signature per accepted number of positional params: [return type, param types...]."""
        name = _method_name(name)
        if name in self._system:
            return self._system_signature(name)
        verb = self._verb(name)
        names = positions(self.registry.schema, name, verb)
        types = ["undef" if param == LegacyName.IGNORED else xmlrpc_type(verb.params[param], self.registry.schema.defs)
                 for param in names]
        fewest = max((names.index(param) + 1 for param in verb.required if param in names), default=0)
        return [["struct", *types[:count]] for count in range(fewest, len(names) + 1)]

    def _system_signature(self, name: str) -> list[list[str]]:
        return {"system.listMethods": [["array"]], "system.methodHelp": [["string", "string"]],
                "system.methodSignature": [["array", "string"]]}[name]

    def _verb(self, name: str) -> Verb:
        verb = self.registry.schema.resolve(name) if isinstance(name, str) else None
        if verb is None:
            raise MethodNotFound(f'method "{name}" is not supported', data={"method": name})
        return verb


def _method_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidParams(f"a method name is a string, not {type(name).__name__}", data={"field": "params[0]"})
    return name


def xmlrpc_app(registry: Registry, *, max_bytes: int = MAX_BYTES) -> WsgiApp:
    """A WSGI app serving XML-RPC with VDSM's legacy names and envelope: POST a methodCall."""
    endpoint = XmlRpc(registry, max_bytes=max_bytes)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":
            start_response("405 Method Not Allowed", [*_XML, ("Allow", "POST")])
            return [_fault(InvalidRequest("XML-RPC takes POST"))]
        try:
            body = read_body(environ, max_bytes)
        except PierError as exc:
            log.warning("XML-RPC request from %s refused: %s", peer_of(environ), exc.message)
            status = HTTPStatus(exc.http_status)
            start_response(f"{status.value} {status.phrase}", [*_XML, ("Connection", "close")])
            return [_fault(exc)]
        reply = endpoint.handle(body, CallContext.for_wsgi(environ, "xmlrpc"))
        start_response("200 OK", [*_XML, ("Content-Length", str(len(reply)))])
        return [reply]

    return app

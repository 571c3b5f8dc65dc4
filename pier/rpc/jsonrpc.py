"""JSON-RPC 2.0 as its specification says, over any wire: one message in, one message out.

Every JSON-RPC transport (WebSocket, HTTP POST /jsonrpc, STOMP) hands raw message text to
`JsonRpc.parse`, gets the answer as data from `JsonRpc.answer` (response objects, a batch's list
of them, or None when nothing is to be sent back) and sends `JsonRpc.encode` of it; `handle` does
all three. Batches are split here and answered element by element, as the specification's
examples require (jsonrpcserver answers a batch with one malformed element with one error).

Each element is dispatched by jsonrpcserver (the library the design card names) to the registry,
which alone knows what exists, checks the caller and validates params. It is given what makes it
cheap: the element already parsed (its deserializer passes it through), an envelope validator
compiled with fastjsonschema from jsonrpcserver's own request schema (its jsonschema one was ~75 %
of a call), the methods built once (one caller per verb and legacy name), and callers declaring a
`(*args, **kwargs)` signature, so its per-call binding check does not introspect a handler. This
module is the one error mapper for JSON-RPC: every failure comes back to jsonrpcserver as an
`Error` carrying VDSM's code and message and Pier's `data`, never as an exception (it would put
`str(exc)` in the answer), and an invalid request is answered saying why, with its id when valid.
"""

from __future__ import annotations

import importlib.resources
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import fastjsonschema
from jsonrpcserver import Error, Result, Success, dispatch_to_response
from jsonrpcserver.response import to_serializable_one

from pier.rpc.errors import InternalError, InvalidRequest, ParseError, PierError
from pier.rpc.events import Event
from pier.rpc.registry import CallContext, Registry

log = logging.getLogger("pier.jsonrpc")

MAX_BYTES = 1 << 20
MAX_BATCH = 100


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


# Made once: json.loads and json.dumps given options build a new decoder or encoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_not_json)
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def loads(raw: str | bytes) -> Any:
    """Parse JSON as RFC 8259 says: NaN and Infinity are not JSON (Python's parser takes them).
    Bytes are decoded as json.loads does (UTF-8, -16 or -32, told by their first bytes)."""
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
    elif raw.startswith("\ufeff"):
        raise ValueError("a JSON text does not begin with a byte order mark")
    return _DECODER.decode(raw)


def error_object(error: PierError, request_id: Any = None) -> dict[str, Any]:
    """The JSON-RPC response carrying `error`."""
    return {"jsonrpc": "2.0", "error": _error_body(error), "id": request_id}


def _error_body(error: PierError) -> dict[str, Any]:
    data: dict[str, Any] = {"name": error.name}
    if isinstance(error.data, dict):
        data.update(error.data)
    elif error.data is not None:
        data["detail"] = error.data
    return {"code": error.code, "message": error.message, "data": data}


def _envelope_problem(request: Any) -> str | None:
    """What makes `request` not a JSON-RPC 2.0 request object, or None."""
    if not isinstance(request, dict):
        return f"a request must be an object, not {type(request).__name__}"
    if request.get("jsonrpc") != "2.0":
        return "'jsonrpc' must be exactly \"2.0\""
    if not isinstance(request.get("method"), str):
        return "'method' must be a string"
    if "params" in request and not isinstance(request["params"], (dict, list)):
        return "'params' must be an object or an array"
    if "id" in request and not _valid_id(request["id"]):
        return "'id' must be a string, a number or null"
    unknown = set(request) - {"jsonrpc", "method", "params", "id"}
    if unknown:
        return f"unknown member(s) {sorted(unknown)}"
    return None


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def _compile_envelope_validator() -> Any:
    """jsonrpcserver's own schema of one request object (not its batch alternative: batches are
    split before dispatch, so an array here is an invalid element), compiled with fastjsonschema."""
    schema = json.loads(importlib.resources.files("jsonrpcserver").joinpath("request-schema.json").read_text())
    return fastjsonschema.compile({**schema["definitions"]["request"], "$schema": schema["$schema"]})


_check_envelope = _compile_envelope_validator()


def _as_is(element: Any) -> Any:
    """jsonrpcserver's deserializer: the element was parsed (and split from its batch) already."""
    return element


class _AnyArguments(inspect.Signature):
    """What jsonrpcserver's binding check sees of every caller: `(*args, **kwargs)`, which any call
    binds to, so binding is skipped (it cost ~2.5 us a call); the verb's schema decides instead."""

    def bind(self, /, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        return None


_TAKES_ANYTHING = _AnyArguments([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
                                 inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


class _VerbCaller:
    """jsonrpcserver's method for one verb name: calls it through the registry and gives back a
    Success, or an Error carrying the PierError's code, message and data; it never raises."""

    __signature__ = _TAKES_ANYTHING

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name

    def __call__(self, context: CallContext, /, *positional: Any, **named: Any) -> Result:
        try:
            return Success(self.registry.call(self.name, list(positional) if positional else named, context))
        except PierError as exc:
            return Error(**_error_body(exc))
        except Exception:  # the registry maps its handlers' errors; this is a bug in the registry itself
            log.exception("%s failed in the registry (%s)", self.name, context.describe())
            return Error(**_error_body(InternalError("the call failed inside the agent; see its log")))


class _Methods(dict[str, Callable[..., Result]]):
    """Every declared verb and legacy name, bound once; any other name gets a caller made for the
    call, so that the registry answers it (Method not found, naming it) as it answers every call."""

    def __init__(self, registry: Registry) -> None:
        super().__init__((name, _VerbCaller(registry, name))
                         for name in [*registry.schema.verbs, *registry.schema.legacy])
        self.registry = registry

    def __missing__(self, name: str) -> _VerbCaller:
        return _VerbCaller(self.registry, name)


@dataclass(frozen=True)
class Message:
    """One JSON-RPC message as parsed: its request objects (one, or a batch's), or, when the
    message as a whole cannot be served (too large, not JSON, an empty or too long batch), the
    error response that answers it."""

    requests: list[Any]
    batch: bool = False
    refusal: dict[str, Any] | None = None


# What a message gets back: a response object, a batch's array of them, or nothing.
Answer = dict[str, Any] | list[dict[str, Any]] | None


class JsonRpc:
    """Parses JSON-RPC messages, answers their requests through the registry, encodes the answers.

    Transports take the answer as data (`parse`, `answer`, `encode`), so that what they do with it
    (where a response goes, how loudly it is logged, what is cached) never depends on its text.
    """

    def __init__(self, registry: Registry, *, max_bytes: int = MAX_BYTES, max_batch: int = MAX_BATCH) -> None:
        self.registry = registry
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self._methods = _Methods(registry)

    def handle(self, raw: str | bytes, context: CallContext) -> str | None:
        """The encoded answer to one message (a request or a batch); None when nothing is to be sent back."""
        answer = self.answer(self.parse(raw), context)
        return None if answer is None else self.encode(answer)

    def parse(self, raw: str | bytes) -> Message:
        """`raw` as request objects, or refused as a whole."""
        if len(raw) > self.max_bytes:
            return _refused(InvalidRequest(f"message of {len(raw)} bytes exceeds the limit of {self.max_bytes} bytes",
                                           data={"limit": self.max_bytes}))
        try:
            message = loads(raw)
        except (ValueError, RecursionError) as exc:
            return _refused(ParseError(f"Parse error: {exc}"))
        if not isinstance(message, list):
            return Message([message])
        if not message:
            return _refused(InvalidRequest("an empty batch is not a request"))
        if len(message) > self.max_batch:
            return _refused(InvalidRequest(f"batch of {len(message)} calls exceeds the limit of {self.max_batch}",
                                           data={"limit": self.max_batch}))
        return Message(message, batch=True)

    def answer(self, message: Message, context: CallContext) -> Answer:
        """The answer to a parsed message: a batch is answered element by element, as the
        specification's examples require; a batch of notifications only gets nothing."""
        if message.refusal is not None:
            return message.refusal
        if not message.batch:
            return self.answer_one(message.requests[0], context)
        answers = [answer for answer in (self.answer_one(item, context) for item in message.requests)
                   if answer is not None]
        return answers or None

    def answer_one(self, request: Any, context: CallContext) -> dict[str, Any] | None:
        """The response to one element of a message (None for a notification), as jsonrpcserver's
        dispatch gives it."""
        response = cast(dict[str, Any] | None,  # one element in: one response object, or None, out
                        dispatch_to_response(request, self._methods, context=context, deserializer=_as_is,
                                             validator=_check_envelope, post_process=to_serializable_one))
        if response is None or "error" not in response or isinstance(response["error"].get("data"), dict):
            return response  # a notification's nothing, a result, or one of Pier's errors
        return _library_error(request, response)

    def encode(self, answer: dict[str, Any] | list[dict[str, Any]]) -> str:
        """`answer` as JSON text; a response whose result is not JSON becomes an internal error."""
        try:
            return _dumps(answer)
        except (TypeError, ValueError):
            if isinstance(answer, list):
                return "[" + ",".join(_encode_one(response) for response in answer) + "]"
            return _encode_one(answer)

    def notification(self, event: Event) -> str:
        """The JSON-RPC notification that carries `event`."""
        return _dumps({"jsonrpc": "2.0", "method": event.name, "params": event.notification_params()})


def _library_error(request: Any, response: dict[str, Any]) -> dict[str, Any]:
    """Pier's answer in place of an error jsonrpcserver made itself: an invalid request says why
    and keeps a valid id; anything else (a failure inside jsonrpcserver) is an internal error."""
    request_id = request.get("id") if isinstance(request, dict) and _valid_id(request.get("id")) else None
    if response["error"]["code"] == InvalidRequest.code:
        problem = _envelope_problem(request) or "it does not match the JSON-RPC 2.0 request schema"
        return error_object(InvalidRequest(f"Invalid request: {problem}"), request_id)
    log.error("jsonrpcserver answered %r for id %r", response["error"], request_id)
    return error_object(InternalError("the call failed inside the agent; see its log"), request_id)


def _refused(error: PierError) -> Message:
    return Message([], refusal=error_object(error))


def _encode_one(response: dict[str, Any]) -> str:
    try:
        return _dumps(response)
    except (TypeError, ValueError) as exc:
        log.error("the result for id %r is not JSON-serialisable: %s", response.get("id"), exc)
        return _dumps(error_object(InternalError("the result could not be encoded as JSON"), response.get("id")))


def responses_of(answer: Answer) -> list[dict[str, Any]]:
    """The response objects of an answer, whether it is one, a batch's or none."""
    if answer is None:
        return []
    return answer if isinstance(answer, list) else [answer]

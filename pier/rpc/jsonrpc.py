"""JSON-RPC 2.0 as its specification says, over any wire: one message in, one message out.

Every JSON-RPC transport (WebSocket, HTTP POST /jsonrpc, STOMP) hands raw message text to
`JsonRpc.parse`, gets the answer as data from `JsonRpc.answer` (response objects, a batch's list
of them, or None when nothing is to be sent back) and sends `JsonRpc.encode` of it; `handle` does
all three. Batches are split here and answered element by element, as the specification's
examples require, and each element goes to the registry, which alone knows what exists. This
module is the one error mapper for JSON-RPC: a PierError becomes an error object with VDSM's code
and message and Pier's `data`.

It does its own dispatch rather than use jsonrpcserver: measured here, jsonrpcserver's per-call
signature binding and result wrapping took a call from 11 to 36 us, a tenth of a WebSocket round
trip, and every other part of it had to be bypassed anyway (envelope checks, batches, errors).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

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
        """The response to one element of a message (None for a notification)."""
        problem = _envelope_problem(request)
        if problem is not None:
            request_id = request.get("id") if isinstance(request, dict) and _valid_id(request.get("id")) else None
            return error_object(InvalidRequest(f"Invalid request: {problem}"), request_id)
        request_id = request.get("id")
        try:
            response = {"jsonrpc": "2.0", "result": self.registry.call(request["method"], request.get("params"),
                                                                       context), "id": request_id}
        except PierError as exc:
            response = error_object(exc, request_id)
        return response if "id" in request else None

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

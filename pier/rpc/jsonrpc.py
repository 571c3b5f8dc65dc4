"""JSON-RPC 2.0 as its specification says, over any wire: one message in, one message out.

Every JSON-RPC transport (WebSocket, HTTP POST /jsonrpc, STOMP) hands raw message text to
`JsonRpc.handle` and sends back what it returns (nothing for notifications). Batches are split
here and answered element by element, as the specification's examples require; each element is
dispatched through jsonrpcserver to the registry. This module is the one error mapper for
JSON-RPC: a PierError becomes an error object with VDSM's code and message and Pier's `data`.
"""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any

from jsonrpcserver import Error, Success, dispatch_to_response
from jsonrpcserver.response import to_serializable_one
from jsonrpcserver.sentinels import NODATA

from pier.rpc.errors import InternalError, InvalidRequest, ParseError, PierError
from pier.rpc.events import Event
from pier.rpc.registry import CallContext, Registry

log = logging.getLogger("pier.jsonrpc")

MAX_BYTES = 1 << 20
MAX_BATCH = 100


def _identity(value: Any) -> Any:
    return value


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


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


_METHOD_SIGNATURE = inspect.Signature([
    inspect.Parameter("context", inspect.Parameter.POSITIONAL_ONLY),
    inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
    inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
])


class _AnyMethod(dict):
    """Every method name maps to the registry, which alone decides what exists (and says so)."""

    def __init__(self, invoke: Any, known: Any) -> None:
        super().__init__()
        self._invoke = invoke
        self._known = known

    def __missing__(self, name: str) -> Any:
        invoke = self._invoke

        def method(context: CallContext, *args: Any, **kwargs: Any) -> Any:
            return invoke(name, context, list(args) if args else kwargs)

        method.__signature__ = _METHOD_SIGNATURE  # type: ignore[attr-defined]  # spares inspect a lookup per call
        if self._known(name):
            self[name] = method
        return method


class JsonRpc:
    """Turns JSON-RPC message text into registry calls and their answers into text."""

    def __init__(self, registry: Registry, *, max_bytes: int = MAX_BYTES, max_batch: int = MAX_BATCH) -> None:
        self.registry = registry
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self._methods = _AnyMethod(self._invoke, registry.schema.resolve)

    def handle(self, raw: str | bytes, context: CallContext) -> str | None:
        """Answer one message (a request or a batch); None when nothing is to be sent back."""
        if len(raw) > self.max_bytes:
            return _dumps(error_object(InvalidRequest(
                f"message of {len(raw)} bytes exceeds the limit of {self.max_bytes} bytes",
                data={"limit": self.max_bytes})))
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return _dumps(error_object(ParseError(f"Parse error: {exc}")))
        if not isinstance(message, list):
            return self._answer(message, context)
        if not message:
            return _dumps(error_object(InvalidRequest("an empty batch is not a request")))
        if len(message) > self.max_batch:
            return _dumps(error_object(InvalidRequest(
                f"batch of {len(message)} calls exceeds the limit of {self.max_batch}",
                data={"limit": self.max_batch})))
        answers = [answer for answer in (self._answer(item, context) for item in message) if answer]
        return "[" + ",".join(answers) + "]" if answers else None

    def notification(self, event: Event) -> str:
        """The JSON-RPC notification that carries `event`."""
        return _dumps({"jsonrpc": "2.0", "method": event.name, "params": event.notification_params()})

    def _answer(self, request: Any, context: CallContext) -> str | None:
        problem = _envelope_problem(request)
        if problem is not None:
            request_id = request.get("id") if isinstance(request, dict) and _valid_id(request.get("id")) else None
            return _dumps(error_object(InvalidRequest(f"Invalid request: {problem}"), request_id))
        response = dispatch_to_response(
            request, self._methods, context=context, deserializer=_identity,
            validator=_identity, post_process=to_serializable_one,
        )
        if response is None:
            return None
        try:
            return _dumps(response)
        except (TypeError, ValueError) as exc:
            log.error("result of %s is not JSON-serialisable: %s", request.get("method"), exc)
            return _dumps(error_object(InternalError("the result could not be encoded as JSON"),
                                       request.get("id")))

    def _invoke(self, name: str, context: CallContext, params: list[Any] | dict[str, Any]) -> Any:
        try:
            result = self.registry.call(name, params, context)
        except PierError as exc:
            body = _error_body(exc)
            return Error(body["code"], body["message"], body.get("data", NODATA))
        return Success(result)

"""One client per transport, all with the same `call(verb, **params)` surface.

The integration suite is written once and run over every transport: JSON-RPC over WebSocket,
JSON-RPC over HTTP, and the REST facade (which finds each verb's route in the schema). A failed
call raises `CallFailed` carrying the VDSM code and name, whatever the wire.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from websockets.sync.client import connect

from pier.rpc.schema import Schema

SCHEMA = Schema.load()


class CallFailed(Exception):
    def __init__(self, code: int, name: str, message: str, status: int | None = None, data: Any = None) -> None:
        super().__init__(f"{code} {name}: {message}")
        self.code, self.name, self.message, self.status, self.data = code, name, message, status, data


def http_request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
                 raw: bytes | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, headers, body) for any status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in request.headers:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class JsonRpcError(CallFailed):
    pass


def _raise_jsonrpc(error: dict[str, Any]) -> None:
    data = error.get("data") or {}
    raise JsonRpcError(error["code"], data.get("name", ""), error["message"], data=data)


class HttpRpcClient:
    transport = "http"

    def __init__(self, base: str) -> None:
        self.url = base + "/jsonrpc"
        self._ids = itertools.count(1)

    def send(self, message: Any) -> Any:
        status, _, body = http_request("POST", self.url, message)
        return json.loads(body) if body else None

    def call(self, verb: str, **params: Any) -> Any:
        reply = self.send({"jsonrpc": "2.0", "method": verb, "params": params, "id": next(self._ids)})
        if "error" in reply:
            _raise_jsonrpc(reply["error"])
        return reply["result"]

    def close(self) -> None:
        pass


class WsClient:
    transport = "ws"

    def __init__(self, url: str) -> None:
        self._stack = contextlib.ExitStack()
        self.connection = self._stack.enter_context(connect(url, compression=None, max_size=8 << 20,
                                                            open_timeout=10))
        self._ids = itertools.count(1)
        self.notifications: list[dict[str, Any]] = []

    def send(self, message: Any) -> Any:
        self.connection.send(message if isinstance(message, str) else json.dumps(message))
        while True:
            reply = json.loads(self.connection.recv(timeout=60))
            if isinstance(reply, dict) and "method" in reply and "id" not in reply:
                self.notifications.append(reply)
                continue
            return reply

    def call(self, verb: str, **params: Any) -> Any:
        reply = self.send({"jsonrpc": "2.0", "method": verb, "params": params, "id": next(self._ids)})
        if "error" in reply:
            _raise_jsonrpc(reply["error"])
        return reply["result"]

    def next_notification(self, timeout: float = 10) -> dict[str, Any]:
        if self.notifications:
            return self.notifications.pop(0)
        return json.loads(self.connection.recv(timeout=timeout))

    def close(self) -> None:
        self._stack.close()


class RestClient:
    """Calls a verb through its REST route, found in the schema like the facade finds it."""

    transport = "rest"

    def __init__(self, base: str) -> None:
        self.base = base + "/api/v1"

    def call(self, verb: str, **params: Any) -> Any:
        declared = SCHEMA.verbs[verb]
        if not declared.rest:
            raise LookupError(f"{verb} has no REST route")
        route = declared.rest[0]
        path = route.path
        for name in route.path_params:
            path = path.replace("{" + name + "}", urllib.parse.quote(str(params.pop(name)), safe=""))
        body = None
        if route.method in ("GET", "DELETE"):
            query = {k: ",".join(map(str, v)) if isinstance(v, list) else
                     (json.dumps(v) if isinstance(v, bool) else v) for k, v in params.items()}
            if query:
                path += "?" + urllib.parse.urlencode(query)
        else:
            body = params.pop(route.body) if route.body else params
        status, headers, raw = http_request(route.method, self.base + path, body if body is not None else {}
                                            if route.method not in ("GET", "DELETE") else None)
        payload = json.loads(raw) if raw else None
        if status >= 400:
            raise CallFailed(payload.get("code"), payload.get("name"), payload.get("detail", ""), status,
                             payload.get("data"))
        return payload

    def close(self) -> None:
        pass

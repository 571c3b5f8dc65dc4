"""One client per transport, all with the same `call(verb, **params)` surface.

The integration suite is written once and run over every transport: JSON-RPC over WebSocket,
JSON-RPC over HTTP, the REST facade (which finds each verb's route in the schema), and JSON-RPC
over STOMP through the broker. A failed call raises `CallFailed` carrying the VDSM code and name,
whatever the wire.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import stomp
from websockets.sync.client import connect

from pier.rpc.schema import Schema

SCHEMA = Schema.load()


class CallFailed(Exception):
    def __init__(self, code: int, name: str, message: str, status: int | None = None, data: Any = None) -> None:
        super().__init__(f"{code} {name}: {message}")
        self.code, self.name, self.message, self.status, self.data = code, name, message, status, data


# The bearer token of the pierd under test; the Pierd fixture sets it, and every helper here sends
# it unless a test passes its own Authorization header ("" for none).
TOKEN: dict[str, str] = {"value": ""}


def auth_headers(token: str | None = None) -> dict[str, str]:
    token = TOKEN["value"] if token is None else token
    return {"Authorization": f"Bearer {token}"} if token else {}


def http_request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
                 raw: bytes | None = None, timeout: float = 30,
                 context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request (with the test's token unless `headers` say otherwise); returns
    (status, headers, body) for any status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {**auth_headers(), **(headers or {})}
    headers = {name: value for name, value in headers.items() if value}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    if data is not None and "Content-Type" not in request.headers:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def unix_request(socket_path: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to pierd's local socket (where root is an admin without a token)."""
    connection = http.client.HTTPConnection("localhost", timeout=30)
    connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.sock.connect(socket_path)
    raw = json.dumps(body).encode() if body is not None else None
    connection.request(method, path, body=raw, headers={"Content-Type": "application/json"} if raw else {})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, json.loads(payload) if payload else None


class JsonRpcError(CallFailed):
    pass


def _raise_jsonrpc(error: dict[str, Any]) -> None:
    data = error.get("data") or {}
    raise JsonRpcError(error["code"], data.get("name", ""), error["message"], data=data)


class HttpRpcClient:
    transport = "http"

    def __init__(self, base: str, token: str | None = None) -> None:
        self.url = base + "/jsonrpc"
        self._ids = itertools.count(1)
        self._headers = auth_headers(token) or {"Authorization": ""}

    def send(self, message: Any) -> Any:
        status, _, body = http_request("POST", self.url, message, headers=self._headers)
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

    def __init__(self, url: str, token: str | None = None, ssl: ssl.SSLContext | None = None) -> None:
        self._stack = contextlib.ExitStack()
        self.connection = self._stack.enter_context(connect(url, compression=None, max_size=8 << 20,
                                                            open_timeout=10, ssl=ssl,
                                                            additional_headers=auth_headers(token)))
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

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base + "/api/v1"
        self._headers = auth_headers(token) or {"Authorization": ""}

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
                                            if route.method not in ("GET", "DELETE") else None, headers=self._headers)
        payload = json.loads(raw) if raw else None
        if status >= 400:
            raise CallFailed(payload.get("code"), payload.get("name"), payload.get("detail", ""), status,
                             payload.get("data"))
        return payload

    def close(self) -> None:
        pass


class StompClient:
    """JSON-RPC over STOMP, as an engine calls a host through the broker.

    Requests go to the host's request queue with `reply-to` set to a temporary queue of this
    connection (RabbitMQ's `/temp-queue/`), a fresh `correlation-id`, `persistent:true`, an
    `expires` deadline and the caller's bearer token (`authorization: Bearer <token>`: the test's
    token unless `token` is given, "" for none); replies are matched by `correlation-id` (and the
    id of a single request). The broker connection logs in as `login` (guest by default), which
    says nothing to pierd about who is calling. `subscribe` collects the frames of another
    destination, e.g. the events topic.
    """

    transport = "stomp"

    def __init__(self, broker: tuple[str, int], requests: str, *, token: str | None = None, login: str = "guest",
                 passcode: str = "guest", timeout: float = 30) -> None:
        self.requests = requests
        self.token = TOKEN["value"] if token is None else token
        self.timeout = timeout
        self.errors: list[str] = []
        self.reply_to = f"/temp-queue/pier-test-{uuid.uuid4().hex[:12]}"
        self._changed = threading.Condition()
        self._replies: dict[str, str] = {}
        self._receipts: set[str] = set()
        self.frames: dict[str, list[tuple[dict[str, str], str]]] = {}
        self.connection = stomp.Connection12([broker], vhost="/", heartbeats=(10000, 10000), timeout=5,
                                             reconnect_attempts_max=1)
        self.connection.set_listener("test", self)
        self.connection.connect(login, passcode, wait=True, with_connect_command=True)

    # stomp.py callbacks, on its receiver thread
    def on_connecting(self, host_and_port: tuple[str, int]) -> None:
        self.connection.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_message(self, frame: Any) -> None:
        subscription = frame.headers.get("subscription", "")
        with self._changed:
            if subscription.startswith("/temp-queue/"):
                self._replies[frame.headers.get("correlation-id", "")] = frame.body
            else:
                self.frames.setdefault(subscription, []).append((frame.headers, frame.body))
                if frame.headers.get("ack"):
                    self.connection.ack(frame.headers["ack"])
            self._changed.notify_all()

    def on_receipt(self, frame: Any) -> None:
        with self._changed:
            self._receipts.add(frame.headers.get("receipt-id", ""))
            self._changed.notify_all()

    def on_error(self, frame: Any) -> None:
        with self._changed:
            self.errors.append(f"{frame.headers.get('message', '')}: {frame.body}")
            self._changed.notify_all()

    def send_frame(self, body: str | bytes, headers: dict[str, str] | None = None) -> str:
        """Send one request frame as given; returns its correlation-id."""
        correlation = uuid.uuid4().hex
        base = {"reply-to": self.reply_to, "correlation-id": correlation, "persistent": "true",
                "expires": str(int(time.time() * 1000 + 60_000))}
        if self.token:
            base["authorization"] = f"Bearer {self.token}"
        self.connection.send(self.requests, body, content_type="application/json", headers={**base, **(headers or {})})
        return correlation

    def reply(self, correlation: str, timeout: float | None = None) -> str | None:
        """The reply with `correlation`, or None when none came within `timeout`."""
        with self._changed:
            self._changed.wait_for(lambda: correlation in self._replies, self.timeout if timeout is None else timeout)
            return self._replies.pop(correlation, None)

    def send(self, message: Any, timeout: float | None = None) -> Any:
        body = message if isinstance(message, (str, bytes)) else json.dumps(message)
        raw = self.reply(self.send_frame(body), timeout)
        if raw is None:
            raise TimeoutError(f"no reply from {self.requests} within {timeout or self.timeout} s")
        return json.loads(raw)

    def call(self, verb: str, timeout: float | None = None, **params: Any) -> Any:
        request_id = str(uuid.uuid4())
        reply = self.send({"jsonrpc": "2.0", "method": verb, "params": params, "id": request_id}, timeout)
        assert reply["id"] == request_id, reply
        if "error" in reply:
            _raise_jsonrpc(reply["error"])
        return reply["result"]

    def subscribe(self, destination: str, subscription: str | None = None, **headers: str) -> str:
        """Collect the frames sent to `destination` in `frames[subscription]` (acked as they come);
        returns once the broker has the subscription."""
        subscription = subscription or f"sub-{uuid.uuid4().hex[:8]}"
        receipt = f"subscribed-{subscription}"
        with self._changed:
            self.frames.setdefault(subscription, [])
        self.connection.subscribe(destination, subscription, ack="client-individual",
                                  headers={**headers, "receipt": receipt})
        with self._changed:
            if not self._changed.wait_for(lambda: receipt in self._receipts, self.timeout):
                raise TimeoutError(f"no receipt for the subscription to {destination}")
        return subscription

    def wait_frames(self, subscription: str, until: Any, timeout: float = 10) -> list[tuple[dict[str, str], str]]:
        """The frames of `subscription` once `until(frames)` holds (or `timeout` passes)."""
        with self._changed:
            self._changed.wait_for(lambda: until(self.frames[subscription]), timeout)
            return list(self.frames[subscription])

    def close(self) -> None:
        """Disconnect and wait for stomp.py's receiver thread to end."""
        with contextlib.suppress(Exception):
            self.connection.disconnect(receipt=f"bye-{uuid.uuid4().hex[:8]}")

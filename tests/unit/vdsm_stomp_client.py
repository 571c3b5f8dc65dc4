"""A STOMP client that speaks exactly as VDSM's own (`vdsm.client` over `yajsonrpc`) does.

Written from the frames VDSM's client sends (see ../shared/vdsm-compat.md), independently of
Pier's frame code, so that it checks the server rather than agreeing with it:

- `CONNECT` with `accept-version:1.2` and `heart-beat:0,24000` only (no host, login, passcode);
- right after it, before `CONNECTED` arrives, `SUBSCRIBE` to a fresh UUID reply destination with
  `ack:auto` and another UUID as `id`;
- requests only once `CONNECTED` is in: `SEND` to `jms.topic.vdsm_requests` with headers
  `destination`, `content-type:application/json`, `reply-to`, optionally `ovirtCorrelationId`,
  then `content-length`; the body is a one-element JSON-RPC batch (or, as VDSM's client also
  sends some requests, a bare request object), params by name, a UUID id;
- header values escaped as STOMP 1.2 says; frames without a body carry no `content-length`;
- incoming frames: EOLs between frames are heart-beats; a body is read by `content-length` when
  there is one; a MESSAGE is routed by its `subscription` header, and a response body may be an
  object or an array, matched by id;
- it ends by sending `UNSUBSCRIBE` for each subscription and closing the socket.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REQUESTS = "jms.topic.vdsm_requests"
EVENTS = "jms.queue.events"

_ENCODE = str.maketrans({"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"})
_DECODE = {"\\\\": "\\", "\\r": "\r", "\\n": "\n", "\\c": ":"}


def address_of(url: str) -> tuple[str, int]:
    """(host, port) of a `stomp://host:port` address."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


class ServerError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"(code={code}, message={message})")
        self.code = code
        self.message = message


class Closed(Exception):
    """The server closed the connection."""


@dataclass
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def encode(command: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
    """A frame as VDSM's client lays it out: headers in order, content-length last when there is a body."""
    lines = [command]
    headers = dict(headers)
    if body is not None:
        headers["content-length"] = str(len(body))
    lines += [f"{key.translate(_ENCODE)}:{value.translate(_ENCODE)}" for key, value in headers.items()]
    return ("\n".join(lines) + "\n\n").encode() + (body or b"") + b"\0"


class VdsmLikeClient:
    """One connection, read synchronously: `call` reads frames until its response is in."""

    def __init__(self, address: tuple[str, int], *, heart_beat: str = "0,24000", connect: bool = True,
                 timeout: float = 5.0, tls: ssl.SSLContext | None = None, passcode: str | None = None) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.reply_to = str(uuid.uuid4())
        self.subscriptions: dict[str, str] = {}  # id -> destination
        self.responses: dict[Any, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.messages: list[Frame] = []  # MESSAGEs that are neither responses nor events
        self.heart_beats = 0
        self.connected: Frame | None = None
        self.passcode = passcode  # VDSM's client sends none; a Pier token may go here
        self._buf = b""
        if connect:
            self.connect(heart_beat)

    # -- sending ----------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, command: str, headers: dict[str, str], body: bytes | None = None) -> None:
        self.sock.sendall(encode(command, headers, body))

    def connect(self, heart_beat: str = "0,24000") -> Frame:
        passcode = {"passcode": self.passcode} if self.passcode else {}
        self.send_frame("CONNECT", {"accept-version": "1.2", "heart-beat": heart_beat, **passcode})
        self.reply_sub = self.subscribe(self.reply_to)  # before CONNECTED, as VDSM's client does
        self.connected = self.read_frame()
        assert self.connected.command == "CONNECTED", self.connected
        return self.connected

    def subscribe(self, destination: str, sub_id: str | None = None, **extra: str) -> str:
        sub_id = sub_id or str(uuid.uuid4())
        self.send_frame("SUBSCRIBE", {"destination": destination, "ack": "auto", "id": sub_id, **extra})
        self.subscriptions[sub_id] = destination
        return sub_id

    def unsubscribe(self, sub_id: str) -> None:
        self.subscriptions.pop(sub_id, None)
        self.send_frame("UNSUBSCRIBE", {"id": sub_id})

    def send_request(self, method: str, params: dict[str, Any] | None = None, *, destination: str = REQUESTS,
                     reply_to: bool = True, flow_id: str | None = None, request_id: Any = None,
                     batch: bool = True) -> Any:
        request_id = request_id if request_id is not None else str(uuid.uuid4())
        request = {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": request_id}
        headers = {"content-type": "application/json"}
        if reply_to:
            headers["reply-to"] = self.reply_to
        if flow_id is not None:
            headers["ovirtCorrelationId"] = flow_id
        body = json.dumps([request] if batch else request).encode()
        self.send_frame("SEND", {"destination": destination, **headers}, body)
        return request_id

    def call(self, method: str, **params: Any) -> Any:
        response = self.wait_response(self.send_request(method, params))
        if response.get("error"):
            raise ServerError(response["error"]["code"], response["error"]["message"])
        return response["result"]

    def close(self) -> None:
        try:
            for sub_id in list(self.subscriptions):
                self.unsubscribe(sub_id)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> VdsmLikeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- receiving --------------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("no frame in time") from None
        if not data:
            raise Closed("the server closed the connection")
        self._buf += data

    def read_frame(self, timeout: float | None = None) -> Frame:
        """The next frame; EOLs before it are counted as heart-beats."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while self._buf[:1] in (b"\n", b"\r"):
                self.heart_beats += self._buf[:1] == b"\n"
                self._buf = self._buf[1:]
            end = self._buf.find(b"\n\n")
            if end >= 0:
                break
            self._fill(deadline)
        lines = self._buf[:end].decode().split("\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.rstrip("\r").partition(":")
            headers.setdefault(_decode(key), _decode(value))
        start = end + 2
        if "content-length" in headers:
            stop = start + int(headers["content-length"])
            while len(self._buf) <= stop:
                self._fill(deadline)
            assert self._buf[stop:stop + 1] == b"\0", "the body is not followed by NUL"
        else:
            while (stop := self._buf.find(b"\0", start)) < 0:
                self._fill(deadline)
        frame = Frame(lines[0].rstrip("\r"), headers, self._buf[start:stop])
        self._buf = self._buf[stop + 1:]
        return frame

    def read_until(self, done: Callable[[], bool], timeout: float | None = None) -> None:
        """Read and sort frames until `done()`; an ERROR frame raises."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not done():
            frame = self.read_frame(max(deadline - time.monotonic(), 0.001))
            if frame.command == "ERROR":
                raise AssertionError(f"ERROR frame: {frame.headers} {frame.body!r}")
            assert frame.command == "MESSAGE", frame
            self._sort(frame)

    def wait_response(self, request_id: Any, timeout: float | None = None) -> dict[str, Any]:
        self.read_until(lambda: request_id in self.responses, timeout)
        return self.responses.pop(request_id)

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float | None = None) -> dict[str, Any]:
        def found() -> bool:
            return any(predicate(event) for event in self.events)

        self.read_until(found, timeout)
        return next(event for event in self.events if predicate(event))

    def _sort(self, frame: Frame) -> None:
        sub_id = frame.headers.get("subscription")
        assert sub_id in self.subscriptions, f"MESSAGE for an unknown subscription: {frame.headers}"
        assert int(frame.headers["content-length"]) == len(frame.body)
        body = frame.json() if frame.headers.get("content-type") == "application/json" else None
        if sub_id == self.reply_sub:
            for item in body if isinstance(body, list) else [body]:
                assert "result" in item or "error" in item, item
                self.responses[item["id"]] = item
        elif self.subscriptions[sub_id] == EVENTS:
            assert isinstance(body, dict) and "id" not in body, body
            self.events.append(body)
        else:
            self.messages.append(frame)


def _decode(value: str) -> str:
    return re.sub(r"\\.", lambda match: _DECODE[match.group(0)], value)

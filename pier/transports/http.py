"""The HTTP listener: JSON-RPC 2.0 at POST /jsonrpc, the REST facade, and /metrics, on cheroot.

`jsonrpc_app` is a WSGI app answering one JSON-RPC message per POST (a notification gets 204).
`HttpListener` owns a cheroot server and the thread that runs it, and routes each request by path
prefix to the app mounted there (without rewriting the path, so apps see their full routes).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import cheroot.wsgi

from pier.rpc.errors import InvalidRequest
from pier.rpc.jsonrpc import JsonRpc, error_object
from pier.rpc.registry import CallContext

log = logging.getLogger("pier.transports.http")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_JSON = [("Content-Type", "application/json")]


def peer_of(environ: dict[str, Any]) -> str:
    host = environ.get("REMOTE_ADDR", "")
    port = environ.get("REMOTE_PORT", "")
    return f"{host}:{port}" if port else host


def jsonrpc_app(jsonrpc: JsonRpc) -> WsgiApp:
    """A WSGI app serving JSON-RPC 2.0: POST a request or a batch, get the answer."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":
            body = json.dumps(error_object(InvalidRequest("JSON-RPC over HTTP takes POST"))).encode()
            start_response("405 Method Not Allowed", [*_JSON, ("Allow", "POST")])
            return [body]
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > jsonrpc.max_bytes:
            error = InvalidRequest(f"message of {length} bytes exceeds the limit of {jsonrpc.max_bytes} bytes"
                                   if length > 0 else "Content-Length is missing or invalid",
                                   data={"limit": jsonrpc.max_bytes})
            start_response("413 Payload Too Large" if length > 0 else "411 Length Required",
                           [*_JSON, ("Connection", "close")])
            return [json.dumps(error_object(error)).encode()]
        raw = environ["wsgi.input"].read(length) if length else b""
        reply = jsonrpc.handle(raw, CallContext("http", peer_of(environ)))
        if reply is None:
            start_response("204 No Content", [])
            return []
        body = reply.encode()
        start_response("200 OK", [*_JSON, ("Content-Length", str(len(body)))])
        return [body]

    return app


class _PrefixRouter:
    """Sends each request to the app mounted at the longest matching path prefix."""

    def __init__(self, mounts: dict[str, WsgiApp], default: WsgiApp) -> None:
        self._mounts = sorted(mounts.items(), key=lambda item: -len(item[0]))
        self._default = default

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for prefix, app in self._mounts:
            if path == prefix or path.startswith(prefix + "/"):
                return app(environ, start_response)
        return self._default(environ, start_response)


class HttpListener:
    """Owns one cheroot server (TCP or a unix socket path) and the thread running it."""

    def __init__(self, bind: tuple[str, int] | str, mounts: dict[str, WsgiApp], default: WsgiApp, *,
                 threads: int = 16, before_stop: Callable[[], None] | None = None) -> None:
        self._server = cheroot.wsgi.Server(bind, _PrefixRouter(mounts, default), numthreads=threads,
                                           server_name="pier", shutdown_timeout=2)
        self._before_stop = before_stop
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        bind = self._server.bind_addr
        if isinstance(bind, str):
            return f"http+unix://{bind}"
        host = f"[{bind[0]}]" if ":" in bind[0] else bind[0]
        return f"http://{host}:{bind[1]}"

    def start(self) -> None:
        """Bind (raising at once if the address is taken) and serve on a thread."""
        self._server.prepare()
        self._thread = threading.Thread(target=self._server.serve, name="http-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._before_stop is not None:
            self._before_stop()
        self._server.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

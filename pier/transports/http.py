"""The HTTP listener: JSON-RPC 2.0 at POST /jsonrpc, the REST facade, and /metrics, on cheroot.

`jsonrpc_app` is a WSGI app answering one JSON-RPC message per POST (a notification gets 204).
`HttpListener` owns a cheroot server and the thread that runs it, and routes each request by path
prefix to the app mounted there (without rewriting the path, so apps see their full routes).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

import cheroot.wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from pier.rpc.auth import WSGI_AUTH_ERROR, WSGI_IDENTITY
from pier.rpc.errors import InvalidRequest, PierError, TooManyRequests
from pier.rpc.jsonrpc import JsonRpc, error_object
from pier.rpc.limits import drain_oversized
from pier.rpc.registry import CallContext
from pier.transports.tls import ServerTls

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
            drain_oversized(environ["wsgi.input"], length)
            start_response("413 Payload Too Large" if length > 0 else "411 Length Required",
                           [*_JSON, ("Connection", "close")])
            return [json.dumps(error_object(error)).encode()]
        raw = environ["wsgi.input"].read(length) if length else b""
        reply = jsonrpc.handle(raw, CallContext.for_wsgi(environ, "http"))
        if reply is None:
            start_response("204 No Content", [])
            return []
        body = reply.encode()
        start_response("200 OK", [*_JSON, ("Content-Length", str(len(body)))])
        return [body]

    return app


class _PrefixRouter:
    """Tells who is calling, then sends the request to the app mounted at the longest matching
    path prefix. Each app turns a missing identity into an error of its own wire's form."""

    def __init__(self, mounts: dict[str, WsgiApp], default: WsgiApp, authenticator: Any, max_per_client: int) -> None:
        self._mounts = sorted(mounts.items(), key=lambda item: -len(item[0]))
        self._default = default
        self._authenticator = authenticator
        self._max_per_client = max_per_client
        self._busy: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        client = environ.get("REMOTE_ADDR", "")
        with self._lock:
            crowded = bool(client) and self._busy[client] >= self._max_per_client
            if not crowded:
                self._busy[client] += 1
        if crowded:
            environ[WSGI_AUTH_ERROR] = TooManyRequests(
                f"{client} has {self._max_per_client} requests in progress already", data={"client": client})
            return self._route(environ, start_response)
        try:
            return _Finally(self._route_identified(environ, start_response), lambda: self._release(client))
        except BaseException:
            self._release(client)
            raise

    def _release(self, client: str) -> None:
        with self._lock:
            self._busy[client] -= 1
            if self._busy[client] <= 0:
                del self._busy[client]

    def _route_identified(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            environ[WSGI_IDENTITY] = self._authenticator.identify(
                authorization=environ.get("HTTP_AUTHORIZATION"),
                certificate=_certificate(environ.get("SSL_CLIENT_CERT")),
                peer_uid=_int(environ.get("X_REMOTE_UID")), peer_gid=_int(environ.get("X_REMOTE_GID")))
        except PierError as exc:
            environ[WSGI_AUTH_ERROR] = exc
        return self._route(environ, start_response)

    def _route(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for prefix, app in self._mounts:
            if path == prefix or path.startswith(prefix + "/"):
                return app(environ, start_response)
        return self._default(environ, start_response)


class _Finally:
    """A response body that runs `done` once the server has finished with it (streams included)."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self._body = body
        self._done = done

    def __iter__(self) -> Any:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done()


def _certificate(pem: str | None) -> bytes | None:
    return ssl.PEM_cert_to_DER_cert(pem) if pem else None


def _int(text: str | None) -> int | None:
    return int(text) if text not in (None, "", "None") else None


class HttpListener:
    """Owns one cheroot server (TCP or a unix socket path) and the thread running it."""

    def __init__(self, bind: tuple[str, int] | str, mounts: dict[str, WsgiApp], default: WsgiApp, authenticator: Any,
                 *, tls: ServerTls | None = None, threads: int = 16, before_stop: Callable[[], None] | None = None,
                 max_per_client: int = 32, timeout: float = 30) -> None:
        self._unix = isinstance(bind, str)
        if self._unix:
            os.makedirs(os.path.dirname(bind) or ".", exist_ok=True)
        router = _PrefixRouter(mounts, default, authenticator, max_per_client)
        self._server = cheroot.wsgi.Server(bind, router, numthreads=threads, server_name="pier", shutdown_timeout=2,
                                           timeout=timeout, peercreds_enabled=self._unix)
        if tls is not None:
            adapter = BuiltinSSLAdapter(tls.cert, tls.key)
            adapter.context = tls.context  # shared by every listener, and reloaded in place on SIGHUP
            self._server.ssl_adapter = adapter
        self._tls = tls is not None
        self._before_stop = before_stop
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        bind = self._server.bind_addr
        if isinstance(bind, str):
            return f"http+unix://{bind}"
        host = f"[{bind[0]}]" if ":" in bind[0] else bind[0]
        return f"{'https' if self._tls else 'http'}://{host}:{bind[1]}"

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

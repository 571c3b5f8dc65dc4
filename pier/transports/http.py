"""The HTTP listener: JSON-RPC 2.0 at POST /jsonrpc, the REST facade, /RPC2 and /metrics.

`jsonrpc_app` is a WSGI app answering one JSON-RPC message per POST (a notification gets 204); its
body may be sent with a Content-Length or chunked (`read_body`).
`HttpListener` owns an `HttpServer` (pier's own, see `httpserver` for why) and routes each request
by path prefix to the app mounted there (without rewriting the path, so apps see their full routes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from pier.rpc.addresses import with_port
from pier.rpc.auth import WSGI_AUTH_ERROR, WSGI_IDENTITY
from pier.rpc.errors import InvalidRequest, PierError
from pier.rpc.jsonrpc import JsonRpc, error_object
from pier.rpc.limits import read_body
from pier.rpc.registry import CallContext
from pier.transports.httpexchange import PEER_CERTIFICATE, PEER_CREDENTIALS, WsgiApp
from pier.transports.httpserver import HttpServer
from pier.transports.tls import ServerTls

log = logging.getLogger("pier.transports.http")

_JSON = [("Content-Type", "application/json")]


def peer_of(environ: dict[str, Any]) -> str:
    """The caller's address and port (for a log line)."""
    host = environ.get("REMOTE_ADDR", "")
    port = environ.get("REMOTE_PORT", "")
    return with_port(host, port) if port else host


def jsonrpc_app(jsonrpc: JsonRpc) -> WsgiApp:
    """A WSGI app serving JSON-RPC 2.0: POST a request or a batch, get the answer."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":
            body = jsonrpc.encode(error_object(InvalidRequest("JSON-RPC over HTTP takes POST"))).encode()
            start_response("405 Method Not Allowed", [*_JSON, ("Allow", "POST")])
            return [body]
        try:
            raw = read_body(environ, jsonrpc.max_bytes)
        except PierError as exc:
            status = HTTPStatus(exc.http_status)
            start_response(f"{status.value} {status.phrase}", [*_JSON, ("Connection", "close")])
            return [jsonrpc.encode(error_object(exc)).encode()]
        reply = jsonrpc.handle(raw, CallContext.for_wsgi(environ, "http"))
        if reply is None:
            start_response("204 No Content", [])
            return []
        body = reply.encode()
        start_response("200 OK", [*_JSON, ("Content-Length", str(len(body)))])
        return [body]

    return app


def identified_only(app: WsgiApp) -> WsgiApp:
    """`app` for callers the listener identified (any role: viewer is the least); others get 401
    in plain text, which is what a scraper such as Prometheus logs."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get(WSGI_IDENTITY) is None:
            error = environ.get(WSGI_AUTH_ERROR)
            status = HTTPStatus(error.http_status if isinstance(error, PierError) else 401)
            text = (error.message if isinstance(error, PierError) else "no credentials") + "\n"
            start_response(f"{status.value} {status.phrase}", [("Content-Type", "text/plain"),
                                                               ("WWW-Authenticate", "Bearer")])
            return [text.encode()]
        return app(environ, start_response)

    return guarded


class _PrefixRouter:
    """Tells who is calling, then sends the request to the app mounted at the longest matching
    path prefix. Each app turns a missing identity into an error of its own wire's form."""

    def __init__(self, mounts: dict[str, WsgiApp], default: WsgiApp, authenticator: Any) -> None:
        self._mounts = sorted(mounts.items(), key=lambda item: -len(item[0]))
        self._default = default
        self._authenticator = authenticator

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        credentials = environ.get(PEER_CREDENTIALS)
        try:
            environ[WSGI_IDENTITY] = self._authenticator.identify(
                authorization=environ.get("HTTP_AUTHORIZATION"), certificate=environ.get(PEER_CERTIFICATE),
                peer_uid=credentials[0] if credentials else None, peer_gid=credentials[1] if credentials else None,
                source=environ.get("REMOTE_ADDR") or "local")
        except PierError as exc:
            environ[WSGI_AUTH_ERROR] = exc
        path = environ.get("PATH_INFO", "")
        for prefix, app in self._mounts:
            if path == prefix or path.startswith(prefix + "/"):
                return app(environ, start_response)
        return self._default(environ, start_response)


class HttpListener:
    """Owns one HTTP server (TCP, with TLS unless plain text was asked for, or a unix socket path)."""

    def __init__(self, bind: tuple[str, int] | str, mounts: dict[str, WsgiApp], default: WsgiApp, authenticator: Any,
                 *, tls: ServerTls | None = None, threads: int = 16, before_stop: Callable[[], None] | None = None,
                 unix_group: str | None = None) -> None:
        router = _PrefixRouter(mounts, default, authenticator)
        self._server = HttpServer(bind, router, tls=tls.context if tls is not None else None, workers=threads,
                                  unix_group=unix_group, name="unix" if isinstance(bind, str) else "http")
        self._tls = tls is not None
        self._before_stop = before_stop

    @property
    def address(self) -> str:
        bind = self._server.bound
        if isinstance(bind, str):
            return f"http+unix://{bind}"
        return f"{'https' if self._tls else 'http'}://{with_port(*bind)}"

    def start(self) -> None:
        """Bind (raising at once if the address is taken) and serve on threads of its own."""
        self._server.start()

    def stop(self) -> None:
        if self._before_stop is not None:
            self._before_stop()
        self._server.stop()

"""Routes declared with `stream: data`: bulk bytes relayed to the HTTP endpoint the verb opens.

The verb is called through the registry like any route (role, params from the path and query
string, audit), with a context that can carry a stream (`CallContext.channel`); every refusal (an
unknown volume, a missing role) is a problem+json answer before any byte moves. The verb answers an
`HttpEndpoint` (pier/rpc/dataplane.py): a unix socket and a path. The request goes there with the
same method and the headers that say which bytes (Range, Content-Range, Content-Length); the
answer comes back as it is (200, 206 with Content-Range, or the endpoint's refusal, as
problem+json), streamed both ways in CHUNK pieces, each reported to the endpoint's `progress` (which
may stop the relay by raising). The endpoint is released once the exchange has ended, whether it
succeeded, failed or the client went away, and then told how it ended (`done`); after a PUT, a
PierError `done` raises is the answer instead of the endpoint's.
"""

from __future__ import annotations

import http.client
import logging
import socket
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any, cast

import bottle

from pier.facade.problems import problem_response
from pier.rpc.dataplane import HttpEndpoint
from pier.rpc.errors import DataRefused, InvalidRequest, PierError, Unavailable
from pier.rpc.registry import CallContext, Registry
from pier.rpc.schema import Verb

log = logging.getLogger("pier.facade")

CHUNK = 1 << 20
SOCKET_BUFFER = 4 << 20  # the unix socket to the endpoint: fewer wake-ups per MiB sent (the kernel caps it at wmem_max)
TIMEOUT = 60.0  # seconds without progress on the endpoint's socket before the relay gives up
_REQUEST_HEADERS = ("Range", "Content-Range")
_ANSWER_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Content-Disposition")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DataRelays:
    """Relays the requests of `stream: data` routes to the endpoints their verbs open."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def wants(self, environ: Mapping[str, Any]) -> bool:
        return True

    def __call__(self, verb: Verb, params: dict[str, Any], environ: Mapping[str, Any],
                 context: CallContext) -> bottle.HTTPResponse:
        method = str(environ.get("REQUEST_METHOD", "GET"))
        length = _length(environ) if method == "PUT" else 0
        endpoint = cast(HttpEndpoint, self.registry.call(verb.name, params, replace(context, channel=True)))
        connection = _UnixConnection(endpoint.socket)
        try:
            response = self._send(connection, method, endpoint, environ, length)
        except BaseException as exc:
            failure: Exception = exc if isinstance(exc, PierError) else Unavailable(
                f"the data of {endpoint.name} could not be relayed: {exc}")
            _end(connection, endpoint, 0, failure)
            if isinstance(exc, (OSError, PierError)):
                raise failure from None
            raise
        headers = {name: value for name in _ANSWER_HEADERS if (value := response.getheader(name)) is not None}
        headers.update(endpoint.headers)
        if response.status >= 400:
            text = response.read(64 << 10).decode("utf-8", "replace").strip()
            error = DataRefused(f"{endpoint.name}: {text or response.reason}", data={"status": response.status})
            _end(connection, endpoint, 0, error)
            return _problem(error, response.status, headers)
        if method != "GET":
            response.read()
            try:
                _end(connection, endpoint, length, None)
            except PierError as refused:
                return _problem(refused, refused.http_status, headers)
            return bottle.HTTPResponse(body=b"", status=response.status, headers=headers)
        total = int(response.getheader("Content-Length") or 0)
        return bottle.HTTPResponse(body=_relay(response, connection, endpoint, total), status=response.status,
                                   headers=headers)

    @staticmethod
    def _send(connection: _UnixConnection, method: str, endpoint: HttpEndpoint, environ: Mapping[str, Any],
              length: int) -> http.client.HTTPResponse:
        connection.putrequest(method, endpoint.path, skip_accept_encoding=True)
        for name in _REQUEST_HEADERS:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            if value:
                connection.putheader(name, value)
        if method == "PUT":
            connection.putheader("Content-Length", str(length))
            connection.putheader("Content-Type", "application/octet-stream")
        connection.endheaders()
        if method == "PUT":
            stream = environ["wsgi.input"]
            left = length
            while left > 0:
                chunk = stream.read(min(CHUNK, left))
                if not chunk:
                    raise ConnectionAbortedError(f"the client sent {length - left} of {length} bytes and stopped")
                connection.send(chunk)
                left -= len(chunk)
                endpoint.progress(length - left, length)
        return connection.getresponse()


def _problem(error: PierError, status: int, headers: dict[str, str]) -> bottle.HTTPResponse:
    return problem_response(error, status=status, headers={
        k: v for k, v in headers.items() if k in ("Content-Range",) or k.startswith("X-Pier")})


def _end(connection: _UnixConnection, endpoint: HttpEndpoint, moved: int, failure: Exception | None) -> None:
    """Close the endpoint's connection, release it, and say how the exchange ended (`done` may raise)."""
    connection.close()
    endpoint.release()
    endpoint.done(moved, failure)


def _length(environ: Mapping[str, Any]) -> int:
    text = str(environ.get("CONTENT_LENGTH") or "")
    if not text.isdigit():
        raise InvalidRequest("an upload needs a Content-Length (the bytes of this request's body)",
                             data={"header": "Content-Length"})
    return int(text)


def _relay(response: http.client.HTTPResponse, connection: _UnixConnection, endpoint: HttpEndpoint,
           total: int) -> Iterator[bytes]:
    moved = 0
    failure: Exception | None = None
    try:
        while chunk := response.read(CHUNK):
            moved += len(chunk)
            yield chunk
            endpoint.progress(moved, total)
        if moved < total:
            failure = Unavailable(f"{endpoint.name}: the endpoint's answer ended at byte {moved} of {total}")
    except GeneratorExit:
        failure = ConnectionAbortedError(f"the client stopped reading at byte {moved} of {total}")
        raise
    except Exception as exc:
        failure = exc
        raise
    finally:
        try:
            _end(connection, endpoint, moved, failure)
        except Exception:
            log.exception("ending the relay of %s", endpoint.name)

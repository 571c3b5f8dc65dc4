"""One HTTP connection, and one request on it served through a WSGI app on a worker thread.

`Connection` is what the server's loop and its workers share about a client. `Exchange` runs on
a worker: it builds the WSGI environ (PEP 3333) from the request h11 parsed, gives the app the
body (what the loop read ahead, then the socket as the app reads), writes the answer (head and a
body that is known in full in one write; a streamed body chunk by chunk), and says whether the
connection can carry another request.

An app may take a connection over (an HTTP Upgrade, e.g. to a WebSocket): when the request asks
for an upgrade, the environ's `pier.upgrade` takes an `Upgrade`; if the app then answers `101`, the
exchange sends the 101 (h11 switches protocols) and leaves the socket, with the bytes the client
sent after its request, to the server, which runs the upgrade on a thread it owns.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

import h11

log = logging.getLogger("pier.transports.http")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# What the server tells the app about the caller, in the WSGI environ.
PEER_CERTIFICATE = "pier.peer_certificate"  # the TLS client certificate (DER), when one was presented
PEER_CREDENTIALS = "pier.peer_credentials"  # (uid, gid) of a unix-socket peer
UPGRADE = "pier.upgrade"  # on a request asking for an upgrade: takes the `Upgrade` to run after a 101

MAX_HEAD = 64 << 10  # a request head over this is refused (431); one up to 3/4 of it always passes
DRAIN = 4 << 20  # what a worker reads and drops of a body the app left unread, to keep the connection
SNIFF, HANDSHAKE, READ, BUSY, LINGER, UPGRADED = range(6)
_NO_101_HEADERS = (b"content-length", b"content-type", b"transfer-encoding")
_SERVER_ERROR = b"Internal Server Error\n"


class Upgrade(Protocol):
    """What runs a connection after the server switched it to another protocol (a 101)."""

    name: str  # for the thread's name and logs

    def run(self, sock: socket.socket, data: bytes) -> None:
        """The connection's life after the 101 (`data`: what the client sent after its request),
        on a thread the server owns; the server closes the socket when it returns."""
        ...

    def stop(self) -> None:
        """End soon: the server is stopping (called from another thread)."""
        ...


class Connection:
    """One client connection and where it is in its life (a state above)."""

    __slots__ = ("sock", "peer", "tls", "state", "http", "deadline", "head_started", "certificate",
                 "credentials", "request", "body", "complete", "key", "queued_at", "events")

    def __init__(self, sock: socket.socket, peer: tuple[str, int] | None, tls: bool) -> None:
        self.sock = sock
        self.peer = peer  # None on a unix socket
        self.tls = tls
        self.state = SNIFF if tls else READ
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD * 3 // 4)
        self.deadline = 0.0
        self.head_started = False
        self.certificate: bytes | None = None
        self.credentials: tuple[int, int] | None = None
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.complete = False
        self.key: object = None
        self.queued_at = 0.0
        self.events = selectors.EVENT_READ

    @property
    def address(self) -> str:
        if self.peer is None:
            return f"uid {self.credentials[0]}" if self.credentials else "a local peer"
        return f"{self.peer[0]}:{self.peer[1]}"

    def next_request(self) -> None:
        """Forget the request just served; h11 starts its next cycle."""
        self.http.start_next_cycle()
        self.request = None
        self.body = bytearray()
        self.complete = False


@dataclass(frozen=True)
class Site:
    """What every exchange of one server shares."""

    app: WsgiApp
    name: str
    port: str
    scheme: str
    io_timeout: float


class _Input:
    """`wsgi.input`: the body read ahead by the loop, then the rest from the socket."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._buffer = bytearray(connection.body)
        self._done = connection.complete or connection.request is None

    def _fill(self) -> bool:
        """Add the next piece of the body to the buffer; False at its end."""
        http = self._connection.http
        while not self._done:
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(self._connection.sock.recv(65536))
            elif isinstance(event, h11.Data):
                self._buffer += event.data
                return True
            else:  # EndOfMessage (or the client went away: h11 raised above)
                self._done = True
        return False

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buffer)
        while len(self._buffer) < size and self._fill():
            pass
        if size >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        with memoryview(self._buffer) as view:  # one copy of the piece, not two (an upload's 4 MiB reads)
            data = bytes(view[:size])
        del self._buffer[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        while b"\n" not in self._buffer and (size is None or size < 0 or len(self._buffer) < size) and self._fill():
            pass
        end = self._buffer.find(b"\n") + 1 or len(self._buffer)
        if size is not None and size >= 0:
            end = min(end, size)
        return self.read(end)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        while line := self.readline():
            lines.append(line)
        return lines

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def finish(self) -> bool:
        """Read and drop what the app left of the body (up to DRAIN); True when it all came."""
        dropped = len(self._buffer)
        self._buffer.clear()
        while dropped <= DRAIN and self._fill():
            dropped += len(self._buffer)
            self._buffer.clear()
        return self._done


class Exchange:
    """One request on a worker thread: the app's answer, written to the client."""

    def __init__(self, site: Site, connection: Connection, on_stream: Callable[[], None] | None = None) -> None:
        self.site = site
        self.connection = connection
        self._on_stream = on_stream  # called once when the answer turns out to be a stream
        self._status = ""
        self._headers: list[tuple[str, str]] = []
        self._head_sent = False
        self._head_only = False  # a HEAD request: the answer has a head and no body
        self._input = _Input(connection)
        self.upgrade: Upgrade | None = None  # set once the connection was switched to another protocol
        self._offered: Upgrade | None = None

    def serve(self) -> bool:
        """Answer the request; True when the connection can carry another one."""
        connection = self.connection
        connection.sock.settimeout(self.site.io_timeout)
        request = connection.request
        assert request is not None
        self._head_only = request.method == b"HEAD"
        try:
            self._answer(request)
            if self.upgrade is not None:
                return False  # the connection is the upgrade's now
            if connection.http.their_state is h11.SEND_BODY and not self._input.finish():
                return False
        except (OSError, h11.ProtocolError, ssl.SSLError) as exc:
            log.debug("%s: %s went away: %s", self.site.name, connection.address, exc)
            return False
        http = connection.http
        if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
            return False
        connection.next_request()
        return True

    def _answer(self, request: h11.Request) -> None:
        try:
            result = self.site.app(self._environ(request), self._start_response)
        except Exception:
            log.exception("%s: the app failed on %s %s", self.site.name, request.method, request.target)
            self._fail()
            return
        try:
            if self._offered is not None and self._status.startswith("101") and not self._head_sent:
                self._switch(self._offered)
            elif isinstance(result, (list, tuple)) and not self._head_sent:
                self._send_whole(b"".join(result))
            else:
                if self._on_stream is not None:
                    self._on_stream()
                for chunk in result:
                    if chunk:
                        self._send(h11.Data(data=chunk))
                self._send_head()
                self._send(h11.EndOfMessage())
        except (OSError, h11.ProtocolError, ssl.SSLError):
            raise
        except Exception:
            log.exception("%s: the app failed while answering %s %s", self.site.name, request.method,
                          request.target)
            self._fail()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _take(self, upgrade: Upgrade) -> None:
        """`pier.upgrade`: the app will answer 101 and hand the connection to `upgrade`."""
        self._offered = upgrade

    def _switch(self, upgrade: Upgrade) -> None:
        """Send the 101 (h11 then switches protocols) and leave the connection to `upgrade`."""
        reason = self._status.partition(" ")[2].encode("latin-1")
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in self._headers
                   if name.lower().encode("latin-1") not in _NO_101_HEADERS]
        self._head_sent = True
        try:
            self.connection.sock.sendall(self.connection.http.send(
                h11.InformationalResponse(status_code=101, headers=headers, reason=reason)))
        except BaseException:
            upgrade.stop()  # it will never run
            raise
        self.upgrade = upgrade

    def _fail(self) -> None:
        if self._head_sent:
            raise ConnectionAbortedError("the answer broke off")
        self._status, self._headers = "500 Internal Server Error", [("Content-Type", "text/plain"),
                                                                     ("Connection", "close")]
        self._send_whole(_SERVER_ERROR)

    def _start_response(self, status: str, headers: list[tuple[str, str]],
                        exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and self._head_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self._status, self._headers = status, headers
        return self._write

    def _write(self, data: bytes) -> None:
        """The legacy `write()` callable of start_response."""
        if data:
            self._send(h11.Data(data=data))

    def _response(self, length: int | None) -> h11.Response:
        code, _, reason = self._status.partition(" ")
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in self._headers]
        if length is not None and not any(name.lower() == b"content-length" for name, _ in headers):
            headers.append((b"content-length", str(length).encode()))
        return h11.Response(status_code=int(code), headers=headers, reason=reason.encode("latin-1"))

    def _send_whole(self, body: bytes) -> None:
        """Head, body and end in one write: the common case of an answer known in full."""
        http = self.connection.http
        self._head_sent = True
        data = http.send(self._response(len(body)))
        if body and not self._head_only:
            data += http.send(h11.Data(data=body))
        data += http.send(h11.EndOfMessage())
        self.connection.sock.sendall(data)

    def _send_head(self) -> None:
        if not self._head_sent:
            self._head_sent = True
            self.connection.sock.sendall(self.connection.http.send(self._response(None)))

    def _send(self, event: h11.Data | h11.EndOfMessage) -> None:
        self._send_head()
        if isinstance(event, h11.Data) and self._head_only:
            return
        self.connection.sock.sendall(self.connection.http.send(event))

    def _environ(self, request: h11.Request) -> dict[str, Any]:
        connection, site = self.connection, self.site
        target = request.target
        if not target.startswith(b"/") and b"://" in target:  # absolute-form: keep the path
            target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
        path, _, query = target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": site.name,
            "SERVER_PORT": site.port,
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
            "SERVER_SOFTWARE": "pier",
            "REMOTE_ADDR": connection.peer[0] if connection.peer else "",
            "REMOTE_PORT": str(connection.peer[1]) if connection.peer else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": site.scheme,
            "wsgi.input": self._input,
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if connection.certificate:
            environ[PEER_CERTIFICATE] = connection.certificate
        if connection.credentials is not None:
            environ[PEER_CREDENTIALS] = connection.credentials
        if any(name == b"upgrade" for name, _ in request.headers):
            environ[UPGRADE] = self._take
        for raw_name, raw_value in request.headers:
            if b"_" in raw_name:  # X_Remote_User would pass for X-Remote-User: drop it, as cheroot does
                continue
            name = raw_name.decode("latin-1").upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                name = "HTTP_" + name
            environ[name] = f"{environ[name]},{value}" if name in environ else value
        return environ

"""JSON-RPC 2.0 over WebSocket, with events pushed on the same connection.

Calls on one connection run side by side, so a slow VM.create does not hold up a Host.ping2 sent
after it: answers come as calls end, matched by id. The threaded websockets server gives each
connection a handler thread; it and up to MAX_IN_FLIGHT - 1 helpers take turns to read (one at a
time), and whoever read a message answers it, after making sure another thread is reading. So no
call is handed from thread to thread, and a connection that never has two calls at once has only
one extra thread. Beyond MAX_IN_FLIGHT calls at once, reading waits. `Events.subscribe` gives the connection a push thread
(see `pier.rpc.session`) so events never wait for calls, nor calls for events. Compression is off (it
costs more than it saves on small frames) and every accepted socket has TCP_NODELAY. When the token or
certificate a connection opened with is revoked, the connection is closed (1008, with the reason) by a
closing thread of the listener's, since a close handshake may wait on the client.
"""

from __future__ import annotations

import collections
import contextlib
import http
import logging
import socket
import ssl as ssl_module
import threading
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from pier.rpc.addresses import host_of, with_port
from pier.rpc.auth import Identity
from pier.rpc.errors import PierError
from pier.rpc.events import Event
from pier.rpc.jsonrpc import JsonRpc
from pier.rpc.registry import CallContext
from pier.rpc.session import PushSession
from pier.rpc.threads import OwnedThread

log = logging.getLogger("pier.transports.ws")

# Messages between the JSON-RPC limit and this get a JSON-RPC error; larger ones close the
# connection with 1009 before they are read into memory.
FRAME_LIMIT = 4 << 20
MAX_IN_FLIGHT = 8
HELPER_IDLE = 30.0
REVOKED = 1008  # policy violation: the credential the connection opened with was revoked
_MAX_REASON = 123  # bytes a close reason may have


class WebSocketListener:
    """Owns the WebSocket server and the thread that accepts connections."""

    def __init__(self, jsonrpc: JsonRpc, host: str, port: int, authenticator: Any, *,
                 ssl: ssl_module.SSLContext | None = None, max_per_client: int = 32) -> None:
        self._jsonrpc = jsonrpc
        self._authenticator = authenticator
        self._max_per_client = max_per_client
        self._per_client: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        self._host = host
        self._port = port
        self._ssl = ssl
        self._server: Server | None = None
        self._thread: OwnedThread | None = None
        self._closers: list[OwnedThread] = []

    @property
    def address(self) -> str:
        host, port = self._server.socket.getsockname()[:2] if self._server else (self._host, self._port)
        return f"{'wss' if self._ssl else 'ws'}://{with_port(host, port)}/"

    def start(self) -> None:
        # websockets binds with socket.create_server, whose family is IPv4 unless told
        family = socket.getaddrinfo(self._host or None, self._port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        self._server = serve(
            self._serve_connection, self._host, self._port, family=family, ssl=self._ssl, compression=None,
            process_request=self._refuse_beyond_limit,
            max_size=FRAME_LIMIT, ping_interval=20, ping_timeout=20,
            logger=logging.getLogger("pier.transports.ws.server"),
        )
        self._thread = OwnedThread("ws-listener", self._server.serve_forever, wake=self._server.shutdown)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close every connection (1001), and wait for their handlers."""
        if self._thread is not None:
            self._thread.stop()
        self._server = self._thread = None
        with self._count_lock:
            closers, self._closers = self._closers, []
        for closer in closers:
            closer.join()

    def _refuse_beyond_limit(self, connection: ServerConnection, request: Any) -> Any:
        """Before the handshake: a client with too many connections open gets 429."""
        host = host_of(_peer(connection))
        with self._count_lock:
            if self._per_client[host] < self._max_per_client:
                return None
        log.warning("refused a WebSocket connection from %s: %d are open", host, self._max_per_client)
        return connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS,
                                  f"at most {self._max_per_client} connections from one client\n")

    def _serve_connection(self, connection: ServerConnection) -> None:
        peer = _peer(connection)
        host = host_of(peer)
        with self._count_lock:
            self._per_client[host] += 1
        try:
            self._serve_calls(connection, peer)
        finally:
            with self._count_lock:
                self._per_client[host] -= 1
                if not self._per_client[host]:
                    del self._per_client[host]

    def _serve_calls(self, connection: ServerConnection, peer: str) -> None:
        def push(event: Event) -> None:
            connection.send(self._jsonrpc.notification(event))

        session = PushSession(push, peer)
        identity, error = self._identify(connection)
        context = CallContext("ws", peer, identity=identity, session=session, auth_error=error)
        log.debug("connection from %s", peer)
        unwatch = None
        if identity is not None:
            unwatch = self._authenticator.watch(identity, lambda reason: self._revoked(connection, session, reason))
        readers = _Readers(connection, lambda message: self._answer(connection, context, message), peer)
        try:
            readers.run()
        finally:
            if unwatch is not None:
                unwatch()
            session.close()
            log.debug("connection from %s closed", peer)

    def _revoked(self, connection: ServerConnection, session: PushSession, reason: str) -> None:
        """The connection's credential was revoked (on the revoking thread): stop pushing, and close."""
        log.info("closing the WebSocket connection from %s: %s", session.peer, reason)
        session.cancel()
        reason = reason.encode()[:_MAX_REASON].decode(errors="ignore")
        closer = OwnedThread(f"ws-close {session.peer}", lambda: connection.close(REVOKED, reason))
        with self._count_lock:
            self._closers = [thread for thread in self._closers if thread.alive]
            self._closers.append(closer)
        closer.start()

    def _answer(self, connection: ServerConnection, context: CallContext, message: str | bytes) -> None:
        reply = self._jsonrpc.handle(message, context)
        if reply is not None:
            connection.send(reply)

    def _identify(self, connection: ServerConnection) -> tuple[Identity | None, PierError | None]:
        """Who opened this connection: its client certificate or the handshake's Authorization header."""
        certificate = None
        if isinstance(connection.socket, ssl_module.SSLSocket):
            with contextlib.suppress(ValueError):
                certificate = connection.socket.getpeercert(binary_form=True)
        request = connection.request  # the handshake's, which the handler runs after
        authorization = request.headers.get("Authorization") if request is not None else None
        try:
            return self._authenticator.identify(authorization=authorization,
                                                certificate=certificate,
                                                source=host_of(_peer(connection))), None
        except PierError as exc:
            return None, exc


class _Readers:
    """The threads of one connection that take turns reading it and answer what they read.

    A helper that finds no turn to read for HELPER_IDLE seconds ends: a connection that once had
    many calls at once does not keep their threads.
    """

    def __init__(self, connection: ServerConnection, answer: Any, peer: str) -> None:
        self._connection = connection
        self._answer = answer
        self._peer = peer
        self._reading = threading.Lock()  # websockets allows one recv() at a time
        self._guard = threading.Condition(threading.Lock())
        self._idle = 0  # threads waiting to read or reading
        self._live = 0  # helpers running
        self._helpers: list[OwnedThread] = []

    def run(self) -> None:
        """Serve on this thread until the connection closes; then wait for the helpers to end."""
        try:
            self._serve(helper=False)
        finally:
            with self._guard:
                self._guard.wait_for(lambda: self._live == 0)
                helpers = self._helpers
            for helper in helpers:
                helper.join()

    def _serve(self, helper: bool) -> None:
        while True:
            with self._guard:
                self._idle += 1
            if not self._reading.acquire(timeout=HELPER_IDLE if helper else -1):
                self._end(helper, idle=True)  # another thread is reading: this one is not needed now
                return
            try:
                message = self._connection.recv()
            except ConnectionClosed:
                self._end(helper, idle=True)
                return
            finally:
                self._reading.release()
            self._make_sure_someone_reads()
            try:
                self._answer(message)
            except ConnectionClosed:
                self._end(helper, idle=False)
                return
            except Exception:  # JsonRpc.handle answers errors itself; this is a defect
                log.exception("failed to answer a message from %s", self._peer)

    def _end(self, helper: bool, idle: bool) -> None:
        with self._guard:
            self._idle -= idle
            self._live -= helper
            self._guard.notify_all()

    def _make_sure_someone_reads(self) -> None:
        with self._guard:
            self._idle -= 1
            if self._idle > 0 or self._live >= MAX_IN_FLIGHT - 1:
                return  # another thread reads, or MAX_IN_FLIGHT calls run: reading waits
            self._live += 1
            self._helpers = [thread for thread in self._helpers if thread.alive]
            helper = OwnedThread(f"ws-call {self._peer}", lambda: self._serve(True))
            self._helpers.append(helper)
            helper.start()


def _peer(connection: ServerConnection) -> str:
    try:
        host, port = connection.remote_address[:2]
        return with_port(host, port)
    except (OSError, TypeError, ValueError):
        return "unknown"

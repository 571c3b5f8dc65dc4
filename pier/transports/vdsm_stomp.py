"""The VDSM-compatible STOMP endpoint: JSON-RPC over STOMP 1.2 with no broker, as VDSM serves it.

VDSM's clients (its Python `vdsm.client`/`yajsonrpc` and the engine's Java client) connect to
port 54321, send `CONNECT` (accept-version 1.2, heart-beat 0,24000), subscribe to a reply
destination of their own and to `jms.queue.events`, and SEND JSON-RPC batches to
`jms.topic.vdsm_requests`. This listener answers each request with a MESSAGE to the SEND's
`reply-to` (a batch is answered with an array, as JSON-RPC says; both VDSM clients accept it),
pushes every event of the event log to `jms.queue.events` subscribers, and refuses bad input
with an ERROR frame, closing the connection when the stream cannot go on. VDSM's dialect is in
`vdsm_stomp_connection`, one connection's socket, threads and bounds in `stomp_wire`, frames in
`stomp_frames`.

Admission: a connection is authenticated once it has shown a trusted client certificate (after the
TLS handshake) or a valid passcode (at CONNECT). At most `max_connections` authenticated ones are
open (`max_per_client` from one address); beyond that CONNECT gets an ERROR. Connections not (yet)
authenticated never take those slots: they have a budget of their own, `max_unauthenticated`
(`max_per_client` from one address), and a new connection beyond it is admitted by dropping the
oldest of them (first those that CONNECTed without credentials, then those that have not sent
CONNECT yet). So a flood of anonymous connections can neither fill the table nor keep out a client
that authenticates, and one address can only push out its own.

The listener owns the accepting thread, the request worker pool and every connection; `stop()`
closes them all and joins their threads.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import ssl as ssl_module
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pier.rpc.addresses import with_port
from pier.rpc.events import EventLog
from pier.rpc.jsonrpc import JsonRpc
from pier.rpc.threads import OwnedThread
from pier.transports.stomp_wire import OPEN
from pier.transports.vdsm_stomp_connection import Connection, Endpoint, Subscriptions

log = logging.getLogger("pier.transports.vdsm_stomp")

DEFAULT_PORT = 54321


class VdsmStompListener:
    """Owns the listening socket, its accept thread, the worker pool and the connections."""

    def __init__(self, jsonrpc: JsonRpc, events: EventLog, host: str, port: int = DEFAULT_PORT, *,
                 authenticator: Any, ssl_context: ssl_module.SSLContext | None = None, max_frame: int = 1 << 20,
                 max_connections: int = 256, max_per_client: int = 32, max_unauthenticated: int = 64,
                 workers: int = 8, max_in_flight: int = 8) -> None:
        self._jsonrpc = jsonrpc
        self._authenticator = authenticator
        self._events = events
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._max_frame = max_frame
        self._max_connections = max_connections
        self._max_per_client = max_per_client
        self._max_unauthenticated = max(1, max_unauthenticated)
        self._workers = workers
        self._max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._numbers = itertools.count(1)
        self._bound: tuple[str, int] | None = None
        self._sock: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: OwnedThread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._endpoint: Endpoint | None = None

    @property
    def address(self) -> str:
        return f"{'stomp+ssl' if self._ssl else 'stomp'}://{with_port(*(self._bound or (self._host, self._port)))}"

    @property
    def connections(self) -> int:
        """How many clients are connected now."""
        with self._lock:
            return len(self._connections)

    def start(self) -> None:
        """Bind (raising at once if the address is taken) and accept on a thread."""
        family, _, _, _, address = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(min(self._max_connections + self._max_unauthenticated, 128))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._bound = sock.getsockname()[:2]
        self._wake = socket.socketpair()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="vdsm-stomp-worker")
        self._endpoint = Endpoint(self._jsonrpc, self._events, Subscriptions(), self._pool.submit,
                                  self._max_frame, self._max_in_flight, out_limit=max(self._max_frame, 1 << 20),
                                  closed=self._forget, authenticator=self._authenticator,
                                  admit=self._admit_authenticated)
        self._thread = OwnedThread("vdsm-stomp-listener", self._accept_loop, wake=self._poke)
        self._thread.start()

    def _poke(self) -> None:
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[1].send(b"x")

    def stop(self) -> None:
        """Stop accepting, close every connection, wait for running requests and every thread."""
        if self._thread is None or self._wake is None or self._sock is None:
            return
        self._thread.stop()
        self._sock.close()
        for end in self._wake:
            end.close()
        self._thread = self._sock = self._wake = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.abort()
        for connection in connections:
            connection.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for connection in connections:  # a call may have subscribed a session while its connection ended
            connection.session.close()

    def _accept_loop(self) -> None:
        assert self._sock is not None and self._wake is not None
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._wake[0], select.POLLIN)
        wake_fd = self._wake[0].fileno()
        while True:
            if any(fd == wake_fd for fd, _ in poller.poll()):
                return
            try:
                client, address = self._sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:  # out of file descriptors, or the like: wait a moment
                log.warning("accepting a STOMP connection failed: %s", exc)
                time.sleep(0.05)
                continue
            try:
                self._admit(client, address)
            except OSError as exc:
                log.debug("a STOMP connection from %s ended at once: %s", address, exc)
                client.close()

    def _admit(self, client: socket.socket, address: tuple[str, int]) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        client.setblocking(False)
        host = address[0]
        peer = with_port(host, address[1])
        if self._ssl is not None:
            client = self._ssl.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        assert self._endpoint is not None
        connection = Connection(client, peer, next(self._numbers), self._endpoint)
        with self._lock:
            dropped = self._make_room(host)
            if dropped is not None:
                dropped.abort()  # now, so that it is no longer counted
            self._connections.add(connection)
        if dropped is not None:
            log.info("dropped the unauthenticated STOMP connection from %s to admit one from %s",
                     dropped.peer, peer)
        connection.start()
        log.debug("STOMP connection from %s", peer)

    def _make_room(self, host: str) -> Connection | None:
        """The unauthenticated connection to drop so that one more from `host` fits in their budget."""
        waiting = [c for c in self._connections if not c.authenticated and c.state == OPEN]
        from_host = [c for c in waiting if c.host == host]
        if len(from_host) >= self._max_per_client:
            candidates = from_host
        elif len(waiting) >= self._max_unauthenticated:
            candidates = waiting
        else:
            return None
        return min(candidates, key=lambda c: (not c.connected, c.number))  # refused credentials first

    def _admit_authenticated(self, connection: Connection) -> str:
        """Count `connection` as authenticated, or say why there is no room for it."""
        with self._lock:
            authenticated = [c for c in self._connections if c.authenticated and c.state == OPEN]
            if len(authenticated) >= self._max_connections:
                return f"at most {self._max_connections} clients at a time"
            if sum(c.host == connection.host for c in authenticated) >= self._max_per_client:
                return f"at most {self._max_per_client} connections from one client ({connection.host})"
            connection.authenticated = True
            return ""

    def _forget(self, connection: Connection) -> None:
        with self._lock:
            self._connections.discard(connection)


"""An HTTP/1.1 server for WSGI apps that no slow, silent or idle client can hold up.

One loop thread owns every connection that is not being served: it accepts, runs TLS handshakes
without blocking (each within `handshake_timeout` seconds), reads request heads and bodies of up
to PREREAD bytes (the whole request within `head_timeout` seconds of its first byte, not per
byte), and parks idle keep-alive connections in the selector, where they cost a descriptor and
nothing else. Only a complete request goes to a worker thread, which runs the WSGI app and writes
the answer itself (`httpexchange`), then gives the connection back to the loop. So a worker is
busy only while an app runs: a client that connects and says nothing, or sends its head a byte a
second, holds no worker.

Workers take requests fairly: each caller (the credential a request carries, or else its address)
has its own queue, the queues are served in turn, and one caller never holds more than half the
workers. When requests wait because every worker is held by slow calls (long-polls, event
streams), the pool grows, up to four times its size, and shrinks again when they end.

A request that an app answers by switching protocols (a WebSocket upgrade, see `httpexchange`)
leaves the loop and the workers: its connection runs on a thread of its own, owned by the server,
which stops it (the upgrade's `stop`) and joins it when the server stops. It counts as an open
connection.

A plain-HTTP request to a TLS port is answered with a short 400 saying that the port speaks
HTTPS. A unix socket is made 0660, owned by `unix_group` when pierd runs as root, and passes each
peer's uid and gid to the app.
"""

from __future__ import annotations

import collections
import contextlib
import grp
import logging
import os
import resource
import selectors
import socket
import ssl
import stat
import struct
import threading
import time
from collections.abc import Callable

import h11

from pier.rpc.threads import OwnedThread
from pier.transports.fairqueue import FairQueue
from pier.transports.httpexchange import (
    BUSY,
    HANDSHAKE,
    LINGER,
    MAX_HEAD,
    READ,
    SNIFF,
    UPGRADED,
    Connection,
    Exchange,
    Site,
    Upgrade,
    WsgiApp,
)

log = logging.getLogger("pier.transports.http")

PREREAD = 1 << 20  # bodies up to this are read by the loop before a worker sees the request
TICK = 0.25  # how often the loop looks at deadlines and at requests waiting for a worker
GROW_AFTER = 0.25  # a request waiting this long while no worker is idle adds a worker
SHRINK_AFTER = 30.0  # an extra worker idle this long ends
LINGER_SECONDS = 2.0  # after a last answer, how long to read and drop what the client still sends

_TLS_RECORD = 0x16
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_TO_TLS = b"This port speaks HTTPS, and the client sent plain HTTP: use https:// to reach it.\n"


def _plain_answer(status: str, text: bytes) -> bytes:
    """A complete answer that closes the connection, for what the loop refuses itself."""
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            f"Content-Length: {len(text)}\r\n\r\n").encode() + text


class HttpServer:
    """Serves one WSGI app on a TCP address (TLS when `tls` is given) or a unix socket path."""

    def __init__(self, bind: tuple[str, int] | str, app: WsgiApp, *, tls: ssl.SSLContext | None = None,
                 workers: int = 16, handshake_timeout: float = 5.0, head_timeout: float = 10.0,
                 idle_timeout: float = 60.0, io_timeout: float = 30.0, max_connections: int = 0,
                 unix_group: str | None = None, name: str = "http") -> None:
        self.app = app
        self.tls = tls
        self.workers = max(1, workers)
        self.handshake_timeout = handshake_timeout
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout
        self.max_connections = max_connections or _connection_budget()
        self.name = name
        self._bind = bind
        self._unix = isinstance(bind, str)
        self._unix_group = unix_group
        self._sock: socket.socket | None = None
        self._site: Site | None = None
        self._selector = selectors.DefaultSelector()
        self._selector_lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._connections_lock = threading.Lock()
        self._handed_back: collections.deque[Connection] = collections.deque()
        self._queue = FairQueue(share=max(1, self.workers // 2))
        self._workers: set[OwnedThread] = set()
        self._workers_lock = threading.Lock()
        self._loop: OwnedThread | None = None
        self._upgraded: dict[Connection, OwnedThread] = {}  # guarded by _workers_lock
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()

    # -- life -------------------------------------------------------------------------------------

    @property
    def bound(self) -> tuple[str, int] | str:
        """The address actually bound (with the port chosen for port 0)."""
        if self._sock is None or self._unix:
            return self._bind
        name = self._sock.getsockname()
        return name[0], name[1]

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        """Bind (raising at once if the address is taken), then serve on threads of its own."""
        self._sock = self._listen()
        bound = self.bound
        self._site = Site(self.app, "localhost" if self._unix else bound[0], "" if self._unix else str(bound[1]),
                          "https" if self.tls else "http", self.io_timeout)
        self._selector.register(self._sock, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        for _ in range(self.workers):
            self._add_worker(core=True)
        self._loop = OwnedThread(f"{self.name}-loop", self._run, wake=self._wake)
        self._loop.start()

    def _listen(self) -> socket.socket:
        if isinstance(self._bind, str):
            path = self._bind
            if os.path.lexists(path):
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise OSError(f"{path} exists and is not a socket")
                os.unlink(path)  # left by a pierd that did not stop cleanly
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)  # the umask keeps the file private until it gets its mode below
                os.chmod(path, 0o660)
                self._give_group(path)
            except OSError:
                sock.close()
                raise
        else:
            host, port = self._bind
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
        sock.listen(1024)
        sock.setblocking(False)
        return sock

    def _give_group(self, path: str) -> None:
        if not self._unix_group or os.geteuid() != 0:
            return
        try:
            os.chown(path, 0, grp.getgrnam(self._unix_group).gr_gid)
        except KeyError:
            log.warning("the group %s does not exist, so only root can use %s; create it (groupadd %s) and "
                        "restart pierd to let its members in", self._unix_group, path, self._unix_group)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let running requests finish (up to `timeout`), close every connection."""
        if self._loop is None:
            return
        self._stopping.set()
        self._loop.stop()
        self._loop = None
        for connection in self._queue.close():
            self._close(connection)
        deadline = time.monotonic() + timeout
        with self._workers_lock:
            upgraded = list(self._upgraded.values())
        for thread in upgraded:
            thread.request_stop()
        for thread in upgraded:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._connections_lock:
            left = list(self._connections)
        for connection in left:
            self._close(connection)
        self._selector.close()
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._unix:
            with contextlib.suppress(OSError):
                os.unlink(str(self._bind))

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the loop: accepting, handshakes, reading requests, deadlines -----------------------------

    def _run(self) -> None:
        next_tick = time.monotonic() + TICK
        while not self._stopping.is_set():
            try:
                ready = self._selector.select(max(0.0, next_tick - time.monotonic()))
            except OSError as exc:  # pragma: no cover - a descriptor closed under the selector
                log.warning("%s: select failed: %s", self.name, exc)
                ready = []
            for key, _ in ready:
                if key.fileobj is self._sock:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                else:
                    self._step(key.data, self._advance)
            while self._handed_back:
                self._step(self._handed_back.popleft(), self._resume)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                self._expire(now)
                self._grow()

    def _step(self, connection: Connection, step: Callable[[Connection], None]) -> None:
        try:
            step(connection)
        except (OSError, ValueError) as exc:
            log.debug("%s: connection from %s failed: %s", self.name, connection.address, exc)
            self._close(connection)

    def _accept(self) -> None:
        listener = self._sock
        assert listener is not None, "start() listens before the loop runs"
        for _ in range(64):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: make room and try again on the next round
                log.warning("%s: accepting a connection failed: %s", self.name, exc)
                self._evict_idle(force=True)
                return
            if len(self._connections) >= self.max_connections and not self._evict_idle(force=False):
                log.warning("%s: %d connections are open and none is idle; refusing one from %s", self.name,
                            len(self._connections), peer)
                sock.close()
                continue
            sock.setblocking(False)
            connection = Connection(sock, None if self._unix else (peer[0], peer[1]), tls=self.tls is not None)
            if self._unix:
                connection.credentials = _peer_credentials(sock)
            else:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.deadline = time.monotonic() + (self.handshake_timeout if connection.tls else self.idle_timeout)
            with self._connections_lock:
                self._connections.add(connection)
            self._register(connection, selectors.EVENT_READ)

    def _register(self, connection: Connection, events: int) -> None:
        connection.events = events
        with self._selector_lock:
            self._selector.register(connection.sock, events, connection)

    def _want(self, connection: Connection, events: int) -> None:
        if connection.events != events:
            connection.events = events
            with self._selector_lock:
                self._selector.modify(connection.sock, events, connection)

    def _unregister(self, connection: Connection) -> None:
        with self._selector_lock, contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)

    def _advance(self, connection: Connection) -> None:
        """The connection's socket is ready: take the next step of its state."""
        if connection.state == SNIFF:
            self._sniff(connection)
        elif connection.state == HANDSHAKE:
            self._handshake(connection)
        elif connection.state == READ:
            self._read(connection)
        elif connection.state == LINGER:
            self._linger(connection)

    def _sniff(self, connection: Connection) -> None:
        """The first byte on a TLS port: a TLS record starts a handshake; plain HTTP is told off."""
        first = connection.sock.recv(1, socket.MSG_PEEK)
        if not first:
            self._close(connection)
        elif first[0] == _TLS_RECORD:
            assert self.tls is not None, "only a TLS port sniffs"
            self._unregister(connection)
            connection.sock = self.tls.wrap_socket(connection.sock, server_side=True, do_handshake_on_connect=False)
            connection.state = HANDSHAKE
            self._register(connection, selectors.EVENT_READ)
            self._handshake(connection)
        elif first.isalpha():
            log.info("%s: %s sent plain HTTP to the TLS port", self.name, connection.address)
            connection.sock.recv(65536)  # its request, so that closing does not reset the answer away
            self._answer_and_close(connection, _plain_answer("400 Bad Request", _TO_TLS))
        else:
            self._close(connection)

    def _handshake(self, connection: Connection) -> None:
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(connection, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(connection, selectors.EVENT_WRITE)
            return
        except ssl.SSLError as exc:
            log.info("%s: TLS handshake with %s failed: %s", self.name, connection.address, exc.reason or exc)
            self._close(connection)
            return
        connection.certificate = sock.getpeercert(binary_form=True)
        connection.state = READ
        connection.deadline = time.monotonic() + self.idle_timeout
        self._want(connection, selectors.EVENT_READ)
        if sock.pending():
            self._read(connection)

    def _read(self, connection: Connection) -> None:
        """Take what the client sent; the request goes to a worker once its head and body are in.

        A head is read in pieces of a quarter of MAX_HEAD, each parsed before the next is read, so
        that h11 sees a head that is too large before it is complete (and answers 431)."""
        sock = connection.sock
        while connection.state == READ:
            try:
                data = sock.recv(MAX_HEAD // 4 if connection.request is None else 65536)
            except ssl.SSLWantWriteError:
                self._want(connection, selectors.EVENT_READ | selectors.EVENT_WRITE)
                return
            except _WOULD_BLOCK:
                return
            if not data:
                self._close(connection)
                return
            if not connection.head_started:
                connection.head_started = True
                connection.deadline = time.monotonic() + self.head_timeout
            connection.http.receive_data(data)
            self._want(connection, selectors.EVENT_READ)
            self._parse(connection)
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return  # the selector says when there is more

    def _parse(self, connection: Connection) -> None:
        """Turn what h11 holds into a request for a worker, or wait for more."""
        http = connection.http
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                log.info("%s: bad request from %s: %s", self.name, connection.address, exc)
                status = exc.error_status_hint
                self._answer_and_close(connection, _plain_answer(f"{status} Bad Request", f"{exc}\n".encode()))
                return
            if event is h11.NEED_DATA:
                if connection.request is not None and len(connection.body) >= PREREAD:
                    self._dispatch(connection)  # a large body: the worker reads the rest as the app asks
                return
            if event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                connection.request = event
                if http.they_are_waiting_for_100_continue:
                    with contextlib.suppress(*_WOULD_BLOCK):
                        connection.sock.send(http.send(h11.InformationalResponse(status_code=100, headers=[])))
            elif isinstance(event, h11.Data):
                connection.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                connection.complete = True
                self._dispatch(connection)
                return
            else:  # ConnectionClosed
                self._close(connection)
                return

    def _answer_and_close(self, connection: Connection, answer: bytes) -> None:
        with contextlib.suppress(*_WOULD_BLOCK, OSError):
            connection.sock.send(answer)
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_WR)
        connection.state = LINGER
        connection.deadline = time.monotonic() + LINGER_SECONDS
        self._want(connection, selectors.EVENT_READ)

    def _linger(self, connection: Connection) -> None:
        with contextlib.suppress(*_WOULD_BLOCK):
            if not connection.sock.recv(65536):
                self._close(connection)

    def _dispatch(self, connection: Connection) -> None:
        self._unregister(connection)
        connection.state = BUSY
        connection.key = _caller_key(connection)
        self._queue.put(connection)

    def _resume(self, connection: Connection) -> None:
        """A connection a worker gave back with bytes of its next request already read."""
        sock = connection.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            with contextlib.suppress(*_WOULD_BLOCK):
                connection.http.receive_data(sock.recv(65536))
        self._register(connection, selectors.EVENT_READ)
        self._parse(connection)

    def _expire(self, now: float) -> None:
        with self._connections_lock:
            expired = [c for c in self._connections if c.state not in (BUSY, UPGRADED) and c.deadline <= now]
        for connection in expired:
            if connection.state in (SNIFF, HANDSHAKE):
                log.info("%s: %s did not complete a TLS handshake within %g s", self.name, connection.address,
                         self.handshake_timeout)
                self._close(connection)
            elif connection.state == READ and connection.head_started:
                log.info("%s: %s did not send a whole request within %g s", self.name, connection.address,
                         self.head_timeout)
                self._answer_and_close(connection, _plain_answer("408 Request Timeout", b"request timeout\n"))
            else:
                self._close(connection)

    def _evict_idle(self, force: bool) -> bool:
        """Close the connection idle longest to make room; True when one was closed."""
        with self._connections_lock:
            idle = [c for c in self._connections if c.state == READ and not c.head_started]
            if not idle and force:
                idle = [c for c in self._connections if c.state in (SNIFF, HANDSHAKE, LINGER)]
        if not idle:
            return False
        self._close(min(idle, key=lambda c: c.deadline))
        return True

    def _close(self, connection: Connection) -> None:
        self._unregister(connection)
        with self._connections_lock:
            self._connections.discard(connection)
        with contextlib.suppress(OSError):
            connection.sock.close()

    # -- workers ----------------------------------------------------------------------------------

    def _add_worker(self, core: bool) -> None:
        worker = OwnedThread(f"{self.name}-worker", lambda: self._work(core, worker))
        with self._workers_lock:
            self._workers.add(worker)
        worker.start()

    def _grow(self) -> None:
        with self._workers_lock:
            if len(self._workers) >= self.workers * 4:
                return
        if self._queue.idle == 0 and self._queue.oldest_wait() >= GROW_AFTER:
            self._add_worker(core=False)

    def _work(self, core: bool, me: OwnedThread) -> None:
        try:
            while not self._stopping.is_set():
                connection = self._queue.get(timeout=3600.0 if core else SHRINK_AFTER)
                if connection is None:
                    if core:
                        continue
                    return
                keep = self._serve(connection)
                if keep is not None:
                    self._give_back(connection, keep)
        finally:
            with self._workers_lock:
                self._workers.discard(me)

    def _serve(self, connection: Connection) -> bool | None:
        """Serve one request; its caller's share comes back when it ends, or once it is a stream
        (server-sent events), which may last for hours. True when the connection can go on; None
        when it switched protocols and runs on a thread of its own."""
        site = self._site
        assert site is not None, "start() sets the site up before the workers run"
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._queue.done(connection.key)

        try:
            exchange = Exchange(site, connection, on_stream=release)
            keep = exchange.serve()
            if exchange.upgrade is not None:
                self._take_over(connection, exchange.upgrade)
                return None
            return keep
        except Exception:
            log.exception("%s: serving %s failed", self.name, connection.address)
            return False
        finally:
            release()

    def _take_over(self, connection: Connection, upgrade: Upgrade) -> None:
        """Run a connection switched to another protocol on a thread of its own."""
        connection.state = UPGRADED
        data = connection.http.trailing_data[0]

        def run() -> None:
            try:
                upgrade.run(connection.sock, data)
            except Exception:
                log.exception("%s: %s with %s failed", self.name, upgrade.name, connection.address)
            finally:
                with self._workers_lock:
                    self._upgraded.pop(connection, None)
                self._close(connection)

        thread = OwnedThread(f"{self.name}-{upgrade.name}", run, wake=upgrade.stop)
        with self._workers_lock:
            stopping = self._stopping.is_set()
            if not stopping:
                self._upgraded[connection] = thread
                thread.start()  # under the lock: stop() joins only threads that started
        if stopping:  # too late for a thread of its own: it says goodbye on this worker, briefly
            upgrade.stop()
            run()

    @property
    def upgraded_connections(self) -> int:
        """Connections switched to another protocol (WebSockets) now open."""
        return len(self._upgraded)

    def _give_back(self, connection: Connection, keep: bool) -> None:
        """Park a served connection in the loop for its next request, or close it."""
        if not keep or self._stopping.is_set():
            self._close(connection)
            return
        try:
            connection.sock.setblocking(False)
        except OSError:
            self._close(connection)
            return
        buffered = bool(connection.http.trailing_data[0])
        connection.head_started = buffered
        connection.deadline = time.monotonic() + (self.head_timeout if buffered else self.idle_timeout)
        connection.state = READ
        sock = connection.sock
        if buffered or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            self._handed_back.append(connection)  # parsed on the loop's thread, which owns the parse
            self._wake()
        else:
            self._register(connection, selectors.EVENT_READ)


def _caller_key(connection: Connection) -> object:
    """Whom a request comes from, before anyone checked: its credential, or else its address."""
    if connection.certificate:
        return ("certificate", hash(connection.certificate))
    headers = connection.request.headers if connection.request is not None else []
    for name, value in headers:
        if name == b"authorization":
            return ("authorization", hash(value))
    if connection.credentials is not None:
        return ("uid", connection.credentials[0])
    return ("address", connection.peer[0] if connection.peer else "")


def _peer_credentials(sock: socket.socket) -> tuple[int, int] | None:
    try:
        _, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return None
    return uid, gid


def _connection_budget() -> int:
    """How many connections fit in this process's descriptors, leaving room for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, soft - 256)

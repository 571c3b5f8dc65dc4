"""JSON-RPC 2.0 over STOMP 1.2 through a broker (RabbitMQ's STOMP plugin), as a management engine uses it.

pierd is a client of the broker. It consumes `/queue/<prefix>.<hostId>.requests` (durable) with
`ack:client-individual` and a `prefetch-count` bound; each frame holds one JSON-RPC message (a
request or a batch) and is answered by a worker pool, never on stomp.py's receiver thread. The
reply goes to the frame's `reply-to` with its `correlation-id` copied and
`content-type:application/json`, and the frame is acknowledged only after that, so a request
taken while pierd dies is delivered again; the reply cache (`stomp_replies`) then makes sure it
is not executed twice. A frame without `reply-to` is executed and its answer dropped. Frames
that waited in the queue past their deadline (`expires`, ms since the epoch, or `timestamp` older
than `max_age`) are dropped with a log line. Events go out through the outbox (`stomp_outbox`).

Every pierd behind a broker also answers requests sent to the topic `/topic/<prefix>.discovery`,
so that an engine can find the hosts there: one request, one reply from each host.

Each request frame says who sends it: a bearer token in its `authorization` header
(`Bearer pier_...`), checked like on every other transport, on every frame. A frame without one
is answered with the unauthenticated error: being a user of the broker gives no role, and the
broker's `user-id` header proves nothing (RabbitMQ checks it on a STOMP SEND, but an AMQP 0-9-1
publisher can set a `user-id` of its choosing in the message's headers, and a STOMP consumer
reads that one). pierd's own broker login only lets it consume its queue.

stomp.py never reconnects by itself: one thread of ours connects, subscribes, waits until the
connection is lost, and connects again with backoff (a fresh stomp.py connection each time, so
no state of a dead one is reused), until `stop()`.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import stomp
from stomp.utils import Frame

from pier.rpc.addresses import with_port
from pier.rpc.auth import Authenticator, Identity
from pier.rpc.errors import InternalError, PierError, Unauthenticated
from pier.rpc.events import EventLog
from pier.rpc.jsonrpc import Answer, JsonRpc, Message, error_object, responses_of
from pier.rpc.registry import CallContext
from pier.rpc.threads import OwnedThread
from pier.transports.stomp_frames import flow_id_of
from pier.transports.stomp_outbox import RECEIPT_PREFIX, EventOutbox
from pier.transports.stomp_replies import Replies

log = logging.getLogger("pier.transports.stomp")

HEARTBEATS = (10000, 10000)
CONNECT_TIMEOUT = 3.0
FIRST_DELAY, MAX_DELAY = 0.2, 4.0  # a 5 s cap could not promise "back within 5 s of the broker"
JOIN_TIMEOUT = 2.0
_SUBSCRIPTION = "pier-requests"
_DISCOVERY_SUBSCRIPTION = "pier-discovery"
AUTHORIZATION = "authorization"  # the request frame's header with the caller's bearer token
NO_TOKEN = ("no credentials: put a bearer token in the request frame's header 'authorization: Bearer pier_...' "
            "(being a broker user gives no role); an admin makes one with 'pier token create --role viewer'")


@dataclass
class StompOptions:
    """Where the broker is and how pierd talks to it."""

    host: str
    port: int
    host_id: str
    login: str = ""
    passcode: str = ""
    vhost: str = "/"
    prefix: str = "pier"
    tls: bool = False
    ca: str = ""
    cert: str = ""
    key: str = ""
    workers: int = 8
    reply_ttl: float = 300.0
    max_age: float = 180.0


class _Link(stomp.ConnectionListener):
    """One stomp.py connection and what happened to it. Its callbacks run on the receiver thread."""

    def __init__(self, owner: StompListener, connection: stomp.Connection12) -> None:
        self.owner = owner
        self.connection = connection
        self.connected = threading.Event()
        self.lost = threading.Event()
        self.error = ""
        self.receiver: threading.Thread | None = None
        self._receipts: set[str] = set()
        self._receipt = threading.Condition()

    def on_connecting(self, host_and_port: tuple[str, int]) -> None:
        try:  # else a reply then its ACK meet Nagle and a delayed ACK: Host.ping2 p50 went 1.3 ms -> 41 ms
            self.connection.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def on_connected(self, frame: Frame) -> None:
        self.connected.set()

    def on_error(self, frame: Frame) -> None:
        self.error = frame.headers.get("message", "") + (f": {_text(frame.body)}" if frame.body else "")
        log.warning("STOMP broker error: %s", self.error)

    def on_disconnected(self) -> None:
        self.lost.set()
        self.owner._wake.set()
        with self._receipt:
            self._receipt.notify_all()

    def on_heartbeat_timeout(self) -> None:
        log.warning("STOMP: no heart-beat from the broker; dropping the connection")

    def on_message(self, frame: Frame) -> None:
        self.owner._received(self, frame)

    def on_receipt(self, frame: Frame) -> None:
        receipt = frame.headers.get("receipt-id", "")
        if receipt.startswith(RECEIPT_PREFIX):
            self.owner._outbox.receipt(receipt)
            return
        with self._receipt:
            self._receipts.add(receipt)
            self._receipt.notify_all()

    def wait_receipt(self, receipt: str, timeout: float) -> bool:
        with self._receipt:
            return self._receipt.wait_for(lambda: receipt in self._receipts or self.lost.is_set(), timeout) \
                and receipt in self._receipts

    def start_receiver(self, loop: Any) -> threading.Thread:
        """stomp.py's thread factory: name the receiver thread and keep it to join."""
        self.receiver = threading.Thread(target=loop, name="stomp-receiver", daemon=True)
        self.receiver.start()
        return self.receiver


def _text(body: bytes | str) -> str:
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else body


class StompListener:
    """Serves the registry to a broker and publishes events to it; owns its threads."""

    def __init__(self, jsonrpc: JsonRpc, events: EventLog, db_path: str, options: StompOptions, *,
                 authenticator: Authenticator) -> None:
        self.options = options
        self._jsonrpc = jsonrpc
        self._authenticator = authenticator
        base = f"{options.prefix}.{options.host_id}"
        self.requests = f"/queue/{base}.requests"
        self.discovery = f"/topic/{options.prefix}.discovery"
        self.events = f"/topic/{base}.events"
        self._replies = Replies(jsonrpc, db_path, ttl=options.reply_ttl, max_age=options.max_age)
        self._outbox = EventOutbox(events, db_path, jsonrpc, self.events)
        self._pool: ThreadPoolExecutor | None = None
        self._thread: OwnedThread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._link: _Link | None = None

    @property
    def address(self) -> str:
        scheme = "stomp+ssl" if self.options.tls else "stomp"
        return f"{scheme}://{self._broker}{self.requests}"

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and not link.lost.is_set()

    @property
    def _broker(self) -> str:
        return with_port(self.options.host, self.options.port)

    def start(self) -> None:
        """Start serving; connecting happens in the background, so a broker that is down delays nothing."""
        self._pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="stomp-worker")
        self._outbox.start()
        logging.getLogger("stomp.py").addFilter(_FAILURES)  # once: a logger does not add a filter twice
        self._thread = OwnedThread("stomp-connection", self._run, wake=self._wake.set)
        self._thread.start()

    def stop(self) -> None:
        """Finish the requests being run (their replies go out), stop the outbox, disconnect, join."""
        self._replies.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # unacked requests are delivered again
        self._outbox.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self._replies.close()

    # -- the connection ---------------------------------------------------------------------------

    def _run(self) -> None:
        delay, failures, lost_at, warned_at = FIRST_DELAY, 0, None, 0.0
        while not self._stop.is_set():
            try:
                link = self._open()
            except Exception as exc:
                if not isinstance(exc, ConnectionError):
                    log.exception("STOMP: connecting failed unexpectedly")
                failures += 1
                if failures == 1 or time.monotonic() - warned_at > 60:
                    warned_at = time.monotonic()
                    log.warning("STOMP broker %s unreachable (%s); retrying", self._broker, exc)
                self._stop.wait(delay * random.uniform(0.75, 1.0))
                delay = min(delay * 2, MAX_DELAY)
                continue
            if lost_at is not None:
                log.info("STOMP: connected again to %s, %.1f s after losing it", self._broker,
                         time.monotonic() - lost_at)
            log.info("STOMP: requests on %s, events on %s.<namespace>.<name> (broker %s%s)", self.requests,
                     self.events, self._broker, ", TLS" if self.options.tls else "")
            delay, failures = FIRST_DELAY, 0
            self._outbox.attach(link.connection)
            while not self._stop.is_set() and not link.lost.is_set():
                self._wake.wait()
                self._wake.clear()
            self._outbox.detach()
            self._link = None
            if not self._stop.is_set():
                lost_at = time.monotonic()
                log.warning("STOMP: lost the broker %s%s; reconnecting", self._broker,
                            f" ({link.error})" if link.error else "")
            self._close(link)

    def _open(self) -> _Link:
        """A connected, subscribed link; raises ConnectionError saying why not."""
        options = self.options
        connection = stomp.Connection12([(options.host, options.port)], vhost=options.vhost, heartbeats=HEARTBEATS,
                                        auto_decode=False, timeout=CONNECT_TIMEOUT, reconnect_attempts_max=1,
                                        reconnect_sleep_initial=0, try_loopback_connect=False)
        if options.tls:
            connection.set_ssl(for_hosts=[(options.host, options.port)], key_file=options.key or None,
                               cert_file=options.cert or None, ca_certs=options.ca or None)
        link = _Link(self, connection)
        connection.set_listener("pier", link)
        connection.transport.override_threading(link.start_receiver)
        try:
            connection.connect(options.login or None, options.passcode or None, wait=False,
                               with_connect_command=True)
        except Exception as exc:  # stomp.py: ConnectFailedException, OSError, ssl.SSLError
            self._close(link)
            raise ConnectionError(_FAILURES.reason() or _reason(exc)) from None
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not link.connected.is_set() and not link.lost.is_set() and not self._stop.is_set():
            if time.monotonic() > deadline:
                break
            link.connected.wait(0.05)
        if not link.connected.is_set():
            self._close(link)
            raise ConnectionError(link.error or ("stopping" if self._stop.is_set() else
                                                 f"no CONNECTED frame within {CONNECT_TIMEOUT:.0f} s"))
        self._link = link  # before the first request arrives: requests are acknowledged on their own link
        receipt = f"subscribed-{id(link)}"
        try:
            connection.subscribe(self.discovery, _DISCOVERY_SUBSCRIPTION, ack="auto")
            connection.subscribe(self.requests, _SUBSCRIPTION, ack="client-individual",
                                 headers={"prefetch-count": str(options.workers * 2), "receipt": receipt})
        except Exception as exc:
            link.error = link.error or _reason(exc)
        if not link.wait_receipt(receipt, CONNECT_TIMEOUT):
            self._link = None
            self._close(link)
            raise ConnectionError(f"could not subscribe to {self.requests}: {link.error or 'no receipt'}")
        return link

    def _close(self, link: _Link) -> None:
        """Disconnect (politely when the connection is still up) and join stomp.py's threads."""
        connection = link.connection
        if link.connected.is_set() and not link.lost.is_set():
            try:
                connection.disconnect()
            except Exception as exc:
                log.debug("STOMP: DISCONNECT failed: %s", exc)
            link.lost.wait(1.0)  # the broker's RECEIPT closes the socket
        if not link.lost.is_set() or connection.transport.socket is not None:
            connection.transport.disconnect_socket()
        for thread in (link.receiver, connection.heartbeat_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)

    # -- requests ---------------------------------------------------------------------------------

    def _received(self, link: _Link, frame: Frame) -> None:
        """On the receiver thread: hand the frame to a worker."""
        assert self._pool is not None, "start() makes the pool before it connects"
        try:
            self._pool.submit(self._serve, link, frame)
        except RuntimeError:  # stopping: left unacknowledged, the broker delivers it again later
            pass

    def _serve(self, link: _Link, frame: Frame) -> None:
        headers = frame.headers
        reply_to = headers.get("reply-to", "")
        identity, refusal = self._identify(headers)
        context = CallContext("stomp", reply_to or "no reply-to", identity=identity, auth_error=refusal,
                              flow_id=flow_id_of(headers))
        sent = True
        try:
            stale = self._replies.stale(headers)
            if stale:
                log.warning("STOMP: dropped a request from %s: %s", reply_to or "a sender without reply-to", stale)
            else:
                message = self._jsonrpc.parse(frame.body)
                answer = self._answer(message, reply_to, context)
                if answer is not None and reply_to:
                    sent = self._send(reply_to, self._jsonrpc.encode(answer), headers.get("correlation-id"))
                elif answer is not None:
                    failed = any("error" in response for response in responses_of(answer))
                    log.log(logging.WARNING if failed else logging.DEBUG,
                            "STOMP: a frame without reply-to was answered; the answer is dropped: %.300s",
                            self._replies.loggable(message, answer))
        except Exception:
            log.exception("STOMP: could not serve a request from %s", reply_to)
            if reply_to:
                error = error_object(InternalError("the request could not be served"))
                sent = self._send(reply_to, self._jsonrpc.encode(error), headers.get("correlation-id"))
        if sent:
            self._ack(link, headers.get("ack"))

    def _identify(self, headers: dict[str, str]) -> tuple[Identity | None, PierError | None]:
        """Who sent a request frame (by the token in its header), or why nobody can tell."""
        authorization = headers.get(AUTHORIZATION)
        if not authorization:
            return None, Unauthenticated(NO_TOKEN)
        try:
            return self._authenticator.identify(authorization=authorization), None
        except PierError as exc:
            return None, exc

    def _answer(self, message: Message, reply_to: str, context: CallContext) -> Answer:
        """The answer to a frame's message; a sender without an identity is refused whatever it
        asks, with no reply cached."""
        if context.identity is None:
            return self._jsonrpc.answer(message, context)
        return self._replies.answer(message, reply_to, context)

    def _send(self, destination: str, body: str, correlation_id: str | None) -> bool:
        """Send a reply over the current connection; False when there is none."""
        link = self._link
        if link is None or link.lost.is_set():
            return False
        headers = {"correlation-id": correlation_id} if correlation_id is not None else {}
        if destination.startswith(("/queue/", "/amq/queue/")):
            headers["persistent"] = "true"  # a durable reply queue keeps the reply across a broker restart
        try:
            link.connection.send(destination, body, content_type="application/json", headers=headers)
            return True
        except Exception as exc:
            log.debug("STOMP: could not send a reply to %s: %s", destination, exc)
            return False

    def _ack(self, link: _Link, ack: str | None) -> None:
        """Acknowledge on the frame's own connection; a frame of a lost one is delivered again anyway."""
        if ack is None or link is not self._link or link.lost.is_set():
            return
        try:
            link.connection.ack(ack)
        except Exception as exc:
            log.debug("STOMP: could not acknowledge a request: %s", exc)


class _ConnectFailures(logging.Filter):
    """stomp.py logs each failed connect at WARNING and raises without the reason: keep the reason
    for our own log line, and drop its per-attempt lines, which would repeat on every retry."""

    def __init__(self) -> None:
        super().__init__()
        self._reasons: dict[int, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True
        if record.msg.startswith("could not connect to host"):
            args = record.args  # a tuple, or a mapping when the message was formatted with one dict
            reason = str(args[-1]) if isinstance(args, tuple) and args else record.getMessage()
            self._reasons[threading.get_ident()] = reason
            return False
        return not record.msg.startswith("established connection to host")

    def reason(self) -> str:
        """Why the last connect of the calling thread failed."""
        return self._reasons.pop(threading.get_ident(), "")


_FAILURES = _ConnectFailures()


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or type(exc).__name__
    return f"{text}: {cause}" if cause and str(cause) else text

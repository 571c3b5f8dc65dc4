"""One connection of the VDSM-compatible STOMP endpoint: its commands, requests and events.

`Connection` is VDSM's dialect over a `StompWire` (the socket, its threads, heart-beats and
bounds). Requests run on the listener's worker pool; their responses go out as they finish
(VDSM's client matches them by id), and at most `max_in_flight` run for one connection, after
which its reader waits. Events come from the connection's `PushSession`, which follows the event
log on its own thread and waits when the client is behind, so the publisher never does.

Subscriptions live in one table shared by the listener's connections, as in VDSM: a SEND to a
destination reaches every subscription to it or to a dotted prefix of it, on any connection.

Who connected is learnt from the TLS client certificate once the handshake is done, else from
CONNECT (the certificate, or a bearer token as the passcode). Only then does the listener count
the connection as authenticated (`Endpoint.admit`); until then it is one of a smaller number of
connections that may be dropped to admit others. A connection that CONNECTs without proving who
it is can only be refused, so `UNAUTHENTICATED_TIMEOUT` seconds later it gets an ERROR and is
closed; one whose token or certificate is revoked gets an ERROR saying so and is closed at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pier.rpc.addresses import host_of
from pier.rpc.auth import Identity
from pier.rpc.errors import PierError
from pier.rpc.events import Event, EventLog
from pier.rpc.jsonrpc import Answer, JsonRpc
from pier.rpc.registry import CallContext
from pier.rpc.session import PushSession
from pier.transports.stomp_frames import Frame, encode_frame, flow_id_of
from pier.transports.stomp_wire import OPEN, StompWire

log = logging.getLogger("pier.transports.vdsm_stomp")

REQUEST_DESTINATIONS = ("jms.topic.vdsm_requests", "jms.topic.vdsm_irs_requests")
RESPONSE_DESTINATION = "jms.topic.vdsm_responses"
EVENTS_DESTINATION = "jms.queue.events"

MIN_HEARTBEAT_MS = 1000
MAX_HEARTBEAT_MS = 3_600_000
MAX_SUBSCRIPTIONS = 100
UNAUTHENTICATED_TIMEOUT = 10.0  # seconds a connection that proved no identity stays after CONNECT


def covers(subscribed: str, destination: str) -> bool:
    """Whether a subscription to `subscribed` receives what is sent to `destination`."""
    return destination == subscribed or destination.startswith(subscribed + ".")


SERVED_DESTINATIONS = (*REQUEST_DESTINATIONS, EVENTS_DESTINATION)


def _overlaps(destination: str, served: tuple[str, ...]) -> bool:
    """True when `destination` is, contains or lies within one of `served`."""
    return any(covers(destination, one) or covers(one, destination) for one in served)


def is_request_destination(destination: str) -> bool:
    return any(covers(queue, destination) for queue in REQUEST_DESTINATIONS)


class Subscriptions:
    """Every connection's subscriptions by destination: what SENDs and replies are routed by."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_destination: dict[str, list[tuple[Connection, str]]] = {}

    def add(self, destination: str, connection: Connection, sub_id: str) -> None:
        with self._lock:
            self._by_destination.setdefault(destination, []).append((connection, sub_id))

    def remove(self, destination: str, connection: Connection, sub_id: str) -> None:
        with self._lock:
            entries = self._by_destination.get(destination, [])
            with contextlib.suppress(ValueError):
                entries.remove((connection, sub_id))
            if not entries:
                self._by_destination.pop(destination, None)

    def find(self, destination: str) -> list[tuple[Connection, str]]:
        """The (connection, subscription id) pairs that receive what is sent to `destination`."""
        parts = destination.split(".")
        found: list[tuple[Connection, str]] = []
        with self._lock:
            for end in range(1, len(parts) + 1):
                found.extend(self._by_destination.get(".".join(parts[:end]), ()))
        return found


@dataclass
class Endpoint:
    """What the connections of one listener share."""

    jsonrpc: JsonRpc
    events: EventLog
    subscriptions: Subscriptions
    submit: Callable[..., Any]  # runs a callable on the worker pool
    max_frame: int
    max_in_flight: int
    out_limit: int
    closed: Callable[[Connection], None]
    authenticator: Any
    admit: Callable[[Connection], str]  # counts a connection as authenticated; or says why it cannot be


def error_frame(message: str, detail: str = "", receipt: str | None = None) -> bytes:
    """VDSM's ERROR: the message as the body; also as the `message` header, as STOMP suggests."""
    headers = {"message": message, "content-type": "text/plain"}
    if receipt:
        headers["receipt-id"] = receipt
    return encode_frame("ERROR", headers, (f"{message}: {detail}" if detail else message).encode())


def parse_heart_beat(value: str | None) -> tuple[int, int]:
    """The client's heart-beat header: (it can send every, it wants to receive every) in ms.

    As VDSM does, an unreadable value counts as 0 (none) and a non-zero one is raised to 1 s.
    """
    parts = (value or "").split(",")
    if len(parts) != 2:
        return 0, 0
    numbers = [int(part) if part.isascii() and part.isdigit() else 0 for part in (p.strip() for p in parts)]
    can_send, wants = (min(max(number, MIN_HEARTBEAT_MS), MAX_HEARTBEAT_MS) if number else 0 for number in numbers)
    return can_send, wants


class Connection(StompWire):
    """One client: its subscriptions, its requests in flight and its event pushing."""

    def __init__(self, sock: socket.socket, peer: str, number: int, endpoint: Endpoint) -> None:
        super().__init__(sock, peer, f"vdsm-stomp-{number}", max_frame=endpoint.max_frame,
                         out_limit=endpoint.out_limit)
        self.number = number
        self.host = host_of(peer)
        self.authenticated = False  # set by the listener when it admits the connection as such
        self._unwatch: Callable[[], Any] | None = None
        self._end = endpoint
        self._in_flight = 0
        self._subs: dict[str, str] = {}
        self.session = PushSession(self._push_event, peer)
        self._context = CallContext("vdsm-stomp", peer, session=self.session)
        self._commands: dict[str, Callable[[Frame], None]] = {
            "CONNECT": self._connect, "SUBSCRIBE": self._subscribe, "UNSUBSCRIBE": self._unsubscribe,
            "SEND": self._send, "DISCONNECT": self._disconnect,
        }

    def handle(self, frame: Frame) -> None:
        command = self._commands.get(frame.cmd)
        if command is None:
            hint = " (connect with CONNECT)" if frame.cmd == "STOMP" else ""
            self.fail("Unknown command", f"{frame.cmd[:40]} is not served here{hint}")
        elif not self.connected and frame.cmd != "CONNECT":
            self.fail("Not connected", "the first frame must be CONNECT")
        else:
            command(frame)

    def fail(self, message: str, detail: str = "") -> None:
        log.info("closing STOMP connection from %s: %s%s", self.peer, message, f": {detail}" if detail else "")
        self.close_after(error_frame(message, detail))

    def ended(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
        self.session.close()
        with self.cond:
            subs, self._subs = self._subs, {}
        for sub_id, destination in subs.items():
            self._end.subscriptions.remove(destination, self, sub_id)

    def closed(self) -> None:
        self._end.closed(self)

    def handshake_done(self) -> None:
        """Over TLS a trusted client certificate authenticates the connection before CONNECT."""
        certificate = self.peer_certificate()
        if certificate:
            try:
                identity = self._end.authenticator.identify(certificate=certificate, source=self.source)
            except PierError:
                return  # CONNECT tells why
            self._authenticate(identity)

    # -- commands (on the reader thread) --------------------------------------------------------

    def _connect(self, frame: Frame) -> None:
        if self.connected:
            self.fail("Already connected", "CONNECT was already received")
            return
        if frame.headers.get("accept-version") != "1.2":
            self.fail("Version unsupported")
            return
        if self._context.identity is None and not self._identify(frame):
            return
        can_send, wants = parse_heart_beat(frame.headers.get("heart-beat"))
        self.heart_beats(wants / 1000, can_send / 1000)
        self.offer(encode_frame("CONNECTED", {"version": "1.2", "heart-beat": f"{wants},{can_send}"}), force=True)
        log.debug("%s connected (heart-beats: ours every %d ms, theirs every %d ms)", self.peer, wants, can_send)

    def _identify(self, frame: Frame) -> bool:
        """Who connected: the TLS client certificate (VDSM's way), or a bearer token as the passcode.

        False when the connection is refused (the listener has no room for another authenticated one).
        """
        try:
            identity = self._end.authenticator.identify(
                certificate=self.peer_certificate(), source=self.source,
                authorization=f"Bearer {frame.headers['passcode']}" if frame.headers.get("passcode") else None)
        except PierError as exc:
            self._context = replace(self._context, auth_error=exc)
            log.info("STOMP connection from %s is not authenticated: %s", self.peer, exc.message)
            self.close_at(time.monotonic() + UNAUTHENTICATED_TIMEOUT, "Not authenticated",
                          f"{exc.message}; a connection that proves no identity is closed "
                          f"{UNAUTHENTICATED_TIMEOUT:g} s after CONNECT")
            return True
        return self._authenticate(identity)

    def _authenticate(self, identity: Identity) -> bool:
        """Count the connection as `identity`'s, and end it when its credential is revoked."""
        refusal = self._end.admit(self)
        if refusal:
            log.warning("refused a STOMP connection from %s: %s", self.peer, refusal)
            self.fail("Too many connections", refusal)
            return False
        self._context = replace(self._context, identity=identity)
        self._unwatch = self._end.authenticator.watch(identity, self._revoked)
        return True

    def _revoked(self, reason: str) -> None:
        """The connection's credential was revoked (on the revoking thread): stop pushing, refuse, close."""
        self.session.cancel()
        self.fail("Not authenticated", reason)

    def _subscribe(self, frame: Frame) -> None:
        destination, sub_id = frame.headers.get("destination"), frame.headers.get("id")
        receipt = frame.headers.get("receipt")
        if not destination or not sub_id:
            self._error("Missing destination or subscription id header", receipt=receipt)
        elif sub_id in self._subs:
            self._error("Subscription id already exists", receipt=receipt)
        elif frame.headers.get("ack", "auto") != "auto":
            self._error("Unsupported ack mode", "only ack:auto is served", receipt)
        elif len(self._subs) >= MAX_SUBSCRIPTIONS:
            self._error("Too many subscriptions", f"at most {MAX_SUBSCRIPTIONS} on one connection", receipt)
        elif _overlaps(destination, REQUEST_DESTINATIONS):
            self._error("Subscription not allowed", "other clients' requests are not for subscribers", receipt)
        elif self._context.identity is None and _overlaps(destination, SERVED_DESTINATIONS):
            self._error("Authentication required", "events are for authenticated connections only", receipt)
        else:
            with self.cond:
                self._subs[sub_id] = destination
            self._end.subscriptions.add(destination, self, sub_id)
            if covers(destination, EVENTS_DESTINATION) and not self.session.subscribed:
                self.session.attach(self._end.events.subscribe())
            self._receipt(receipt)

    def _unsubscribe(self, frame: Frame) -> None:
        sub_id, receipt = frame.headers.get("id"), frame.headers.get("receipt")
        if not sub_id:
            self._error("Missing id header", receipt=receipt)
            return
        with self.cond:
            destination = self._subs.pop(sub_id, None)
            events_left = any(covers(dest, EVENTS_DESTINATION) for dest in self._subs.values())
        if destination is not None:
            self._end.subscriptions.remove(destination, self, sub_id)
            if covers(destination, EVENTS_DESTINATION) and not events_left:
                self.session.detach()
        self._receipt(receipt)

    def _send(self, frame: Frame) -> None:
        destination, receipt = frame.headers.get("destination"), frame.headers.get("receipt")
        if not destination:
            self._error("Missing destination header", receipt=receipt)
            return
        if is_request_destination(destination):  # served here, never shown to other clients
            self._dispatch(frame.body, frame.headers.get("reply-to") or None, flow_id_of(frame.headers))
            self._receipt(receipt)
            return
        if _overlaps(destination, SERVED_DESTINATIONS):
            self._error("Subscription not available", f"only pier publishes to {destination}", receipt)
            return
        forwarded = {name: value for name, value in frame.headers.items()
                     if name not in ("receipt", "content-length", "subscription")}
        delivered = False
        for connection, sub_id in self._end.subscriptions.find(destination):
            data = encode_frame("MESSAGE", {**forwarded, "subscription": sub_id}, frame.body)
            delivered = connection.offer(data, force=connection is self) or delivered
        if not delivered:
            self._error("Subscription not available", receipt=receipt)
            return
        self._receipt(receipt)

    def _disconnect(self, frame: Frame) -> None:
        with self.cond:
            while self._in_flight and self.state == OPEN:  # answer what came before first
                self.cond.wait()
        receipt = frame.headers.get("receipt")
        self.close_after(encode_frame("RECEIPT", {"receipt-id": receipt}) if receipt else b"")

    def _receipt(self, receipt: str | None) -> None:
        if receipt:
            self.offer(encode_frame("RECEIPT", {"receipt-id": receipt}), force=True)

    def _error(self, message: str, detail: str = "", receipt: str | None = None) -> None:
        """Refuse one frame; the connection goes on."""
        log.debug("%s: %s %s", self.peer, message, detail)
        self.offer(error_frame(message, detail, receipt), force=True)

    # -- requests (on the worker pool) ----------------------------------------------------------

    def _dispatch(self, body: bytes, reply_to: str | None, flow_id: str | None) -> None:
        with self.cond:
            while self._in_flight >= self._end.max_in_flight and self.state == OPEN:
                self.cond.wait()
            if self.state != OPEN:
                return
            self._in_flight += 1
        try:
            self._end.submit(self._execute, body, reply_to, flow_id)
        except RuntimeError:  # the pool is shutting down
            self._release()

    def _execute(self, body: bytes, reply_to: str | None, flow_id: str | None) -> None:
        jsonrpc = self._end.jsonrpc
        try:
            answer = jsonrpc.answer(jsonrpc.parse(body),
                                    replace(self._context, flow_id=flow_id) if flow_id else self._context)
            self._reply(answer, reply_to)
        except Exception:
            log.exception("answering a request from %s failed", self.peer)
        finally:
            self._release()
            if self.state != OPEN:  # the call may have subscribed the session after the connection ended
                self.session.close()

    def _release(self) -> None:
        with self.cond:
            self._in_flight -= 1
            self.cond.notify_all()

    def _reply(self, answer: Answer, reply_to: str | None) -> None:
        """Send the responses to `reply_to`; those without an id (they have no caller) to the
        responses topic. A batch's responses stay in an array, a single one stays an object."""
        encode = self._end.jsonrpc.encode
        if isinstance(answer, dict):
            destination = RESPONSE_DESTINATION if answer["id"] is None else reply_to
            if destination:
                self._publish(destination, encode(answer).encode())
            return
        orphans = [response for response in answer or () if response["id"] is None]
        answered = [response for response in answer or () if response["id"] is not None]
        if orphans:
            self._publish(RESPONSE_DESTINATION, encode(orphans).encode())
        if answered and reply_to:
            self._publish(reply_to, encode(answered).encode())

    def _publish(self, destination: str, body: bytes) -> None:
        for connection, sub_id in self._end.subscriptions.find(destination):
            connection.offer(_message(destination, sub_id, body), force=connection is self)

    # -- events (on the session's push thread) --------------------------------------------------

    def _push_event(self, event: Event) -> None:
        with self.cond:
            sub_ids = [sub_id for sub_id, dest in self._subs.items() if covers(dest, EVENTS_DESTINATION)]
        if sub_ids:
            body = self._end.jsonrpc.notification(event).encode()
            for sub_id in sub_ids:
                self.put(_message(EVENTS_DESTINATION, sub_id, body))


def _message(destination: str, sub_id: str, body: bytes) -> bytes:
    return encode_frame("MESSAGE", {"destination": destination, "content-type": "application/json",
                                    "subscription": sub_id}, body)

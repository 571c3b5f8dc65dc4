"""WebSockets for routes declared with `stream: websocket`: a verb's byte channel, relayed both ways.

A GET on such a route must ask for a WebSocket (`Upgrade: websocket`); without one it is answered
426. The handshake is checked with websockets' sans-I/O `ServerProtocol` before anything else, then
the verb is called through the registry like any route (role, params, audit), with a context that
can carry a channel (`CallContext.channel`): every refusal (an unknown or stopped VM, a console in
use) is a problem+json answer before the upgrade. Once the verb hands over its channel, the app
answers 101 and gives the HTTP server a `Relay` (pier.transports.httpexchange's `Upgrade`), which
the server runs on a thread it owns once the 101 is out.

A relay pumps the client's data frames (binary or text, as bytes) into the channel on the server's
thread, and the channel's bytes out as binary frames on a thread of its own. It closes the WebSocket
with a code and a reason when the channel ends (1000 ended, 4001 taken over, 1011 broke), when the
agent stops (1001), when the credential it was opened with is revoked (1008), or when the client
closes; a client that stays silent is pinged, and one that answers nothing is dropped.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import bottle
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from pier.facade.problems import problem_response
from pier.rpc.auth import WSGI_IDENTITY, Credentials
from pier.rpc.channels import ENDED, TAKEN_OVER, Channel
from pier.rpc.errors import InvalidRequest, Unavailable
from pier.rpc.registry import CallContext, Registry
from pier.rpc.schema import Verb
from pier.rpc.threads import OwnedThread

log = logging.getLogger("pier.facade")

UPGRADE = "pier.upgrade"  # pier.transports.httpexchange.UPGRADE: the facade knows only rpc
MAX_FRAME = 1 << 20
CHUNK = 65536
POLL = 0.5  # how often a relay waiting for its client looks at its deadlines
PING_AFTER = 30.0  # a client silent this long is pinged ...
DROP_AFTER = 60.0  # ... and dropped when it stays silent this long
CLOSE_WAIT = 2.0  # after sending a close, how long to wait for the client's
SEND_TIMEOUT = 30.0  # a client that takes no bytes for this long is dropped
# WebSocket close codes (RFC 6455; 4001 is this API's own).
NORMAL, GOING_AWAY, POLICY, BROKE, TAKEN = 1000, 1001, 1008, 1011, 4001
_CODES = {ENDED: NORMAL, TAKEN_OVER: TAKEN}


class ChannelStreams:
    """Opens, counts and ends the WebSocket relays of one app."""

    def __init__(self, registry: Registry, *, stopping: threading.Event, max_relays: int = 64) -> None:
        self.registry = registry
        self.credentials: Credentials | None = registry.credentials
        self.stopping = stopping
        self.max_relays = max_relays
        self._lock = threading.Lock()
        self._open: set[Relay] = set()

    @property
    def open_relays(self) -> int:
        return len(self._open)

    def wants(self, environ: Mapping[str, Any]) -> bool:
        return True  # a plain GET is told to upgrade

    def __call__(self, verb: Verb, params: dict[str, Any], environ: Mapping[str, Any],
                 context: CallContext) -> bottle.HTTPResponse:
        path = environ.get("PATH_INFO", "")
        params = verb.validate(params)  # bad params are a 400 before anything else
        take = environ.get(UPGRADE)
        if take is None:
            error = InvalidRequest(f"GET {path} is a WebSocket: connect with a WebSocket client (Upgrade: websocket)",
                                   data={"route": path})
            return problem_response(error, status=426, headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        protocol = ServerProtocol(select_subprotocol=_binary_if_offered, max_size=MAX_FRAME)
        response = protocol.accept(Request(path, _headers(environ)))
        if response.status_code != 101:
            text = response.body.decode("utf-8", "replace").strip()
            return problem_response(InvalidRequest(f"not a valid WebSocket handshake: {text}", data={"route": path}),
                                    status=response.status_code)
        with self._lock:
            if self.stopping.is_set() or len(self._open) >= self.max_relays:
                why = "the agent is stopping" if self.stopping.is_set() else \
                    f"{len(self._open)} WebSockets are open, the most this agent relays"
                return problem_response(Unavailable(f"{why}; retry later", data={"maxRelays": self.max_relays}),
                                        headers={"Retry-After": "5"})
        channel = cast(Channel, self.registry.call(verb.name, params, replace(context, channel=True)))
        # The handshake's protocol would parse a request first: the relay's starts open.
        relay = Relay(ServerProtocol(state=State.OPEN, max_size=MAX_FRAME), channel, f"ws-{verb.name.split('.')[-1]}", context.describe(), self._done)
        identity = environ.get(WSGI_IDENTITY)
        if self.credentials is not None and identity is not None:
            relay.unwatch = self.credentials.watch(identity, relay.revoked)
        with self._lock:
            self._open.add(relay)
        take(relay)
        return bottle.HTTPResponse(status=101, headers=dict(response.headers.raw_items()))

    def _done(self, relay: Relay) -> None:
        with self._lock:
            self._open.discard(relay)


def _binary_if_offered(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """websockify's `binary` subprotocol (older noVNC asks for it); none is needed."""
    return Subprotocol("binary") if "binary" in offered else None


def _headers(environ: Mapping[str, Any]) -> Headers:
    headers = Headers()
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            headers[key[5:].replace("_", "-").title()] = value
    return headers


class Relay:
    """One WebSocket carrying a channel's bytes both ways (see the module docstring)."""

    def __init__(self, protocol: ServerProtocol, channel: Channel, name: str, peer: str,
                 done: Callable[[Relay], None]) -> None:
        self.name = name
        self.unwatch: Callable[[], object] | None = None
        self._protocol = protocol
        self._channel = channel
        self._peer = peer
        self._done = done
        self._lock = threading.Lock()  # the protocol object and writes to the socket
        self._sock: socket.socket | None = None
        self._close_by: float | None = None  # after a close was sent: when to stop waiting for the reply
        self._pending_close: tuple[int, str] | None = None  # asked for before the socket was ours
        self._ended = False

    # -- the server's thread: the client's frames into the channel ---------------------------

    def run(self, sock: socket.socket, data: bytes) -> None:
        """Thread: the HTTP server's, for this connection."""
        sock.settimeout(SEND_TIMEOUT)
        with self._lock:
            self._sock = sock
            pending = self._pending_close
        log.info("%s relayed to %s", self._channel.name, self._peer)
        pump = OwnedThread(f"{self.name}-out", self._pump, wake=self._channel.close)
        try:
            if pending is not None:
                self._close(*pending)  # before the pump, which would close for the channel's end
            pump.start()
            if data:
                self._receive(data)
            self._read(sock)
        except (OSError, ssl.SSLError) as exc:
            log.debug("%s: %s went away: %s", self.name, self._peer, exc)
        finally:
            self._ended = True
            self._channel.close()
            pump.stop()
            if self.unwatch is not None:
                self.unwatch()
            self._done(self)
            end = self._channel.end
            log.info("%s no longer relayed to %s: %s", self._channel.name, self._peer,
                     end.reason if end else f"the client closed ({self._protocol.close_code})")

    def _read(self, sock: socket.socket) -> None:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        heard = time.monotonic()
        pinged = False
        while self._protocol.state is not State.CLOSED:
            now = time.monotonic()
            if self._close_by is not None and now >= self._close_by:
                return
            ready = (isinstance(sock, ssl.SSLSocket) and sock.pending()) or poller.poll(POLL * 1000)
            if not ready:
                if now - heard >= DROP_AFTER:
                    log.info("%s: %s answered no ping in %g s; dropping it", self.name, self._peer, DROP_AFTER)
                    return
                if now - heard >= PING_AFTER and not pinged:
                    pinged = True
                    self._send(lambda: self._protocol.send_ping(b"pier"))
                continue
            data = sock.recv(CHUNK)
            heard, pinged = time.monotonic(), False
            if not data:
                with self._lock:
                    self._protocol.receive_eof()
                return
            self._receive(data)
            if self._protocol.close_rcvd is not None and self._protocol.close_sent is not None:
                return  # the closing handshake is over: the server closes the connection first

    def _receive(self, data: bytes) -> None:
        with self._lock:
            self._protocol.receive_data(data)
            frames = self._protocol.events_received()
            self._flush()
        for frame in frames:
            if isinstance(frame, Frame) and frame.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT) and frame.data:
                try:
                    self._channel.send(bytes(frame.data))
                except OSError as exc:
                    log.debug("%s: the channel took no more bytes: %s", self.name, exc)
                    self._channel.close()

    # -- the pump's thread: the channel's bytes out to the client ----------------------------

    def _pump(self) -> None:
        """Thread: this relay's pump."""
        try:
            while data := self._channel.recv(CHUNK):
                self._send(lambda: self._protocol.send_binary(data))
        except (OSError, ssl.SSLError, InvalidState):
            return
        if self._ended:
            return
        end = self._channel.end
        if end is None:
            self._close(BROKE, f"{self._channel.name} ended")
        else:
            self._close(_CODES.get(end.kind, BROKE), end.reason)

    # -- either thread ------------------------------------------------------------------------

    def stop(self) -> None:
        """The agent is stopping, or the server could not switch the connection (any thread)."""
        self._close(GOING_AWAY, "the agent is stopping")
        self._channel.close()
        with self._lock:
            never_ran = self._sock is None
        if never_ran:
            if self.unwatch is not None:
                self.unwatch()
            self._done(self)

    def revoked(self, reason: str) -> None:
        """The credential this WebSocket was opened with was revoked (the revoking thread)."""
        log.info("ending the WebSocket of %s to %s: %s", self._channel.name, self._peer, reason)
        self._close(POLICY, reason)
        self._channel.close()

    def _close(self, code: int, reason: str) -> None:
        """Send a close frame (once) and give the client CLOSE_WAIT seconds to answer it."""
        with self._lock:
            if self._sock is None:
                self._pending_close = (code, reason)
                return
            if self._protocol.state is not State.OPEN:
                return
            self._protocol.send_close(code, _fit(reason))
            self._close_by = time.monotonic() + CLOSE_WAIT
            self._flush()

    def _send(self, make: Callable[[], None]) -> None:
        with self._lock:
            if self._protocol.state is not State.OPEN:
                raise InvalidState("the WebSocket is closing")
            make()
            self._flush()

    def _flush(self) -> None:
        """Write what the protocol has to send; the caller holds the lock."""
        sock = self._sock
        assert sock is not None, "the relay writes only once the server handed it the socket"
        for chunk in self._protocol.data_to_send():
            if chunk:
                sock.sendall(chunk)
        if self._protocol.close_expected() and self._close_by is None:
            self._close_by = time.monotonic() + CLOSE_WAIT


def _fit(reason: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = reason.encode()
    if len(data) <= 123:
        return reason
    return data[:120].decode("utf-8", "ignore") + "..."

"""Server-sent events for routes declared with `stream: events`.

A plain GET on such a route calls its verb like any other route (a long-poll). With
`Accept: text/event-stream` the route instead follows the event log: each event goes out as
`id: <seq>`, `event: <name>`, `data: <the event as JSON>`, and a client that reconnects with
`Last-Event-ID` resumes after that sequence number. A cursor older than the retention window is
answered `410` before the stream starts, as the long-poll answers it.

Each open stream holds one server worker for its whole life, so streams are capped (beyond the
cap: `503` with `Retry-After`), wait on the log with a short timeout so that they end soon after
`stopping` is set (a server cannot stop while a stream is open), and send a comment line every
`keepalive` seconds so that a departed client is noticed when the write fails. When the token or
certificate a stream was opened with is revoked, the stream ends at once with a last event,
`|pier|session_ended|`, whose params give the reason.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import bottle

from pier.facade.problems import problem_response
from pier.rpc.auth import WSGI_IDENTITY, Credentials
from pier.rpc.errors import EventsExpired, InvalidRequest, Unavailable
from pier.rpc.events import Event, EventLog, Subscription
from pier.rpc.registry import CallContext
from pier.rpc.schema import Verb
from pier.rpc.session import EVENTS_LOST, SESSION_ENDED

log = logging.getLogger("pier.facade")

EVENT_STREAM = "text/event-stream"
RETRY_AFTER_SECONDS = 5
# How often a waiting stream looks at `stopping`; also bounds how late it notices it.
STOP_CHECK = 0.25
_BATCH = 200

# The verb's params that the event log's `subscribe` also takes (its cursor first) shape the
# stream, so this module never names them.
_SUBSCRIBE_ARGS = tuple(inspect.signature(EventLog.subscribe).parameters)[1:]
_CURSOR = _SUBSCRIBE_ARGS[0]


class EventStreams:
    """Opens, counts and ends the server-sent-event streams of one app."""

    def __init__(self, events: EventLog, *, stopping: threading.Event, max_streams: int = 32,
                 keepalive: float = 15.0, credentials: Credentials | None = None,
                 admit: Callable[[str, CallContext], None] | None = None) -> None:
        self.events = events
        self.admit = admit  # raises unless the caller may call the verb (the registry's `admit`)
        self.credentials = credentials
        self.stopping = stopping
        self.max_streams = max_streams
        self.keepalive = keepalive
        self._lock = threading.Lock()
        self._open = 0

    @property
    def open_streams(self) -> int:
        return self._open

    def wants(self, environ: Mapping[str, Any]) -> bool:
        """A request asking for server-sent events (Accept: text/event-stream)."""
        accept = environ.get("HTTP_ACCEPT", "")
        return any(part.split(";")[0].strip().lower() == EVENT_STREAM for part in accept.split(","))

    def __call__(self, verb: Verb, params: dict[str, Any], environ: Mapping[str, Any],
                 context: CallContext | None = None) -> bottle.HTTPResponse:
        """Validate `params` as `verb`'s and answer with a stream of the events they select."""
        if self.admit is not None and context is not None:
            self.admit(verb.name, context)
        params = verb.validate(params)
        source = {name: params[name] for name in _SUBSCRIBE_ARGS if name in params}
        last_id = environ.get("HTTP_LAST_EVENT_ID", "").strip()
        if last_id:
            try:
                source[_CURSOR] = int(last_id)
            except ValueError:
                raise InvalidRequest(f"Last-Event-ID {last_id!r} is not a sequence number",
                                     data={"header": "Last-Event-ID"}) from None
        refusal = self._reserve()
        if refusal is not None:
            return refusal
        try:
            subscription = self.events.subscribe(**source)
        except BaseException:
            self._release()
            raise
        peer = f"{environ.get('REMOTE_ADDR', '')}:{environ.get('REMOTE_PORT', '')}"
        log.debug("event stream to %s opened after %d", peer, subscription.after)
        stream = _Stream(self, subscription, peer)
        identity = environ.get(WSGI_IDENTITY)
        if self.credentials is not None and identity is not None:
            stream.unwatch = self.credentials.watch(identity, stream.revoked)
        return bottle.HTTPResponse(
            body=stream,
            status=200,
            headers={"Content-Type": EVENT_STREAM, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _reserve(self) -> bottle.HTTPResponse | None:
        with self._lock:
            if self.stopping.is_set():
                why = "the agent is stopping"
            elif self._open >= self.max_streams:
                why = f"{self._open} event streams are open, the most this agent serves"
            else:
                self._open += 1
                return None
        error = Unavailable(f"{why}; retry later, or long-poll without Accept: {EVENT_STREAM}",
                            data={"maxStreams": self.max_streams})
        return problem_response(error, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def _release(self) -> None:
        with self._lock:
            self._open -= 1


class _Stream:
    """The response body of one stream; the server calls `close()` when it is done with it."""

    def __init__(self, owner: EventStreams, subscription: Subscription, peer: str) -> None:
        self._owner = owner
        self._subscription = subscription
        self._peer = peer
        self._frames = self._generate()
        self._closed = False
        self._ended: str | None = None  # why the stream's credential no longer holds
        self.unwatch: Any = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._frames)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.unwatch is not None:
            self.unwatch()
        self._frames.close()
        self._subscription.close()
        self._owner._release()
        log.debug("event stream to %s closed", self._peer)

    def revoked(self, reason: str) -> None:
        """The stream's credential was revoked (on the revoking thread): end the stream, saying why."""
        log.info("ending the event stream to %s: %s", self._peer, reason)
        self._ended = reason
        self._subscription.close()  # wakes the stream's wait

    def _generate(self) -> Generator[bytes, None, None]:
        owner, subscription = self._owner, self._subscription
        # Sent at once so that the status line and headers go out before the first event.
        yield f"retry: 3000\n: events after {subscription.after}\n\n".encode()
        quiet_since = time.monotonic()
        while self._ended is None and not owner.stopping.is_set() and not owner.events.closed:
            try:
                frames = self._drain(min(STOP_CHECK, owner.keepalive))
            except EventsExpired as exc:
                log.warning("event stream to %s fell behind the retention window: %s", self._peer, exc.message)
                yield frame(Event(0, EVENTS_LOST, dict(exc.data or {}), time.time()), with_id=False)
                return
            if frames:
                yield b"".join(frames)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= owner.keepalive:
                yield b": keepalive\n\n"
                quiet_since = time.monotonic()
        if self._ended is not None:
            yield frame(Event(0, SESSION_ENDED, {"reason": self._ended}, time.time()), with_id=False)

    def _drain(self, timeout: float) -> list[bytes]:
        """The frames of the next event (waiting up to `timeout`) and of those already there."""
        event = self._subscription.next(timeout)
        frames = []
        while event is not None:
            frames.append(frame(event))
            if len(frames) >= _BATCH:
                break
            event = self._subscription.next(0)
        return frames


def frame(event: Event, *, with_id: bool = True) -> bytes:
    """One event in the server-sent-events wire form."""
    data = json.dumps(event.as_dict(), separators=(",", ":"), default=str)
    head = f"id: {event.seq}\n" if with_id else ""
    return f"{head}event: {event.name}\ndata: {data}\n\n".encode()

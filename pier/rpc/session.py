"""Event push for connection-oriented transports (WebSocket, STOMP).

A transport that can push gives each connection a `PushSession` with a `push(event)` callable
that writes one event to the wire. `Events.subscribe` attaches a subscription to the session;
the session's own thread then follows the event log from the subscription's cursor and pushes
each event in order, so a slow client never holds up the publisher or other clients. Closing
the session (when the connection ends) stops and joins that thread; `cancel` stops it without
waiting, from any thread (when the credential the connection opened with is revoked).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

from pier.rpc.errors import EventsExpired
from pier.rpc.events import Event, Subscription
from pier.rpc.threads import OwnedThread

log = logging.getLogger("pier.events")

_ids = itertools.count(1)
EVENTS_LOST = "|pier|events_lost|"
# The last event of a stream that ends because its credential was revoked; params: {"reason": ...}.
SESSION_ENDED = "|pier|session_ended|"


class PushSession:
    """One connection's event subscription and the thread that pushes it."""

    def __init__(self, push: Callable[[Event], None], peer: str = "") -> None:
        self._push = push
        self.peer = peer
        self._lock = threading.Lock()
        self._pump: _Pump | None = None

    @property
    def subscribed(self) -> bool:
        return self._pump is not None

    def attach(self, subscription: Subscription) -> None:
        """Push the events `subscription` yields, replacing any earlier subscription."""
        self.detach()
        with self._lock:
            self._pump = _Pump(subscription, self._push, self.peer)
            self._pump.start()

    def detach(self) -> None:
        """Stop pushing; returns once the push thread has ended (or its join gave up, with a warning)."""
        with self._lock:
            pump, self._pump = self._pump, None
        if pump is not None:
            pump.stop()

    close = detach

    def cancel(self) -> None:
        """Stop pushing soon, without waiting for the push thread (`close` still joins it)."""
        with self._lock:
            pump = self._pump
        if pump is not None:
            pump.request_stop()


class _Pump(OwnedThread):
    """Follows one subscription and pushes each event, in order, until the subscription is closed."""

    def __init__(self, subscription: Subscription, push: Callable[[Event], None], peer: str) -> None:
        super().__init__(f"events-push-{next(_ids)}")
        self.subscription = subscription
        self._push = push
        self.peer = peer

    def wake(self) -> None:
        self.subscription.close()

    def run(self) -> None:
        subscription = self.subscription
        while not subscription.closed:
            try:
                event = subscription.next(timeout=0.5)
            except EventsExpired as exc:
                self._push(Event(0, EVENTS_LOST, dict(exc.data or {}), 0.0))
                log.warning("subscriber %s fell behind the event retention window: %s", self.peer, exc.message)
                subscription.close()
                return
            if event is None:
                continue
            try:
                self._push(event)
            except Exception as exc:  # the connection is gone; its owner will close us
                log.debug("stopped pushing events to %s: %s", self.peer, exc)
                subscription.close()
                return

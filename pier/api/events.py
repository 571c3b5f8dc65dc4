"""Handlers of the Events namespace: subscribe a connection, or read the log by sequence.

A poll that waits ends at once, unauthenticated, when the credential of its caller is revoked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pier.rpc.auth import Credentials
from pier.rpc.errors import EventsExpired, Unauthenticated, UnsupportedOperation
from pier.rpc.events import EventLog, normalize_types
from pier.rpc.registry import CallContext, verb


class EventsApi:
    def __init__(self, events: EventLog, credentials: Credentials | None = None) -> None:
        self._events = events
        self._credentials = credentials

    @verb("Events.subscribe")
    def subscribe(self, ctx: CallContext, after: int | None = None,
                  types: list[str] | None = None) -> dict[str, Any]:
        session = _push_session(ctx)
        subscription = self._events.subscribe(after, types)
        session.attach(subscription)
        return {"subscribed": True, "after": subscription.after}

    @verb("Events.unsubscribe")
    def unsubscribe(self, ctx: CallContext) -> None:
        _push_session(ctx).detach()

    @verb("Events.poll")
    def poll(self, ctx: CallContext, after: int | None = None, types: list[str] | None = None, wait: float = 0,
             limit: int = 1000) -> dict[str, Any]:
        if wait <= 0 or ctx.identity is None or self._credentials is None:
            return self._batch(after, types, limit, wait)
        ended: list[str] = []

        def revoked(reason: str) -> None:  # on the revoking thread
            ended.append(reason)
            self._events.wake()

        unwatch = self._credentials.watch(ctx.identity, revoked)
        try:
            batch = self._batch(after, types, limit, wait, stop=lambda: bool(ended))
        finally:
            unwatch()
        if ended:
            raise Unauthenticated(ended[0])
        return batch

    @verb("Events.replay")
    def replay(self, ctx: CallContext, after: int, types: list[str] | None = None, limit: int = 1000) -> dict[str, Any]:
        return self._batch(after, types, limit, 0)

    def _batch(self, after: int | None, types: list[str] | None, limit: int, wait: float,
               stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Events after `after`, or from the oldest kept when None: a caller without a cursor is
        never told its cursor expired, even when retention drops events while it asks."""
        while True:
            start = self._events.oldest_seq - 1 if after is None else after
            try:
                events, reached = self._events.wait(start, normalize_types(types), limit, wait, stop)
                break
            except EventsExpired:
                if after is not None:
                    raise
        return {"events": [event.as_dict() for event in events], "last": reached,
                "oldest": self._events.oldest_seq}


def _push_session(ctx: CallContext) -> Any:
    if ctx.session is None:
        raise UnsupportedOperation(
            f"{ctx.transport} cannot push events on the connection; subscribe over WebSocket, consume the "
            "STOMP events topic, or poll GET /api/v1/events", data={"transport": ctx.transport})
    return ctx.session

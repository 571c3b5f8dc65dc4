"""Handlers of the Events namespace: subscribe a connection, or read the log by sequence."""

from __future__ import annotations

from typing import Any

from pier.rpc.errors import UnsupportedOperation
from pier.rpc.events import EventLog, normalize_types
from pier.rpc.registry import CallContext, verb


class EventsApi:
    def __init__(self, events: EventLog) -> None:
        self._events = events

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
        if after is None:
            after = self._events.oldest_seq - 1
        return self._batch(after, types, limit, wait)

    @verb("Events.replay")
    def replay(self, ctx: CallContext, after: int, types: list[str] | None = None, limit: int = 1000) -> dict[str, Any]:
        return self._batch(after, types, limit, 0)

    def _batch(self, after: int, types: list[str] | None, limit: int, wait: float) -> dict[str, Any]:
        events, reached = self._events.wait(after, normalize_types(types), limit, wait)
        return {"events": [event.as_dict() for event in events], "last": reached,
                "oldest": self._events.oldest_seq}


def _push_session(ctx: CallContext) -> Any:
    if ctx.session is None:
        raise UnsupportedOperation(
            f"{ctx.transport} cannot push events on the connection; subscribe over WebSocket, consume the "
            "STOMP events topic, or poll GET /api/v1/events", data={"transport": ctx.transport})
    return ctx.session

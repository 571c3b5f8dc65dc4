"""Requests waiting for a worker of the HTTP server, served fairly between callers.

Each caller (a key the server derives from the credential a request carries, or its address) has
a queue of its own; the queues take turns, so a caller with a hundred requests waiting delays
another caller's one request by at most one turn; and a caller never has more than `share`
requests being served at once, so the rest of the workers stay free for everyone else.
"""

from __future__ import annotations

import collections
import threading
import time

from pier.transports.httpexchange import Connection


class FairQueue:
    """Requests waiting for a worker: one queue per caller, served in turn; a caller has at most
    `share` requests being served at once."""

    def __init__(self, share: int) -> None:
        self.share = share
        self.idle = 0  # workers waiting for a request
        self._cond = threading.Condition()
        self._queues: dict[object, collections.deque[Connection]] = {}
        self._turns: collections.deque[object] = collections.deque()  # callers with requests waiting
        self._serving: collections.Counter[object] = collections.Counter()
        self._closed = False

    def put(self, connection: Connection) -> None:
        with self._cond:
            queue = self._queues.get(connection.key)
            if queue is None:
                queue = self._queues[connection.key] = collections.deque()
                self._turns.append(connection.key)
            connection.queued_at = time.monotonic()
            queue.append(connection)
            self._cond.notify()

    def get(self, timeout: float) -> Connection | None:
        """The next request to serve; None on timeout or once closed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                connection = self._take()
                if connection is not None:
                    return connection
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.idle += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self.idle -= 1
            return None

    def _take(self) -> Connection | None:
        for _ in range(len(self._turns)):
            key = self._turns.popleft()
            if self._serving[key] >= self.share:
                self._turns.append(key)
                continue
            queue = self._queues[key]
            connection = queue.popleft()
            if queue:
                self._turns.append(key)
            else:
                del self._queues[key]
            self._serving[key] += 1
            return connection
        return None

    def done(self, key: object) -> None:
        with self._cond:
            was_full = self._serving[key] >= self.share
            self._serving[key] -= 1
            if self._serving[key] <= 0:
                del self._serving[key]
            if was_full and key in self._queues:  # a request of it may be taken now
                self._cond.notify()

    def oldest_wait(self) -> float:
        with self._cond:
            oldest = min((queue[0].queued_at for queue in self._queues.values()), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def close(self) -> list[Connection]:
        """Let every worker go; returns the requests that were still waiting."""
        with self._cond:
            self._closed = True
            left = [connection for queue in self._queues.values() for connection in queue]
            self._queues.clear()
            self._turns.clear()
            self._cond.notify_all()
        return left

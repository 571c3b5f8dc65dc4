"""The persisted event log: sequence numbers, retention, replay, fan-out.

Every event gets a monotonic sequence number and is written to sqlite before anyone sees it, so
a client that was away asks for what came after its last sequence number and gets it, or learns
with `EventsExpired` (410 on REST) that the retention window has dropped some. Readers never
hold a queue of their own: they read the log after their cursor (recent events from memory,
older ones from sqlite) and wait on one condition for new ones. Names and params follow VDSM
(`|virt|VM_status|<vmId>`, params with `notify_time`).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pier.rpc.errors import EventsExpired
from pier.rpc.store import inserted_rowid, open_state

log = logging.getLogger("pier.events")

_RECENT = 4096


def notify_time() -> int:
    """VDSM's event timestamp: a monotonic clock in ms, offset past INT_MAX for old engines."""
    return int(time.monotonic() * 1000) + 2**31 - 1


@dataclass(frozen=True)
class Event:
    seq: int
    name: str
    params: dict[str, Any]
    time: float

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "name": self.name, "time": self.time, "params": self.params}

    def notification_params(self) -> dict[str, Any]:
        """The params of the event's JSON-RPC notification: VDSM's, plus Pier's `seq`."""
        return {**self.params, "seq": self.seq}


def _seq(event: Event) -> int:
    return event.seq


def normalize_types(types: Iterable[str] | None) -> tuple[str, ...] | None:
    """Turn filters like 'virt.VM_status' or '|virt|VM_status' into name prefixes."""
    if not types:
        return None
    out = []
    for item in types:
        item = item.strip()
        if not item:
            continue
        if not item.startswith("|"):
            item = "|" + item.replace(".", "|")
        out.append(item)
    return tuple(out) or None


class EventLog:
    """Events kept in sqlite for `retention` seconds (and at most `max_events` of them)."""

    def __init__(self, db_path: str, *, retention: float = 86400.0, max_events: int = 100_000) -> None:
        self.retention = retention
        self.max_events = max_events
        self._db = open_state(db_path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " time REAL NOT NULL, name TEXT NOT NULL, params TEXT NOT NULL)"
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._recent: collections.deque[Event] = collections.deque(maxlen=_RECENT)
        self._closed = False
        self._waits_allowed = True
        self._last = self._query_last()
        self._oldest = self._query_oldest()
        self._next_prune = 0.0
        self.prune()

    # -- writing ------------------------------------------------------------------------------

    def publish(self, name: str, params: dict[str, Any] | None = None) -> Event:
        """Record an event and wake every reader. Safe from any thread."""
        params = dict(params or {})
        params.setdefault("notify_time", notify_time())
        now = time.time()
        text = json.dumps(params, separators=(",", ":"), default=str)
        with self._changed:
            if self._closed:
                raise RuntimeError("the event log is closed")
            cursor = self._db.execute("INSERT INTO events (time, name, params) VALUES (?, ?, ?)",
                                      (now, name, text))
            event = Event(inserted_rowid(cursor), name, params, now)
            self._last = event.seq
            if self._oldest > event.seq:
                self._oldest = event.seq
            self._recent.append(event)
            self._changed.notify_all()
        if now >= self._next_prune or event.seq - self._oldest >= self.max_events * 1.1:
            self.prune()
        return event

    def prune(self) -> int:
        """Drop events older than the retention window or beyond `max_events`."""
        cutoff = time.time() - self.retention
        with self._lock:
            if self._closed:
                return 0
            self._next_prune = time.time() + min(60.0, max(self.retention / 10, 0.05))
            deleted = self._db.execute("DELETE FROM events WHERE time < ? OR seq <= ?",
                                       (cutoff, self._last - self.max_events)).rowcount
            if deleted:
                self._oldest = self._query_oldest()
                while self._recent and self._recent[0].seq < self._oldest:
                    self._recent.popleft()
                log.debug("dropped %d events; oldest kept is now %d", deleted, self._oldest)
        return deleted

    # -- reading ------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def oldest_seq(self) -> int:
        """The oldest sequence number still kept (last + 1 when none is kept)."""
        return self._oldest

    def read(self, after: int, types: tuple[str, ...] | None = None, limit: int = 1000) -> tuple[list[Event], int]:
        """Events with seq > `after` matching `types`, and the seq the scan reached.

        Raises EventsExpired when events after `after` have already been dropped.
        """
        with self._lock:
            if self._closed:
                return [], after
            if after < self._oldest - 1:
                raise EventsExpired(
                    f"events after {after} are no longer kept; the oldest kept is {self._oldest}",
                    data={"oldest": self._oldest, "after": after, "last": self._last},
                )
            if after >= self._last:
                return [], after
            if self._recent and after >= self._recent[0].seq - 1:
                start = bisect.bisect_right(self._recent, after, key=_seq)
                scanned = list(itertools.islice(self._recent, start, start + (limit * 4 if types else limit)))
            else:
                rows = self._db.execute(
                    "SELECT seq, name, params, time FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit * 4 if types else limit),
                ).fetchall()
                scanned = [Event(seq, name, json.loads(params), t) for seq, name, params, t in rows]
        if not scanned:
            return [], after
        matching = [e for e in scanned if types is None or e.name.startswith(types)][:limit]
        reached = matching[-1].seq if len(matching) == limit else scanned[-1].seq
        return matching, reached

    def latest(self, prefix: str) -> dict[str, dict[str, Any]]:
        """The params of the newest event kept of each name that starts with `prefix`."""
        with self._lock:
            if self._closed:
                return {}
            rows = self._db.execute(
                "SELECT name, params FROM events WHERE seq IN"
                " (SELECT MAX(seq) FROM events WHERE substr(name, 1, ?) = ? GROUP BY name)",
                (len(prefix), prefix),
            ).fetchall()
        return {name: json.loads(params) for name, params in rows}

    def wait(self, after: int, types: tuple[str, ...] | None = None, limit: int = 1000,
             timeout: float = 0.0, stop: Callable[[], bool] | None = None) -> tuple[list[Event], int]:
        """Like `read`, but wait up to `timeout` seconds for a matching event when none is there."""
        deadline = time.monotonic() + (timeout if math.isfinite(timeout) else 0.0)
        while True:
            events, after = self.read(after, types, limit)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0 or self._closed or not self._waits_allowed:
                return events, after
            with self._changed:
                if self._last <= after and not self._closed and self._waits_allowed and not (stop and stop()):
                    self._changed.wait(remaining)
            if stop and stop():
                return [], after

    def subscribe(self, after: int | None = None, types: Iterable[str] | None = None) -> Subscription:
        """A cursor that yields every event after `after` (default: from now on), in order."""
        start = self._last if after is None else after
        self.read(start, None, 1)  # raises EventsExpired now rather than on the first next()
        return Subscription(self, start, normalize_types(types))

    def end_waits(self) -> None:
        """Make every wait, now and later, return at once (the daemon is stopping)."""
        with self._changed:
            self._waits_allowed = False
            self._changed.notify_all()

    def wake(self) -> None:
        """Wake every waiting reader (one of them was closed)."""
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
            self._db.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _query_last(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return row[0] if row else 0

    def _query_oldest(self) -> int:
        row = self._db.execute("SELECT MIN(seq) FROM events").fetchone()
        return row[0] if row and row[0] is not None else self._last + 1


class Subscription:
    """One reader's cursor over the log. `next()` blocks up to a timeout for the next event."""

    def __init__(self, events: EventLog, after: int, types: tuple[str, ...] | None) -> None:
        self._log = events
        self.after = after
        self.types = types
        self._buffer: collections.deque[Event] = collections.deque()
        self.closed = False

    def next(self, timeout: float) -> Event | None:
        """The next matching event, or None when `timeout` passes first or it is closed.

        Raises EventsExpired when this reader fell behind the retention window.
        """
        if not self._buffer and not self.closed:
            events, self.after = self._log.wait(self.after, self.types, 500, timeout, lambda: self.closed)
            self._buffer.extend(events)
        return self._buffer.popleft() if self._buffer and not self.closed else None

    def close(self) -> None:
        self.closed = True
        self._log.wake()

"""Limits that stop abuse without touching honest clients, and what every HTTP listener does with
an oversized body.

`FailedLogins` counts failed authentications per source address: past `limit` of them in a
minute, that address is refused at once (TooManyRequests) until the minute has passed, so
guessing credentials is slow while a client with good ones is never held up.

`RateLimiter`, opt-in (`--rate-limit`): a caller may make `burst` calls at once and `rate` calls a
second on average; beyond that a call is refused with TooManyRequests saying when to try again.
VDSM's client and the engine do not retry, so it is off unless asked for.

`read_body` is how every HTTP endpoint (POST /jsonrpc, /RPC2, the REST facade) reads a request
body, sent with a Content-Length or chunked. A body over the endpoint's limit is refused with 413
(RequestTooLarge); up to DRAIN_LIMIT bytes of it are read and dropped first, so that a client
still sending reads the answer rather than a reset connection.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pier.rpc.errors import InvalidRequest, RequestTooLarge, TooManyRequests

DRAIN_LIMIT = 4 << 20


class Readable(Protocol):
    """A request body as WSGI hands it over (`wsgi.input`)."""

    def read(self, size: int, /) -> bytes: ...


def drain(stream: Readable, size: int) -> None:
    """Read and drop up to `size` bytes of a request body (less if it ends first)."""
    while size > 0:
        chunk = stream.read(min(size, 1 << 16))
        if not chunk:
            return
        size -= len(chunk)


def drain_oversized(stream: Readable | None, length: int) -> None:
    """Before refusing a body of `length` bytes: drop it when it is within DRAIN_LIMIT."""
    if 0 < length <= DRAIN_LIMIT and stream is not None:
        drain(stream, length)


def read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The body of a WSGI request, sent with a Content-Length or chunked (b"" when there is none).

    Raises RequestTooLarge when it is over `limit` bytes (after dropping it, up to DRAIN_LIMIT),
    and InvalidRequest when the Content-Length is not a number.
    """
    stream: Readable | None = environ.get("wsgi.input")
    length_text = environ.get("CONTENT_LENGTH") or ""
    if stream is None:
        return b""
    if length_text:
        if not (length_text.isascii() and length_text.isdigit()):
            raise InvalidRequest(f"Content-Length {length_text[:40]!r} is not a number of bytes")
        length = int(length_text)
        if length > limit:
            drain_oversized(stream, length)
            raise RequestTooLarge(f"the request body of {length} bytes exceeds the limit of {limit} bytes",
                                  data={"limit": limit})
        return stream.read(length) if length else b""
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return b""
    body = stream.read(limit + 1)  # the server ends a chunked body: reading one byte past the limit tells
    if len(body) > limit:
        drain(stream, DRAIN_LIMIT - len(body))
        raise RequestTooLarge(f"the request body exceeds the limit of {limit} bytes", data={"limit": limit})
    return body


class FailedLogins:
    """Failed authentications per source in the last `window` seconds (of `clock`); refuses a source
    past `limit`."""

    def __init__(self, limit: int = 20, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = clock() + window

    def check(self, source: str) -> None:
        """Raise TooManyRequests while `source` is over its limit."""
        if self.limit <= 0:
            return
        now = self._clock()
        with self._lock:
            failures = self._failures.get(source)
            if failures is None:
                return
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if len(failures) < self.limit:
                return
            wait = failures[0] + self.window - now
        raise TooManyRequests(f"{self.limit} failed authentications from {source or 'this peer'} within "
                              f"{self.window:g} s; try again in {wait:.0f} s", data={"retryAfter": round(wait, 3)})

    def failed(self, source: str) -> None:
        """Count one failed authentication from `source`."""
        if self.limit <= 0:
            return
        now = self._clock()
        with self._lock:
            self._failures.setdefault(source, collections.deque(maxlen=self.limit)).append(now)
            if now >= self._next_sweep:
                self._next_sweep = now + self.window
                self._failures = {key: times for key, times in self._failures.items()
                                  if times and times[-1] > now - self.window}


class RateLimiter:
    """Token buckets keyed by caller, refilled as `clock` (seconds) goes on; idle buckets are forgotten."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = clock() + 60

    def take(self, key: str) -> None:
        """Spend one call of `key`'s allowance, or raise TooManyRequests."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = [tokens, now]
                wait = (1.0 - tokens) / self.rate
                raise TooManyRequests(f"more than {self.rate:g} calls a second (burst {self.burst}); "
                                      f"retry in {wait:.2f} s", data={"retryAfter": round(wait, 3)})
            self._buckets[key] = [tokens - 1.0, now]
            if now >= self._next_sweep:
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        self._next_sweep = now + 60

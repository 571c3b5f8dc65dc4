"""Per-caller request rate limits, and what every HTTP listener does with an oversized body.

A caller may make `burst` calls at once and `rate` calls a second on average; beyond that a call
is refused with TooManyRequests saying when to try again, and nothing else slows down.

A body over a listener's limit is refused with 413; up to DRAIN_LIMIT bytes of it are read and
dropped first, so that a client still sending reads the answer rather than a reset connection.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pier.rpc.errors import TooManyRequests

DRAIN_LIMIT = 4 << 20


def drain(stream: Any, size: int) -> None:
    """Read and drop up to `size` bytes of a request body (less if it ends first)."""
    while size > 0:
        chunk = stream.read(min(size, 1 << 16))
        if not chunk:
            return
        size -= len(chunk)


def drain_oversized(stream: Any, length: int) -> None:
    """Before refusing a body of `length` bytes: drop it when it is within DRAIN_LIMIT."""
    if 0 < length <= DRAIN_LIMIT and stream is not None:
        drain(stream, length)


class RateLimiter:
    """Token buckets keyed by caller; idle buckets are forgotten."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic() + 60

    def take(self, key: str) -> None:
        """Spend one call of `key`'s allowance, or raise TooManyRequests."""
        now = time.monotonic()
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

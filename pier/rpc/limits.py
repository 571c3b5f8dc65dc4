"""Per-caller request rate limits: a token bucket for each identity.

A caller may make `burst` calls at once and `rate` calls a second on average; beyond that a call
is refused with TooManyRequests saying when to try again, and nothing else slows down.
"""

from __future__ import annotations

import threading
import time

from pier.rpc.errors import TooManyRequests


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

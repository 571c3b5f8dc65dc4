"""Prometheus metrics of the API: calls per verb, transport and outcome, and how long they took.

Kept in a registry of Pier's own (not the library's global one) and served at `GET /metrics`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

METRICS = CollectorRegistry(auto_describe=True)

CALLS = Counter("pier_calls", "Verb calls by verb, transport and outcome (ok or the error name).",
                ["verb", "transport", "outcome"], registry=METRICS)
CALL_SECONDS = Histogram("pier_call_seconds", "Time spent in a verb's handler.", ["verb"], registry=METRICS,
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
_GAUGES: dict[str, Gauge] = {}


def gauge(name: str, documentation: str, read: Callable[[], float]) -> None:
    """A gauge whose value is read when /metrics is scraped (registered once per name)."""
    existing = _GAUGES.get(name)
    if existing is None:
        existing = _GAUGES[name] = Gauge(name, documentation, registry=METRICS)
    existing.set_function(read)

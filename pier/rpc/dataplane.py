"""HTTP data endpoints: what a verb behind a `stream: data` route hands the REST facade.

Such a verb moves bulk bytes (a volume's data) that must not pass through JSON. When its caller can
carry them (`CallContext.channel`), the verb opens an endpoint: an HTTP server on a local unix
socket and the request path there that serves exactly what the call allowed (one volume, read or
write, for a short time). The facade relays the caller's request to it (method, Range,
Content-Range, Content-Length and the body) and the answer back, telling `progress` the bytes moved
as they move, then calls `release` and last `done` with how the exchange ended. Every layer may use
this module: it imports nothing else of pier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HttpEndpoint:
    """Where the bytes of one call are served: `path` on the HTTP server at unix socket `socket`."""

    socket: str
    path: str
    name: str  # what it serves, for logs ("volume <id> for writing")
    release: Callable[[], None] = field(default=lambda: None)  # once the request has ended, whatever happened
    headers: dict[str, str] = field(default_factory=dict)  # added to the answer (e.g. the ticket used)
    progress: Callable[[int, int], None] = field(default=lambda moved, total: None)
    """Bytes relayed so far of the `total` the request (PUT) or answer (GET) carries, after each
    chunk; an exception it raises (the transfer was cancelled) stops the relay with that error."""
    done: Callable[[int, Exception | None], None] = field(default=lambda moved, failure: None)
    """After `release`: the bytes relayed and why the exchange failed (None: the endpoint answered
    2xx and every byte moved). A PierError it raises after a PUT (the bytes are not what the
    volume may hold) is the answer instead of the endpoint's."""

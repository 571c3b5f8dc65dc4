"""HTTP data endpoints: what a verb behind a `stream: data` route hands the REST facade.

Such a verb moves bulk bytes (a volume's data) that must not pass through JSON. When its caller can
carry them (`CallContext.channel`), the verb opens an endpoint: an HTTP server on a local unix
socket and the request path there that serves exactly what the call allowed (one volume, read or
write, for a short time). The facade relays the caller's request to it (method, Range,
Content-Range, Content-Length and the body) and the answer back, then calls `release`. Every layer
may use this module: it imports nothing else of pier.
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

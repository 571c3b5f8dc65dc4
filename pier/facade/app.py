"""`make_app()`: the bottle app serving `/api/v1` from a registry and an event log.

Routes are full paths under `/api/v1`, so the app works mounted behind a path-prefix dispatcher
and when called directly as a WSGI app. Besides the schema's routes it serves its own
`GET /api/v1/openapi.json`. Every error, bottle's own included, is answered as problem+json.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import bottle

from pier.facade import routes
from pier.facade.channels import ChannelStreams
from pier.facade.data import DataRelays
from pier.facade.openapi import openapi_document
from pier.facade.problems import bottle_error_handler, problem_response, unexpected
from pier.facade.stream import EventStreams
from pier.rpc.auth import WSGI_IDENTITY
from pier.rpc.events import EventLog
from pier.rpc.limits import DRAIN_LIMIT
from pier.rpc.registry import Registry

OPENAPI_PATH = routes.API_PREFIX + "/openapi.json"


def make_app(registry: Registry, events: EventLog, *, info: Callable[[], dict[str, Any]] | None = None,
             stopping: threading.Event | None = None, max_streams: int = 32, stream_keepalive: float = 15.0,
             max_body: int = routes.MAX_BODY) -> bottle.Bottle:
    """The REST facade over `registry`.

    `info` adds facts about the running agent to the served OpenAPI document (as `x-pier-agent`),
    for identified callers only: anyone may read the API's shape, not the host's id, its libvirt URI,
    socket paths or queue names.
    `stopping`, once set, ends every open event stream (set it before stopping the server).
    At most `max_streams` event streams are open at once; each sends a keepalive comment after
    `stream_keepalive` quiet seconds. Request bodies over `max_body` bytes are answered 413.
    """
    # bottle's own limit (100 KB) is too small for domain XML; the facade enforces `max_body` itself.
    bottle.BaseRequest.MEMFILE_MAX = max(bottle.BaseRequest.MEMFILE_MAX, DRAIN_LIMIT)
    app = bottle.Bottle()
    app.default_error_handler = bottle_error_handler
    app.add_hook("before_request", _strip_trailing_slash)
    streams = EventStreams(events, stopping=stopping or threading.Event(), max_streams=max_streams,
                           keepalive=stream_keepalive, credentials=registry.credentials,
                           admit=registry.admit)
    channels = ChannelStreams(registry, stopping=stopping or threading.Event())
    document = openapi_document(registry.schema)
    text = json.dumps(document, separators=(",", ":"))

    def serve_openapi() -> bottle.HTTPResponse:
        body = text
        if info is not None and bottle.request.environ.get(WSGI_IDENTITY) is not None:
            try:
                body = json.dumps({**document, "info": {**document["info"], "x-pier-agent": info()}},
                                  separators=(",", ":"), default=str)
            except Exception as exc:
                return problem_response(unexpected(exc, f"GET {OPENAPI_PATH}"))
        return bottle.HTTPResponse(body=body, status=200, headers={"Content-Type": routes.JSON})

    app.route(OPENAPI_PATH, "GET", serve_openapi, name="openapi")
    routes.install(app, registry, {"events": streams, "websocket": channels, routes.DATA_STREAM: DataRelays(registry)},
                   max_body=max_body)
    app.config["pier.streams"] = streams
    app.config["pier.channels"] = channels
    return app


def _strip_trailing_slash() -> None:
    environ = bottle.request.environ
    path = environ.get("PATH_INFO", "")
    if len(path) > 1 and path.endswith("/"):
        environ["PATH_INFO"] = path.rstrip("/") or "/"

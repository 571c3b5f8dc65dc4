"""The REST facade's one error mapper: every failure becomes `application/problem+json`.

A `PierError` keeps its VDSM `code` and `name` and answers with its own `http_status`
(RFC 9457 problem details, plus Pier's `code`, `name` and `data`). bottle's own errors (no such
route, wrong method, ...) are turned into the nearest Pier error first, so a client sees one
shape whatever failed. An unexpected exception is logged with a reference id; the client gets
the reference, never the traceback or the exception's text.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import bottle

from pier.rpc.errors import (
    InvalidRequest,
    MethodNotFound,
    PierError,
    RequestTooLarge,
    Unavailable,
    Unexpected,
)

log = logging.getLogger("pier.facade")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://pier.invalid/errors/"

# bottle raises these statuses itself; each becomes the Pier error closest in meaning.
_BOTTLE_ERRORS: dict[int, type[PierError]] = {
    400: InvalidRequest,
    404: MethodNotFound,
    405: MethodNotFound,
    413: RequestTooLarge,
    503: Unavailable,
}


def problem_body(error: PierError, status: int | None = None) -> dict[str, Any]:
    """The problem details object of `error` (answered with `status`, default its own)."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + error.name,
        "title": error.name,
        "status": status or error.http_status,
        "detail": error.message,
        "code": error.code,
        "name": error.name,
    }
    if error.data is not None:
        body["data"] = error.data
    return body


def problem_response(error: PierError, *, status: int | None = None,
                     headers: Mapping[str, str] | None = None) -> bottle.HTTPResponse:
    """A complete bottle response for `error`."""
    body = problem_body(error, status)
    return bottle.HTTPResponse(
        body=json.dumps(body, separators=(",", ":"), default=str),
        status=body["status"],
        headers={"Content-Type": PROBLEM_JSON, **(headers or {})},
    )


def unexpected(exc: BaseException, where: str) -> Unexpected:
    """Log `exc` with a fresh reference id and return the error the client may see."""
    reference = uuid.uuid4().hex[:12]
    log.error("%s failed unexpectedly (reference %s)", where, reference, exc_info=exc)
    return Unexpected(f"Unexpected error; reference {reference} in the agent's log",
                      data={"reference": reference})


def bottle_error_handler(error: bottle.HTTPError) -> str:
    """`Bottle.default_error_handler`: answer bottle's own HTTP errors as problem+json.

    bottle has already copied the error's status and headers (e.g. `Allow` on 405) to the
    response; this sets the content type and returns the JSON text.
    """
    status = error.status_code
    environ = bottle.request.environ
    where = f"{environ.get('REQUEST_METHOD', '?')} {environ.get('PATH_INFO', '')}"
    if status >= 500 and status != 503:
        pier_error: PierError = unexpected(error.exception or RuntimeError(str(error.body)), where)
    else:
        cls = _BOTTLE_ERRORS.get(status, InvalidRequest)
        pier_error = cls(_describe(status, where, error), data=_data(status, environ, error))
    bottle.response.content_type = PROBLEM_JSON
    return json.dumps(problem_body(pier_error, status), separators=(",", ":"), default=str)


def _describe(status: int, where: str, error: bottle.HTTPError) -> str:
    if status == 404:
        return f"No such resource: {where}"
    if status == 405:
        return f"Method not allowed: {where}; allowed: {error.headers.get('Allow', 'none')}"
    return f"{bottle.HTTP_CODES.get(status, 'Error')}: {where}"


def _data(status: int, environ: Mapping[str, Any], error: bottle.HTTPError) -> dict[str, Any]:
    data: dict[str, Any] = {"method": environ.get("REQUEST_METHOD", ""), "path": environ.get("PATH_INFO", "")}
    if status == 405:
        data["allow"] = error.headers.get("Allow", "").split(",")
    return data

"""The REST facade: `/api/v1` routes made from the schema, over the same registry as every transport.

`make_app()` builds the bottle WSGI app. Routes, their params, success statuses, problem+json
errors, server-sent events and the OpenAPI document are all derived from the schema's `rest:`
routes and the verbs' JSON Schemas; nothing in this package names a verb, a param or an error.
It imports only `pier.rpc`.
"""

from pier.facade.app import make_app
from pier.facade.openapi import openapi_document

__all__ = ["make_app", "openapi_document"]

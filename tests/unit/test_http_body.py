"""Request bodies over pier's own HTTP server: POST /jsonrpc, /RPC2 and the REST facade read a
body sent with a Content-Length or chunked alike, and refuse one over their limit with 413."""

from __future__ import annotations

import http.client
import json
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import pytest

from pier.facade import make_app
from pier.rpc.limits import DRAIN_LIMIT
from pier.transports.http import HttpListener, jsonrpc_app
from pier.transports.xmlrpc import xmlrpc_app
from tests.fakes import FixedAuthenticator
from tests.unit.conftest import ADMIN, VM_ID, Stack

LIMIT = 4096
PING = json.dumps({"jsonrpc": "2.0", "method": "Host.ping2", "id": 1}).encode()
XML_PING = xmlrpc.client.dumps((), "Host.ping2").encode()


@pytest.fixture
def server(stack: Stack) -> Iterator[tuple[str, int]]:
    stack.jsonrpc.max_bytes = LIMIT
    mounts = {"/jsonrpc": jsonrpc_app(stack.jsonrpc), "/RPC2": xmlrpc_app(stack.registry, max_bytes=LIMIT)}
    facade = make_app(stack.registry, stack.events, max_body=LIMIT)
    listener = HttpListener(("127.0.0.1", 0), mounts, facade, FixedAuthenticator(ADMIN), threads=4)
    listener.start()
    yield listener._server.bound
    listener.stop()


def post(address: tuple[str, int], path: str, body: bytes, content_type: str, *, chunked: bool,
         connection: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    """POST `body`, chunked (in pieces of 1000 bytes) or with a Content-Length."""
    connection = connection or http.client.HTTPConnection(*address, timeout=10)
    pieces: Any = iter([body[at:at + 1000] for at in range(0, len(body), 1000)]) if chunked else body
    connection.request("POST", path, body=pieces, headers={"Content-Type": content_type}, encode_chunked=chunked)
    response = connection.getresponse()
    return response.status, response.read()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_jsonrpc_reads_the_body_either_way(server: tuple[str, int], chunked: bool) -> None:
    status, body = post(server, "/jsonrpc", PING, "application/json", chunked=chunked)
    assert (status, json.loads(body)) == (200, {"jsonrpc": "2.0", "result": True, "id": 1})


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_xmlrpc_reads_the_body_either_way(server: tuple[str, int], chunked: bool) -> None:
    status, body = post(server, "/RPC2", XML_PING, "text/xml", chunked=chunked)
    assert status == 200 and xmlrpc.client.loads(body)[0][0]["status"]["code"] == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_rest_reads_the_body_either_way(server: tuple[str, int], chunked: bool) -> None:
    params = json.dumps({"vmId": VM_ID, "vmName": "a", "memSize": 32}).encode()
    status, body = post(server, "/api/v1/vms", params, "application/json", chunked=chunked)
    assert status == 201 and json.loads(body)["vmId"] == VM_ID


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path, content_type, read", [
    ("/jsonrpc", "application/json", lambda body: json.loads(body)["error"]["code"] == -32600),
    ("/RPC2", "text/xml", lambda body: _fault(body)),
    ("/api/v1/vms", "application/json", lambda body: json.loads(body)["name"] == "RequestTooLarge"),
], ids=["jsonrpc", "xmlrpc", "rest"])
def test_a_body_over_the_limit_is_413_and_drained(server: tuple[str, int], chunked: bool, path: str,
                                                  content_type: str, read: Any) -> None:
    """Within DRAIN_LIMIT the body is read to its end, so the client reads the 413 whole."""
    big = b" " * (LIMIT + 1) if chunked else b" " * (DRAIN_LIMIT // 2)
    status, body = post(server, path, big, content_type, chunked=chunked)
    assert status == 413 and read(body), body[:300]


def _fault(body: bytes) -> bool:
    """Whether `body` is the XML-RPC fault of a body over the limit."""
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(body)
    return "exceeds the limit" in fault.value.faultString

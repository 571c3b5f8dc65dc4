"""Host and peer addresses: listeners on IPv6 addresses."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from pier.transports.websocket import WebSocketListener
from tests.fakes import FixedAuthenticator
from tests.unit.conftest import ADMIN, Stack

PING = json.dumps({"jsonrpc": "2.0", "method": "Host.ping2", "id": 1})


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


@pytest.fixture
def ws_on_ipv6(stack: Stack) -> Iterator[WebSocketListener]:
    listener = WebSocketListener(stack.jsonrpc, "::1", 0, FixedAuthenticator(ADMIN))
    listener.start()
    yield listener
    listener.stop()


@needs_ipv6
def test_the_websocket_listener_serves_on_an_ipv6_address(ws_on_ipv6: WebSocketListener) -> None:
    assert ws_on_ipv6.address.startswith("ws://[::1]:")
    with connect(ws_on_ipv6.address) as ws:
        ws.send(PING)
        assert json.loads(ws.recv()) == {"jsonrpc": "2.0", "result": True, "id": 1}

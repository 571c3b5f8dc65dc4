"""Host and peer addresses: IPv6 hosts in brackets beside a port, a peer's host without its port,
listeners on IPv6 addresses, and one source address for a client whatever wire it uses."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from pier.rpc.addresses import bracketed, host_of, with_port
from pier.rpc.auth import Authenticator
from pier.rpc.limits import FailedLogins
from pier.transports.http import HttpListener, jsonrpc_app
from pier.transports.vdsm_stomp import VdsmStompListener
from pier.transports.websocket import WebSocketListener
from tests.fakes import FixedAuthenticator
from tests.unit.conftest import ADMIN, Stack
from tests.unit.vdsm_stomp_client import VdsmLikeClient, address_of

PING = json.dumps({"jsonrpc": "2.0", "method": "Host.ping2", "id": 1})


@pytest.mark.parametrize("host, written", [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]"), ("[::1]", "[::1]"),
                                           ("fe80::1%eth0", "[fe80::1%eth0]"), ("localhost", "localhost")])
def test_an_ipv6_host_is_bracketed_beside_a_port(host: str, written: str) -> None:
    assert bracketed(host) == written
    assert with_port(host, 8042) == f"{written}:8042"


@pytest.mark.parametrize("peer, host", [("127.0.0.1:5555", "127.0.0.1"), ("[::1]:80", "::1"), ("::1", "::1"),
                                        ("[::1]", "::1"), ("local", "local"), ("", ""), ("host.example:443", "host.example"),
                                        ("/temp-queue/engine", "/temp-queue/engine")])
def test_the_host_of_a_peer_has_no_port(peer: str, host: str) -> None:
    assert host_of(peer) == host


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


@pytest.fixture
def listeners(stack: Stack) -> Iterator[tuple[str, str, tuple[str, int]]]:
    authenticator = Authenticator(stack.credentials, failures=FailedLogins(limit=3))
    http = HttpListener(("::1", 0), {"/jsonrpc": jsonrpc_app(stack.jsonrpc)}, jsonrpc_app(stack.jsonrpc), authenticator,
                        threads=2)
    ws = WebSocketListener(stack.jsonrpc, "::1", 0, authenticator)
    stomp = VdsmStompListener(stack.jsonrpc, stack.events, "::1", 0, authenticator=authenticator)
    for listener in (http, ws, stomp):
        listener.start()
    assert http.address.startswith("http://[::1]:") and ws.address.startswith("ws://[::1]:")
    assert stomp.address.startswith("stomp://[::1]:")
    yield http.address, ws.address, address_of(stomp.address)
    for listener in (stomp, ws, http):
        listener.stop()


def _http_call(address: str, token: str) -> dict:
    connection = http.client.HTTPConnection(address.removeprefix("http://").rsplit(":", 1)[0].strip("[]"),
                                            int(address.rsplit(":", 1)[1]), timeout=5)
    connection.request("POST", "/jsonrpc", PING, {"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {token}"})
    return json.loads(connection.getresponse().read())


@needs_ipv6
def test_failed_logins_from_one_ipv6_address_count_together_on_every_wire(
        listeners: tuple[str, str, tuple[str, int]]) -> None:
    http_address, ws_address, stomp_address = listeners
    assert _http_call(http_address, "pier_wrong_1")["error"]["code"] == -32001  # unauthenticated
    with connect(ws_address, additional_headers={"Authorization": "Bearer pier_wrong_2"}) as ws:
        ws.send(PING)
        assert json.loads(ws.recv())["error"]["code"] == -32001
    with VdsmLikeClient(stomp_address, passcode="pier_wrong_3") as stomp:
        assert stomp.connected is not None
    assert _http_call(http_address, "pier_wrong_4")["error"]["code"] == -32029  # too many failed logins

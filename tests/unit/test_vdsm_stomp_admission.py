"""A frame that never ends is dropped from the VDSM-compatible STOMP endpoint: each frame must arrive
whole within a deadline of its first byte, however it dribbles; heart-beats between frames start
nothing.

Driven over real sockets against a real listener and the real `Authenticator` (a token as passcode),
with small limits and deadlines.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from pier.rpc.auth import Authenticator
from pier.transports import stomp_wire
from pier.transports.vdsm_stomp import VdsmStompListener
from tests.unit.conftest import Stack
from tests.unit.vdsm_stomp_client import Closed, VdsmLikeClient, address_of, encode

Listen = Callable[..., VdsmStompListener]


@pytest.fixture
def listen(stack: Stack) -> Iterator[Listen]:
    """Starts listeners with the real Authenticator and the given limits; stops them after the test."""
    started: list[VdsmStompListener] = []

    def start(**options: object) -> VdsmStompListener:
        server = VdsmStompListener(stack.jsonrpc, stack.events, "127.0.0.1", 0,
                                   authenticator=Authenticator(stack.credentials), **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def token(stack: Stack) -> str:
    return stack.credentials.create_token("viewer")["token"]


def _refused(client: VdsmLikeClient, message: str, timeout: float = 5) -> str:
    error = client.read_frame(timeout)
    assert error.command == "ERROR", error
    assert error.headers["message"] == message, error
    with pytest.raises((Closed, ConnectionResetError)):
        client.read_frame(timeout)
    return error.body.decode()


@pytest.mark.parametrize("start", [b"SEND\ndestination:jms.topic.vdsm_requests\n",
                                   encode("SEND", {"destination": "jms.topic.vdsm_requests"}, b"x" * 2000)[:-1000]],
                         ids=["head", "body"])
@pytest.mark.parametrize("dribble", [False, True], ids=["stops", "dribbles"])
def test_a_frame_that_never_ends_is_dropped(listen: Listen, token: str, monkeypatch: pytest.MonkeyPatch,
                                            start: bytes, dribble: bool) -> None:
    monkeypatch.setattr(stomp_wire, "FRAME_TIMEOUT", 1.0)
    server = listen()
    with VdsmLikeClient(address_of(server.address), passcode=token) as client:
        assert client.call("Host.ping2") is True
        client.send_raw(b"\n\n")  # heart-beats between frames start nothing
        time.sleep(1.2)
        assert client.call("Host.ping2") is True
        started = time.monotonic()
        client.send_raw(start)
        while dribble and time.monotonic() - started < 5:
            try:
                client.send_raw(b"x")
            except OSError:
                break
            time.sleep(0.1)
            client.sock.settimeout(0.01)
            try:
                if client.sock.recv(1, socket.MSG_PEEK):
                    break  # the ERROR is there
            except TimeoutError:
                pass
        assert "whole within 1 s" in _refused(client, "Frame timeout")
        assert time.monotonic() - started < 4

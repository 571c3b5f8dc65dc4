"""Who gets into the VDSM-compatible STOMP endpoint: connections that prove no identity never keep out
one that does, are closed soon after CONNECT, and a frame that never ends is dropped.

Driven over real sockets against a real listener and the real `Authenticator` (a token as passcode,
a trusted client certificate over TLS), with small limits and deadlines.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pier.rpc.auth import Authenticator
from pier.transports import stomp_wire, vdsm_stomp_connection
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


def _dropped(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (it sends nothing else to a client that has not CONNECTed)."""
    sock.settimeout(5)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _silent(server: VdsmStompListener, source: str = "127.0.0.1") -> socket.socket:
    """A connection that sends nothing."""
    return socket.create_connection(address_of(server.address), source_address=(source, 0))


def _wait_connections(server: VdsmStompListener, count: int) -> None:
    deadline = time.monotonic() + 5
    while server.connections != count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.connections == count


# -- slots ------------------------------------------------------------------------------------------


def test_anonymous_sessions_do_not_keep_out_an_authenticated_client(listen: Listen, token: str) -> None:
    server = listen(max_connections=3, max_per_client=100)
    anonymous = [VdsmLikeClient(address_of(server.address)) for _ in range(6)]  # CONNECTed without credentials
    silent = [_silent(server) for _ in range(6)]  # not even CONNECT
    try:
        with VdsmLikeClient(address_of(server.address), passcode=token) as valid:
            assert valid.call("Host.ping2") is True
    finally:
        for client in anonymous:
            client.close()
        for sock in silent:
            sock.close()


def test_authenticated_clients_have_their_own_limit(listen: Listen, token: str) -> None:
    server = listen(max_connections=2, max_per_client=100)
    first, second = (VdsmLikeClient(address_of(server.address), passcode=token) for _ in range(2))
    with VdsmLikeClient(address_of(server.address), connect=False) as third:
        third.send_frame("CONNECT", {"accept-version": "1.2", "passcode": token})
        assert "at most 2 clients" in _refused(third, "Too many connections")
    first.close()
    _wait_connections(server, 1)
    with VdsmLikeClient(address_of(server.address), passcode=token) as again:
        assert again.call("Host.ping2") is True
    second.close()


def test_the_oldest_unauthenticated_connection_makes_room(listen: Listen, token: str) -> None:
    server = listen(max_unauthenticated=3, max_per_client=100)
    oldest = _silent(server)
    anonymous = VdsmLikeClient(address_of(server.address))  # CONNECTed, and proved nothing
    other = _silent(server)
    try:
        # The budget of 3 is full: a new connection drops first one that CONNECTed without credentials.
        with VdsmLikeClient(address_of(server.address), passcode=token) as valid:
            with pytest.raises((Closed, ConnectionResetError)):
                anonymous.read_frame(5)
            assert not _dropped_now(oldest) and not _dropped_now(other)
            assert valid.call("Host.ping2") is True  # authenticated: no longer counted in the budget
            newer = [_silent(server) for _ in range(2)]  # the second drops the oldest that has not CONNECTed
            assert _dropped(oldest)
            assert not any(_dropped_now(sock) for sock in [other, *newer])
            assert valid.call("Host.ping2") is True
            for sock in newer:
                sock.close()
    finally:
        anonymous.sock.close()
        for sock in [oldest, other]:
            sock.close()


def _dropped_now(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_one_address_pushes_out_only_its_own(listen: Listen) -> None:
    server = listen(max_unauthenticated=10, max_per_client=2)
    other = [_silent(server, "127.0.0.2") for _ in range(2)]
    mine = [_silent(server) for _ in range(3)]
    try:
        assert _dropped(mine[0])
        assert not any(_dropped_now(sock) for sock in [*other, *mine[1:]])
    finally:
        for sock in [*other, *mine]:
            sock.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_trusted_certificate_counts_from_the_handshake(stack: Stack, listen: Listen, tmp_path: Path) -> None:
    def make(name: str) -> tuple[Path, Path]:
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        f"/CN={name}", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        return cert, key

    server_cert, server_key = make("localhost")
    client_cert, client_key = make("engine")
    stack.credentials.trust(client_cert.read_text(), "viewer")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(server_cert, server_key)
    server_context.verify_mode = ssl.CERT_OPTIONAL
    server_context.load_verify_locations(cadata=client_cert.read_text())
    client_context = ssl.create_default_context(cafile=str(server_cert))
    client_context.check_hostname = False
    client_context.load_cert_chain(client_cert, client_key)
    server = listen(max_unauthenticated=1, max_per_client=100, ssl_context=server_context)
    engine = VdsmLikeClient(address_of(server.address), tls=client_context, connect=False)
    try:
        time.sleep(0.5)  # the server's side of the handshake, then anonymous clients come
        silent = [_silent(server) for _ in range(3)]
        engine.connect()
        assert engine.call("Host.ping2") is True
        for sock in silent:
            sock.close()
    finally:
        engine.close()


# -- deadlines --------------------------------------------------------------------------------------


def test_a_connection_that_proves_no_identity_is_closed_after_connect(listen: Listen, token: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vdsm_stomp_connection, "UNAUTHENTICATED_TIMEOUT", 0.5)
    server = listen()
    with VdsmLikeClient(address_of(server.address)) as anonymous, \
            VdsmLikeClient(address_of(server.address), passcode="pier_0_wrong") as wrong, \
            VdsmLikeClient(address_of(server.address), passcode=token) as valid:
        started = time.monotonic()
        for client in (anonymous, wrong):
            assert "closed 0.5 s after CONNECT" in _refused(client, "Not authenticated")
        assert time.monotonic() - started < 4
        assert valid.call("Host.ping2") is True  # a connection that authenticated stays


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

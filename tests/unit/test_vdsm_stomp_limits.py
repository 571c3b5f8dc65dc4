"""The VDSM-compatible STOMP endpoint under bad input, heart-beats, limits and stop()."""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pier.transports import stomp_wire
from pier.transports.vdsm_stomp import VdsmStompListener
from tests.fakes import FixedAuthenticator
from tests.unit.conftest import ADMIN, Stack
from tests.unit.vdsm_stomp_client import EVENTS, REQUESTS, Closed, VdsmLikeClient, address_of, encode

MAX_FRAME = 4096


def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.name.startswith(("vdsm-stomp", "events-push"))}


@pytest.fixture
def listener(stack: Stack) -> Iterator[VdsmStompListener]:
    server = VdsmStompListener(stack.jsonrpc, stack.events, "127.0.0.1", 0, authenticator=FixedAuthenticator(ADMIN), max_frame=MAX_FRAME)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(listener: VdsmStompListener) -> Iterator[VdsmLikeClient]:
    with VdsmLikeClient(address_of(listener.address)) as connected:
        yield connected


@pytest.fixture
def bystander(listener: VdsmStompListener) -> Iterator[VdsmLikeClient]:
    """A connected client that must not notice what happens to the others."""
    with VdsmLikeClient(address_of(listener.address)) as connected:
        connected.subscribe(EVENTS)
        assert connected.call("Host.ping2") is True
        yield connected
        assert connected.call("Host.getVMList") == []


def _refused(client: VdsmLikeClient, message: str) -> str:
    """The ERROR the server sends before it closes the connection."""
    error = client.read_frame()
    assert error.command == "ERROR", error
    assert error.headers["message"] == message
    assert error.body.decode().startswith(message)
    with pytest.raises((Closed, ConnectionResetError)):
        client.read_frame()
    return error.body.decode()


def _error(client: VdsmLikeClient, message: str, receipt: str | None = None) -> None:
    """An ERROR that refuses one frame: VDSM's message as the body (maybe with a detail after it);
    the connection goes on."""
    error = client.read_frame()
    assert error.command == "ERROR", error
    assert error.headers["message"] == message
    assert error.body == message.encode() or error.body.startswith(message.encode() + b": ")
    assert error.headers.get("receipt-id") == receipt


def _raw(listener: VdsmStompListener) -> VdsmLikeClient:
    return VdsmLikeClient(address_of(listener.address), connect=False)


# -- refused connections ---------------------------------------------------------------------------


def test_stomp_command_is_refused(listener: VdsmStompListener, bystander: VdsmLikeClient) -> None:
    with _raw(listener) as raw:
        raw.send_frame("STOMP", {"accept-version": "1.2", "host": "x"})
        assert "CONNECT" in _refused(raw, "Unknown command")


@pytest.mark.parametrize("version", ["1.1", "1.0,1.1,1.2", "", None])
def test_versions_other_than_1_2_are_refused(listener: VdsmStompListener, version: str | None) -> None:
    with _raw(listener) as raw:
        raw.send_frame("CONNECT", {"heart-beat": "0,24000"} | ({"accept-version": version} if version is not None else {}))
        assert _refused(raw, "Version unsupported") == "Version unsupported"


def test_frames_before_connect_are_refused(listener: VdsmStompListener) -> None:
    with _raw(listener) as raw:
        raw.send_frame("SEND", {"destination": REQUESTS, "reply-to": "x"}, b"[]")
        _refused(raw, "Not connected")


def test_second_connect_is_refused(client: VdsmLikeClient) -> None:
    client.send_frame("CONNECT", {"accept-version": "1.2"})
    _refused(client, "Already connected")


def test_no_connect_in_time_is_refused(listener: VdsmStompListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stomp_wire, "CONNECT_TIMEOUT", 0.3)
    with _raw(listener) as raw:
        _refused(raw, "CONNECT timeout")


@pytest.mark.parametrize(("data", "message"), [
    (b"ACK\nid:1\n\n\0", "Unknown command"),
    (b"BEGIN\ntransaction:t\n\n\0", "Unknown command"),
    (b"hello world\n\n\0", "Malformed frame"),
    (b"SEND\ndestination\n\n\0", "Malformed frame"),
    (b"SEND\n:x\n\n\0", "Malformed frame"),
    (b"SEND\ndestination:a\\tb\n\n\0", "Malformed frame"),
    (b"SEND\ndestination:\xff\xfe\n\n\0", "Malformed frame"),
    (b"SEND\ndestination:q\ncontent-length:abc\n\nx\0", "Invalid content-length"),
    (b"SEND\ndestination:q\ncontent-length:-1\n\nx\0", "Invalid content-length"),
    (b"SEND\ndestination:q\ncontent-length:2\n\nabcd\0", "Invalid content-length"),
    (b"SEND\ndestination:q\ncontent-length:5000\n\n", "Frame too large"),
    (b"SEND\ndestination:q\n\n" + b"x" * 5000, "Frame too large"),
    (b"SEND\ndestination:q\ncontent-length:4100\n\n" + b"x" * 4100 + b"\0", "Frame too large"),
    (b"SEND\n" + b"h:" + b"x" * 5000, "Frame too large"),
])
def test_broken_frames_get_error_then_close(client: VdsmLikeClient, bystander: VdsmLikeClient, data: bytes,
                                            message: str) -> None:
    client.send_raw(data)
    _refused(client, message)


def test_a_frame_at_the_limit_is_served(client: VdsmLikeClient) -> None:
    request = b'[{"jsonrpc": "2.0", "method": "Host.ping2", "params": {}, "id": "big"}]'
    head = encode("SEND", {"destination": REQUESTS, "reply-to": client.reply_to}, b"")
    body = request + b" " * (MAX_FRAME - len(head) - len(request) - 3)  # content-length grows by 3 digits
    data = encode("SEND", {"destination": REQUESTS, "reply-to": client.reply_to}, body)
    assert len(data) == MAX_FRAME
    client.send_raw(data)
    assert client.wait_response("big")["result"] is True


def test_garbage_never_stops_the_endpoint(listener: VdsmStompListener, bystander: VdsmLikeClient) -> None:
    rng = random.Random(5)
    for _ in range(30):
        with socket.create_connection(address_of(listener.address)) as sock:
            prefix = rng.choice([b"", b"CONNECT\naccept-version:1.2\n\n\0", b"SEND\n"])
            sock.sendall(prefix + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
    with VdsmLikeClient(address_of(listener.address)) as later:
        assert later.call("Host.ping2") is True


# -- refused frames (the connection goes on) ----------------------------------------------------


def test_unknown_destination(client: VdsmLikeClient) -> None:
    client.send_frame("SEND", {"destination": "jms.topic.nowhere", "content-type": "application/json"}, b"{}")
    _error(client, "Subscription not available")
    client.send_frame("SEND", {"destination": "jms.topic", "receipt": "r"}, b"{}")  # a prefix of a request queue
    _error(client, "Subscription not available", "r")
    client.send_frame("SEND", {"destination": "jms.queue.events"}, b"{}")  # only pier publishes events
    _error(client, "Subscription not available")
    assert client.call("Host.ping2") is True


def test_missing_headers(client: VdsmLikeClient) -> None:
    client.send_frame("SUBSCRIBE", {"destination": "x", "ack": "auto"})
    _error(client, "Missing destination or subscription id header")
    client.send_frame("SUBSCRIBE", {"id": "s1", "receipt": "r1"})
    _error(client, "Missing destination or subscription id header", "r1")
    client.send_frame("UNSUBSCRIBE", {})
    _error(client, "Missing id header")
    client.send_frame("SEND", {"reply-to": client.reply_to}, b"[]")
    _error(client, "Missing destination header")
    client.send_frame("UNSUBSCRIBE", {"id": "never-subscribed"})  # ignored, as VDSM does
    assert client.call("Host.ping2") is True


def test_repeated_subscription_id(client: VdsmLikeClient) -> None:
    client.send_frame("SUBSCRIBE", {"destination": "other", "ack": "auto", "id": client.reply_sub})
    _error(client, "Subscription id already exists")
    assert client.call("Host.ping2") is True  # the first subscription still stands


def test_ack_modes_other_than_auto(client: VdsmLikeClient) -> None:
    client.send_frame("SUBSCRIBE", {"destination": "q", "ack": "client", "id": "s"})
    error = client.read_frame()
    assert error.headers["message"] == "Unsupported ack mode"
    assert client.call("Host.ping2") is True


# -- heart-beats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("asked", "answered"), [
    ("0,24000", "24000,0"), ("300,500", "1000,1000"), ("0,0", "0,0"), ("x,y", "0,0"), ("5", "0,0"), (None, "0,0"),
])
def test_heart_beat_negotiation(listener: VdsmStompListener, asked: str | None, answered: str) -> None:
    with _raw(listener) as raw:
        raw.send_frame("CONNECT", {"accept-version": "1.2"} | ({"heart-beat": asked} if asked is not None else {}))
        connected = raw.read_frame()
        assert connected.command == "CONNECTED"
        assert connected.headers == {"version": "1.2", "heart-beat": answered}


def _heart_beat_times(client: VdsmLikeClient, seconds: float) -> list[float]:
    times = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        client.sock.settimeout(remaining)
        try:
            data = client.sock.recv(100)
        except TimeoutError:
            break
        assert data.strip(b"\n") == b"", data
        times += [time.monotonic()] * data.count(b"\n")
    return times


def test_server_sends_heart_beats(listener: VdsmStompListener) -> None:
    with VdsmLikeClient(address_of(listener.address), heart_beat="0,1000") as client:
        assert client.connected is not None and client.connected.headers["heart-beat"] == "1000,0"
        for _ in range(2):
            started = time.monotonic()
            times = _heart_beat_times(client, 2.6)
            assert len(times) >= 2
            assert max(b - a for a, b in zip([started, *times], times, strict=False)) < 1.0
            assert client.call("Host.ping2") is True  # traffic, then heart-beats again


def test_silent_client_is_dropped(listener: VdsmStompListener) -> None:
    with VdsmLikeClient(address_of(listener.address), heart_beat="1000,0") as client:
        started = time.monotonic()
        _refused(client, "Heart-beat timeout")
        assert 1.5 < time.monotonic() - started < 4


def test_client_heart_beats_keep_the_connection(listener: VdsmStompListener) -> None:
    with VdsmLikeClient(address_of(listener.address), heart_beat="1000,0") as client:
        for _ in range(6):
            time.sleep(0.5)
            client.send_raw(b"\n")
        assert client.call("Host.ping2") is True


# -- limits and stop() ------------------------------------------------------------------------------


def test_too_many_connections(stack: Stack) -> None:
    server = VdsmStompListener(stack.jsonrpc, stack.events, "127.0.0.1", 0, authenticator=FixedAuthenticator(ADMIN), max_connections=2)
    server.start()
    try:
        first, second = (VdsmLikeClient(address_of(server.address)) for _ in range(2))
        with _raw(server) as third:  # admitted as unauthenticated; refused once it authenticates
            third.send_frame("CONNECT", {"accept-version": "1.2"})
            _refused(third, "Too many connections")
        first.close()
        deadline = time.monotonic() + 5
        while server.connections > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with VdsmLikeClient(address_of(server.address)) as again:
            assert again.call("Host.ping2") is True
        second.close()
    finally:
        server.stop()


def test_slow_client_holds_nobody_up(stack: Stack, listener: VdsmStompListener) -> None:
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(address_of(listener.address))
    slow.sendall(encode("CONNECT", {"accept-version": "1.2"}) + encode("SUBSCRIBE", {"destination": EVENTS, "id": "s"}))
    with VdsmLikeClient(address_of(listener.address)) as fast:
        fast.subscribe(EVENTS)
        fast.call("Host.ping2")
        padding = "x" * 2000
        started = time.monotonic()
        for number in range(3000):  # ~6 MB for each subscriber; the slow one reads none of it
            stack.events.publish(f"|pier|bulk|{number}", {"padding": padding})
        assert time.monotonic() - started < 10
        fast.wait_event(lambda event: event["method"] == "|pier|bulk|2999", timeout=20)
        assert len(fast.events) == 3000
        fast.events.clear()
        started = time.monotonic()
        assert fast.call("Host.ping2") is True
        assert time.monotonic() - started < 5  # not stuck behind the slow reader (a bound, not a figure)
    stopped = time.monotonic()
    listener.stop()  # with the slow client's writer stuck and its pusher waiting for room
    assert time.monotonic() - stopped < 2
    assert not {name for name in _threads() if name.startswith("vdsm-stomp")}
    slow.close()


def test_stop_with_clients_connected(stack: Stack) -> None:
    before = _threads()
    server = VdsmStompListener(stack.jsonrpc, stack.events, "127.0.0.1", 0, authenticator=FixedAuthenticator(ADMIN))
    server.start()
    clients = [VdsmLikeClient(address_of(server.address)) for _ in range(3)]
    clients[0].subscribe(EVENTS)
    for connected in clients:
        assert connected.call("Host.ping2") is True
    half_open = socket.create_connection(address_of(server.address))
    half_open.sendall(b"CONNECT\naccept-ver")
    assert _threads() - before
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    assert _threads() == before
    for connected in clients:
        with pytest.raises((Closed, ConnectionResetError)):
            connected.read_frame()
        connected.sock.close()
    half_open.close()
    server.stop()  # a second stop does nothing


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(stack: Stack, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    client_context.check_hostname = False
    server = VdsmStompListener(stack.jsonrpc, stack.events, "127.0.0.1", 0, authenticator=FixedAuthenticator(ADMIN), ssl_context=server_context)
    server.start()
    try:
        assert server.address.startswith("stomp+ssl://")
        with VdsmLikeClient(address_of(server.address), tls=client_context) as client:
            client.subscribe(EVENTS)
            assert client.call("Host.ping2") is True
            stack.events.publish("|pier|tls|1", {})
            client.wait_event(lambda event: event["method"] == "|pier|tls|1")
    finally:
        server.stop()

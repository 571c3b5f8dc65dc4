"""pier's HTTP server on real sockets, with small WSGI apps: framing, streams, fairness, unix sockets."""

from __future__ import annotations

import http.client
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pier.transports.httpexchange import PEER_CREDENTIALS
from pier.transports.httpserver import HttpServer

TOKEN = {"Authorization": "Bearer the-same-caller"}


def app(environ: dict[str, Any], start_response: Any) -> Any:
    """Echoes what it was sent; /stream streams until /release is called."""
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream()
    if path == "/release":
        RELEASE.set()
    body = environ["wsgi.input"].read()
    text = f"{environ['REQUEST_METHOD']} {path}?{environ['QUERY_STRING']} {len(body)} {environ.get(PEER_CREDENTIALS)}"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [text.encode()]


RELEASE = threading.Event()


def _stream() -> Iterator[bytes]:
    yield b"first\n"
    RELEASE.wait(10)
    yield b"last\n"


@pytest.fixture
def server() -> Iterator[HttpServer]:
    RELEASE.clear()
    made = HttpServer(("127.0.0.1", 0), app, workers=2)
    made.start()
    yield made
    RELEASE.set()
    made.stop()


def exchange(server: HttpServer, raw: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(server.bound, timeout=timeout) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_stream_does_not_count_towards_its_callers_share(server: HttpServer) -> None:
    streaming = http.client.HTTPConnection(*server.bound, timeout=5)
    streaming.request("GET", "/stream", headers=TOKEN)
    response = streaming.getresponse()
    assert response.readline() == b"first\n"
    other = http.client.HTTPConnection(*server.bound, timeout=5)  # same caller; with 2 workers its share is 1
    other.request("GET", "/release", headers=TOKEN)
    assert other.getresponse().read().startswith(b"GET /release")
    assert response.readline() == b"last\n"
    streaming.close()
    other.close()


def test_pipelined_requests_are_all_answered_in_order(server: HttpServer) -> None:
    answer = exchange(server, b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n" + b"POST /b HTTP/1.1\r\nHost: h\r\n"
                      b"Content-Length: 3\r\n\r\nabc" + b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 ") == 3
    assert answer.index(b"GET /a?x=1 0") < answer.index(b"POST /b? 3") < answer.index(b"GET /c? 0")


def test_a_chunked_body_is_read_whole_and_head_gets_no_body(server: HttpServer) -> None:
    answer = exchange(server, b"PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nHEAD /h HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    first, _, head_answer = answer.partition(b"PUT /up? 11 None")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert head_answer.startswith(b"HTTP/1.1 200 ") and b"content-length: 15" in head_answer.lower()
    assert head_answer.endswith(b"\r\n\r\n")  # the length of the body a GET would get, and no body


def test_a_head_too_large_or_malformed_is_refused_and_the_server_goes_on(server: HttpServer) -> None:
    assert exchange(server, b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (70 << 10) + b"\r\n\r\n") \
        .startswith(b"HTTP/1.1 431 ")
    assert exchange(server, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert b"GET /fine" in exchange(server, b"GET /fine HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")


def test_a_unix_socket_is_0660_and_tells_the_app_who_called(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    Path(path).touch()
    with pytest.raises(OSError, match="not a socket"):
        HttpServer(path, app).start()
    os.unlink(path)
    served = HttpServer(path, app, workers=1)
    served.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            sock.sendall(b"GET /who HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            time.sleep(0.1)
            answer = sock.recv(65536)
        assert answer.endswith(f"GET /who? 0 ({os.getuid()}, {os.getgid()})".encode())
    finally:
        served.stop()
    assert not os.path.exists(path)

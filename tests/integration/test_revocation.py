"""Revoking a token or removing a trusted certificate ends, within a second, every session opened with it.

Each test opens a session that outlives one call (a WebSocket connection, a VDSM STOMP connection, a
server-sent-events stream, a long-poll), revokes the credential it authenticated with, and checks that
the session ends soon and says why. Each runs once with a bearer token (plain text on loopback) and
once with a trusted client certificate (over TLS).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from pier.rpc.auth import fingerprint
from pier.tlsfiles import init_tls
from tests.integration.clients import CallFailed, WsClient, http_request, unix_request
from tests.integration.conftest import Pierd
from tests.unit.vdsm_stomp_client import EVENTS, Closed, VdsmLikeClient, address_of

# The issue asks for "within a second"; the machine is shared and noisy.
DEADLINE = 2.0


@dataclass
class Caller:
    """A viewer's credential on a running pierd, how to present it, and how to revoke it."""

    daemon: Pierd
    token: str  # "" when the caller presents a certificate
    tls: ssl.SSLContext | None  # the CA, and the caller's certificate when it has one
    revoke: Callable[[], None]
    reason: str  # what the end of a session must say

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}" if self.token else ""}

    @property
    def vdsm_stomp(self) -> tuple[str, int]:
        return address_of(next(line.split(" on ")[-1].strip() for line in self.daemon.log
                               if "VDSM-compatible STOMP on" in line))


@pytest.fixture(params=["token", "certificate"])
def caller(request: pytest.FixtureRequest, tmp_path: Path, test_uri: str) -> Iterator[Caller]:
    secure = request.param == "certificate"
    daemon = Pierd(tmp_path / "state", test_uri, "--vdsm-stomp", "127.0.0.1:0", secure=secure)
    try:
        if secure:
            own = init_tls(tmp_path / "elsewhere")  # a certificate pierd knows nothing of, until trusted
            status, _ = unix_request(daemon.socket, "POST", "/api/v1/trust",
                                     {"certificate": own.client.read_text(), "role": "viewer", "name": "watcher"})
            assert status == 201
            print_ = fingerprint(ssl.PEM_cert_to_DER_cert(own.client.read_text()))
            tls = ssl.create_default_context(cafile=str(daemon.state_dir / "tls" / "ca.pem"))
            tls.load_cert_chain(str(own.client), str(own.client_key))
            made = Caller(daemon, "", tls, lambda: _delete(daemon, f"/api/v1/trust/{urllib.parse.quote(print_)}"),
                          f"{print_[:23]}... is no longer trusted")
        else:
            token = daemon.make_token("viewer")
            token_id = token.split("_")[1]
            made = Caller(daemon, token, None, lambda: _delete(daemon, f"/api/v1/tokens/{token_id}"),
                          f"token {token_id} was revoked")
        yield made
    finally:
        assert daemon.stop() == 0, "pierd did not exit cleanly:\n" + "".join(daemon.log[-30:])
    assert not daemon.logged("Traceback"), "".join(daemon.log)


def _delete(daemon: Pierd, path: str) -> None:
    status, answer = unix_request(daemon.socket, "DELETE", path)
    assert status == 200, answer


def test_websocket_is_closed_with_the_reason(caller: Caller) -> None:
    client = WsClient(caller.daemon.ws, caller.token, ssl=caller.tls)
    try:
        assert client.call("Events.subscribe", types=["virt"])["subscribed"] is True
        started = time.monotonic()
        caller.revoke()
        with pytest.raises(ConnectionClosed) as closed:
            while time.monotonic() - started < DEADLINE + 5:
                client.connection.recv(timeout=DEADLINE + 5)
        assert time.monotonic() - started < DEADLINE
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert caller.reason in closed.value.rcvd.reason
    finally:
        client.close()


def test_vdsm_stomp_gets_an_error_then_is_closed(caller: Caller) -> None:
    client = VdsmLikeClient(caller.vdsm_stomp, tls=caller.tls, passcode=caller.token or None, timeout=DEADLINE + 5)
    try:
        client.subscribe(EVENTS)
        assert client.call("Host.ping2") is True
        started = time.monotonic()
        caller.revoke()
        error = client.read_frame()
        assert time.monotonic() - started < DEADLINE
        assert error.command == "ERROR", error
        assert caller.reason in error.body.decode()
        with pytest.raises((Closed, ConnectionResetError)):
            client.read_frame()
    finally:
        client.sock.close()


def test_event_stream_ends_with_the_reason(caller: Caller) -> None:
    response = _open_stream(caller)
    started = time.monotonic()
    caller.revoke()
    frames = _frames(response)
    assert time.monotonic() - started < DEADLINE
    assert frames and frames[-1]["event"] == "|pier|session_ended|"
    assert caller.reason in json.loads(frames[-1]["data"])["params"]["reason"]


def test_long_poll_answers_unauthenticated_at_once(caller: Caller) -> None:
    """REST's `GET /events?wait=` with a token; `Events.poll` over JSON-RPC with a certificate."""
    base = caller.daemon.http
    answers: list[tuple[int | None, str]] = []

    def poll() -> None:
        if caller.token:
            status, _, body = http_request("GET", f"{base}/api/v1/events?wait=30", headers=caller.headers)
            answers.append((status, json.loads(body).get("detail", "")))
        else:
            try:
                answers.append((None, repr(_rpc_over_tls(caller, "Events.poll", wait=30))))
            except CallFailed as exc:
                answers.append((exc.code, exc.message))

    waiting = threading.Thread(target=poll)
    waiting.start()
    time.sleep(0.5)  # let the poll reach pierd and wait there
    assert not answers, answers
    started = time.monotonic()
    caller.revoke()
    waiting.join(DEADLINE + 30)
    assert time.monotonic() - started < DEADLINE
    status, why = answers[0]
    assert status == (401 if caller.token else -32001)
    assert caller.reason in why


# -- helpers --------------------------------------------------------------------------------------


def _connection(caller: Caller, timeout: float = 60) -> http.client.HTTPConnection:
    host, port = caller.daemon.http.split("://", 1)[1].rsplit(":", 1)
    if caller.tls is not None:
        return http.client.HTTPSConnection(host, int(port), timeout=timeout, context=caller.tls)
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def _open_stream(caller: Caller) -> http.client.HTTPResponse:
    connection = _connection(caller, timeout=DEADLINE + 3)  # less than the keepalive: a stream that goes on fails
    headers = {"Accept": "text/event-stream", **{k: v for k, v in caller.headers.items() if v}}
    connection.request("GET", "/api/v1/events", headers=headers)
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert response.readline().startswith(b"retry:")  # the stream is open
    return response


def _frames(response: http.client.HTTPResponse) -> list[dict[str, str]]:
    """Every event frame until the stream ends."""
    frames, frame = [], {}
    while line := response.readline():
        text = line.decode().rstrip("\r\n")
        if text.startswith(":"):
            continue
        if not text:
            if "event" in frame:
                frames.append(frame)
            frame = {}
            continue
        key, _, value = text.partition(":")
        frame[key] = value.strip()
    return frames


def _rpc_over_tls(caller: Caller, verb: str, **params: object) -> object:
    connection = _connection(caller)
    body = json.dumps({"jsonrpc": "2.0", "method": verb, "params": params, "id": 1})
    connection.request("POST", "/jsonrpc", body=body, headers={"Content-Type": "application/json"})
    reply = json.loads(connection.getresponse().read())
    connection.close()
    if "error" in reply:
        error = reply["error"]
        raise CallFailed(error["code"], (error.get("data") or {}).get("name", ""), error["message"])
    return reply["result"]

"""Fuzzing fixtures: one real pierd per module, the helpers every fuzz request goes through, and a tally.

Each fuzz module gets its own `pierd` (module-scoped `target`), started on a libvirt test-driver
file with the VDSM-compatible STOMP endpoint enabled. Tests never open a socket themselves: every
request goes through `Target` (HTTP, JSON-RPC, XML-RPC, WebSocket, STOMP), which adds the
caller's credentials. Credentials come from `issue_credentials`, the one place that decides
them (an admin bearer token today; `Pierd` runs pierd with `--insecure-loopback`).

Hypothesis runs derandomized (the same inputs on every run, so a failure reproduces) with
`examples(n)` examples per test; `PIER_FUZZ_SCALE=10` multiplies every count for a longer local
run, and `PIER_FUZZ_RANDOM=1` draws fresh inputs each run. Every input sent is counted with
`tried(label)`; the counts are printed at the end of the session (and written as JSON to
`$PIER_FUZZ_REPORT` when that is set), for the closing note of the security issue.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from websockets.sync.client import ClientConnection, connect

from pier.host.testdriver import make_test_uri
from pier.rpc.schema import Schema
from tests.integration.conftest import Pierd
from tests.unit.vdsm_stomp_client import VdsmLikeClient, address_of

# What every fuzz module's pierd is started with (besides its own state dir and test-driver file).
PIERD_FLAGS: tuple[str, ...] = ("--vdsm-stomp", "127.0.0.1:0")
VDSM_STOMP_LINE = re.compile(r"VDSM-compatible STOMP on (stomp\S*://\S+)")
# Text that would show a Python traceback leaked to a client.
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "')
REQUEST_TIMEOUT = 10.0  # seconds; no single fuzz request may take longer

# -- credentials: the one place that decides them ------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What a client presents to pierd: a bearer token, or nothing."""

    token: str | None = None

    def http_headers(self) -> dict[str, str]:
        """Headers for HTTP requests (REST, /jsonrpc, /RPC2) and the WebSocket handshake."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stomp_headers(self) -> dict[str, str]:
        """Extra headers for a STOMP CONNECT frame (pierd takes a bearer token as the passcode)."""
        return {"passcode": self.token} if self.token else {}


def issue_credentials(daemon: Pierd) -> Credentials:
    """The credentials every fuzz request to `daemon` carries: the admin token `Pierd` made over
    its local socket (admin, so that no verb is refused for its role and every handler is reached)."""
    return Credentials(token=daemon.token)


# -- the tally ------------------------------------------------------------------------------------

TALLY: Counter[str] = Counter()


def tried(label: str, count: int = 1) -> None:
    """Count `count` inputs sent under `label` (a test's name, or `schemathesis <operation>`)."""
    TALLY[label] += count


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    terminalreporter.section("fuzz inputs tried")
    width = max(len(label) for label in TALLY)
    for label, count in sorted(TALLY.items()):
        terminalreporter.write_line(f"{label:<{width}}  {count:>6}")
    terminalreporter.write_line(f"{'total':<{width}}  {sum(TALLY.values()):>6}")
    report = os.environ.get("PIER_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(dict(sorted(TALLY.items())), indent=2) + "\n")


# -- hypothesis settings --------------------------------------------------------------------------

SCALE = max(1, int(os.environ.get("PIER_FUZZ_SCALE", "1")))


def examples(count: int) -> int:
    """`count` examples, times PIER_FUZZ_SCALE."""
    return count * SCALE


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings for a test that talks to pierd: bounded, reproducible, no deadline."""
    return settings(
        max_examples=examples(max_examples),
        deadline=None,
        derandomize=os.environ.get("PIER_FUZZ_RANDOM") != "1",
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


# -- verbs ----------------------------------------------------------------------------------------

SCHEMA = Schema.load()
# Long-poll params: a call may legitimately wait this long, so fuzzed values are kept short.
LONG_POLL_PARAMS = ("wait",)
MAX_WAIT = 0.01


def bound_waits(name: Any, params: Any) -> Any:
    """`params` for verb `name` (or a legacy name) with any long-poll wait cut to MAX_WAIT seconds.

    Only finite numbers above MAX_WAIT are changed (they are documented to block that long);
    everything else, wrong types and out-of-range values included, is sent as generated.
    """
    verb = SCHEMA.resolve(name) if isinstance(name, str) else None
    if verb is None:
        return params
    names = list(verb.params)
    positions = {names.index(param) for param in LONG_POLL_PARAMS if param in names}

    def cut(value: Any) -> Any:
        long = isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_WAIT
        return MAX_WAIT if long and value == value and value != float("inf") else value

    if isinstance(params, dict):
        return {key: cut(value) if key in LONG_POLL_PARAMS else value for key, value in params.items()}
    if isinstance(params, list):
        return [cut(value) if index in positions else value for index, value in enumerate(params)]
    return params


def slow_body(size: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """`size` bytes of whitespace, a chunk at a time, as a client on a slow link sends a large body."""
    for start in range(0, size, chunk):
        time.sleep(0.005)
        yield b" " * min(chunk, size - start)


# -- talking to pierd -----------------------------------------------------------------------------


@dataclass
class Reply:
    """An HTTP response: status, headers (names lower-cased) and raw body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def leaks_traceback(data: bytes | str) -> bool:
    """Whether `data` holds Python traceback text."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return any(marker in text for marker in TRACEBACK_MARKERS)


@dataclass
class Target:
    """A running pierd and every way the fuzz tests reach it, with credentials added."""

    daemon: Pierd
    http: str  # http://host:port
    ws: str  # ws://host:port/
    stomp: tuple[str, int]
    credentials: Credentials = field(default_factory=Credentials)
    _log_checked: int = 0  # how many lines of pierd's log have been checked for tracebacks

    @property
    def headers(self) -> dict[str, str]:
        return self.credentials.http_headers()

    # HTTP

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None, *,
                content_type: str | None = None,
                headers: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT) -> Reply:
        """One HTTP request with the credentials' headers (then `headers`); any status is returned."""
        url = urllib.parse.urlsplit(self.http)
        sent = {**self.headers, **(headers or {})}
        if content_type is not None:
            sent.setdefault("Content-Type", content_type)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def jsonrpc(self, message: bytes | str, **kwargs: Any) -> Reply:
        """POST one JSON-RPC message (text as it is, or raw bytes) to /jsonrpc."""
        body = message.encode() if isinstance(message, str) else message
        return self.request("POST", "/jsonrpc", body, content_type="application/json", **kwargs)

    def xmlrpc(self, body: bytes, **kwargs: Any) -> Reply:
        """POST one XML-RPC body to /RPC2."""
        return self.request("POST", "/RPC2", body, content_type="text/xml", **kwargs)

    # WebSocket

    @contextlib.contextmanager
    def websocket(self, headers: dict[str, str] | None = None) -> Iterator[ClientConnection]:
        """A JSON-RPC WebSocket connection with the credentials' headers."""
        with connect(self.ws, additional_headers={**self.headers, **(headers or {})}, compression=None,
                     max_size=16 << 20, open_timeout=REQUEST_TIMEOUT, close_timeout=2) as connection:
            yield connection

    # STOMP

    def stomp_socket(self, timeout: float = REQUEST_TIMEOUT) -> socket.socket:
        """A bare TCP connection to the VDSM STOMP endpoint (raw frames are the caller's to send)."""
        sock = socket.create_connection(self.stomp, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def stomp_connect_frame(self, heart_beat: str = "0,0") -> bytes:
        """The CONNECT frame a well-behaved client sends, with the credentials' headers."""
        headers = {"accept-version": "1.2", "heart-beat": heart_beat, **self.credentials.stomp_headers()}
        return ("CONNECT\n" + "".join(f"{k}:{v}\n" for k, v in headers.items()) + "\n\0").encode()

    def stomp_client(self, timeout: float = REQUEST_TIMEOUT) -> VdsmLikeClient:
        """A connected VDSM-like client (CONNECT, then SUBSCRIBE to its reply destination)."""
        client = VdsmLikeClient(self.stomp, connect=False, timeout=timeout)
        try:
            client.send_frame("CONNECT", {"accept-version": "1.2", "heart-beat": "0,24000",
                                          **self.credentials.stomp_headers()})
            client.reply_sub = client.subscribe(client.reply_to)
            client.connected = client.read_frame()
            assert client.connected.command == "CONNECTED", client.connected
        except BaseException:
            client.sock.close()
            raise
        return client

    # health

    def assert_alive(self) -> None:
        code = self.daemon.process.poll()
        assert code is None, f"pierd exited with {code}:\n" + "".join(self.daemon.log[-30:])

    def assert_serving(self) -> None:
        """pierd is running, answers Host.ping2 over HTTP JSON-RPC, and has logged no traceback since
        the last check (so the example that made it log one is the one that fails)."""
        self.assert_alive()
        request_id = f"health-{uuid.uuid4()}"
        reply = self.jsonrpc(json.dumps({"jsonrpc": "2.0", "method": "Host.ping2", "id": request_id}))
        assert reply.status == 200, (reply.status, reply.text)
        assert reply.json() == {"jsonrpc": "2.0", "result": True, "id": request_id}
        self.assert_log_clean()

    def assert_log_clean(self) -> None:
        """No traceback in the lines pierd logged since the last check."""
        lines = self.daemon.log[self._log_checked:]
        self._log_checked += len(lines)
        assert not any(leaks_traceback(line) for line in lines), "pierd logged a traceback:\n" + "".join(lines)

    def assert_stomp_serving(self) -> None:
        """A fresh, well-behaved STOMP client can CONNECT, SUBSCRIBE and call Host.ping2."""
        self.assert_alive()
        client = self.stomp_client()
        try:
            assert client.call("Host.ping2") is True
        finally:
            client.close()


def unmount_under(root: Path) -> None:
    """Unmount whatever a fuzzed StoragePool.connectStorageServer managed to mount under `root`."""
    prefix = str(root) + "/"
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split(" ")[4].replace("\\040", " ")
        if point.startswith(prefix):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def start_target(base: Path) -> Target:
    """A pierd for one fuzz module, with its own state dir and test-driver file under `base`."""
    daemon = Pierd(base / "state", make_test_uri(base / "testnode.xml"), *PIERD_FLAGS,
                   "--data-center", str(base / "data-center"))
    deadline = time.monotonic() + 10
    stomp = None
    while stomp is None and time.monotonic() < deadline:
        stomp = next((m.group(1) for line in daemon.log if (m := VDSM_STOMP_LINE.search(line))), None)
        if stomp is None:
            time.sleep(0.05)
    if stomp is None:
        daemon.stop()
        raise RuntimeError("pierd did not log its VDSM STOMP address:\n" + "".join(daemon.log))
    return Target(daemon, daemon.http, daemon.ws, address_of(stomp), issue_credentials(daemon))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """This module's pierd. At the end it must still serve, stop cleanly and have logged no traceback."""
    made = start_target(tmp_path_factory.mktemp("fuzz"))
    try:
        yield made
        made.assert_serving()
    finally:
        code = made.daemon.stop()
        unmount_under(made.daemon.state_dir.parent / "data-center")
    assert code == 0, "pierd did not exit cleanly:\n" + "".join(made.daemon.log[-30:])
    made.assert_log_clean()


@pytest.fixture(scope="module")
def auth_headers(target: Target) -> dict[str, str]:
    """The headers that authenticate an HTTP request to this module's pierd."""
    return target.headers

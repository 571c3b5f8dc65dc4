"""Integration fixtures: a real `pierd` process on its own libvirt test-driver file or on qemu:///system.

The `client` fixture runs a test over each transport; for `stomp` the test's pierd is a client of
the real RabbitMQ on 127.0.0.1:61613 (PIER_STOMP_BROKER to change it), under the destination
prefix `piertest`. Without a reachable broker the stomp cases are skipped, or fail when
PIER_REQUIRE_BROKER=1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import libvirt
import pytest
import stomp

from pier.config import parse_address
from pier.host.testdriver import make_test_uri, unusable_reason
from tests.integration.clients import TOKEN, HttpRpcClient, RestClient, StompClient, WsClient, unix_request

READY = re.compile(r"pierd \S+ ready")
HTTP_LINE = re.compile(r"REST facade on (https?://\S+)/api/v1")
WS_LINE = re.compile(r"WebSocket on (wss?://\S+)")
STOMP_LINE = re.compile(r"STOMP: requests on (/queue/\S+), events on (/topic/\S+)\.<namespace>")
BROKER = parse_address(os.environ.get("PIER_STOMP_BROKER", "127.0.0.1:61613"))
STOMP_PREFIX = "piertest"


def stomp_flags(broker: tuple[str, int] = BROKER) -> list[str]:
    return ["--stomp-broker", f"{broker[0]}:{broker[1]}", "--stomp-prefix", STOMP_PREFIX]


class Pierd:
    """A pierd process: its addresses, its log, an admin token, and an orderly stop.

    By default it serves plain text on loopback (`--insecure-loopback`), with default limits, and
    the admin token is made through its local socket, as root may; `secure=True` leaves TLS on.
    `prefix` runs it under a command (`ip netns exec NS`: then only its local socket is reachable).
    """

    def __init__(self, state_dir: Path, uri: str, *extra: str, secure: bool = False, socket: str = "",
                 prefix: Sequence[str] = ()) -> None:
        self.state_dir = state_dir
        self.uri = uri
        self.log: list[str] = []
        self.http = self.ws = ""
        self.requests = self.events = ""
        self._changed = threading.Condition()
        self.socket = socket or str(state_dir / "pier.sock")
        insecure = [] if secure else ["--insecure-loopback"]
        command = [*prefix, sys.executable, "-m", "pier.daemon", "--libvirt-uri", uri, "--http", "127.0.0.1:0",
                   "--ws", "127.0.0.1:0", "--state-dir", str(state_dir), "--unix-socket", self.socket,
                   *insecure, *extra]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, bufsize=1)
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30):
            self.process.kill()
            raise RuntimeError("pierd did not become ready:\n" + "".join(self.log))
        self.ready_after = time.monotonic() - self.started
        self.token = self.make_token("admin")
        TOKEN["value"] = self.token

    def make_token(self, role: str, **params: object) -> str:
        """A new bearer token with `role`, made over the local socket."""
        status, made = unix_request(self.socket, "POST", "/api/v1/tokens", {"role": role, **params})
        assert status == 201, made
        return made["token"]

    def _read(self) -> None:
        for line in self.process.stderr:
            if match := HTTP_LINE.search(line):
                self.http = match.group(1)
            if match := WS_LINE.search(line):
                self.ws = match.group(1)
            if match := STOMP_LINE.search(line):
                self.requests, self.events = match.groups()
            with self._changed:
                self.log.append(line)
                self._changed.notify_all()
            if READY.search(line):
                self._ready.set()

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.log)

    def wait_logged(self, text: str, timeout: float = 10) -> bool:
        """Wait until a line contains `text`."""
        with self._changed:
            return self._changed.wait_for(lambda: self.logged(text), timeout)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, and the exit status once it has stopped (killing it after `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"pierd did not stop within {timeout} s:\n" + "".join(self.log[-30:])) from None
        self._reader.join(5)
        return self.process.returncode

    def client(self, transport: str):
        return {"ws": lambda: WsClient(self.ws, self.token), "http": lambda: HttpRpcClient(self.http, self.token),
                "rest": lambda: RestClient(self.http, self.token),
                "stomp": lambda: StompClient(BROKER, self.requests, token=self.token)}[transport]()

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.process.kill()
        self.process.wait()
        self._reader.join(5)


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    """A libvirt test-driver URI of this test's own."""
    return make_test_uri(tmp_path / "testnode.xml")


def broker_unreachable(broker: tuple[str, int] = BROKER) -> str | None:
    """Why no STOMP session can be opened with `broker`, or None."""
    try:
        socket.create_connection(broker, 3).close()
    except OSError as exc:
        return str(exc)
    connection = stomp.Connection12([broker], vhost="/", timeout=3, reconnect_attempts_max=1)
    try:
        connection.connect("guest", "guest", wait=True, with_connect_command=True)
    except Exception as exc:
        return f"{type(exc).__name__} {exc}".strip()
    connection.disconnect()
    return None


@pytest.fixture(scope="session")
def stomp_broker() -> tuple[str, int]:
    """The broker's (host, port); skips (or fails with PIER_REQUIRE_BROKER=1) when it is unreachable."""
    reason = broker_unreachable()
    if reason is not None:
        message = f"no STOMP broker at {BROKER[0]}:{BROKER[1]} ({reason}); start RabbitMQ with rabbitmq_stomp"
        if os.environ.get("PIER_REQUIRE_BROKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    if shutil.which("rabbitmqctl") and os.geteuid() == 0:
        # Each test's pierd has a host id, hence a durable request queue, of its own: let the
        # broker delete those queues once unused for a while instead of keeping them forever.
        subprocess.run(["rabbitmqctl", "-q", "set_policy", "pier-test-queues", rf"^{STOMP_PREFIX}\.",
                        '{"expires": 120000}', "--apply-to", "queues"], capture_output=True, timeout=60)
    return BROKER


def start_stomp_pierd(state_dir: Path, uri: str, *extra: str) -> Pierd:
    """A pierd that serves STOMP too, once it has said it consumes its request queue."""
    daemon = Pierd(state_dir, uri, *stomp_flags(), *extra)
    if not daemon.wait_logged("STOMP: requests on", 15):
        daemon.stop()
        raise RuntimeError("pierd did not connect to the broker:\n" + "".join(daemon.log))
    return daemon


@pytest.fixture
def pierd(request: pytest.FixtureRequest, tmp_path: Path, test_uri: str) -> Iterator[Pierd]:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("client") == "stomp":  # the `client` fixture's stomp case
        request.getfixturevalue("stomp_broker")
        daemon = start_stomp_pierd(tmp_path / "state", test_uri)
    else:
        daemon = Pierd(tmp_path / "state", test_uri)
    yield daemon
    assert daemon.stop() == 0, "pierd did not exit cleanly:\n" + "".join(daemon.log[-30:])


@pytest.fixture
def stomp_pierd(stomp_broker: tuple[str, int], tmp_path: Path, test_uri: str) -> Iterator[Pierd]:
    """A pierd serving STOMP through the broker."""
    daemon = start_stomp_pierd(tmp_path / "state", test_uri)
    yield daemon
    assert daemon.stop() == 0, "pierd did not exit cleanly:\n" + "".join(daemon.log[-30:])


@pytest.fixture(params=["ws", "http", "rest", "stomp"])
def client(request: pytest.FixtureRequest, pierd: Pierd):
    """The same calls, over each transport in turn."""
    made = pierd.client(request.param)
    yield made
    made.close()


SYSTEM_URI = "qemu:///system"


@pytest.fixture(scope="session")
def system_libvirt() -> str:
    reason = unusable_reason(SYSTEM_URI)
    if reason is not None:
        if os.environ.get("PIER_REQUIRE_KVM") == "1":
            pytest.fail(f"qemu:///system is required but unusable: {reason}")
        pytest.skip(f"qemu:///system is not usable here: {reason}")
    return SYSTEM_URI


def new_vm_id() -> str:
    return str(uuid.uuid4())


# -- a private libvirtd (serving its test driver) that a test may kill ------------------------


class PrivateLibvirtd:
    """An unprivileged session libvirtd of our own, in a temporary directory: killing it
    disturbs nobody else. Clients reach its embedded test driver via test+unix://."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "run" / "libvirt" / "libvirt-sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"test+unix:///default?socket={self.socket}"

    def start(self) -> None:
        env = {"HOME": str(self.base / "home"), "XDG_RUNTIME_DIR": str(self.base / "run"),
               "XDG_CONFIG_HOME": str(self.base / "config"),
               "XDG_CACHE_HOME": str(self.base / "cache"), "PATH": os.environ["PATH"]}
        self.proc = subprocess.Popen(["libvirtd", "--timeout", "0"], env=env, user=65534,
                                     group=65534, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            libvirt.open(self.uri).close()
            return True
        except libvirt.libvirtError:
            return False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def private_libvirtd() -> Iterator[PrivateLibvirtd]:
    if os.geteuid() != 0 or not shutil.which("libvirtd"):
        pytest.skip("needs root (to run libvirtd as nobody) and the libvirtd binary")
    base = Path(tempfile.mkdtemp(prefix="pier-libvirtd-"))
    for sub in ("home", "run", "config", "cache"):
        (base / sub).mkdir()
    for path in [base, *base.iterdir()]:
        os.chown(path, 65534, 65534)
    daemon = PrivateLibvirtd(base)
    daemon.start()
    if not daemon._answers():
        daemon.kill()
        pytest.skip("a private libvirtd did not come up")
    yield daemon
    daemon.kill()
    shutil.rmtree(base, ignore_errors=True)

"""Integration fixtures: a real `pierd` process on its own libvirt test-driver file or on qemu:///system."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pier.host.testdriver import make_test_uri, unusable_reason
from tests.integration.clients import HttpRpcClient, RestClient, WsClient

READY = re.compile(r"pierd \S+ ready")
HTTP_LINE = re.compile(r"REST facade on (http://\S+)/api/v1")
WS_LINE = re.compile(r"WebSocket on (ws://\S+)")


class Pierd:
    """A pierd process: its addresses, its log, and an orderly stop."""

    def __init__(self, state_dir: Path, uri: str, *extra: str) -> None:
        self.state_dir = state_dir
        self.uri = uri
        self.log: list[str] = []
        self.http = self.ws = ""
        command = [sys.executable, "-m", "pier.daemon", "--libvirt-uri", uri, "--http", "127.0.0.1:0",
                   "--ws", "127.0.0.1:0", "--state-dir", str(state_dir), *extra]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, bufsize=1)
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(30):
            self.process.kill()
            raise RuntimeError("pierd did not become ready:\n" + "".join(self.log))
        self.ready_after = time.monotonic() - self.started

    def _read(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
            if match := HTTP_LINE.search(line):
                self.http = match.group(1)
            if match := WS_LINE.search(line):
                self.ws = match.group(1)
            if READY.search(line):
                self._ready.set()

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.log)

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
        return {"ws": lambda: WsClient(self.ws), "http": lambda: HttpRpcClient(self.http),
                "rest": lambda: RestClient(self.http)}[transport]()


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    """A libvirt test-driver URI of this test's own."""
    return make_test_uri(tmp_path / "testnode.xml")


@pytest.fixture
def pierd(tmp_path: Path, test_uri: str) -> Iterator[Pierd]:
    daemon = Pierd(tmp_path / "state", test_uri)
    yield daemon
    assert daemon.stop() == 0, "pierd did not exit cleanly:\n" + "".join(daemon.log[-30:])


@pytest.fixture(params=["ws", "http", "rest"])
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

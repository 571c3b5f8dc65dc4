"""Consoles over pier's own HTTP server: WebSocket upgrades relaying a channel, refusals before the
upgrade, take-over, the PNG route and VM.setTicket, on the fakes (the real thing: tests/integration/
test_consoles.py)."""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from pier.cli import main
from pier.facade.app import make_app
from pier.rpc.auth import Identity
from pier.rpc.channels import ENDED
from pier.rpc.errors import UnsupportedOperation
from pier.rpc.registry import CallContext
from pier.transports.http import HttpListener
from tests.fakes import FixedAuthenticator
from tests.unit.conftest import ADMIN, Stack

VM_ID = "5c2b3c0e-4a55-4c29-9e3e-5f2b8d6f7a01"
OPERATOR = Identity("test operator", "operator", "test")
VIEWER = Identity("test viewer", "viewer", "test")


@pytest.fixture
def served(stack: Stack) -> Iterator[tuple[Stack, str]]:
    stack.vms.records = {VM_ID: {"vmId": VM_ID, "vmName": "c", "status": "Up"}}
    authenticator = FixedAuthenticator(OPERATOR)
    listener = HttpListener(("127.0.0.1", 0), {}, make_app(stack.registry, stack.events), authenticator, threads=2)
    listener.start()
    yield stack, listener.address.replace("http://", "")
    listener.stop()


def ws(address: str, path: str) -> ClientConnection:
    return connect(f"ws://{address}{path}", open_timeout=5, compression=None)


def problem(address: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{address}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_console_bytes_go_both_ways(served: tuple[Stack, str]) -> None:
    stack, address = served
    with ws(address, f"/api/v1/vms/{VM_ID}/console") as client:
        client.send(b"echo pier\r")
        assert client.recv(timeout=5) == b"echo pier\r"
        client.send("text frames too")
        assert client.recv(timeout=5) == b"text frames too"
    assert stack.consoles is not None
    channel = stack.consoles.consoles[VM_ID]
    assert wait_until(lambda: channel.end is not None)  # the client's close ends the channel


def test_a_second_console_is_refused_before_the_upgrade_or_takes_over(served: tuple[Stack, str]) -> None:
    _, address = served
    with ws(address, f"/api/v1/vms/{VM_ID}/console") as first:
        with pytest.raises(InvalidStatus) as refused:
            ws(address, f"/api/v1/vms/{VM_ID}/console")
        assert refused.value.response.status_code == 409
        assert json.loads(refused.value.response.body)["name"] == "busy"
        with ws(address, f"/api/v1/vms/{VM_ID}/console?force=true") as second:
            with pytest.raises(ConnectionClosed) as closed:
                first.recv(timeout=5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4001
            assert "took over the serial console" in closed.value.rcvd.reason
            second.send(b"x")
            assert second.recv(timeout=5) == b"x"


def test_the_websocket_closes_with_the_channels_reason_when_it_ends(served: tuple[Stack, str]) -> None:
    stack, address = served
    assert stack.consoles is not None
    with ws(address, f"/api/v1/vms/{VM_ID}/console") as client:
        stack.consoles.consoles[VM_ID].finish(ENDED, f"VM {VM_ID} stopped")
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, f"VM {VM_ID} stopped")


def test_refusals_come_before_the_upgrade_as_problems(served: tuple[Stack, str]) -> None:
    stack, address = served
    status, body = problem(address, f"/api/v1/vms/{VM_ID}/console")
    assert status == 426 and "WebSocket" in body["detail"]
    stack.vms.records[VM_ID]["status"] = "Down"
    with pytest.raises(InvalidStatus) as down:
        ws(address, f"/api/v1/vms/{VM_ID}/vnc")
    assert down.value.response.status_code == 409
    assert json.loads(down.value.response.body)["name"] == "down"
    with pytest.raises(InvalidStatus) as unknown:
        ws(address, "/api/v1/vms/00000000-0000-0000-0000-000000000000/console")
    assert unknown.value.response.status_code == 404


def test_a_viewer_may_not_open_a_console(stack: Stack) -> None:
    stack.vms.records = {VM_ID: {"vmId": VM_ID, "vmName": "c", "status": "Up"}}
    listener = HttpListener(("127.0.0.1", 0), {}, make_app(stack.registry, stack.events),
                            FixedAuthenticator(VIEWER), threads=2)
    listener.start()
    try:
        with pytest.raises(InvalidStatus) as refused:
            ws(listener.address.replace("http://", ""), f"/api/v1/vms/{VM_ID}/console")
        assert refused.value.response.status_code == 403
    finally:
        listener.stop()


def test_the_server_stopping_closes_relays_with_1001(stack: Stack) -> None:
    stack.vms.records = {VM_ID: {"vmId": VM_ID, "vmName": "c", "status": "Up"}}
    listener = HttpListener(("127.0.0.1", 0), {}, make_app(stack.registry, stack.events),
                            FixedAuthenticator(OPERATOR), threads=2)
    listener.start()
    with ws(listener.address.replace("http://", ""), f"/api/v1/vms/{VM_ID}/vnc") as client:
        started = time.monotonic()
        listener.stop()
        assert time.monotonic() - started < 5
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def test_over_rpc_a_channel_verb_names_its_route(stack: Stack) -> None:
    stack.vms.records = {VM_ID: {"vmId": VM_ID, "vmName": "c", "status": "Up"}}
    with pytest.raises(UnsupportedOperation) as refused:
        stack.registry.call("VM.serialConsole", {"vmID": VM_ID}, CallContext("jsonrpc", identity=ADMIN))
    assert f"GET /api/v1/vms/{VM_ID}/console" in refused.value.message


def test_screenshot_route_answers_png_bytes(served: tuple[Stack, str]) -> None:
    _, address = served
    with urllib.request.urlopen(f"http://{address}/api/v1/vms/{VM_ID}/screenshot", timeout=5) as reply:
        assert reply.headers["Content-Type"] == "image/png"
        data = reply.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (2, 1)


def test_set_ticket_keeps_the_password_out_of_the_audit_log(stack: Stack) -> None:
    stack.vms.records = {VM_ID: {"vmId": VM_ID, "vmName": "c", "status": "Up"}}
    stack.call("VM.setTicket", vmID=VM_ID, password="s3cret-pw", ttl=120, existingConnAction="keep",
               params={"graphicsType": "vnc"})
    assert stack.consoles is not None
    assert stack.consoles.tickets[VM_ID] == ("s3cret-pw", 120, "keep", "vnc")
    assert "s3cret-pw" not in json.dumps(stack.audit.read(limit=10), default=str)


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())



# -- the CLI ------------------------------------------------------------------------------------


def test_pier_console_copies_stdin_to_the_console_and_its_output_back(
        served: tuple[Stack, str], monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    _, address = served
    read, write = os.pipe()
    os.write(write, b"hello pier\x1dnot sent")
    os.close(write)
    monkeypatch.setattr(sys, "stdin", os.fdopen(read, "rb"))
    assert main(["console", VM_ID, "--url", f"http://{address}", "--linger", "2"]) == 0
    assert capsysbinary.readouterr().out == b"hello pier"


def test_pier_console_says_why_it_was_refused(served: tuple[Stack, str], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    stack, address = served
    stack.vms.records[VM_ID]["status"] = "Down"
    read, write = os.pipe()
    os.close(write)
    monkeypatch.setattr(sys, "stdin", os.fdopen(read, "rb"))
    assert main(["console", VM_ID, "--url", f"http://{address}"]) == 1
    assert "virtual machine is down" in capsys.readouterr().err.lower()


def test_pier_vm_screenshot_saves_the_png(served: tuple[Stack, str], tmp_path: Path) -> None:
    _, address = served
    target = tmp_path / "screen.png"
    assert main(["vm", "screenshot", VM_ID, str(target), "--url", f"http://{address}"]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

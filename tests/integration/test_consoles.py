"""Consoles and screen of real VMs on qemu:///system: tickets, screenshots, and the serial console and
VNC display over WebSockets through a real pierd. The VMs have no guest OS: SeaBIOS writes to the
serial console (`<bios useserial='yes'/>`) and shows a boot menu when it reads ESC there, which is
enough to see bytes go both ways; the VNC server speaks RFB with the ticket as its password."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect, unix_connect

from tests.integration.clients import WsClient, auth_headers, http_request
from tests.integration.conftest import Pierd, new_vm_id

pytestmark = pytest.mark.kvm

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def domain_xml(vm_id: str, *, graphics: bool = True, serial: bool = True) -> str:
    # the balloon's statistics period as Pier's agent poller sets it on its first visit, so that
    # visit leaves the live XML as it was ("changes nothing" compares it)
    devices = "<memballoon model='virtio'><stats period='5'/></memballoon>"
    if serial:
        devices += ("<serial type='pty'><target port='0'/></serial>"
                    "<console type='pty'><target type='serial' port='0'/></console>")
    if graphics:  # an expired password, as VM.create gives: QEMU takes a ticket only then
        devices += ("<graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='*****' "
                    "passwdValidTo='1970-01-01T00:00:01'/><video><model type='vga'/></video>")
    return (f"<domain type='kvm'><name>pier-console-{vm_id[:8]}</name><uuid>{vm_id}</uuid>"
            "<memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type><bios useserial='yes'/>"
            "<bootmenu enable='yes' timeout='60000'/></os>"
            f"<on_poweroff>destroy</on_poweroff><devices>{devices}</devices></domain>")


@pytest.fixture
def system_pierd(tmp_path: Path, system_libvirt: str) -> Iterator[Pierd]:
    daemon = Pierd(tmp_path / "state", system_libvirt)
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture
def libvirt_conn(system_libvirt: str) -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(system_libvirt)
    yield conn
    conn.close()


class Vms:
    """VMs a test makes through pierd, destroyed at its end whatever happens."""

    def __init__(self, pierd: Pierd, conn: libvirt.virConnect) -> None:
        self.api = pierd.http + "/api/v1"
        self.conn = conn
        self.made: list[str] = []

    def make(self, **kinds: bool) -> str:
        vm_id = new_vm_id()
        self.made.append(vm_id)
        status, _, body = http_request("POST", f"{self.api}/vms", {"vmId": vm_id, "xml": domain_xml(vm_id, **kinds)})
        assert status == 201, body
        return vm_id

    def destroy_all(self) -> None:
        for vm_id in self.made:
            http_request("DELETE", f"{self.api}/vms/{vm_id}")
            try:
                dom = self.conn.lookupByUUIDString(vm_id)
            except libvirt.libvirtError:
                continue
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
            dom.undefine()


@pytest.fixture
def vms(system_pierd: Pierd, libvirt_conn: libvirt.virConnect) -> Iterator[Vms]:
    made = Vms(system_pierd, libvirt_conn)
    try:
        yield made
    finally:
        made.destroy_all()


def open_ws(pierd: Pierd, path: str, token: str | None = None) -> ClientConnection:
    url = pierd.http.replace("http://", "ws://") + path
    return connect(url, additional_headers=auth_headers(token), open_timeout=10, compression=None,
                   max_size=None)


def read_until(client: ClientConnection, wanted: bytes, timeout: float = 15) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        seen += client.recv(timeout=max(0.1, deadline - time.monotonic()))
    return seen


# -- screenshots and tickets ------------------------------------------------------------------


def test_screenshot_is_a_png_of_the_guest_screen(system_pierd: Pierd, vms: Vms,
                                                 libvirt_conn: libvirt.virConnect) -> None:
    vm_id = vms.make()
    time.sleep(1)  # SeaBIOS draws its screen
    before = libvirt_screen_size(libvirt_conn, vm_id)  # SeaBIOS may switch from text to graphics
    status, headers, png = http_request("GET", f"{vms.api}/vms/{vm_id}/screenshot")  # mode meanwhile
    after = libvirt_screen_size(libvirt_conn, vm_id)
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) in (before, after)

    rpc = WsClient(system_pierd.ws)
    shot = rpc.call("VM.screenshot", vmID=vm_id)
    rpc.close()
    assert (shot["mimeType"], shot["width"], shot["height"]) == ("image/png", width, height)
    assert base64.b64decode(shot["data"])[:8] == PNG_SIGNATURE


def libvirt_screen_size(conn: libvirt.virConnect, vm_id: str) -> tuple[int, int]:
    """The screen's size in the image libvirt itself gives (PNG from QEMU >= 7.1, PPM before)."""
    stream = conn.newStream(0)
    mime = conn.lookupByUUIDString(vm_id).screenshot(stream, 0, 0)
    data = b""
    while chunk := stream.recv(1 << 18):
        data += chunk
    stream.finish()
    if mime == "image/png":
        return struct.unpack(">II", data[16:24])
    magic, width, height = data.split(maxsplit=3)[:3]
    assert magic == b"P6"
    return int(width), int(height)


def test_a_ticket_for_a_vm_without_graphics_is_refused_and_changes_nothing(
        vms: Vms, libvirt_conn: libvirt.virConnect) -> None:
    vm_id = vms.make(graphics=False)
    dom = libvirt_conn.lookupByUUIDString(vm_id)
    live, persistent = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE), dom.XMLDesc(
        libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
    status, _, body = http_request("POST", f"{vms.api}/vms/{vm_id}/ticket",
                                   {"password": "pier-pw", "ttl": 60, "existingConnAction": "disconnect"})
    problem = json.loads(body)
    assert (status, problem["name"]) == (409, "unsupportedOperationErr"), body
    assert "no graphics device" in problem["detail"]
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE) == live
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE) == persistent


def test_a_ticket_sets_the_live_password_with_its_expiry_and_not_the_definition(
        vms: Vms, libvirt_conn: libvirt.virConnect) -> None:
    vm_id = vms.make()
    status, _, body = http_request("POST", f"{vms.api}/vms/{vm_id}/ticket",
                                   {"password": "pier-pw", "ttl": 120, "existingConnAction": "keep"})
    assert status == 200, body
    dom = libvirt_conn.lookupByUUIDString(vm_id)
    live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    assert "passwd='pier-pw'" in live and "passwdValidTo=" in live
    assert "pier-pw" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)


# -- VNC over a WebSocket ---------------------------------------------------------------------


def vnc_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: the challenge encrypted with DES, keyed by the password (8 bytes, zero
    padded) with each byte's bits reversed. TripleDES with the key three times is DES."""
    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in password.encode()[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def rfb_login(client: ClientConnection, password: str | None) -> tuple[list[int], int]:
    """The RFB 3.8 handshake up to the security result: (security types offered, result; 0 is ok)."""
    buffer = bytearray()

    def read(count: int) -> bytes:
        while len(buffer) < count:
            buffer.extend(client.recv(timeout=10))
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    assert read(12) == b"RFB 003.008\n"
    client.send(b"RFB 003.008\n")
    offered = list(read(read(1)[0]))
    if password is None:
        client.send(bytes([1]))  # None
    else:
        client.send(bytes([2]))  # VNC authentication
        client.send(vnc_response(password, read(16)))
    return offered, struct.unpack(">I", read(4))[0]


def test_vnc_websocket_completes_the_rfb_handshake_with_the_ticket_only(system_pierd: Pierd, vms: Vms) -> None:
    vm_id = vms.make()
    status, _, body = http_request("POST", f"{vms.api}/vms/{vm_id}/ticket",
                                   {"password": "pier-pw", "ttl": 120, "existingConnAction": "disconnect"})
    assert status == 200, body
    with open_ws(system_pierd, f"/api/v1/vms/{vm_id}/vnc") as client:
        offered, result = rfb_login(client, "pier-pw")
        assert offered == [2] and result == 0
        client.send(b"\x01")  # ClientInit, shared
        init = client.recv(timeout=10)
        width, height = struct.unpack(">HH", init[:4])
        assert width > 0 and height > 0
    with open_ws(system_pierd, f"/api/v1/vms/{vm_id}/vnc") as client:
        assert rfb_login(client, "wrong-pw")[1] != 0
    with open_ws(system_pierd, f"/api/v1/vms/{vm_id}/vnc") as client:
        offered, result = rfb_login(client, None)  # asks for no authentication, which is not offered
        assert 1 not in offered and result != 0


# -- the serial console over a WebSocket ------------------------------------------------------


def test_serial_console_bytes_go_both_ways(system_pierd: Pierd, vms: Vms) -> None:
    vm_id = vms.make()
    with open_ws(system_pierd, f"/api/v1/vms/{vm_id}/console") as client:
        read_until(client, b"Press ESC for boot menu")
        client.send(b"\x1b")
        read_until(client, b"Select boot device")


def test_console_of_a_stopped_vm_is_refused_before_the_upgrade(system_pierd: Pierd, vms: Vms,
                                                               libvirt_conn: libvirt.virConnect) -> None:
    vm_id = vms.make()
    libvirt_conn.lookupByUUIDString(vm_id).destroy()  # stopped, still defined
    deadline = time.monotonic() + 10
    while json.loads(http_request("GET", f"{vms.api}/vms/{vm_id}")[2])["status"] != "Down":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for route in ("console", "vnc"):
        with pytest.raises(InvalidStatus) as refused:
            open_ws(system_pierd, f"/api/v1/vms/{vm_id}/{route}")
        problem = json.loads(refused.value.response.body)
        assert refused.value.response.status_code == 409 and problem["name"] == "down", problem
        assert "not running" in problem["detail"]


def test_a_second_console_client_is_refused_or_takes_over(system_pierd: Pierd, vms: Vms) -> None:
    vm_id = vms.make()
    with open_ws(system_pierd, f"/api/v1/vms/{vm_id}/console") as first:
        read_until(first, b"SeaBIOS")
        with pytest.raises(InvalidStatus) as refused:
            open_ws(system_pierd, f"/api/v1/vms/{vm_id}/console")
        problem = json.loads(refused.value.response.body)
        assert refused.value.response.status_code == 409 and problem["name"] == "busy"
        assert "force=true" in problem["detail"]
        with open_ws(system_pierd, f"/api/v1/vms/{vm_id}/console?force=true") as second:
            closed = wait_closed(first)
            assert closed.code == 4001 and "took over" in closed.reason
            second.send(b"\x1b")
            read_until(second, b"Select boot device")


def wait_closed(client: ClientConnection, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            client.recv(timeout=max(0.1, deadline - time.monotonic()))
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd


def test_console_and_vnc_close_cleanly_when_the_vm_is_destroyed(system_pierd: Pierd, vms: Vms) -> None:
    vm_id = vms.make()
    with open_ws(system_pierd, f"/api/v1/vms/{vm_id}/console") as console, \
            open_ws(system_pierd, f"/api/v1/vms/{vm_id}/vnc") as vnc:
        read_until(console, b"SeaBIOS")
        assert vnc.recv(timeout=10).startswith(b"RFB")
        status, _, body = http_request("DELETE", f"{vms.api}/vms/{vm_id}")
        assert status == 200, body
        for client in (console, vnc):
            closed = wait_closed(client)
            assert (closed.code, closed.reason) == (1000, f"VM {vm_id} stopped")


def test_console_needs_the_operator_role(system_pierd: Pierd, vms: Vms) -> None:
    vm_id = vms.make()
    viewer = system_pierd.make_token("viewer", name=f"viewer-{uuid.uuid4().hex[:6]}")
    with pytest.raises(InvalidStatus) as refused:
        open_ws(system_pierd, f"/api/v1/vms/{vm_id}/console", token=viewer)
    assert refused.value.response.status_code == 403


def test_the_local_socket_serves_the_console_to_root_without_a_token(system_pierd: Pierd, vms: Vms) -> None:
    vm_id = vms.make()
    with unix_connect(system_pierd.socket, f"ws://localhost/api/v1/vms/{vm_id}/console", compression=None,
                      open_timeout=10) as console:
        read_until(console, b"Press ESC for boot menu")
        console.send(b"\x1b")
        read_until(console, b"Select boot device")

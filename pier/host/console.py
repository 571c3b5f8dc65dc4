"""A VM's consoles and screen: graphics tickets, screenshots, the serial console and the VNC display.

`Consoles` sets the password (ticket) of a VM's VNC or SPICE display in the running guest, takes
a PNG of its screen, and opens two byte channels (`pier.rpc.channels.Channel`) that the REST
facade relays over WebSockets:

- the serial console, through libvirt's console stream (`virDomainOpenConsole`). One client at a
  time: a second one is refused unless it asks to take over (`force`), which ends the first
  channel as "taken over". A console held outside Pier (`virsh console`) is taken over the same way.
- the VNC display, through a socket libvirt connects to QEMU's VNC server (`virDomainOpenGraphicsFD`,
  without skipping its authentication): the client speaks RFB with the ticket as its password.

Both channels end when the VM stops; their `end` then says so.

Tickets go to the running guest only (LIVE): a one-time password with an expiry has no place in
the persistent definition, which would keep it on disk (VDSM does the same).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from typing import Any

import libvirt

from pier.host.connection import Connection
from pier.host.devices import Graphics
from pier.host.domain import Domain
from pier.rpc.channels import ENDED, FAILED, TAKEN_OVER, ChannelEnd
from pier.rpc.errors import InvalidParams, TargetBusy, Unexpected, UnsupportedOperation, VMDown

log = logging.getLogger(__name__)

CONNECTED_ACTIONS = ("disconnect", "keep", "fail")
_SCREENSHOT_CHUNK = 1 << 18
_MAX_SCREENSHOT = 256 << 20
STOP_GRACE = 3.0


class Consoles:
    """The consoles and screens of this host's VMs (`ConsoleService`)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self._consoles: dict[str, ConsoleChannel] = {}  # vm id -> the serial console Pier relays

    # -- tickets -------------------------------------------------------------------------------

    def set_ticket(self, vm_id: str, password: str, ttl: int, connected: str,
                   graphics_type: str | None = None) -> None:
        domain = self._running(vm_id, "set a display password on")
        if connected not in CONNECTED_ACTIONS:
            raise InvalidParams(f"existingConnAction must be one of {', '.join(CONNECTED_ACTIONS)}, not {connected!r}",
                                data={"field": "params.existingConnAction"})
        displays = [g for g in domain.xml().graphics() if graphics_type in (None, g.kind)]
        if not displays:
            which = f"{graphics_type} " if graphics_type else ""
            raise UnsupportedOperation(f"VM {domain.vm_id} has no {which}graphics device (VNC or SPICE) to set a "
                                       "ticket on", data={"vmId": domain.vm_id, "graphicsType": graphics_type})
        valid_to = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + ttl)) if ttl > 0 else None
        for display in displays:
            # QEMU's VNC server knows no `connected` but keep; SPICE knows all three (as VDSM sends them).
            action = connected if display.kind == "spice" or connected == "keep" else None
            changed = display.with_ticket(password, valid_to, action)
            try:
                with domain.errors(f"set the {display.kind} password of", UnsupportedOperation,
                                   acts_on={"Up", "Paused"}):
                    domain.virdomain.updateDeviceFlags(_xml(changed), libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except UnsupportedOperation as exc:
                if "libvirtCode" not in (exc.data or {}) or "password" not in exc.message:
                    raise
                raise UnsupportedOperation(
                    f"{exc.message}; the {display.kind} display of VM {domain.vm_id} was started without a "
                    "password, and QEMU takes one only for a display started with one (VM.create gives every "
                    "display an expired password; raw XML needs passwd and passwdValidTo in the past)",
                    data=exc.data) from None

    # -- screenshots ---------------------------------------------------------------------------

    def screenshot(self, vm_id: str, screen: int = 0) -> dict[str, Any]:
        """{mimeType: image/png, width, height, png: bytes} of the guest's screen now."""
        domain = self._running(vm_id, "take a screenshot of")
        conn = domain.virdomain.connect()
        data = bytearray()
        with domain.errors("take a screenshot of", acts_on={"Up", "Paused"}):
            stream = conn.newStream(0)
            try:
                mime = domain.virdomain.screenshot(stream, screen, 0)
                while chunk := stream.recv(_SCREENSHOT_CHUNK):
                    if not isinstance(chunk, bytes) or len(data) > _MAX_SCREENSHOT:
                        raise Unexpected(f"the screenshot of VM {domain.vm_id} broke off")
                    data += chunk
                stream.finish()
            except BaseException:
                _abort(stream)
                raise
        png = bytes(data) if mime == "image/png" else ppm_to_png(bytes(data))
        width, height = png_size(png)
        return {"mimeType": "image/png", "width": width, "height": height, "png": png}

    # -- the serial console --------------------------------------------------------------------

    def open_console(self, vm_id: str, force: bool = False, holder: str = "") -> ConsoleChannel:
        """The VM's serial console as a channel; TargetBusy when another client has it and not `force`."""
        domain = self._running(vm_id, "open the serial console of")
        root = domain.xml().root
        if root.find("devices/console") is None and root.find("devices/serial") is None:
            raise UnsupportedOperation(f"VM {domain.vm_id} has no serial console (no <serial> or <console> device)",
                                       data={"vmId": domain.vm_id})
        with self._lock:
            current = self._consoles.get(domain.vm_id)
            if current is not None and current.end is None:
                if not force:
                    raise TargetBusy(f"the serial console of VM {domain.vm_id} is in use by {current.holder}; "
                                     "pass force=true to take it over",
                                     data={"vmId": domain.vm_id, "busyWith": current.holder})
                current.taken_over = holder or "another client"
            channel = ConsoleChannel(domain, holder or "a client", self._release)
            flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else libvirt.VIR_DOMAIN_CONSOLE_SAFE
            try:
                with domain.errors("open the serial console of", TargetBusy, acts_on={"Up", "Paused"}):
                    domain.virdomain.openConsole(None, channel.stream, flags)
            except TargetBusy as exc:
                if current is not None:
                    current.taken_over = None
                _abort(channel.stream)
                raise TargetBusy(f"{exc.message} (a client outside Pier, such as virsh console, holds it); pass "
                                 "force=true to take it over", data={**(exc.data or {}), "vmId": domain.vm_id}) from None
            except BaseException:
                _abort(channel.stream)
                raise
            self._consoles[domain.vm_id] = channel
        log.info("serial console of VM %s opened for %s%s", domain.vm_id, channel.holder,
                 " (taken over)" if current is not None and force else "")
        return channel

    def _release(self, channel: ConsoleChannel) -> None:
        with self._lock:
            if self._consoles.get(channel.vm_id) is channel:
                del self._consoles[channel.vm_id]

    # -- the VNC display -----------------------------------------------------------------------

    def open_display(self, vm_id: str) -> DisplayChannel:
        """A channel to the VM's VNC server (RFB, with its own authentication)."""
        domain = self._running(vm_id, "open the display of")
        displays = domain.xml().graphics()
        index = next((i for i, g in enumerate(displays) if g.kind == "vnc"), None)
        if index is None:
            kinds = ", ".join(g.kind for g in displays) or "none"
            raise UnsupportedOperation(f"VM {domain.vm_id} has no VNC display (its graphics: {kinds}); only VNC "
                                       "is relayed", data={"vmId": domain.vm_id})
        with domain.errors("open the display of", acts_on={"Up", "Paused"}):
            fd = domain.virdomain.openGraphicsFD(index, 0)
        return DisplayChannel(domain, socket.socket(fileno=fd))

    def _running(self, vm_id: str, action: str) -> Domain:
        domain = Domain.lookup(self._connection, vm_id)
        if not domain.is_active():
            raise VMDown(f"VM {domain.vm_id} is not running; cannot {action} it", data={"vmId": domain.vm_id})
        return domain


class ConsoleChannel:
    """A VM's serial console over a libvirt stream (blocking: `recv` waits in libvirt, which
    releases the GIL; `close` aborts the stream, which wakes it)."""

    def __init__(self, domain: Domain, holder: str, release: Any) -> None:
        self.vm_id = domain.vm_id
        self.name = f"the serial console of VM {domain.vm_id}"
        self.holder = holder
        self.taken_over: str | None = None  # who took it over, once someone did
        self.stream = domain.virdomain.connect().newStream(0)
        self._domain = domain
        self._release = release
        self._closed = False
        self._end: ChannelEnd | None = None

    @property
    def end(self) -> ChannelEnd | None:
        return self._end

    def recv(self, size: int) -> bytes:
        if self._end is not None:
            return b""
        try:
            data = self.stream.recv(size)
        except libvirt.libvirtError as exc:
            self._finish(str(exc.get_error_message() or exc))
            return b""
        if not isinstance(data, bytes) or not data:  # -2 would be a non-blocking stream's "again"
            self._finish("")
            return b""
        return data

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._end is not None:
                raise BrokenPipeError(self._end.reason)
            try:
                sent = self.stream.send(bytes(view))
            except libvirt.libvirtError as exc:
                raise BrokenPipeError(f"{self.name}: {exc.get_error_message() or exc}") from None
            if sent < 0:
                raise BrokenPipeError(f"{self.name} did not take the bytes")
            view = view[sent:]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _abort(self.stream)
        self._release(self)

    def _finish(self, error: str) -> None:
        """The stream ended: say why (taken over, the VM stopped, closed by us, or broken)."""
        if self.taken_over is not None:
            self._end = ChannelEnd(TAKEN_OVER, f"{self.taken_over} took over {self.name}")
        elif self._closed:
            self._end = ChannelEnd(ENDED, f"{self.name} was closed")
        elif _stopped(self._domain):
            self._end = ChannelEnd(ENDED, f"VM {self.vm_id} stopped")
        else:
            why = f": {error}" if error else ""
            self._end = ChannelEnd(FAILED, f"{self.name} broke off{why} (did a client outside Pier take it over?)")
        if not self._closed:
            self._closed = True
            _abort(self.stream)
            self._release(self)


class DisplayChannel:
    """A socket to a VM's VNC server."""

    def __init__(self, domain: Domain, sock: socket.socket) -> None:
        self.vm_id = domain.vm_id
        self.name = f"the VNC display of VM {domain.vm_id}"
        self._domain = domain
        self._sock = sock
        self._closed = False
        self._end: ChannelEnd | None = None

    @property
    def end(self) -> ChannelEnd | None:
        return self._end

    def recv(self, size: int) -> bytes:
        if self._end is not None:
            return b""
        try:
            data = self._sock.recv(size)
        except OSError as exc:
            data, error = b"", str(exc)
        else:
            error = ""
        if not data:
            if self._closed:
                self._end = ChannelEnd(ENDED, f"{self.name} was closed")
            elif _stopped(self._domain):
                self._end = ChannelEnd(ENDED, f"VM {self.vm_id} stopped")
            elif error:
                self._end = ChannelEnd(FAILED, f"{self.name} broke off: {error}")
            else:
                self._end = ChannelEnd(ENDED, f"the VNC server of VM {self.vm_id} closed the connection")
            self._sock.close()
        return data

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes a waiting recv, which closes the socket
            except OSError:
                self._sock.close()


def _stopped(domain: Domain) -> bool:
    """Whether the VM stopped (or is gone). A console or display ends a little before libvirt
    sees QEMU gone, so a VM still running is watched for up to STOP_GRACE seconds."""
    deadline = time.monotonic() + STOP_GRACE
    while True:
        if domain.current_status() in ("Down", None):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _abort(stream: libvirt.virStream) -> None:
    try:
        stream.abort()
    except libvirt.libvirtError:
        pass  # already ended or aborted


def _xml(device: Graphics) -> str:
    return ET.tostring(device.element, encoding="unicode")


# -- PNG ------------------------------------------------------------------------------------------
# QEMU before 7.1 gives screenshots as PPM only. A PNG writer is ~15 lines with zlib, where Pillow
# would be a 10 MB dependency for one format conversion.


def ppm_to_png(ppm: bytes) -> bytes:
    """A binary PPM (P6, 8 bits per sample) as a PNG."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while pos < len(ppm) and ppm[pos:pos + 1].isspace():
            pos += 1
        if ppm[pos:pos + 1] == b"#":
            pos = ppm.index(b"\n", pos)
            continue
        end = pos
        while end < len(ppm) and not ppm[end:end + 1].isspace():
            end += 1
        fields.append(ppm[pos:end])
        pos = end
    if fields[0] != b"P6" or fields[3] != b"255":
        raise Unexpected(f"the screenshot is not an 8-bit binary PPM (magic {fields[0]!r}, maxval {fields[3]!r})")
    width, height = int(fields[1]), int(fields[2])
    pixels = ppm[pos + 1:pos + 1 + width * height * 3]
    row = width * 3
    raw = b"".join(b"\x00" + pixels[y * row:(y + 1) * row] for y in range(height))
    return png(width, height, raw)


def png(width: int, height: int, raw_rows: bytes) -> bytes:
    """A PNG of 8-bit RGB rows, each led by its filter byte."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw_rows, 6))
            + chunk(b"IEND", b""))


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise Unexpected("the screenshot libvirt gave is not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)

"""The serial console's round trip over pierd's WebSocket route, beside libvirt's console stream read
directly (the floor), on the tiny real guest (tests/guest/) on qemu:///system.

  one key typed, its echo back    WebSocket GET /api/v1/vms/{id}/console on pierd's TCP port
                                  vs  virDomainOpenConsole's stream in this process

A round trip sends one byte to the guest's shell and waits for the shell's echo of it; every 40
bytes the line is erased with Ctrl-U (untimed). The console has one client at a time, so the two
sides take turns in rounds. Needs root, /dev/kvm and the built guest (python3 tests/guest/build.py).

Run: .venv/bin/python bench/console.py [--count N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import libvirt
from common import ROOT, PierdProcess, percentile, report
from websockets.sync.client import ClientConnection, connect

sys.path.insert(0, str(ROOT))
from tests.guest import build  # noqa: E402

URI = "qemu:///system"
LINE = 40


def unix_request(path: str, method: str, target: str, body: object = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("localhost", timeout=60)
    connection.sock = socket.socket(socket.AF_UNIX)
    connection.sock.connect(path)
    connection.request(method, target, body=json.dumps(body) if body is not None else None,
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


class Typist:
    """Types a byte and waits for its echo, over some console."""

    def __init__(self, send, recv) -> None:  # noqa: ANN001 - two callables of the two sides
        self._send, self._recv = send, recv
        self.typed = 0

    def drain(self, quiet: float = 0.2) -> None:
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            if self._recv(max(0.01, deadline - time.monotonic())) is None:
                return

    def key(self) -> None:
        if self.typed >= LINE:
            self._send(b"\x15")
            self.drain()
            self.typed = 0
        self._send(b"a")
        while (got := self._recv(10.0)) is None or b"a" not in got:
            if got is None:
                raise RuntimeError("the guest did not echo a key within 10 s")
        self.typed += 1


def websocket_typist(client: ClientConnection) -> Typist:
    def recv(timeout: float) -> bytes | None:
        try:
            data = client.recv(timeout=timeout)
        except TimeoutError:
            return None
        return data if isinstance(data, bytes) else data.encode()

    return Typist(client.send, recv)


class StreamConsole:
    """libvirt's console stream, read by a thread of its own (a blocking stream), as pierd does."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        self.stream = conn.newStream(0)
        dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_SAFE)
        self._chunks: list[bytes] = []
        self._ready = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.stream.recv(65536)
            except libvirt.libvirtError:
                data = b""
            with self._ready:
                if not isinstance(data, bytes) or not data:
                    self._chunks.append(b"")
                    self._ready.notify()
                    return
                self._chunks.append(data)
                self._ready.notify()

    def recv(self, timeout: float) -> bytes | None:
        with self._ready:
            if not self._ready.wait_for(lambda: self._chunks, timeout):
                return None
            data = b"".join(self._chunks)
            self._chunks.clear()
            return data

    def send(self, data: bytes) -> None:
        self.stream.send(data)

    def close(self) -> None:
        try:
            self.stream.abort()
        except libvirt.libvirtError:
            pass
        self._reader.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="round trips on each side")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    image = build.find()
    libvirt.registerErrorHandler(lambda *_: None, None)
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)], daemon=True).start()
    conn = libvirt.open(URI)
    pierd = PierdProcess(URI)
    vm_id = str(uuid.uuid4())
    params = {"vmId": vm_id, "vmName": f"pier-bench-console-{vm_id[:8]}", "memSize": 256, "smp": "1",
              "kvmEnable": not Path("/sys/module/kvm_pvm").exists(), **image,
              "devices": [{"deviceType": "console", "device": "console", "specParams": {"consoleType": "serial"}}]}
    try:
        status, body = unix_request(pierd.socket, "POST", "/api/v1/vms", params)
        assert status == 201, body
        dom = conn.lookupByUUIDString(vm_id)
        direct = StreamConsole(conn, dom)
        typist = Typist(direct.send, direct.recv)
        deadline = time.monotonic() + 120
        seen = b""
        while b"# " not in seen[-200:]:  # the shell's prompt
            if time.monotonic() > deadline:
                raise RuntimeError(f"no shell prompt on the console within 120 s: {seen[-300:]!r}")
            direct.send(b"\n")
            seen += direct.recv(1.0) or b""
        direct.close()
        url = pierd.http.replace("http://", "ws://") + f"/api/v1/vms/{vm_id}/console"
        through, floor = [], []
        per_round = max(1, args.count // args.rounds)
        for _ in range(args.rounds):
            direct = StreamConsole(conn, dom)
            typist = Typist(direct.send, direct.recv)
            typist.drain()
            floor += timed(typist, per_round)
            direct.close()
            with connect(url, additional_headers={"Authorization": f"Bearer {pierd.token}"}, compression=None) as ws:
                typist = websocket_typist(ws)
                typist.drain()
                through += timed(typist, per_round)
        print(f"serial console round trip (one key and its echo), {len(through)} on each side, "
              f"guest under {'KVM' if params['kvmEnable'] else 'TCG'}")
        report("WebSocket /vms/{id}/console", through, floor)
        for name, samples in (("websocket", through), ("floor", floor)):
            print(f"  {name}: p90 {percentile(samples, 0.9) * 1e3:.3f} ms, slowest {max(samples) * 1e3:.1f} ms, "
                  f"over 100 ms: {sum(s > 0.1 for s in samples)}")
        print(f"  (pier adds p50 {(percentile(through, 0.5) - percentile(floor, 0.5)) * 1e3:.3f} ms)")
    finally:
        unix_request(pierd.socket, "DELETE", f"/api/v1/vms/{vm_id}")
        try:
            dom = conn.lookupByUUIDString(vm_id)
            dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            conn.lookupByUUIDString(vm_id).undefine()
        except libvirt.libvirtError:
            pass
        pierd.stop()


def timed(typist: Typist, count: int) -> list[float]:
    for _ in range(5):  # warm up
        typist.key()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        typist.key()
        samples.append(time.perf_counter() - started)
    return samples


if __name__ == "__main__":
    main()

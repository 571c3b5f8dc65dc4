"""A real guest on qemu:///system for the tests that need one: Pier's tiny guest (tests/guest/).

`booted_guest` (a fixture: `pytest_plugins = ["tests.integration.guest"]` in a test module) starts a pierd on qemu:///system, creates
a VM through its REST API from the tiny guest (direct kernel boot, a virtio disk, a NIC on libvirt's
`default` network, a serial console, the guest agent channel) and waits until the guest agent
answers. It yields a `Guest`: `guest.agent("guest-info")` talks to qemu-ga, `guest.shell.run("uname
-r")` runs a command on the serial console. The VM and its disk are removed afterwards.

`new_guest(pierd, ...)` does the same for tests that want more than one guest or other devices.

The guest runs under KVM, except where KVM is PVM (a kvm_pvm module: nested virtualization without
hardware support, which runs an unmodified kernel about a thousand times slower): there it runs
under TCG (vmParams.kvmEnable false), booting in ~3 s. PIER_GUEST_ACCEL=kvm|tcg chooses.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu
import pytest

from tests.guest import build
from tests.integration.clients import http_request
from tests.integration.conftest import Pierd

SYSTEM_URI = "qemu:///system"
NAME_PREFIX = "pier-guest-"
DISK_DIR = Path("/var/lib/libvirt/images")
AGENT_CHANNEL = "org.qemu.guest_agent.0"


@functools.cache
def guest_image() -> dict[str, str] | None:
    """kernel, initrd and kernelArgs of the built tiny guest, or None when it is not built."""
    try:
        return build.find()
    except (OSError, RuntimeError, subprocess.CalledProcessError):
        return None


def use_kvm() -> bool:
    """Whether the guest should run under KVM (else TCG); see the module's docstring."""
    chosen = os.environ.get("PIER_GUEST_ACCEL", "")
    if chosen in ("kvm", "tcg"):
        return chosen == "kvm"
    return not Path("/sys/module/kvm_pvm").exists()


def skip_reason() -> str | None:
    """Why no tiny guest can be booted here, or None."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    if os.geteuid() != 0:
        return "needs root (the guest's disk goes into /var/lib/libvirt/images)"
    if guest_image() is None:
        return "the tiny guest is not built: run `python3 tests/guest/build.py` (./dev test does)"
    return None


def start_default_network(conn: libvirt.virConnect) -> None:
    network = conn.networkLookupByName("default")
    if not network.isActive():
        network.create()


def guest_params(vm_id: str, *, disk: str | None = None, nic: bool = True, mem_mib: int = 256,
                 **extra: Any) -> dict[str, Any]:
    """vmParams for the tiny guest: its kernel, a serial console, and a disk and NIC if asked."""
    image = guest_image()
    assert image is not None, skip_reason()
    devices: list[dict[str, Any]] = [
        {"deviceType": "console", "device": "console", "specParams": {"consoleType": "serial"}}]
    if disk:
        devices.append({"deviceType": "disk", "device": "disk", "path": disk, "iface": "virtio",
                        "format": "raw"})
    if nic:
        devices.append({"deviceType": "interface", "device": "network", "network": "default",
                        "nicModel": "virtio"})
    return {"vmId": vm_id, "vmName": NAME_PREFIX + vm_id[:8], "memSize": mem_mib, "smp": "1",
            "kvmEnable": use_kvm(), **image, "devices": devices, **extra}


class SerialShell:
    """The guest's root shell on its serial console, through libvirt's console stream."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        self.stream = conn.newStream(0)
        dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self.buffer = ""
        self.closed = False
        self.count = 0
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # A blocking stream read on a thread of its own: a non-blocking one needs an event loop.
        while True:
            try:
                got = self.stream.recv(65536)
            except libvirt.libvirtError:
                got = b""
            with self._changed:
                if not isinstance(got, bytes) or not got:
                    self.closed = True
                    self._changed.notify_all()
                    return
                self.buffer += got.decode(errors="replace").replace("\r", "")
                self._changed.notify_all()

    def run_status(self, command: str, timeout: float = 30) -> tuple[int, str]:
        """Run `command` (one line) in the guest's shell; its exit status and output (stdout and
        stderr, with "\n" line ends)."""
        if self.count == 0:
            self.count = 1
            self.run_status("stty -echo", timeout)  # else the typed lines come back too
        self.count += 1
        # Each marker is typed split in two, so that only the shell's output holds it whole.
        begin, end = f"@@B{self.count}@@\n", f"@@E{self.count}:"
        self.stream.send(f"echo '@@B''{self.count}@@'; {command}; echo \"@@E\"'{self.count}:'\"$?@@\"\n".encode())
        pattern = re.compile(re.escape(begin) + "(.*?)" + re.escape(end) + r"(\d+)@@", re.S)
        with self._changed:
            self._changed.wait_for(lambda: self.closed or pattern.search(self.buffer), timeout)
            found = pattern.search(self.buffer)
            if found is None:
                why = "the console closed" if self.closed else f"no answer within {timeout} s"
                raise AssertionError(f"{command!r}: {why}; console:\n{self.buffer[-2000:]}")
            self.buffer = self.buffer[found.end():]
        return int(found.group(2)), found.group(1)

    def run(self, command: str, timeout: float = 30) -> str:
        """The output of `command`, which must succeed."""
        status, output = self.run_status(command, timeout)
        assert status == 0, f"{command!r} exited with {status}:\n{output}"
        return output

    def close(self) -> None:
        try:
            self.stream.abort()
        except libvirt.libvirtError:
            pass
        self._reader.join(5)


class Guest:
    """A booted tiny guest: its VM id, libvirt domain, agent and serial shell."""

    def __init__(self, pierd: Pierd, vm_id: str, conn: libvirt.virConnect) -> None:
        self.pierd = pierd
        self.vm_id = vm_id
        self.conn = conn
        self.dom = conn.lookupByUUIDString(vm_id)
        self.booted_in = 0.0
        self._shell: SerialShell | None = None

    @property
    def api(self) -> str:
        return self.pierd.http + "/api/v1"

    def agent(self, command: str, arguments: dict[str, Any] | None = None, timeout: int = 10) -> Any:
        """qemu-ga's answer to `command` (its "return" value)."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        return json.loads(libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(request), timeout, 0))["return"]

    def wait_agent(self, timeout: float) -> float:
        """Seconds until the agent answered guest-ping; fails after `timeout`."""
        started = time.monotonic()
        while True:
            try:
                self.agent("guest-ping", timeout=2)
                return time.monotonic() - started
            except libvirt.libvirtError as exc:
                if time.monotonic() - started > timeout:
                    raise AssertionError(f"the guest agent did not answer within {timeout} s: {exc}") from None
                time.sleep(0.2)

    @property
    def shell(self) -> SerialShell:
        if self._shell is None:
            self._shell = SerialShell(self.conn, self.dom)
        return self._shell

    def close(self) -> None:
        if self._shell is not None:
            self._shell.close()
            self._shell = None


def boot_timeout() -> float:
    return 120 if use_kvm() else 90


def new_guest(pierd: Pierd, conn: libvirt.virConnect, disk: str | None = None, vm_id: str | None = None,
              **params: Any) -> Guest:
    """Create the tiny guest through pierd's REST API and wait for its agent (removing the VM if
    it does not answer)."""
    libvirt.registerErrorHandler(lambda *args: None, None)  # each try before the agent is up prints else
    vm_id = vm_id or str(uuid.uuid4())
    started = time.monotonic()
    status, _, body = http_request("POST", pierd.http + "/api/v1/vms", guest_params(vm_id, disk=disk, **params))
    assert status == 201, body
    guest = Guest(pierd, vm_id, conn)
    try:
        guest.wait_agent(boot_timeout())
    except BaseException:
        remove_vm(pierd, conn, vm_id)
        raise
    guest.booted_in = time.monotonic() - started
    return guest


def remove_vm(pierd: Pierd, conn: libvirt.virConnect, vm_id: str) -> None:
    """Destroy and forget the VM, through pierd and, should that fail, libvirt itself."""
    http_request("DELETE", f"{pierd.http}/api/v1/vms/{vm_id}")
    try:
        dom = conn.lookupByUUIDString(vm_id)
    except libvirt.libvirtError:
        return
    try:
        dom.destroy()
    except libvirt.libvirtError:
        pass
    try:
        dom.undefine()
    except libvirt.libvirtError:
        pass


@pytest.fixture
def guest_pierd(tmp_path: Path, system_libvirt: str) -> Iterator[Pierd]:
    """A pierd on qemu:///system, with libvirt's default network active; skips without a guest."""
    reason = skip_reason()
    if reason is not None:
        if os.environ.get("PIER_REQUIRE_KVM") == "1":
            pytest.fail(f"a tiny guest is required but cannot boot: {reason}")
        pytest.skip(f"no tiny guest: {reason}")
    conn = libvirt.open(system_libvirt)
    try:
        start_default_network(conn)
    finally:
        conn.close()
    daemon = Pierd(tmp_path / "state", system_libvirt)
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture
def guest_conn(system_libvirt: str) -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(system_libvirt)
    yield conn
    conn.close()


@pytest.fixture
def booted_guest(guest_pierd: Pierd, guest_conn: libvirt.virConnect) -> Iterator[Guest]:
    """The tiny guest, booted with a 16 MiB virtio disk and a NIC, its agent answering."""
    disk = DISK_DIR / f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}.img"
    with open(disk, "wb") as made:
        made.truncate(16 * 2**20)
    vm_id = str(uuid.uuid4())
    guest: Guest | None = None
    try:
        guest = new_guest(guest_pierd, guest_conn, str(disk), vm_id)
        yield guest
    finally:
        if guest is not None:
            guest.close()
        remove_vm(guest_pierd, guest_conn, vm_id)
        disk.unlink(missing_ok=True)

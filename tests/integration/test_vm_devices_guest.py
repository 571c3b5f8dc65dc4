"""A VM's devices, memory and CPUs seen from inside the tiny real guest (tests/guest/), over its
serial console: a disk and a NIC plugged in appear in /sys/block and /sys/class/net and go again
when unplugged (the guest lets go of them); a DIMM and a vCPU plugged in appear under
/sys/devices/system/memory and /sys/devices/system/cpu, and the guest can bring them online."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import libvirt
import pytest

from tests.integration.clients import http_request

if TYPE_CHECKING:  # imported by pytest_plugins, so that pytest rewrites its asserts
    from tests.integration.conftest import Pierd
    from tests.integration.guest import Guest

pytest_plugins = ["tests.integration.guest"]
pytestmark = pytest.mark.kvm


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    status, _, raw = http_request(method, url, body, timeout=90)
    return status, json.loads(raw)


def eventually(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def hotplug_guest(guest_pierd: Pierd, guest_conn: libvirt.virConnect) -> Iterator[Guest]:
    """The tiny guest (no disk, one NIC) made for memory and CPU hotplug: 256 MiB of at most 1 GiB,
    one vCPU of at most two."""
    from tests.integration.guest import new_guest, remove_vm

    vm_id = str(uuid.uuid4())
    guest = new_guest(guest_pierd, guest_conn, None, vm_id, maxMemSize=1024, maxMemSlots=4, maxVCpus="2")
    try:
        yield guest
    finally:
        guest.close()
        remove_vm(guest_pierd, guest_conn, vm_id)


def test_a_disk_plugged_in_is_seen_by_the_guest_and_goes_when_unplugged(booted_guest: Guest) -> None:
    from tests.integration.guest import DISK_DIR, NAME_PREFIX

    guest, vm = booted_guest, booted_guest.vm_id
    path = DISK_DIR / f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}-extra.img"
    with open(path, "wb") as made:
        made.truncate(8 * 2**20)
    try:
        status, disk = call("POST", f"{guest.api}/vms/{vm}/devices", {"deviceType": "disk", "path": str(path)})
        assert status == 200, disk
        assert disk["name"] == "vdb"
        assert eventually(lambda: guest.shell.run("ls /sys/block").split().count("vdb") == 1)
        assert guest.shell.run("cat /sys/block/vdb/size").strip() == str(8 * 2**20 // 512)

        status, definition = call("DELETE", f"{guest.api}/vms/{vm}/devices/{disk['alias']}")
        assert status == 200, definition
        assert str(path) not in [d.get("path") for d in definition["devices"]]
        assert "vdb" not in guest.shell.run("ls /sys/block").split()
        assert str(path) not in guest.dom.XMLDesc(0)
        assert str(path) not in guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        path.unlink(missing_ok=True)


def test_a_nic_plugged_in_is_seen_by_the_guest_and_goes_when_unplugged(booted_guest: Guest) -> None:
    guest, vm = booted_guest, booted_guest.vm_id
    before = set(guest.shell.run("ls /sys/class/net").split())
    mac = "52:54:00:7e:57:01"
    status, definition = call("POST", f"{guest.api}/vms/{vm}/nics",
                              {"nic": {"network": "default", "device": "network", "macAddr": mac}})
    assert status == 200, definition

    def added() -> set[str]:
        return set(guest.shell.run("ls /sys/class/net").split()) - before

    assert eventually(lambda: len(added()) == 1)
    (name,) = added()
    assert guest.shell.run(f"cat /sys/class/net/{name}/address").strip() == mac

    status, definition = call("POST", f"{guest.api}/vms/{vm}/nics/unplug", {"nic": {"macAddr": mac}})
    assert status == 200, definition
    assert mac not in [d.get("macAddr") for d in definition["devices"]]
    assert added() == set()


def test_memory_and_a_cpu_plugged_in_are_seen_and_used_by_the_guest(hotplug_guest: Guest) -> None:
    guest, vm = hotplug_guest, hotplug_guest.vm_id
    shell = guest.shell

    def mem_total_kib() -> int:
        line = next(line for line in shell.run("cat /proc/meminfo").splitlines() if line.startswith("MemTotal:"))
        return int(line.split()[1])

    blocks_before = set(shell.run("ls /sys/devices/system/memory").split())
    total_before = mem_total_kib()
    status, definition = call("POST", f"{guest.api}/vms/{vm}/memory", {"memory": {"size": 256, "node": 0}})
    assert status == 200, definition
    assert definition["memSize"] == 256 + 256

    def new_blocks() -> list[str]:
        return sorted(b for b in set(shell.run("ls /sys/devices/system/memory").split()) - blocks_before
                      if b.startswith("memory"))

    assert eventually(lambda: len(new_blocks()) > 0)
    for block in new_blocks():
        shell.run(f"grep -q online /sys/devices/system/memory/{block}/state || "
                  f"echo online > /sys/devices/system/memory/{block}/state")
    assert mem_total_kib() >= total_before + 250 * 1024

    status, definition = call("PUT", f"{guest.api}/vms/{vm}/cpus", {"numberOfCpus": 2})
    assert status == 200, definition
    assert definition["smp"] == 2
    assert eventually(lambda: shell.run("cat /sys/devices/system/cpu/present").strip() == "0-1")
    shell.run("grep -q 1 /sys/devices/system/cpu/cpu1/online || echo 1 > /sys/devices/system/cpu/cpu1/online")
    assert shell.run("cat /sys/devices/system/cpu/online").strip() == "0-1"

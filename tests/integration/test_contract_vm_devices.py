"""The VM device service's contract: the same assertions on the unit tests' fake (tests/fakes.py)
and on the real service over qemu:///system (libvirt's test driver cannot plug devices in), as
tests/integration/test_contract.py does for the VM services. The real VM runs no OS, so what is
unplugged is a SCSI disk, which QEMU lets go of without the guest."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pier.host.node import Node
from pier.host.services import VmDeviceService
from pier.rpc.errors import (
    HotplugDisk,
    HotplugMemory,
    HotplugNic,
    HotunplugDisk,
    ImageError,
    SetNumberOfCpus,
    UpdateDevice,
)
from tests.fakes import FakeVmDevices, FakeVms, as_vm_device_service

IMAGES = "/var/lib/libvirt/images"


@dataclass
class Subject:
    devices: VmDeviceService
    vm_id: str
    images: tuple[str, str]


@pytest.fixture(params=["fake", "real"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    vm_id = str(uuid.uuid4())
    images = (f"{IMAGES}/pier-devices-contract-{vm_id[:8]}-a.img", f"{IMAGES}/pier-devices-contract-{vm_id[:8]}-b.img")
    params = {"vmId": vm_id, "vmName": f"pier-devices-{vm_id[:8]}", "memSize": 128, "maxMemSize": 512,
              "smp": "1", "maxVCpus": "2",
              "devices": [{"deviceType": "interface", "device": "network", "network": "default",
                           "macAddr": "52:54:00:c0:ff:ee"}]}
    if request.param == "fake":
        vms = FakeVms()
        vms.records[vm_id] = {"vmId": vm_id, "status": "Up", "memSize": 128, "maxMemSize": 512, "smp": 1,
                              "maxVCpus": 2, "devices": [{"deviceType": "interface", "macAddr": "52:54:00:c0:ff:ee",
                                                          "alias": "net0"}]}
        yield Subject(as_vm_device_service(FakeVmDevices(vms, images)), vm_id, images)
        return
    system = request.getfixturevalue("system_libvirt")
    for path in images:
        subprocess.run(["truncate", "-s", "8M", path], check=True)
    node = Node(system, lambda name, p: None, hotunplug_timeout=2)
    node.start()
    try:
        node.vms.create(vm_id, params)
        try:
            yield Subject(node.vm_devices, vm_id, images)
        finally:
            node.vms.destroy(vm_id)
    finally:
        node.stop()
        for path in images:
            os.unlink(path)


def test_a_device_added_is_listed_by_its_alias_and_removed_by_it(subject: Subject) -> None:
    added = subject.devices.add_device(subject.vm_id, {"deviceType": "disk", "path": subject.images[0],
                                                       "iface": "scsi", "alias": "ua-contract"})
    assert (added["alias"], added["path"]) == ("ua-contract", subject.images[0])
    assert "ua-contract" in [d.get("alias") for d in subject.devices.devices(subject.vm_id)]
    definition = subject.devices.remove_device(subject.vm_id, "ua-contract")
    assert "ua-contract" not in [d.get("alias") for d in definition["devices"]]
    assert "ua-contract" not in [d.get("alias") for d in subject.devices.devices(subject.vm_id)]


def test_a_disk_plugged_in_is_in_the_definition_returned(subject: Subject) -> None:
    definition = subject.devices.hotplug_disk(subject.vm_id, {"drive": {"path": subject.images[0],
                                                                        "alias": "ua-one"}})
    assert subject.images[0] in [d.get("path") for d in definition["devices"]]


def test_refusals(subject: Subject) -> None:
    devices, vm = subject.devices, subject.vm_id
    devices.hotplug_disk(vm, {"drive": {"path": subject.images[0], "alias": "ua-one", "iface": "scsi"}})
    with pytest.raises(ImageError):
        devices.hotplug_disk(vm, {"drive": {"path": f"{IMAGES}/pier-devices-contract-none.img"}})
    with pytest.raises(HotplugDisk):
        devices.hotplug_disk(vm, {"drive": {"path": subject.images[1], "alias": "ua-one"}})
    with pytest.raises(HotunplugDisk):
        devices.hotunplug_disk(vm, {"drive": {"alias": "ua-none"}})
    with pytest.raises(HotplugNic):
        devices.hotplug_nic(vm, {"nic": {"network": "default", "device": "network", "macAddr": "52:54:00:c0:ff:ee"}})
    with pytest.raises(HotplugMemory):
        devices.hotplug_memory(vm, {"memory": {"size": 512}})
    with pytest.raises(SetNumberOfCpus):
        devices.set_cpus(vm, 3)
    with pytest.raises(UpdateDevice):
        devices.remove_device(vm, "ua-none")


def test_cpus_up_to_the_maximum(subject: Subject) -> None:
    assert subject.devices.set_cpus(subject.vm_id, 2)["smp"] == 2

"""A running VM's devices, memory, CPUs and tuning on qemu:///system (KVM), with no guest OS.

Each change is seen in the running guest's XML, in the persistent definition and in VM.getInfo
right after the call, with a VM_status event carrying the definition's new hash. Bad input gets a
clear error and leaves both XMLs exactly as they were. A guest without an OS never lets go of a
virtio disk: its unplug answers hotunplugDisk after the timeout and the disk stays, in both XMLs.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import libvirt
import pytest

from pier.host.news import DeviceRemoved
from pier.host.node import Node
from pier.rpc.errors import (
    ChangeDisk,
    CpuTuneError,
    HotplugDisk,
    HotplugMemory,
    HotplugNic,
    HotunplugDisk,
    HotunplugNic,
    ImageError,
    PierError,
    SetNumberOfCpus,
    UnsupportedOperation,
    UpdateDevice,
    UpdateIoTune,
)

pytestmark = pytest.mark.kvm

IMAGES = "/var/lib/libvirt/images"
MiB = 1024


@dataclass
class Lab:
    node: Node
    vm_id: str
    images: list[str]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def devices(self) -> Any:
        return self.node.vm_devices

    def dom(self) -> libvirt.virDomain:
        return libvirt.open("qemu:///system").lookupByUUIDString(self.vm_id)

    def xmls(self) -> tuple[str, str]:
        """The running guest's XML and the persistent definition."""
        dom = self.dom()
        return dom.XMLDesc(0), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def image(self, name: str, size: str = "8M") -> str:
        path = f"{IMAGES}/pier-devices-{self.vm_id[:8]}-{name}"
        subprocess.run(["truncate", "-s", size, path], check=True)
        self.images.append(path)
        return path

    def listed(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.node.vms.definition(self.vm_id)["devices"] if d["deviceType"] == kind]


def make_lab(system_libvirt: str, params: dict[str, Any] | None = None, timeout: float = 2.0,
             vm_id: str | None = None) -> Iterator[Lab]:
    events: list[tuple[str, dict[str, Any]]] = []
    node = Node(system_libvirt, lambda name, p: events.append((name, p)), stats_interval=1,
                hotunplug_timeout=timeout)
    node.start()
    vm_id = vm_id or str(uuid.uuid4())
    lab = Lab(node, vm_id, [], events)
    base = {"vmId": vm_id, "vmName": f"pier-devices-{vm_id[:8]}", "memSize": 128, "maxMemSize": 1024,
            "maxMemSlots": 4, "smp": "1", "maxVCpus": "4",
            "devices": [{"deviceType": "interface", "device": "network", "network": "default"},
                        {"deviceType": "disk", "device": "cdrom", "iface": "sata"}]}
    try:
        node.vms.create(vm_id, {**base, **(params or {})})
    except BaseException:
        node.stop()
        raise
    try:
        yield lab
    finally:
        try:
            node.vms.destroy(vm_id)
        finally:
            node.stop()
            for path in lab.images:
                os.unlink(path)


@pytest.fixture
def lab(system_libvirt: str) -> Iterator[Lab]:
    yield from make_lab(system_libvirt)


def in_both(lab: Lab, text: str) -> tuple[bool, bool]:
    live, config = lab.xmls()
    return text in live, text in config


def devices_events(lab: Lab) -> list[dict[str, Any]]:
    lab.node.flush_events()
    return [p[lab.vm_id] for name, p in lab.events
            if name == f"|virt|VM_status|{lab.vm_id}" and "hash" in p[lab.vm_id]]


def test_a_disk_plugged_in_is_in_the_guest_the_definition_and_getinfo_at_once(lab: Lab) -> None:
    path = lab.image("a.img")
    definition = lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": path, "format": "raw"}})
    disk = next(d for d in definition["devices"] if d.get("path") == path)
    assert disk["name"] == "vda" and disk["iface"] == "virtio" and disk["alias"].startswith("ua-")
    assert in_both(lab, path) == (True, True)
    assert [d["alias"] for d in lab.listed("disk") if d.get("path") == path] == [disk["alias"]]
    assert devices_events(lab)[-1]["status"] == "Up"


def test_a_scsi_disk_gets_a_virtio_scsi_controller_once(lab: Lab) -> None:
    first, second = lab.image("s1.img"), lab.image("s2.img")
    lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": first, "iface": "scsi"}})
    lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": second, "iface": "scsi"}})
    live, config = lab.xmls()
    for xml in (live, config):
        assert xml.count("model='virtio-scsi'") == 1 and first in xml and second in xml
    names = sorted(d["name"] for d in lab.listed("disk") if d["iface"] == "scsi")
    assert names == ["sdb", "sdc"]  # sda is the SATA CD-ROM


def test_a_nic_memory_and_cpus_plugged_in(lab: Lab) -> None:
    definition = lab.devices.hotplug_nic(lab.vm_id, {"nic": {"network": "default", "device": "network",
                                                             "macAddr": "52:54:00:aa:bb:01"}})
    assert "52:54:00:aa:bb:01" in [d["macAddr"] for d in definition["devices"] if d["deviceType"] == "interface"]
    assert in_both(lab, "52:54:00:aa:bb:01") == (True, True)

    definition = lab.devices.hotplug_memory(lab.vm_id, {"memory": {"size": 256, "node": 0}})
    assert definition["memSize"] == 128 + 256 and definition["maxMemSize"] == 1024
    dimms = [d for d in definition["devices"] if d["deviceType"] == "memory"]
    assert [(d["size"], d["node"]) for d in dimms] == [(256, 0)]
    assert all(xml.count("<memory model='dimm'") == 1 for xml in lab.xmls())

    definition = lab.devices.set_cpus(lab.vm_id, 3)
    assert definition["smp"] == 3 and lab.node.vms.definition(lab.vm_id)["smp"] == 3
    live, config = lab.xmls()
    assert "current='3'" in live and "current='3'" in config
    assert len(devices_events(lab)) >= 3


def test_a_nic_goes_down_and_up_and_a_cd_is_changed_and_ejected(lab: Lab) -> None:
    nic = lab.listed("interface")[0]
    lab.devices.update_device(lab.vm_id, {"deviceType": "interface", "macAddr": nic["macAddr"],
                                          "linkActive": False})
    assert [d["linkActive"] for d in lab.listed("interface")] == [False]
    assert in_both(lab, "<link state='down'/>") == (True, True)
    lab.devices.update_device(lab.vm_id, {"deviceType": "interface", "alias": nic["alias"], "linkActive": True})
    assert [d["linkActive"] for d in lab.listed("interface")] == [True]

    iso = lab.image("cd.iso")
    lab.devices.change_cd(lab.vm_id, iso)
    assert [d["path"] for d in lab.listed("disk") if d["device"] == "cdrom"] == [iso]
    assert in_both(lab, iso) == (True, True)
    lab.devices.change_cd(lab.vm_id, {"path": ""})
    assert [d["path"] for d in lab.listed("disk") if d["device"] == "cdrom"] == [""]
    assert in_both(lab, iso) == (False, False)


def test_tuning_applies_to_the_guest_and_the_definition(lab: Lab) -> None:
    path = lab.image("t.img")
    lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": path}})
    lab.devices.set_io_tune(lab.vm_id, [{"name": "vda", "ioTune": {"total_iops_sec": 100, "read_bytes_sec": 10**6}}])
    tuned = lab.devices.io_tune(lab.vm_id)
    assert [(t["name"], t["ioTune"]["total_iops_sec"], t["ioTune"]["read_bytes_sec"]) for t in tuned] == \
        [("vda", 100, 10**6)]
    assert in_both(lab, "<total_iops_sec>100</total_iops_sec>") == (True, True)

    lab.devices.set_cpu_tune(lab.vm_id, period=50000)
    lab.devices.set_cpu_tune(lab.vm_id, quota=20000)
    assert in_both(lab, "<period>50000</period>") == (True, True)
    assert in_both(lab, "<quota>20000</quota>") == (True, True)

    policy = [{"name": "vda", "maximum": {"total_iops_sec": 200}}]
    lab.devices.update_policy(lab.vm_id, {"ioTune": policy})
    assert lab.devices.io_tune_policy(lab.vm_id) == policy
    assert lab.devices.all_io_tune_policies()[lab.vm_id]["policy"] == policy

    lab.devices.set_balloon(lab.vm_id, 100 * MiB)  # no guest driver to inflate it: the definition shows it
    assert f"<currentMemory unit='KiB'>{100 * MiB}</currentMemory>" in lab.xmls()[1]

    lab.devices.set_destroy_on_reboot(lab.vm_id)
    assert in_both(lab, "<on_reboot>destroy</on_reboot>") == (True, True)

    # Half of the host's CPU time for the one vCPU, in its 50 ms period (Pier runs no MOM to do it)
    lab.devices.update_policy(lab.vm_id, {"vcpuLimit": 50})
    assert in_both(lab, f"<quota>{50000 * 50 * (os.cpu_count() or 1) // 100}</quota>") == (True, True)
    assert in_both(lab, "<ovirt-vm:vcpuLimit>50</ovirt-vm:vcpuLimit>") == (True, True)


def test_a_vm_without_tpm_or_nvram_has_no_external_data(lab: Lab) -> None:
    for kind, why in (("tpm", "has no emulated TPM"), ("nvram", "has no NVRAM")):
        with pytest.raises(UnsupportedOperation) as raised:
            lab.devices.external_data(lab.vm_id, kind)
        assert why in raised.value.message


BAD: dict[str, tuple[Callable[[Lab], Any], type[PierError], str]] = {
    "a disk path that does not exist": (
        lambda lab: lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": f"{IMAGES}/pier-devices-none.img"}}),
        ImageError, "does not exist"),
    "a second disk with the same alias": (
        lambda lab: lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": lab.image("b.img"), "alias": "ua-one"}}),
        HotplugDisk, "already has a device ua-one"),
    "a second disk with the same target": (
        lambda lab: lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": lab.image("c.img"), "name": "vda"}}),
        HotplugDisk, "already has a disk vda"),
    "a second NIC with the same MAC": (
        lambda lab: lab.devices.hotplug_nic(lab.vm_id, {"nic": {"network": "default", "device": "network",
                                                                "macAddr": lab.listed("interface")[0]["macAddr"]}}),
        HotplugNic, "already has a NIC with MAC"),
    "a NIC on a network that does not exist": (
        lambda lab: lab.devices.hotplug_nic(lab.vm_id, {"nic": {"network": "pier-none", "device": "network"}}),
        HotplugNic, "pier-none"),
    "an unplug of a disk that is not there": (
        lambda lab: lab.devices.hotunplug_disk(lab.vm_id, {"drive": {"name": "vdz"}}),
        HotunplugDisk, "has no disk name vdz"),
    "an unplug of a NIC that is not there": (
        lambda lab: lab.devices.hotunplug_nic(lab.vm_id, {"nic": {"macAddr": "52:54:00:00:00:99"}}),
        HotunplugNic, "has no NIC macAddr 52:54:00:00:00:99"),
    "a removal of an alias that is not there": (
        lambda lab: lab.devices.remove_device(lab.vm_id, "ua-nothing"), UpdateDevice, "has no device 'ua-nothing'"),
    "memory beyond maxMemory": (
        lambda lab: lab.devices.hotplug_memory(lab.vm_id, {"memory": {"size": 1024}}),
        HotplugMemory, "beyond the VM's maxMemSize of 1024 MiB"),
    "memory on a NUMA node the guest does not have": (
        lambda lab: lab.devices.hotplug_memory(lab.vm_id, {"memory": {"size": 128, "node": 3}}),
        HotplugMemory, "no guest NUMA node 3"),
    "CPUs beyond maxVCpus": (
        lambda lab: lab.devices.set_cpus(lab.vm_id, 5), SetNumberOfCpus, "maxVCpus, 4"),
    "a CD image that does not exist": (
        lambda lab: lab.devices.change_cd(lab.vm_id, f"{IMAGES}/pier-devices-none.iso"), ImageError, "does not exist"),
    "a floppy on a VM without one": (
        lambda lab: lab.devices.change_cd(lab.vm_id, "", floppy=True), ChangeDisk, "has no floppy drive"),
    "I/O limits on a disk that is not there": (
        lambda lab: lab.devices.set_io_tune(lab.vm_id, [{"name": "vda", "ioTune": {"total_iops_sec": 1}},
                                                        {"name": "vdq", "ioTune": {"total_iops_sec": 1}}]),
        UpdateIoTune, "tunables[1]: VM"),
    "total and read I/O limits together": (
        lambda lab: lab.devices.set_io_tune(lab.vm_id, [{"name": "vda", "ioTune": {"total_iops_sec": 1,
                                                                                   "read_iops_sec": 1}}]),
        UpdateIoTune, "total_iops_sec cannot be set with"),
    "a CPU period out of range": (
        lambda lab: lab.devices.set_cpu_tune(lab.vm_id, period=10), CpuTuneError, "period: 10 is not between"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_clear_error_and_leaves_the_vm_as_it_was(lab: Lab, case: str) -> None:
    lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": lab.image("a.img"), "alias": "ua-one"}})
    call, error, message = BAD[case]
    before = lab.xmls()
    with pytest.raises(error) as raised:
        call(lab)
    assert message in raised.value.message
    assert lab.xmls() == before


def test_a_guest_that_does_not_release_a_disk_keeps_it_and_the_caller_is_told(lab: Lab) -> None:
    """No OS answers the unplug request: hotunplugDisk (46) after the timeout; the disk stays in
    the running guest, in the definition and in VM.getInfo."""
    path = lab.image("held.img")
    lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": path}})
    with pytest.raises(HotunplugDisk) as raised:
        lab.devices.hotunplug_disk(lab.vm_id, {"drive": {"path": path}})
    assert raised.value.code == 46 and "did not release" in raised.value.message
    assert in_both(lab, path) == (True, True)
    assert [d["path"] for d in lab.listed("disk") if d.get("path") == path] == [path]


def test_a_disk_the_guest_lets_go_of_late_leaves_the_definition_then(lab: Lab) -> None:
    """libvirt's device-removed event after the unplug gave up (a guest slower than the timeout)
    takes the disk out of the definition as well; here the event is handed to the dispatcher as
    libvirt's callback would, since a guest without OS never sends it."""
    path = lab.image("late.img")
    alias = next(d["alias"] for d in lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": path}})["devices"]
                 if d.get("path") == path)
    with pytest.raises(HotunplugDisk):
        lab.devices.hotunplug_disk(lab.vm_id, {"drive": {"alias": alias}})
    lab.node._dispatcher.put(DeviceRemoved(lab.vm_id, name=f"pier-devices-{lab.vm_id[:8]}", alias=alias))
    lab.node.flush_events()
    assert path not in lab.xmls()[1]


def test_devices_of_a_vm_that_is_off_change_in_its_definition(lab: Lab) -> None:
    lab.node.vms.poweroff(lab.vm_id)
    path = lab.image("off.img")
    lab.devices.hotplug_disk(lab.vm_id, {"drive": {"path": path}})
    assert path in lab.xmls()[1]
    lab.devices.hotunplug_disk(lab.vm_id, {"drive": {"path": path}})
    assert path not in lab.xmls()[1]
    assert lab.devices.set_cpus(lab.vm_id, 2)["smp"] == 2


GRAPHICS_XML = """<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory>
<os><type>hvm</type></os><devices><graphics type='vnc' autoport='yes' passwd='locked'
passwdValidTo='1970-01-01T00:00:01'/></devices></domain>"""


def test_a_display_password_is_set_with_its_time_to_live(system_libvirt: str) -> None:
    vm = str(uuid.uuid4())
    xml = GRAPHICS_XML.format(name=f"pier-devices-{vm[:8]}", uuid=vm)
    for lab in make_lab(system_libvirt, {"vmId": vm, "xml": xml}, vm_id=vm):
        lab.devices.update_device(vm, {"deviceType": "graphics", "graphicsType": "vnc", "password": "s3cret",
                                       "ttl": 120, "existingConnAction": "keep"})
        secure = lab.dom().XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
        assert "passwd='s3cret'" in secure and "passwdValidTo='1970" not in secure
        assert "s3cret" not in lab.dom().XMLDesc(0)
        with pytest.raises(UpdateDevice):
            lab.devices.update_device(vm, {"deviceType": "graphics", "graphicsType": "spice", "password": "x"})

"""Host devices: libvirt's node device XML in VDSM's HostDevice shape, and the <hostdev> XML a
caller gives VM.hotplugHostdev, checked before anything is touched."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

import pytest

from pier.host.domain import Domain
from pier.host.domxml import DomainXml
from pier.host.hostdev import HostDevices, Plug, _source_key, parse_node_device
from pier.rpc.errors import HostdevDetachError, InvalidParams, NoSuchDevice, PierError

# As this machine's libvirtd describes its virtio NIC: no IOMMU, so no IOMMU group.
VIRTIO_NIC = """<device>
  <name>pci_0000_00_03_0</name>
  <path>/sys/devices/pci0000:00/0000:00:03.0</path>
  <parent>computer</parent>
  <driver><name>virtio-pci</name></driver>
  <capability type='pci'>
    <class>0x020000</class>
    <domain>0</domain><bus>0</bus><slot>3</slot><function>0</function>
    <product id='0x1041'/>
    <vendor id='0x1af4'/>
  </capability>
</device>"""

SRIOV_PF = """<device>
  <name>pci_0000_05_00_0</name>
  <parent>pci_0000_00_01_0</parent>
  <driver><name>igb</name></driver>
  <capability type='pci'>
    <class>0x020000</class>
    <domain>0</domain><bus>5</bus><slot>0</slot><function>0</function>
    <product id='0x10c9'>82576 Gigabit Network Connection</product>
    <vendor id='0x8086'>Intel Corporation</vendor>
    <capability type='virt_functions' maxCount='7'>
      <address domain='0x0000' bus='0x05' slot='0x10' function='0x0'/>
    </capability>
    <iommuGroup number='15'><address domain='0x0000' bus='0x05' slot='0x00' function='0x0'/></iommuGroup>
    <numa node='1'/>
  </capability>
</device>"""

SRIOV_VF = """<device>
  <name>pci_0000_05_10_0</name>
  <parent>pci_0000_00_01_0</parent>
  <driver><name>igbvf</name></driver>
  <capability type='pci'>
    <class>0x020000</class>
    <domain>0</domain><bus>5</bus><slot>16</slot><function>0</function>
    <product id='0x10ca'>82576 Virtual Function</product>
    <vendor id='0x8086'>Intel Corporation</vendor>
    <capability type='phys_function'>
      <address domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </capability>
    <iommuGroup number='40'><address domain='0x0000' bus='0x05' slot='0x10' function='0x0'/></iommuGroup>
  </capability>
</device>"""

BRIDGE = """<device>
  <name>pci_0000_00_1c_0</name>
  <parent>computer</parent>
  <capability type='pci'>
    <class>0x060400</class>
    <domain>0</domain><bus>0</bus><slot>28</slot><function>0</function>
    <product id='0x9d10'/>
    <vendor id='0x8086'/>
    <iommuGroup number='7'><address domain='0x0000' bus='0x00' slot='0x1c' function='0x0'/></iommuGroup>
  </capability>
</device>"""

USB = """<device>
  <name>usb_1_2</name>
  <parent>usb_usb1</parent>
  <driver><name>usb</name></driver>
  <devnode type='dev'>/dev/bus/usb/001/002</devnode>
  <capability type='usb_device'>
    <bus>1</bus><device>2</device>
    <product id='0x0001'>QEMU USB Tablet</product>
    <vendor id='0x0627'>Adomax Technology Co., Ltd</vendor>
  </capability>
</device>"""

NET = """<device>
  <name>net_eth0_02_fc_00_00_00_01</name>
  <parent>pci_0000_00_03_0</parent>
  <capability type='net'><interface>eth0</interface><address>02:fc:00:00:00:01</address></capability>
</device>"""

DISK = """<device>
  <name>block_vda</name>
  <devnode type='dev'>/dev/vda</devnode>
  <parent>pci_0000_00_02_0</parent>
  <capability type='storage'><block>/dev/vda</block><vendor>0x1af4</vendor></capability>
</device>"""


def test_a_pci_device_without_an_iommu_group_cannot_be_assigned() -> None:
    assert parse_node_device(VIRTIO_NIC) == ("pci_0000_00_03_0", {
        "capability": "pci", "parent": "computer", "driver": "virtio-pci", "vendor_id": "0x1af4",
        "product_id": "0x1041", "is_assignable": "false",
        "address": {"domain": "0", "bus": "0", "slot": "3", "function": "0"}})


def test_an_sriov_function_in_an_iommu_group_can_be_assigned() -> None:
    name, params = parse_node_device(SRIOV_PF)
    assert name == "pci_0000_05_00_0"
    assert params == {
        "capability": "pci", "parent": "pci_0000_00_01_0", "driver": "igb", "vendor": "Intel Corporation",
        "vendor_id": "0x8086", "product": "82576 Gigabit Network Connection", "product_id": "0x10c9",
        "iommu_group": "15", "numa_node": "1", "totalvfs": "7", "is_assignable": "true",
        "address": {"domain": "0", "bus": "5", "slot": "0", "function": "0"}}
    vf = parse_node_device(SRIOV_VF)[1]
    assert vf["physfn"] == "pci_0000_05_00_0" and vf["address"]["slot"] == "16" and "totalvfs" not in vf


def test_bridges_network_and_storage_devices_are_not_assignable_usb_is() -> None:
    assert parse_node_device(BRIDGE)[1]["is_assignable"] == "false"
    usb = parse_node_device(USB)[1]
    assert usb["is_assignable"] == "true" and usb["address"] == {"bus": "1", "device": "2"}
    assert usb["udev_path"] == "/dev/bus/usb/001/002" and usb["vendor_id"] == "0x0627"
    net = parse_node_device(NET)[1]
    assert (net["capability"], net["interface"], net["is_assignable"]) == ("net", "eth0", "false")
    disk = parse_node_device(DISK)[1]
    assert (disk["block_path"], disk["udev_path"], disk["is_assignable"]) == ("/dev/vda", "/dev/vda", "false")


KNOWN = {name: {"params": parse_node_device(xml)[1]}
         for name, xml in (("pci_0000_00_03_0", VIRTIO_NIC), ("pci_0000_05_00_0", SRIOV_PF), ("usb_1_2", USB))}


def hostdev(bus: str, slot: str, extra: str = "") -> str:
    return (f"<hostdev mode='subsystem' type='pci' {extra}><source><address domain='0x0000' bus='{bus}' "
            f"slot='{slot}' function='0x0'/></source></hostdev>")


def test_a_plug_names_the_host_device_it_takes() -> None:
    plug = Plug(0, hostdev("0x05", "0x00"))
    assert plug.host_device(KNOWN) == "pci_0000_05_00_0"
    assert "managed=\"yes\"" in plug.xml()  # libvirt takes it from the host and gives it back
    usb = Plug(1, "<hostdev mode='subsystem' type='usb'><source><vendor id='0x0627'/><product id='0x0001'/>"
                  "</source></hostdev>")
    assert usb.host_device(KNOWN) == "usb_1_2"
    assert Plug(2, "<hostdev mode='subsystem' type='usb'><source><address bus='1' device='2'/></source>"
                   "</hostdev>").host_device(KNOWN) == "usb_1_2"


def test_a_device_that_cannot_be_assigned_is_refused_naming_it_and_why() -> None:
    with pytest.raises(HostdevDetachError) as refused:
        Plug(1, hostdev("0x00", "0x03")).host_device(KNOWN)
    assert refused.value.message.startswith("devices[1]: host device pci_0000_00_03_0 cannot be assigned to a VM: "
                                            "it is in no IOMMU group")
    with pytest.raises(NoSuchDevice, match=r"devices\[0\]: no host device at PCI address 0000_7f_1f_7"):
        Plug(0, "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0x7f' slot='0x1f' "
                "function='7'/></source></hostdev>").host_device(KNOWN)


@pytest.mark.parametrize("xml, why", [
    ("<hostdev", "devices[0]"),
    ("<disk type='file'/>", "expected a <hostdev mode='subsystem'>"),
    ("<hostdev mode='capabilities' type='storage'/>", "expected a <hostdev mode='subsystem'>"),
    ("<hostdev mode='subsystem' type='scsi'><source/></hostdev>", "Pier assigns pci and usb"),
    ("<hostdev mode='subsystem' type='pci'><source><address bus='1'/></source></hostdev>", "names no host device"),
    (hostdev("0x05", "0x00", "managed='no'"), "managed='no'"),
    ("<!DOCTYPE x [<!ENTITY e 'x'>]><hostdev mode='subsystem' type='pci'/>", "devices[0]"),
])
def test_bad_hostdev_xml_is_refused_naming_the_device(xml: str, why: str) -> None:
    with pytest.raises(InvalidParams) as refused:
        Plug(0, xml)
    assert why in refused.value.message and refused.value.message.startswith("devices[0]")


class RecordingDomain:
    """Stands in for `pier.host.domain.Domain`: keeps the <hostdev>s attached; refuses the
    attach number `refuse_at` (from 0)."""

    vm_id = "6f1e3e4c-1111-4222-8333-444455556666"

    def __init__(self, refuse_at: int | None = None) -> None:
        self.refuse_at = refuse_at
        self.attached: list[str] = []
        self.attempts = 0

    def attach(self, xml: str, error: type[PierError]) -> None:
        self.attempts += 1
        if self.attempts - 1 == self.refuse_at:
            raise error("cannot attach a device to VM: libvirt said no")
        self.attached.append(xml)

    def is_active(self) -> bool:
        return True

    def xml(self, inactive: bool = False) -> DomainXml:
        return DomainXml.parse(f"<domain><devices>{''.join(self.attached)}</devices></domain>")

    def affect_flags(self) -> int:
        return 3

    def errors(self, action: str, error: type[PierError]) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @property
    def virdomain(self) -> RecordingDomain:
        return self

    def detachDeviceFlags(self, xml: str, flags: int) -> None:  # noqa: N802 (libvirt's name)
        source = _source_key(ET.fromstring(xml))
        self.attached = [held for held in self.attached if _source_key(ET.fromstring(held)) != source]


class KnownDevices(HostDevices):
    def __init__(self) -> None:
        super().__init__(connection=None, sysfs_root="/nonexistent")  # type: ignore[arg-type]

    def list_by_caps(self, caps: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        return {**KNOWN, "pci_0000_05_10_0": {"params": parse_node_device(SRIOV_VF)[1]}}


@pytest.mark.parametrize("refuse_at", [None, 1])
def test_hotplug_is_all_or_nothing(monkeypatch: pytest.MonkeyPatch, refuse_at: int | None) -> None:
    domain = RecordingDomain(refuse_at)
    monkeypatch.setattr(Domain, "lookup", classmethod(lambda cls, connection, vm_id: domain))
    devices = [hostdev("0x05", "0x00"), hostdev("0x05", "0x10")]
    if refuse_at is None:
        assert KnownDevices().hotplug(domain.vm_id, devices) == devices
        assert [_source_key(ET.fromstring(xml)) for xml in domain.attached] == [("pci", 0, 5, 0, 0), ("pci", 0, 5, 16, 0)]
        KnownDevices().hotunplug(domain.vm_id, devices[:1])
        assert [_source_key(ET.fromstring(xml)) for xml in domain.attached] == [("pci", 0, 5, 16, 0)]
        return
    with pytest.raises(HostdevDetachError, match="libvirt said no"):
        KnownDevices().hotplug(domain.vm_id, devices)
    assert domain.attempts == 2 and domain.attached == []  # the first one was taken back

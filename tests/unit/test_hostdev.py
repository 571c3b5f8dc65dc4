"""Host devices: libvirt's node device XML in VDSM's HostDevice shape."""

from __future__ import annotations

from pier.host.hostdev import parse_node_device

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


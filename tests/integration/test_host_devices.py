"""Host devices through a running pierd: this machine's own (the real libvirtd's node devices)
and those of a test-driver host. Assigning a PCI device is not possible on this machine (it has
no IOMMU), so a hotplug here must be refused with the reason, and leave the VM and the device
as they were."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.clients import CallFailed, RestClient, WsClient
from tests.integration.conftest import Pierd

DATA = Path(__file__).parent / "data"
IOMMU_GROUPS = Path("/sys/kernel/iommu_groups")


def node_devices(uri: str) -> dict[str, list[str]]:
    libvirt.registerErrorHandler(lambda *args: None, None)
    conn = libvirt.open(uri)
    try:
        return {device.name(): device.listCaps() for device in conn.listAllDevices(0)}
    finally:
        conn.close()


def pci_driver(name: str) -> str | None:
    """The kernel driver bound to PCI device `name` (pci_0000_00_03_0), from sysfs."""
    slot = "{}:{}:{}.{}".format(*name.removeprefix("pci_").split("_"))
    link = Path("/sys/bus/pci/devices") / slot / "driver"
    return link.resolve().name if link.exists() else None


@pytest.fixture
def system_pierd(tmp_path: Path, system_libvirt: str) -> Iterator[Pierd]:
    daemon = Pierd(tmp_path / "state", system_libvirt)
    yield daemon
    assert daemon.stop() == 0


def test_this_hosts_devices_are_listed_as_libvirt_sees_them(system_pierd: Pierd) -> None:
    rest = RestClient(system_pierd.http, system_pierd.token)
    devices = rest.call("Host.hostdevListByCaps")
    libvirt_sees = node_devices("qemu:///system")
    assert set(devices) == set(libvirt_sees)
    pcis = {name: device["params"] for name, device in devices.items() if device["params"]["capability"] == "pci"}
    assert pcis and set(pcis) == {name for name, caps in libvirt_sees.items() if "pci" in caps}
    has_iommu = IOMMU_GROUPS.is_dir() and any(IOMMU_GROUPS.iterdir())
    for name, params in pcis.items():
        assert params.get("driver") == pci_driver(name)
        assert params["vendor_id"] == (Path("/sys/bus/pci/devices") / "{}:{}:{}.{}".format(
            *name.removeprefix("pci_").split("_")) / "vendor").read_text().strip()
        assert ("iommu_group" in params) == has_iommu
        if not has_iommu:
            assert params["is_assignable"] == "false"
    nets = rest.call("Host.hostdevListByCaps", caps=["net"])
    assert nets and all(device["params"]["capability"] == "net" for device in nets.values())
    assert {device["params"]["interface"] for device in nets.values()} >= {
        link.name for link in Path("/sys/class/net").iterdir() if (link / "device").exists()}


@pytest.mark.skipif(any(IOMMU_GROUPS.glob("*")), reason="this host has an IOMMU: its devices could be assigned")
def test_hotplug_of_a_device_that_cannot_be_assigned_leaves_everything_as_it_was(system_pierd: Pierd) -> None:
    client = WsClient(system_pierd.ws, system_pierd.token)
    pcis = client.call("Host.hostdevListByCaps", caps=["pci"])
    name, params = next((name, device["params"]) for name, device in pcis.items()
                        if device["params"].get("driver"))
    address = params["address"]
    hostdev = (f"<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='{address['domain']}' "
               f"bus='{address['bus']}' slot='{address['slot']}' function='{address['function']}'/></source></hostdev>")
    vm_id = str(uuid.uuid4())
    libvirt.registerErrorHandler(lambda *args: None, None)
    conn = libvirt.open("qemu:///system")
    dom = conn.defineXML(f"<domain type='qemu'><name>pier-test-hostdev-{vm_id[:8]}</name><uuid>{vm_id}</uuid>"
                         "<memory unit='MiB'>32</memory><os><type>hvm</type></os></domain>")
    try:
        before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        driver = pci_driver(name)
        with pytest.raises(CallFailed) as refused:
            client.call("VM.hotplugHostdev", vmID=vm_id, devices=[hostdev])
        assert refused.value.code == 83, refused.value
        assert f"host device {name} cannot be assigned to a VM: it is in no IOMMU group" in refused.value.message
        with pytest.raises(CallFailed) as absent:
            client.call("VM.hotplugHostdev", vmID=vm_id, devices=[hostdev.replace(
                f"bus='{address['bus']}'", "bus='127'")])
        assert absent.value.code == -32005 and "devices[0]: no host device at PCI address" in absent.value.message
        with pytest.raises(CallFailed) as no_vm:
            client.call("VM.hotplugHostdev", vmID=str(uuid.uuid4()), devices=[hostdev])
        assert no_vm.value.code == 1
        client.call("Host.hostdevReattach", deviceName=name)  # it is with the host: nothing to do
        assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
        assert pci_driver(name) == driver
        lspci = subprocess.run(["virsh", "-c", "qemu:///system", "nodedev-dumpxml", name],
                               capture_output=True, text=True, check=True).stdout
        assert f"<name>{driver}</name>" in lspci
    finally:
        dom.undefine()
        conn.close()
        client.close()


def test_a_test_driver_hosts_devices_and_virtual_functions(tmp_path: Path) -> None:
    path = tmp_path / "testnode.xml"
    shutil.copy(DATA / "testnode-devices.xml", path)
    pierd = Pierd(tmp_path / "state", f"test://{path}")
    try:
        rest = RestClient(pierd.http, pierd.token)
        devices = rest.call("Host.hostdevListByCaps", caps=["pci", "usb_device"])
        assert set(devices) == {"pci_0000_00_02_0", "pci_0000_02_00_0", "usb_1_2"}
        assert devices["pci_0000_02_00_0"]["params"]["is_assignable"] == "true"
        assert devices["usb_1_2"]["params"]["product"] == "QEMU USB Tablet"
        with pytest.raises(CallFailed) as too_many:
            rest.call("Host.hostdevChangeNumvfs", deviceName="pci_0000_02_00_0", numvfs=8)
        assert too_many.value.status == 400 and "at most 7" in too_many.value.message
        with pytest.raises(CallFailed) as unknown:
            rest.call("Host.hostdevReattach", deviceName="pci_0000_7f_1f_7")
        assert unknown.value.status == 404
    finally:
        assert pierd.stop() == 0

"""Host devices through a running pierd: this machine's own (the real libvirtd's node devices)
and those of a test-driver host."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.clients import CallFailed, RestClient
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

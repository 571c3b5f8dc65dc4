"""Host.getHardwareInfo's facts: empty on a machine without SMBIOS, hwInfoErr when they are
there but cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest

from pier.host import capabilities
from pier.host.capabilities import HostFacts
from pier.rpc.errors import HardwareInfoError


def test_without_dmi_and_without_libvirt_the_facts_cannot_be_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "DMI_DIR", f"{tmp_path}/none/")
    with pytest.raises(HardwareInfoError, match="libvirtd is not reachable"):
        HostFacts("qemu:///system").hardware_info(None)


def test_dmi_facts_need_no_libvirt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("sys_vendor", "Vendor"), ("product_name", "Model"),
                        ("product_version", "1"), ("product_serial", "S1"),
                        ("product_uuid", "u"), ("product_family", "F")):
        (tmp_path / name).write_text(value + "\n")
    monkeypatch.setattr(capabilities, "DMI_DIR", f"{tmp_path}/")
    assert HostFacts("qemu:///system").hardware_info(None) == {
        "systemManufacturer": "Vendor", "systemProductName": "Model", "systemVersion": "1",
        "systemSerialNumber": "S1", "systemUUID": "u", "systemFamily": "F"}

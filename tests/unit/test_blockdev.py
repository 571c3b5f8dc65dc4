"""pier/host/blockdev.py over canned tool output: lsblk's JSON, blkid's probe, LVM's reports, a sysfs tree."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pier.host.blockdev import BlockDevices
from pier.rpc.errors import BlockDeviceActionError, VolumeGroupDoesNotExist


def _dev(name: str, kind: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kname": name, "path": f"/dev/{name}", "type": kind, "size": size, "log-sec": 512,
            "phy-sec": 4096, "disc-max": 0, "mountpoints": [None], "wwn": None, "serial": None, "model": None,
            "vendor": None, "rev": None, "hctl": None, "ro": False, "rm": False, "rota": True, **extra}


LSBLK = {"blockdevices": [
    _dev("sda", "disk", 10 << 30, wwn="0x5000c500a1b2c3d4", serial="ZA1", model="ST1000 ", vendor="ATA     ",
         rev="SN05", hctl="0:0:0:3", children=[_dev("sda1", "part", 1 << 30, start=2048, mountpoints=["/boot"])]),
    _dev("vdb", "disk", 1 << 30, serial="data-disk", vendor="0x1af4"),
    _dev("vdc", "disk", 1 << 30, serial="twin"),
    _dev("vdd", "disk", 1 << 30, serial="twin"),
    _dev("vde", "disk", 1 << 30, serial="x/y z", model="QEMU HARDDISK"),
    _dev("loop0", "loop", 64 << 20),
    _dev("loop1", "loop", 0),
    _dev("sr0", "rom", 1 << 20),
]}
BLKID = {"/dev/sda": "PTTYPE=gpt\n", "/dev/vdb": "TYPE=LVM2_member\nUSAGE=raid\n", "/dev/sda1": "TYPE=ext4\n"}
PVS = {"report": [{"pv": [{"pv_name": "/dev/vdb", "pv_uuid": "pv-uuid-1", "pv_size": "1069547520",
                          "vg_name": "vg1", "vg_uuid": "vg-uuid-1"}]}]}
VGS = {"report": [{"vg": [{"vg_name": "vg1", "vg_uuid": "vg-uuid-1", "vg_size": "1069547520",
                          "vg_free": "1069547520", "vg_attr": "wz--n-", "vg_extent_size": "4194304"}]}]}


class Tools:
    """Answers as the real tools would; `missing` names tools that are not installed."""

    def __init__(self, missing: Sequence[str] = ()) -> None:
        self.missing = set(missing)
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        if argv[0] in self.missing:
            return 127, ""
        if argv[0] == "lsblk":
            return 0, json.dumps(LSBLK)
        if argv[0] == "blkid":
            out = BLKID.get(argv[-1])
            return (0, out) if out else (2, "")
        return 0, json.dumps({"pvs": PVS, "vgs": VGS}[argv[0]])


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    for name in ("sda", "vdb", "vdc", "vdd", "vde", "loop0"):
        (tmp_path / "block" / name / "holders").mkdir(parents=True)
    (tmp_path / "block" / "sda" / "sda1" / "holders").mkdir(parents=True)
    (tmp_path / "block" / "vdc" / "holders" / "dm-0").mkdir()
    (tmp_path / "block" / "loop0" / "loop").mkdir()
    (tmp_path / "block" / "loop0" / "loop" / "backing_file").write_text("/var/tmp/disk.img\n")
    return tmp_path


def _by_name(devices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {dev["name"]: dev for dev in devices}


def test_disks_and_loop_devices_of_some_size_are_listed_with_vdsms_fields(sysfs: Path) -> None:
    devices = _by_name(BlockDevices(Tools(), sysfs).devices())
    assert sorted(devices) == ["loop0", "sda", "vdb", "vdc", "vdd", "vde"]  # not a 0-byte loop, not a CD-ROM
    sda = devices["sda"]
    assert sda["GUID"] == "35000c500a1b2c3d4" and sda["guidSource"] == "wwn"
    assert (sda["capacity"], sda["vendorID"], sda["productID"], sda["serial"], sda["fwrev"]) == \
        (str(10 << 30), "ATA", "ST1000", "ZA1", "SN05")
    assert (sda["logicalblocksize"], sda["physicalblocksize"], sda["devtype"]) == ("512", "4096", "")
    assert sda["pathstatus"] == [{"physdev": "sda", "state": "active", "capacity": str(10 << 30), "type": "",
                                  "lun": "3"}]
    assert sda["partitioned"] is True and sda["pttype"] == "gpt"
    assert sda["partitions"] == [{"name": "sda1", "path": "/dev/sda1", "capacity": str(1 << 30), "start": 2048,
                                  "fstype": "ext4", "partuuid": "", "mountpoints": ["/boot"],
                                  "usedBy": ["mounted at /boot", "filesystem signature (ext4)"]}]
    assert sda["status"] == "used" and sda["usedBy"] == [
        "partition table (gpt)", "sda1: mounted at /boot", "sda1: filesystem signature (ext4)"]
    assert devices["loop0"]["GUID"] == "loop0" and devices["loop0"]["guidSource"] == "name"
    assert devices["loop0"]["backingFile"] == "/var/tmp/disk.img"
    assert devices["loop0"]["status"] == "free" and devices["loop0"]["inUse"] is False
    assert devices["loop0"]["partitioned"] is False and devices["loop0"]["usedBy"] == []


def test_a_guid_from_model_and_serial_holds_only_what_a_guid_may(sysfs: Path) -> None:
    vde = _by_name(BlockDevices(Tools(), sysfs).devices())["vde"]
    assert (vde["GUID"], vde["guidSource"]) == ("QEMU_HARDDISK_x_y_z", "serial")


def test_a_pv_is_used_and_names_its_pv_and_vg(sysfs: Path) -> None:
    vdb = _by_name(BlockDevices(Tools(), sysfs).devices())["vdb"]
    assert (vdb["GUID"], vdb["guidSource"]) == ("data-disk", "serial")
    assert (vdb["pvUUID"], vdb["pvsize"], vdb["vgUUID"]) == ("pv-uuid-1", "1069547520", "vg-uuid-1")
    assert vdb["status"] == "used" and vdb["usedBy"] == ["LVM physical volume"]


def test_a_held_device_is_used_and_a_shared_serial_falls_back_to_kernel_names(sysfs: Path) -> None:
    devices = _by_name(BlockDevices(Tools(), sysfs).devices())
    assert devices["vdc"]["usedBy"] == ["held by dm-0"] and devices["vdc"]["status"] == "used"
    assert [(devices[n]["GUID"], devices[n]["guidSource"]) for n in ("vdc", "vdd")] == [("vdc", "name"),
                                                                                       ("vdd", "name")]


def test_guids_filter_and_unchecked_status(sysfs: Path) -> None:
    found = BlockDevices(Tools(), sysfs).devices(["loop0", "no-such-guid"], check_status=False)
    assert [(dev["GUID"], dev["status"]) for dev in found] == [("loop0", "unknown")]


def test_visibility_is_known_and_readable(sysfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pier.host.blockdev.os.access", lambda path, mode: path != "/dev/vdb")
    assert BlockDevices(Tools(), sysfs).visibility(["loop0", "data-disk", "nope"]) == \
        {"loop0": True, "data-disk": False, "nope": False}


def test_without_lvm_there_are_no_pvs_and_no_volume_groups(sysfs: Path) -> None:
    devices = BlockDevices(Tools(missing=["pvs", "vgs"]), sysfs)
    assert all(dev["pvUUID"] == "" for dev in devices.devices())
    assert devices.volume_groups() == []


def test_volume_groups_from_lvms_report(sysfs: Path) -> None:
    devices = BlockDevices(Tools(), sysfs)
    [group] = devices.volume_groups()
    assert group == {"vgUUID": "vg-uuid-1", "name": "vg1", "vgsize": "1069547520", "vgfree": "1069547520",
                     "attr": {"permission": "w", "resizeable": "z", "exported": "-", "partial": "-",
                              "allocation": "n", "clustered": "-"},
                     "state": "OK", "type": 0, "extentsize": "4194304",
                     "pvlist": [{"pvUUID": "pv-uuid-1", "path": "/dev/vdb", "guid": "data-disk",
                                 "pvsize": "1069547520"}]}
    assert devices.volume_group("vg1") == devices.volume_group("vg-uuid-1") == group
    with pytest.raises(VolumeGroupDoesNotExist):
        devices.volume_group("other")


def test_a_failing_lsblk_is_a_clear_error(sysfs: Path) -> None:
    with pytest.raises(BlockDeviceActionError, match="lsblk"):
        BlockDevices(Tools(missing=["lsblk"]), sysfs).devices()

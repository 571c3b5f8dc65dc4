"""This host's block devices and LVM volume groups, as VDSM's Host.getDeviceList and getVGList show them.

Facts come from the real tools: `lsblk --json --bytes -O` (devices, sizes, vendor, model, serial,
partitions, mount points; read from sysfs), `blkid -p` (a partition table or a filesystem / LVM
signature, probed on the device itself, since lsblk's FSTYPE and PTTYPE come from a udev database
that a host without udev does not have), sysfs `holders/` (a device-mapper or md user), and LVM's
`pvs` / `vgs` JSON reports when LVM is installed (without it there are no PVs and no VGs).

Listed: whole disks and loop devices of non-zero size (partitions appear inside their disk).
VDSM lists multipath devices and names each by its multipath WWID; Pier runs no multipath, so a
device's `GUID` is, in order: its WWN as multipath would name it (`3` + the NAA hex of a SCSI
`0x...` WWN, otherwise the WWN as the kernel gives it), else `<model>_<serial>` (or the serial
alone) as udev's ID_SERIAL reads (characters other than `A-Za-z0-9#+.:=@_-` made `_`, at most 128),
else the kernel name (`loop3`, `vda`). A GUID two devices would
share falls back to each one's kernel name. `guidSource` says which rule gave it.

A device is in use (`status: used`, VDSM's meaning: `pvcreate` would refuse or destroy something)
when it or one of its partitions is mounted, has holders, carries a partition table, or has a
filesystem or LVM signature; `usedBy` names each reason.

Block storage domains are not served: LVM logical volumes need kernel device-mapper targets
(`DEVICE_MAPPER_MISSING` says so in each error).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pier.rpc.errors import BlockDeviceActionError, VolumeGroupDoesNotExist

log = logging.getLogger(__name__)

DEVICE_MAPPER_MISSING = (
    "block (LVM) storage needs kernel device-mapper targets, which this host's kernel lacks "
    "(lvcreate fails with \"Required device-mapper target(s) not detected\"), so Pier serves file domains only")

LISTED_TYPES = ("disk", "loop")
COMMAND_TIMEOUT = 30.0
LVM_ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}

# what a GUID may hold (udev's ID_SERIAL characters); any other character becomes "_"
_GUID_UNSAFE = re.compile(r"[^A-Za-z0-9#+.:=@_-]")

Runner = Callable[[Sequence[str]], tuple[int, str]]


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run a tool; (exit code, stdout). A tool that is not installed answers (127, '')."""
    if shutil.which(argv[0]) is None:
        return 127, ""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              env={**os.environ, **LVM_ENV}, check=False)
    except subprocess.TimeoutExpired:
        raise BlockDeviceActionError(f"{argv[0]} did not answer within {COMMAND_TIMEOUT:.0f} s") from None
    if done.returncode not in (0, 2) and done.stderr.strip():  # blkid: 2 = nothing found
        log.debug("%s: exit %d: %s", " ".join(argv), done.returncode, done.stderr.strip())
    return done.returncode, done.stdout


class BlockDevices:
    """Implements `pier.host.services.BlockDeviceService` with lsblk, blkid, sysfs and LVM's reports."""

    def __init__(self, run: Runner = run_command, sysfs_root: str | Path = "/sys") -> None:
        self._run = run
        self._sys_block = Path(sysfs_root) / "block"

    # -- devices -------------------------------------------------------------------------------

    def devices(self, guids: Iterable[str] | None = None, check_status: bool = True) -> list[dict[str, Any]]:
        """Every listed device (or those whose GUID is in `guids`) with VDSM's BlockDeviceInfo fields."""
        raw = [dev for dev in self._lsblk() if dev.get("type") in LISTED_TYPES and int(dev.get("size") or 0) > 0]
        pvs = self._pvs()
        found = [self._device(dev, pvs, check_status) for dev in raw]
        _unique_guids(found)
        if guids is not None:
            wanted = set(guids)
            found = [dev for dev in found if dev["GUID"] in wanted]
        return found

    def visibility(self, guids: Iterable[str]) -> dict[str, bool]:
        """For each GUID: whether a listed device has it and its node can be opened for reading."""
        paths = {dev["GUID"]: dev["path"] for dev in self.devices(check_status=False)}
        return {guid: guid in paths and os.access(paths[guid], os.R_OK) for guid in guids}

    def _guids_by_path(self) -> dict[str, str]:
        """The GUID of each listed device and the kernel name of each partition, by device path."""
        found: list[dict[str, Any]] = []
        names: dict[str, str] = {}
        for dev in self._lsblk():
            kname = str(dev.get("kname") or dev.get("name"))
            guid, source = _guid(dev, kname)
            found.append({"GUID": guid, "guidSource": source, "name": kname, "path": dev.get("path")})
            names.update({str(c.get("path")): str(c.get("kname") or c.get("name")) for c in dev.get("children") or []})
        _unique_guids(found)
        return {**names, **{str(dev["path"]): dev["GUID"] for dev in found}}

    def _lsblk(self) -> list[dict[str, Any]]:
        code, out = self._run(["lsblk", "--json", "--bytes", "-O"])
        if code != 0:
            raise BlockDeviceActionError(f"lsblk failed (exit {code}): cannot list this host's block devices")
        try:
            return list(json.loads(out).get("blockdevices") or [])
        except (ValueError, AttributeError) as exc:
            raise BlockDeviceActionError(f"lsblk answered what is not its JSON report: {exc}") from None

    def _probe(self, path: str) -> dict[str, str]:
        """blkid's low-level probe of one device: TYPE, PTTYPE, UUID, ... ({} when nothing is found)."""
        code, out = self._run(["blkid", "-p", "-o", "export", path])
        if code != 0:
            return {}
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def _holders(self, kname: str, parent: str | None = None) -> list[str]:
        directory = self._sys_block / (parent or kname)
        if parent:
            directory = directory / kname
        try:
            return sorted(os.listdir(directory / "holders"))
        except OSError:
            return []

    def _device(self, dev: dict[str, Any], pvs: dict[str, dict[str, Any]], check_status: bool) -> dict[str, Any]:
        kname = str(dev.get("kname") or dev.get("name"))
        path = str(dev.get("path") or f"/dev/{kname}")
        size = int(dev.get("size") or 0)
        probe = self._probe(path)
        used_by: list[str] = []
        partitions = []
        for child in dev.get("children") or []:
            if child.get("type") != "part":
                continue
            part = self._partition(child, kname)
            partitions.append(part)
            used_by += [f"{part['name']}: {reason}" for reason in part["usedBy"]]
        used_by = _use_reasons(dev, probe, self._holders(kname)) + used_by
        pv = pvs.get(path, {})
        guid, source = _guid(dev, kname)
        info: dict[str, Any] = {
            "GUID": guid,
            "capacity": str(size),
            "devtype": "",
            "fwrev": _text(dev.get("rev")),
            "logicalblocksize": str(dev.get("log-sec") or ""),
            "physicalblocksize": str(dev.get("phy-sec") or ""),
            "pathlist": [],
            "pathstatus": [{"physdev": kname, "state": "active", "capacity": str(size), "type": "",
                            "lun": _lun(dev.get("hctl"))}],
            "productID": _text(dev.get("model")),
            "vendorID": _text(dev.get("vendor")),
            "serial": _text(dev.get("serial")),
            "pvUUID": pv.get("pv_uuid", ""),
            "pvsize": str(pv.get("pv_size", "")),
            "vgUUID": pv.get("vg_uuid", ""),
            "discard_max_bytes": int(dev.get("disc-max") or 0),
            "discard_zeroes_data": 0,
            "partitioned": bool(partitions) or bool(probe.get("PTTYPE")),
            "status": ("used" if used_by else "free") if check_status else "unknown",
            # Pier's own fields
            "name": kname,
            "path": path,
            "type": str(dev.get("type")),
            "guidSource": source,
            "inUse": bool(used_by),
            "usedBy": used_by,
            "fstype": probe.get("TYPE", ""),
            "pttype": probe.get("PTTYPE", ""),
            "partitions": partitions,
            "mountpoints": _mountpoints(dev),
            "readonly": bool(dev.get("ro")),
            "removable": bool(dev.get("rm")),
            "rotational": bool(dev.get("rota")),
        }
        if dev.get("type") == "loop":
            info["backingFile"] = self._backing_file(kname)
        return info

    def _partition(self, part: dict[str, Any], parent: str) -> dict[str, Any]:
        kname = str(part.get("kname") or part.get("name"))
        path = str(part.get("path") or f"/dev/{kname}")
        probe = self._probe(path)
        return {"name": kname, "path": path, "capacity": str(int(part.get("size") or 0)),
                "start": int(part.get("start") or 0), "fstype": probe.get("TYPE", ""),
                "partuuid": _text(part.get("partuuid")) or probe.get("PART_ENTRY_UUID", ""),
                "mountpoints": _mountpoints(part),
                "usedBy": _use_reasons(part, probe, self._holders(kname, parent))}

    def _backing_file(self, kname: str) -> str:
        try:
            return (self._sys_block / kname / "loop" / "backing_file").read_text().strip()
        except OSError:
            return ""

    # -- LVM -----------------------------------------------------------------------------------

    def _pvs(self) -> dict[str, dict[str, Any]]:
        """LVM's physical volumes by device path ({} when LVM is not installed)."""
        rows = self._lvm_report(["pvs", "-o", "pv_name,pv_uuid,pv_size,vg_name,vg_uuid"], "pv")
        return {str(row.get("pv_name")): row for row in rows}

    def volume_groups(self) -> list[dict[str, Any]]:
        """Every LVM volume group on this host, with VDSM's VolumeGroupInfo fields."""
        rows = self._lvm_report(["vgs", "-o", "vg_name,vg_uuid,vg_size,vg_free,vg_attr,vg_extent_size"], "vg")
        if not rows:
            return []
        pvs, guids = self._pvs(), self._guids_by_path()
        return [_volume_group(row, [pv for pv in pvs.values() if pv.get("vg_uuid") == row.get("vg_uuid")], guids)
                for row in rows]

    def volume_group(self, vg_uuid: str) -> dict[str, Any]:
        """One volume group by its UUID (LVM's, or its name as VDSM names domain VGs)."""
        for vg in self.volume_groups():
            if vg_uuid in (vg["vgUUID"], vg["name"]):
                return vg
        raise VolumeGroupDoesNotExist(f"Volume Group does not exist: {vg_uuid}", data={"vgUUID": vg_uuid})

    def _lvm_report(self, argv: list[str], kind: str) -> list[dict[str, Any]]:
        code, out = self._run([*argv, "--reportformat", "json", "--units", "b", "--nosuffix"])
        if code == 127:
            return []  # LVM is not installed: no PVs, no VGs
        if code != 0:
            raise BlockDeviceActionError(f"{argv[0]} failed (exit {code}): cannot read LVM's {kind}s")
        try:
            reports = json.loads(out).get("report") or []
        except (ValueError, AttributeError) as exc:
            raise BlockDeviceActionError(f"{argv[0]} answered what is not its JSON report: {exc}") from None
        return [row for report in reports for row in report.get(kind) or []]


def _volume_group(row: dict[str, Any], pvs: list[dict[str, Any]], guids: dict[str, str]) -> dict[str, Any]:
    attr = str(row.get("vg_attr") or "------").ljust(6, "-")
    names = ("permission", "resizeable", "exported", "partial", "allocation", "clustered")
    return {"vgUUID": str(row.get("vg_uuid", "")), "name": str(row.get("vg_name", "")),
            "vgsize": str(row.get("vg_size", "")), "vgfree": str(row.get("vg_free", "")),
            "attr": dict(zip(names, attr[:6], strict=True)), "state": "PARTIAL" if attr[3] == "p" else "OK",
            "type": 0, "extentsize": str(row.get("vg_extent_size", "")),
            "pvlist": [{"pvUUID": str(pv.get("pv_uuid", "")), "path": str(pv.get("pv_name", "")),
                        "guid": guids.get(str(pv.get("pv_name")), os.path.basename(str(pv.get("pv_name", "")))), "pvsize": str(pv.get("pv_size", ""))}
                       for pv in pvs]}


def _use_reasons(dev: dict[str, Any], probe: dict[str, str], holders: list[str]) -> list[str]:
    reasons = [f"mounted at {point}" for point in _mountpoints(dev)]
    if holders:
        reasons.append(f"held by {', '.join(holders)}")
    if probe.get("PTTYPE"):
        reasons.append(f"partition table ({probe['PTTYPE']})")
    if probe.get("TYPE") == "LVM2_member":
        reasons.append("LVM physical volume")
    elif probe.get("TYPE"):
        reasons.append(f"{probe.get('USAGE') or 'filesystem'} signature ({probe['TYPE']})")
    return reasons


def _mountpoints(dev: dict[str, Any]) -> list[str]:
    points = dev.get("mountpoints") or [dev.get("mountpoint")]
    return [str(point) for point in points if point]


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def _lun(hctl: Any) -> str:
    return str(hctl).rsplit(":", 1)[-1] if hctl else "0"


def _guid(dev: dict[str, Any], kname: str) -> tuple[str, str]:
    wwn = _text(dev.get("wwn"))
    if wwn:
        return _GUID_UNSAFE.sub("_", "3" + wwn[2:] if wwn.lower().startswith("0x") else wwn)[:128], "wwn"
    serial = _text(dev.get("serial"))
    if serial:
        model = _text(dev.get("model"))
        return _GUID_UNSAFE.sub("_", f"{model}_{serial}" if model else serial)[:128], "serial"
    return kname, "name"


def _unique_guids(devices: list[dict[str, Any]]) -> None:
    counts: dict[str, int] = {}
    for dev in devices:
        counts[dev["GUID"]] = counts.get(dev["GUID"], 0) + 1
    for dev in devices:
        if counts[dev["GUID"]] > 1:
            dev["GUID"], dev["guidSource"] = dev["name"], "name"

"""Disks of a VM that name a volume as VDSM's drive spec does (domainID, poolID, imageID,
volumeID), in VM.create and VM.hotplugDisk: the image is prepared before the disk is made, the
disk gets the leaf's path (replacing any it gave), its format and its chain (leaf first), and the
image is torn down when the disk is unplugged or the VM goes.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, NamedTuple

from pier.host.services import VolumeService
from pier.rpc.errors import MissingParam

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
_FORMATS = {"COW": "qcow2", "RAW": "raw"}


class _Prepared(NamedTuple):
    sd: str
    img: str
    vol: str
    path: str


def names_volume(drive: dict[str, Any]) -> bool:
    """Whether a disk (a VM.create device or a hotplugged drive) names a volume rather than a path."""
    return drive.get("deviceType", "disk") == "disk" and drive.get("device", "disk") == "disk" \
        and bool(drive.get("volumeID"))


class Drives:
    """Which images each VM's disks prepared, so they are torn down when they go."""

    def __init__(self, volumes: VolumeService) -> None:
        self._volumes = volumes
        self._lock = threading.Lock()
        self._prepared: dict[str, list[_Prepared]] = {}

    def prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        """vmParams with each volume disk given its path, format and volumeChain; the params as they
        were when no disk names a volume. A failure tears down what it prepared; on success the
        caller `remember`s the VM it made, or `discard`s the params when none was made."""
        if not any(names_volume(d) for d in params.get("devices") or []):
            return params
        params = copy.deepcopy(params)
        prepared: list[_Prepared] = []
        try:
            for index, device in enumerate(params["devices"]):
                if names_volume(device):
                    prepared.append(self._prepare(device, f"vmParams.devices.{index}"))
        except BaseException:
            self._teardown(prepared)
            raise
        return params

    def prepare_drive(self, vm_id: str, drive: dict[str, Any], where: str = "params.drive") -> dict[str, Any]:
        """A hotplugged drive naming a volume, prepared (as `prepare` does for VM.create) and kept
        under the VM; `release` undoes it when the plug fails."""
        drive = copy.deepcopy(drive)
        self._keep(vm_id, [self._prepare(drive, where)])
        return drive

    def remember(self, vm_id: str, params: dict[str, Any]) -> None:
        """Keep the images `prepare` gave params under the VM made from them."""
        self._keep(vm_id, _prepared_in(params))

    def discard(self, params: dict[str, Any]) -> None:
        """Tear down the images `prepare` gave params for a VM that was not made."""
        self._teardown(_prepared_in(params))

    def release(self, vm_id: str, keep_paths: set[str] | None = None) -> None:
        """Tear down the images of the VM's disks whose path is not in keep_paths (None: all of
        them, as when the VM goes)."""
        with self._lock:
            held = self._prepared.pop(vm_id, [])
            kept = [p for p in held if keep_paths is not None and p.path in keep_paths]
            if kept:
                self._prepared[vm_id] = kept
        self._teardown([p for p in held if p not in kept])

    def moved(self, vm_id: str, old_path: str, sd: str, img: str, vol: str, new_path: str) -> None:
        """The VM's disk that used `old_path` now uses volume `vol` at `new_path` (after a snapshot
        or an active merge): the image stays prepared under its new leaf."""
        with self._lock:
            held = self._prepared.get(vm_id, [])
            self._prepared[vm_id] = [_Prepared(sd, img, vol, new_path) if p.path == old_path else p for p in held]

    def _prepare(self, device: dict[str, Any], where: str) -> _Prepared:
        missing = [key for key in ("domainID", "imageID") if not device.get(key)]
        if missing:
            raise MissingParam(f"{where}: a disk naming volume {device['volumeID']} needs {' and '.join(missing)}",
                               data={"field": f"{where}.{missing[0]}"})
        sd, img, vol = str(device["domainID"]), str(device["imageID"]), str(device["volumeID"])
        self._volumes.check_pool(device.get("poolID") or BLANK_UUID)
        found = self._volumes.prepare(sd, img, vol)
        try:
            chain = []
            for entry in found["imgVolumesInfo"]:
                info = self._volumes.info(BLANK_UUID, sd, img, entry["volumeID"])
                chain.append({"volumeID": entry["volumeID"], "path": entry["path"],
                              "format": _FORMATS[info["format"]]})
        except BaseException:
            self._volumes.teardown(sd, img, vol)
            raise
        device["path"] = found["path"]
        device["format"] = chain[-1]["format"]
        device["volumeChain"] = chain[::-1]  # the leaf first, as libvirt's backingStore nests
        return _Prepared(sd, img, vol, found["path"])

    def _keep(self, vm_id: str, prepared: list[_Prepared]) -> None:
        if not prepared:
            return
        with self._lock:
            self._prepared.setdefault(vm_id, []).extend(prepared)

    def _teardown(self, prepared: list[_Prepared]) -> None:
        for p in prepared:
            try:
                self._volumes.teardown(p.sd, p.img, p.vol)
            except Exception:  # the image went away meanwhile: nothing is left to tear down
                pass


def _prepared_in(params: dict[str, Any]) -> list[_Prepared]:
    return [_Prepared(d["domainID"], d["imageID"], d["volumeID"], d["path"])
            for d in params.get("devices") or [] if names_volume(d) and d.get("volumeChain")]

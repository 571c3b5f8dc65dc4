"""Disks of a VM that name a volume as VDSM's drive spec does (domainID, poolID, imageID,
volumeID): the image is prepared before the VM is made, the disk gets the leaf's path (replacing
any it gave), its format and its chain (leaf first), and the image is torn down when the VM goes.

The schema still asks every disk for a path (VmDevice): relaxing it for volume disks makes the
OpenAPI fuzzer's schema canonicalizer give up on VM.create, so callers give any absolute path
until it copes; VDSM's engine sends none.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from pier.host.services import VolumeService
from pier.rpc.errors import MissingParam

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
_FORMATS = {"COW": "qcow2", "RAW": "raw"}


def _names_volume(device: dict[str, Any]) -> bool:
    return device.get("deviceType") == "disk" and bool(device.get("volumeID"))


class Drives:
    """Which images each VM's disks prepared, so they are torn down when it goes."""

    def __init__(self, volumes: VolumeService) -> None:
        self._volumes = volumes
        self._lock = threading.Lock()
        self._prepared: dict[str, list[tuple[str, str, str]]] = {}

    def prepare(self, vm_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """vmParams with each volume disk given its path, format and volumeChain; the params as they
        were when no disk names a volume. A failure tears down what it prepared; a disk naming a
        volume without domainID or imageID is refused (MissingParam)."""
        disks = [d for d in params.get("devices") or [] if _names_volume(d)]
        if not disks:
            return params
        params = copy.deepcopy(params)
        prepared: list[tuple[str, str, str]] = []
        try:
            for device in [d for d in params["devices"] if _names_volume(d)]:
                missing = [key for key in ("domainID", "imageID") if not device.get(key)]
                if missing:
                    raise MissingParam(f"a disk naming volume {device['volumeID']} needs {' and '.join(missing)}",
                                       data={"field": f"vmParams.devices.{missing[0]}"})
                sd, img, vol = str(device["domainID"]), str(device["imageID"]), str(device["volumeID"])
                self._volumes.check_pool(device.get("poolID") or BLANK_UUID)
                found = self._volumes.prepare(sd, img, vol)
                prepared.append((sd, img, vol))
                chain = []
                for entry in found["imgVolumesInfo"]:
                    info = self._volumes.info(BLANK_UUID, sd, img, entry["volumeID"])
                    chain.append({"volumeID": entry["volumeID"], "path": entry["path"],
                                  "format": _FORMATS[info["format"]]})
                device["path"] = found["path"]
                device["format"] = chain[-1]["format"]
                device["volumeChain"] = chain[::-1]  # the leaf first, as libvirt's backingStore nests
        except BaseException:
            for sd, img, vol in prepared:
                self._volumes.teardown(sd, img, vol)
            raise
        if vm_id:
            with self._lock:
                self._prepared[vm_id] = prepared
        return params

    def remember(self, vm_id: str, params: dict[str, Any]) -> None:
        """Keep the images of a VM whose id was known only after it was made."""
        volumes = [(d["domainID"], d["imageID"], d["volumeID"]) for d in params.get("devices") or []
                   if d.get("deviceType") == "disk" and d.get("volumeChain")]
        if volumes:
            with self._lock:
                self._prepared.setdefault(vm_id, volumes)

    def teardown(self, vm_id: str) -> None:
        """Tear down the images the VM's disks prepared (none: nothing)."""
        with self._lock:
            prepared = self._prepared.pop(vm_id, [])
        for sd, img, vol in prepared:
            try:
                self._volumes.teardown(sd, img, vol)
            except Exception:  # the image went away meanwhile: nothing is left to tear down
                pass

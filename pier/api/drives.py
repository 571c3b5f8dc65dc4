"""Disks of a VM that name a volume as VDSM's drive spec does (domainID, poolID, imageID,
volumeID) instead of a path: the image is prepared before the VM is made, the disk gets the
leaf's path, its format and its chain (base last), and the image is torn down when the VM goes.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from pier.host.services import VolumeService

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
_FORMATS = {"COW": "qcow2", "RAW": "raw"}


class Drives:
    """Which images each VM's disks prepared, so they are torn down when it goes."""

    def __init__(self, volumes: VolumeService) -> None:
        self._volumes = volumes
        self._lock = threading.Lock()
        self._prepared: dict[str, list[tuple[str, str, str]]] = {}

    def prepare(self, vm_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """vmParams with each volume disk given its path, format and volumeChain; the params as they
        were when no disk names a volume. A failure tears down what it prepared."""
        disks = [d for d in params.get("devices") or []
                 if d.get("deviceType") == "disk" and d.get("volumeID") and not d.get("path")]
        if not disks:
            return params
        params = copy.deepcopy(params)
        prepared: list[tuple[str, str, str]] = []
        try:
            for device in [d for d in params["devices"]
                           if d.get("deviceType") == "disk" and d.get("volumeID") and not d.get("path")]:
                sd, img, vol = device["domainID"], device["imageID"], device["volumeID"]
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

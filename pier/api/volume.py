"""Handlers of the Volume and Image verbs, and of the pool verbs that work on images.

Slow verbs run as tasks; their prechecks refuse bad input (unknown pool, domain, image or volume,
a size that does not parse, a volume with children or in use by a running VM) at the call, before
a task starts. After a restart their reconcilers remove what an interrupted task half-made.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pier.host.services import VmService, VolumeService
from pier.rpc.errors import ImageIsNotLegalChain, InvalidParameterException, VolumeIsBusy
from pier.rpc.registry import CallContext, precheck, reconciler, verb

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
_FORMATS = {"COW": "COW", "RAW": "RAW", "4": "COW", "5": "RAW"}
_ALLOCATIONS = {"SPARSE": "SPARSE", "PREALLOCATED": "PREALLOCATED", "2": "SPARSE", "1": "PREALLOCATED"}
_ROLES = {"LEAF": "LEAF", "INTERNAL": "INTERNAL", "SHARED": "SHARED", "8": "LEAF", "7": "INTERNAL", "6": "SHARED"}
_MOVES = {"1": False, "COPY": False, "2": True, "MOVE": True}


def _code(table: dict[str, Any], value: Any) -> Any:
    """VDSM's names for the numeric codes it also accepts (the schema admits only known ones)."""
    return table[str(value)]


class VolumeApi:
    def __init__(self, volumes: VolumeService, vms: VmService) -> None:
        self._volumes = volumes
        self._vms = vms
        self._claims: dict[str, str] = {}  # a volume's path: what is writing it outside any VM's disks
        self._claims_lock = threading.Lock()

    # -- refusing before a task starts --------------------------------------------------------

    def _used_by(self, prefix: str) -> str | None:
        """The id of a running VM with a disk at `prefix` (a volume's path, or an image directory/)."""
        for vm in self._vms.listing(full=True):
            if vm.get("status") == "Down":
                continue
            for device in vm.get("devices") or []:
                path = str(device.get("path") or "")
                if path and (path == prefix or (prefix.endswith(os.sep) and path.startswith(prefix))):
                    return str(vm["vmId"])
                for entry in device.get("volumeChain") or []:
                    if str(entry.get("path") or "") == prefix:
                        return str(vm["vmId"])
        return None

    def _refuse_busy(self, sd: str, img: str, vol: str | None) -> None:
        if vol is None:
            volumes = self._volumes.volumes_of(sd, img)
            paths = [self._volumes.volume_path(sd, img, v) for v in volumes]
        else:
            paths = [self._volumes.volume_path(sd, img, vol)]
        for path in paths:
            with self._claims_lock:
                claim = self._claims.get(path)
            if claim is not None:
                raise VolumeIsBusy(f"volume {os.path.basename(path)} is in use by {claim}; wait for it to end",
                                   data={"volUUID": os.path.basename(path), "usedBy": claim})
            vm = self._used_by(path)
            if vm is not None:
                raise VolumeIsBusy(f"volume {os.path.basename(path)} is used by running VM {vm}; stop it first",
                                   data={"volUUID": os.path.basename(path), "vmId": vm})

    def refuse_busy(self, sd: str, img: str, vol: str | None) -> None:
        """VolumeIsBusy when a running VM uses the volume (or, without `vol`, any of the image's)."""
        self._refuse_busy(sd, img, vol)

    @contextmanager
    def claimed(self, sd: str, img: str, vol: str, by: str) -> Iterator[None]:
        """The volume is in use by `by` (a hibernation writing it, a restore reading it) for the
        `with` block: deleting or moving it, or claiming it again, is refused as VolumeIsBusy."""
        self._refuse_busy(sd, img, vol)
        path = self._volumes.volume_path(sd, img, vol)
        with self._claims_lock:
            if path in self._claims:
                raise VolumeIsBusy(f"volume {vol} is in use by {self._claims[path]}; wait for it to end",
                                   data={"volUUID": vol, "usedBy": self._claims[path]})
            self._claims[path] = by
        try:
            yield
        finally:
            with self._claims_lock:
                self._claims.pop(path, None)

    @precheck("Volume.create")
    def create_allowed(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str,
                       imageID: str, size: Any, volFormat: Any, preallocate: Any, diskType: str, desc: str,
                       srcImgUUID: str, srcVolUUID: str, **optional: Any) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.check_create(storagedomainID, imageID, volumeID, str(size), _code(_FORMATS, volFormat),
                                   _code(_ALLOCATIONS, preallocate), srcImgUUID, srcVolUUID)

    @precheck("Volume.copy")
    def copy_allowed(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str,
                     imageID: str, dstSdUUID: str, dstImgUUID: str, dstVolUUID: str, **rest: Any) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.check_copy(storagedomainID, imageID, volumeID, dstSdUUID, dstImgUUID, dstVolUUID)

    @precheck("Volume.delete")
    def delete_allowed(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str,
                       imageID: str, **rest: Any) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.check_delete(storagedomainID, imageID, volumeID)
        self._refuse_busy(storagedomainID, imageID, volumeID)

    @precheck("Volume.extendSize")
    def extend_allowed(self, ctx: CallContext, storagepoolID: str, storagedomainID: str, imageID: str,
                       volumeID: str, newSize: Any) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.check_extend(storagedomainID, imageID, volumeID, str(newSize))

    @precheck("Image.delete")
    def delete_image_allowed(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str,
                             **rest: Any) -> None:
        self._volumes.check_pool(storagepoolID)
        self._refuse_busy(storagedomainID, imageID, None)

    @precheck("Image.deleteVolumes")
    def delete_volumes_allowed(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str,
                               volumeList: list[str], **rest: Any) -> None:
        self._volumes.check_pool(storagepoolID)
        for vol in volumeList:
            for child in self._volumes.children_of(storagedomainID, imageID, vol):
                if child not in volumeList:
                    self._volumes.check_delete(storagedomainID, imageID, vol)
            self._refuse_busy(storagedomainID, imageID, vol)

    @precheck("Image.move")
    def move_allowed(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str, dstSdUUID: str,
                     operation: Any, **rest: Any) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.check_move(storagedomainID, imageID, dstSdUUID)
        if _code(_MOVES, operation):
            self._refuse_busy(storagedomainID, imageID, None)

    @precheck("Image.cloneStructure")
    def clone_allowed(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str,
                      dstSdUUID: str) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.check_move(storagedomainID, imageID, dstSdUUID)

    # -- volumes ------------------------------------------------------------------------------

    @verb("Volume.create")
    def create(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str, imageID: str,
               size: Any, volFormat: Any, preallocate: Any, diskType: str, desc: str, srcImgUUID: str,
               srcVolUUID: str, initialSize: Any = None, addBitmaps: bool = False, legal: bool = True,
               sequence: int | None = None, bitmap: str | None = None) -> str:
        self._volumes.check_pool(storagepoolID)
        return self._volumes.create(storagedomainID, imageID, volumeID, str(size), _code(_FORMATS, volFormat),
                                    _code(_ALLOCATIONS, preallocate), diskType, desc, srcImgUUID, srcVolUUID,
                                    initial_size=None if initialSize is None else str(initialSize), legal=legal,
                                    sequence=sequence, progress=ctx.task.progress)

    @reconciler("Volume.create")
    def create_done(self, params: dict[str, Any], step: str | None) -> bool:
        """A create the agent did not finish is removed (it was marked ILLEGAL and pending)."""
        self._volumes.remove_leftovers(params["storagedomainID"], params["imageID"])
        wanted = "LEGAL" if params.get("legal", True) else "ILLEGAL"
        return self._volumes.legality(params["storagedomainID"], params["imageID"], params["volumeID"]) == wanted

    @verb("Volume.copy")
    def copy(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str, imageID: str,
             dstSdUUID: str, dstImgUUID: str, dstVolUUID: str, desc: str, volType: Any, volFormat: Any,
             preallocate: Any, postZero: bool = False, force: bool = False, discard: bool = False) -> str:
        self._volumes.check_pool(storagepoolID)
        ctx.task.step("copying", 1, f"copying volume {volumeID} to {dstSdUUID}")
        return self._volumes.copy_volume(storagedomainID, imageID, volumeID, dstSdUUID, dstImgUUID, dstVolUUID,
                                         desc, _code(_ROLES, volType), _code(_FORMATS, volFormat),
                                         _code(_ALLOCATIONS, preallocate), progress=ctx.task.progress,
                                         cancelled=ctx.task.cancelled)

    @reconciler("Volume.copy")
    def copy_done(self, params: dict[str, Any], step: str | None) -> bool:
        """An interrupted copy's half volume is removed; the source was only read."""
        self._volumes.remove_leftovers(params["dstSdUUID"], params["dstImgUUID"])
        return self._volumes.legality(params["dstSdUUID"], params["dstImgUUID"], params["dstVolUUID"]) == "LEGAL"

    @verb("Volume.delete")
    def delete(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str, imageID: str,
               postZero: bool = False, force: bool = False, discard: bool = False) -> None:
        self._volumes.check_pool(storagepoolID)
        self._refuse_busy(storagedomainID, imageID, volumeID)
        ctx.task.step("deleting", 1, f"deleting volume {volumeID}")
        self._volumes.delete_volume(storagedomainID, imageID, volumeID, postZero, progress=ctx.task.progress,
                                    cancelled=ctx.task.cancelled)

    @reconciler("Volume.delete")
    def delete_done(self, params: dict[str, Any], step: str | None) -> bool:
        """An interrupted delete is finished: the volume was marked pending before anything went."""
        if step is None:
            return False
        self._volumes.remove_leftovers(params["storagedomainID"], params["imageID"])
        return self._volumes.legality(params["storagedomainID"], params["imageID"], params["volumeID"]) is None

    @verb("Volume.extendSize")
    def extend(self, ctx: CallContext, storagepoolID: str, storagedomainID: str, imageID: str, volumeID: str,
               newSize: Any) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.extend_size(storagedomainID, imageID, volumeID, str(newSize))

    @verb("Volume.getInfo")
    def info(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str,
             imageID: str) -> dict[str, Any]:
        self._volumes.check_pool(storagepoolID)
        return self._volumes.info(storagepoolID, storagedomainID, imageID, volumeID)

    @verb("Volume.getQemuImageInfo")
    def qemu_info(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str,
                  imageID: str) -> dict[str, Any]:
        self._volumes.check_pool(storagepoolID)
        return self._volumes.qemu_info(storagedomainID, imageID, volumeID)

    @verb("Volume.getSize")
    def size(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str,
             imageID: str) -> dict[str, str]:
        self._volumes.check_pool(storagepoolID)
        return self._volumes.size(storagedomainID, imageID, volumeID)

    @verb("Volume.measure")
    def measure(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str, imageID: str,
                dstVolFormat: Any, backing_chain: bool = True, baseID: str | None = None) -> dict[str, int]:
        self._volumes.check_pool(storagepoolID)
        return self._volumes.measure(storagedomainID, imageID, volumeID, _code(_FORMATS, dstVolFormat),
                                     backing_chain, baseID)

    @verb("Volume.refresh")
    def refresh(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str,
                imageID: str) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.info(storagepoolID, storagedomainID, imageID, volumeID)

    @verb("Volume.setDescription")
    def set_description(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str,
                        imageID: str, description: str) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.set_description(storagedomainID, imageID, volumeID, description)

    @verb("Volume.setLegality")
    def set_legality(self, ctx: CallContext, volumeID: str, storagepoolID: str, storagedomainID: str,
                     imageID: str, legality: str) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.set_legality(storagedomainID, imageID, volumeID, legality)

    @verb("Volume.teardown")
    def teardown(self, ctx: CallContext, storagedomainID: str, imageID: str, volumeID: str) -> None:
        self._volumes.volume_path(storagedomainID, imageID, volumeID)
        self._volumes.teardown(storagedomainID, imageID, volumeID)

    @verb("Volume.verify_untrusted")
    def verify_untrusted(self, ctx: CallContext, storagepoolID: str, storagedomainID: str, imageID: str,
                         volumeID: str) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.verify_untrusted(storagedomainID, imageID, volumeID)

    # -- images -------------------------------------------------------------------------------

    @verb("Image.getVolumes")
    def volumes(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str) -> list[str]:
        self._volumes.check_pool(storagepoolID)
        if imageID == BLANK_UUID:
            raise InvalidParameterException("imageID: the blank UUID names no image", data={"field": "imageID"})
        return self._volumes.volumes_of(storagedomainID, imageID)

    @verb("StorageDomain.getVolumes")
    def domain_volumes(self, ctx: CallContext, storagedomainID: str, storagepoolID: str,
                       imageID: str) -> list[str]:
        self._volumes.check_pool(storagepoolID)
        return self._volumes.volumes_of(storagedomainID, imageID)

    @verb("Image.prepare")
    def prepare(self, ctx: CallContext, storagepoolID: str, storagedomainID: str, imageID: str, volumeID: str,
                allowIllegal: bool = False) -> dict[str, Any]:
        self._volumes.check_pool(storagepoolID)
        return self._volumes.prepare(storagedomainID, imageID, volumeID, allowIllegal)

    @verb("Image.teardown")
    def teardown_image(self, ctx: CallContext, storagepoolID: str, storagedomainID: str, imageID: str,
                       volumeID: str | None = None) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.teardown(storagedomainID, imageID, volumeID)

    @verb("Image.delete")
    def delete_image(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str,
                     postZero: bool = False, force: bool = False, discard: bool = False) -> None:
        self._volumes.check_pool(storagepoolID)
        self._refuse_busy(storagedomainID, imageID, None)
        ctx.task.step("deleting", 1, f"deleting image {imageID}")
        self._volumes.delete_image(storagedomainID, imageID, postZero, progress=ctx.task.progress,
                                   cancelled=ctx.task.cancelled)

    @reconciler("Image.delete")
    def delete_image_done(self, params: dict[str, Any], step: str | None) -> bool:
        """An image delete renames the directory first: an interrupted one is finished now."""
        self._volumes.remove_leftovers(params["storagedomainID"])
        return step is not None and not self._volumes.volumes_of_any(params["storagedomainID"], params["imageID"])

    @verb("Image.deleteVolumes")
    def delete_volumes(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str,
                       volumeList: list[str], postZero: bool = False, force: bool = False,
                       discard: bool = False) -> None:
        self._volumes.check_pool(storagepoolID)
        for vol in volumeList:
            self._refuse_busy(storagedomainID, imageID, vol)
        ctx.task.step("deleting", 1, f"deleting {len(volumeList)} volumes of image {imageID}")
        self._volumes.delete_volumes(storagedomainID, imageID, volumeList, postZero, progress=ctx.task.progress,
                                     cancelled=ctx.task.cancelled)

    @verb("Image.move")
    def move(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str, dstSdUUID: str,
             operation: Any, postZero: bool = False, force: bool = False, discard: bool = False) -> None:
        self._volumes.check_pool(storagepoolID)
        remove = bool(_code(_MOVES, operation))
        if remove:
            self._refuse_busy(storagedomainID, imageID, None)
        ctx.task.step("copying", 1, f"{'moving' if remove else 'copying'} image {imageID} to {dstSdUUID}")
        self._volumes.move(storagedomainID, imageID, dstSdUUID, remove_source=remove, post_zero=postZero,
                           progress=ctx.task.progress, cancelled=ctx.task.cancelled)

    @reconciler("Image.move")
    def move_done(self, params: dict[str, Any], step: str | None) -> bool:
        """An interrupted move or copy: its half-made volumes on the destination are removed."""
        return self._unfinished_copy(params)

    def _unfinished_copy(self, params: dict[str, Any]) -> bool:
        self._volumes.remove_leftovers(params["dstSdUUID"], params["imageID"])
        self._volumes.remove_leftovers(params["storagedomainID"])
        return False

    @verb("Image.cloneStructure")
    def clone_structure(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str,
                        dstSdUUID: str) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.move(storagedomainID, imageID, dstSdUUID, remove_source=False, structure_only=True,
                           progress=ctx.task.progress)

    @reconciler("Image.cloneStructure")
    def clone_done(self, params: dict[str, Any], step: str | None) -> bool:
        return self._unfinished_copy(params)

    @verb("Image.syncData")
    def sync_data(self, ctx: CallContext, imageID: str, storagepoolID: str, storagedomainID: str, dstSdUUID: str,
                  syncType: str) -> None:
        self._volumes.check_pool(storagepoolID)
        self._volumes.sync_data(storagedomainID, imageID, dstSdUUID, syncType, progress=ctx.task.progress,
                                cancelled=ctx.task.cancelled)

    @verb("Image.reconcileVolumeChain")
    def reconcile_chain(self, ctx: CallContext, storagepoolID: str, storagedomainID: str, imageID: str,
                        leafVolID: str) -> list[str]:
        self._volumes.check_pool(storagepoolID)
        return self._volumes.reconcile_chain(storagedomainID, imageID, leafVolID)

    # -- pool verbs on images -----------------------------------------------------------------

    @verb("StoragePool.getDomainsContainingImage")
    def domains_with(self, ctx: CallContext, storagepoolID: str, imageID: str) -> list[str]:
        return self._volumes.images_with(storagepoolID, imageID)

    @verb("StoragePool.prepareMerge")
    def prepare_merge(self, ctx: CallContext, storagepoolID: str, subchainInfo: dict[str, Any]) -> None:
        self._volumes.check_pool(storagepoolID)
        info = subchainInfo
        chain = self._volumes.chain_of(info["sd_id"], info["img_id"], info["top_id"])
        if len(chain) < 2 or chain[-2] != info["base_id"]:
            raise ImageIsNotLegalChain(f"volume {info['base_id']} is not the parent of {info['top_id']}")
        ctx.task.progress(100, "file volumes need no room made for a merge")

    @verb("StoragePool.finalizeMerge")
    def finalize_merge(self, ctx: CallContext, storagepoolID: str, subchainInfo: dict[str, Any]) -> None:
        self._volumes.check_pool(storagepoolID)
        info = subchainInfo
        self._volumes.finalize_merge(info["sd_id"], info["img_id"], info["base_id"], info["top_id"])

    @verb("StoragePool.reduceVolume")
    def reduce(self, ctx: CallContext, storagepoolID: str, storagedomainID: str, imageID: str, volumeID: str,
               allowActive: bool = False) -> str:
        self._volumes.check_pool(storagepoolID)
        self._volumes.volume_path(storagedomainID, imageID, volumeID)
        message = "file volumes take only the space they use: there is nothing to reduce"
        ctx.task.progress(100, message)
        return message

    @verb("StoragePool.updateVMs")
    def update_vms(self, ctx: CallContext, storagepoolID: str, vmList: list[dict[str, Any]],
                   storagedomainID: str | None = None) -> None:
        self._volumes.update_vms(storagepoolID, vmList, storagedomainID)

    @verb("StoragePool.removeVM")
    def remove_vm(self, ctx: CallContext, storagepoolID: str, vmUUID: str, storagedomainID: str | None = None) -> None:
        self._volumes.remove_vm(storagepoolID, vmUUID, storagedomainID)

    @verb("StoragePool.getBackedUpVmsList")
    def backed_up(self, ctx: CallContext, storagepoolID: str, storagedomainID: str) -> list[str]:
        return self._volumes.backed_up_vms(storagepoolID, storagedomainID)

    @verb("StoragePool.getBackedUpVmsInfo")
    def backed_up_info(self, ctx: CallContext, storagepoolID: str, storagedomainID: str,
                       vmList: list[str]) -> dict[str, str]:
        return self._volumes.backed_up_vms_info(storagepoolID, storagedomainID, vmList)

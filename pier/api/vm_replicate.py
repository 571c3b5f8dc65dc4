"""Handlers of live storage moves (pier/rpc/schema/vmreplicate.yml): VM.diskReplicateStart and
VM.diskReplicateFinish, as VDSM's engine calls them.

Drives and their destinations are named by volumes (domainID, imageID, volumeID). Start refuses,
before anything changes, a drive the VM does not have, a destination that is not there or is not
made like the drive's chain (the same image in another domain, over the same parents), and a drive
already copied; then prepares the destination and has libvirt copy onto it. Finish pivots when
dstDisk names the copy's volume (the drive then stands on the destination domain, whose image stays
prepared under the VM, and the source image is torn down) and otherwise stops the copy, the drive
staying on the source and the destination image torn down. Nothing of a copy is kept here: what
libvirt runs is the truth, so both verbs work the same after a restart of pierd, and a Finish asked
again after its pivot (pierd stopped before it answered) answers the pivot again.

A copy that ends without Finish (libvirt failed it, e.g. its destination's filesystem is full, or
someone pivoted or aborted it with virsh) is cleaned up as Finish would have: after a pivot the
drive's image stays prepared under its new leaf and the source image is torn down; otherwise the
destination image is torn down, so a new Start can prepare it again.
"""

from __future__ import annotations

import threading
from pathlib import PurePath
from typing import Any, NamedTuple

from pier.api.drives import Drives
from pier.api.volume import VolumeApi
from pier.host.replicate import CopyEnded
from pier.host.services import ReplicationService, VmService, VolumeService
from pier.rpc.errors import (
    ImageDoesNotExistInSD,
    ImageError,
    ReplicaError,
    ReplicationNotInProgress,
    StorageDomainDoesNotExist,
    Unavailable,
    VolumeDoesNotExist,
)
from pier.rpc.registry import CallContext, verb

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
_FORMATS = {"COW": "qcow2", "RAW": "raw"}
_MISSING = (VolumeDoesNotExist, ImageDoesNotExistInSD, StorageDomainDoesNotExist)


class _Volume(NamedTuple):
    sd: str
    img: str
    vol: str

    @classmethod
    def of(cls, spec: dict[str, Any]) -> _Volume:
        return cls(str(spec["domainID"]).lower(), str(spec["imageID"]).lower(), str(spec["volumeID"]).lower())

    @classmethod
    def at(cls, path: str) -> _Volume | None:
        """The volume a domain's file is (…/<sd>/images/<img>/<vol>), None for another file."""
        parts = PurePath(path).parts
        if len(parts) < 4 or parts[-3] != "images":
            return None
        return cls(parts[-4], parts[-2], parts[-1])


class VmReplicateApi:
    def __init__(self, replications: ReplicationService | None, volumes: VolumeService, volume_api: VolumeApi,
                 drives: Drives) -> None:
        self._replications = replications
        self._volumes = volumes
        self._volume_api = volume_api
        self._drives = drives
        self._lock = threading.Lock()
        self._ended: dict[tuple[str, str], CopyEnded] = {}  # (vm, drive): the last copy that ended without Finish
        if replications is not None:
            replications.on_copy_ended(self._copy_ended)

    def _service(self) -> ReplicationService:
        if self._replications is None:
            raise Unavailable("live storage moves are not served by this agent (no libvirt connection)")
        return self._replications

    def _drive_leaf(self, vm_id: str, disk: dict[str, Any]) -> tuple[str, str]:
        """The VM's drive whose leaf is srcDisk's volume: its name and the leaf's path (imageErr if none)."""
        src = _Volume.of(disk)
        try:
            path = self._volumes.volume_path(*src)
        except _MISSING:
            path = ""
        drive = next((name for name, chain in self._service().chains(vm_id).items() if chain and chain[0] == path),
                     None)
        if drive is None:
            raise ImageError(f"srcDisk: VM {vm_id} has no drive whose leaf is volume {src.vol} of image {src.img} "
                             f"in domain {src.sd}", data={"field": "srcDisk.volumeID", "vmId": vm_id})
        return drive, path

    def _destination(self, src: _Volume, disk: dict[str, Any]) -> tuple[str, str]:
        """The destination leaf's path and format, refused unless it is made like the drive's chain."""
        dst = _Volume.of(disk)
        self._volumes.check_pool(disk.get("poolID") or BLANK_UUID)
        if dst.sd == src.sd:
            raise ReplicaError(f"dstDisk.domainID: the drive is on domain {src.sd} already; name another domain",
                               data={"field": "dstDisk.domainID"})
        if dst.img != src.img:
            raise ReplicaError(f"dstDisk.imageID: a drive moves to the same image ({src.img}) in another domain, "
                               f"not to {dst.img}", data={"field": "dstDisk.imageID"})
        try:
            path = self._volumes.volume_path(*dst)
        except _MISSING as exc:
            raise type(exc)(f"dstDisk: {exc.message}; make the destination chain first (Image.cloneStructure, "
                            "or SDM.copy_data and Volume.create)", data={"field": "dstDisk.volumeID"}) from None
        src_parents = self._volumes.chain_of(*src)[:-1]
        dst_parents = self._volumes.chain_of(*dst)[:-1]
        if src_parents != dst_parents:
            raise ReplicaError(f"dstDisk.volumeID: volume {dst.vol} is made over {dst_parents or 'nothing'}, the "
                               f"drive's leaf over {src_parents or 'nothing'}; the destination's chain must hold "
                               "the drive's parents", data={"field": "dstDisk.volumeID"})
        self._volume_api.refuse_busy(*dst)
        info = self._volumes.info(BLANK_UUID, *dst)
        return path, _FORMATS[info["format"]]

    @verb("VM.diskReplicateStart")
    def start(self, ctx: CallContext, vmID: str, srcDisk: dict[str, Any], dstDisk: dict[str, Any],
              needExtend: bool = True) -> bool:
        drive, source = self._drive_leaf(vmID, srcDisk)
        copying = self._service().replicas(vmID).get(drive)
        if copying is not None:  # refused before preparing: the copy running holds the destination prepared
            raise ReplicaError(f"drive {drive} of VM {vmID} is already being copied to {copying.dest}; finish "
                               "that copy first (VM.diskReplicateFinish)",
                               data={"vmId": vmID, "drive": drive, "destination": copying.dest})
        dest, fmt = self._destination(_Volume.of(srcDisk), dstDisk)
        dst = _Volume.of(dstDisk)
        self._volumes.prepare(*dst)
        with self._lock:
            self._ended.pop((vmID, drive), None)
        try:
            self._service().start(vmID, source, dest, fmt)
        except BaseException:
            self._volumes.teardown(*dst)
            raise
        return True

    @verb("VM.diskReplicateFinish")
    def finish(self, ctx: CallContext, vmID: str, srcDisk: dict[str, Any], dstDisk: dict[str, Any]) -> dict[str, Any]:
        try:
            drive, source = self._drive_leaf(vmID, srcDisk)
        except ImageError:
            done = self._pivoted_already(vmID, srcDisk, dstDisk)
            if done is None:
                raise
            return done
        replica = self._service().replicas(vmID).get(drive)
        if replica is None:
            with self._lock:
                ended = self._ended.get((vmID, drive))
            why = f" (its copy to {ended.replica.dest} ended without Finish: {ended.status})" if ended else ""
            raise ReplicationNotInProgress(f"drive {drive} of VM {vmID} is not being copied{why}; start with "
                                           "VM.diskReplicateStart", data={"vmId": vmID, "drive": drive,
                                                                          **({"ended": ended.status} if ended else {})})
        src, dst = _Volume.of(srcDisk), _Volume.of(dstDisk)
        try:
            pivot = dst != src and self._volumes.volume_path(*dst) == replica.dest
        except _MISSING:
            pivot = False
        self._service().finish(vmID, source, pivot)
        copy = _Volume.at(replica.dest)
        if pivot:
            self._drives.moved(vmID, source, dst.sd, dst.img, dst.vol, replica.dest)
            self._teardown(src)
        elif copy is not None:
            self._teardown(copy)
        now = replica.dest if pivot else source
        return {"drive": drive, "pivoted": pivot, "path": now, "domainID": dst.sd if pivot else src.sd}

    def _pivoted_already(self, vm_id: str, src_disk: dict[str, Any], dst_disk: dict[str, Any]) -> dict[str, Any] | None:
        """A Finish asked again after its pivot (pierd stopped in between, the engine retries): the
        drive stands on dstDisk and copies nothing; the source image torn down, the answer given again."""
        src, dst = _Volume.of(src_disk), _Volume.of(dst_disk)
        if src == dst:
            return None
        try:
            drive, path = self._drive_leaf(vm_id, dst_disk)
        except ImageError:
            return None
        if drive in self._service().replicas(vm_id):
            return None
        self._teardown(src)
        return {"drive": drive, "pivoted": True, "path": path, "domainID": dst.sd}

    def _copy_ended(self, ended: CopyEnded) -> None:
        """A copy ended without Finish (thread: libvirt-events): tidy up as Finish does."""
        with self._lock:
            self._ended[(ended.vm_id, ended.replica.drive)] = ended
        copy, source = _Volume.at(ended.replica.dest), _Volume.at(ended.replica.source)
        if ended.pivoted:
            if copy is not None:
                self._drives.moved(ended.vm_id, ended.replica.source, copy.sd, copy.img, copy.vol, ended.replica.dest)
            if source is not None:
                self._teardown(source)
        elif copy is not None:
            self._teardown(copy)

    def _teardown(self, volume: _Volume) -> None:
        try:
            self._volumes.teardown(*volume)
        except _MISSING:  # gone meanwhile: nothing is left to tear down
            pass


class VmsWithCopies:
    """The VM service whose stats carry each VM's drive copies among its vmJobs."""

    def __init__(self, vms: VmService, replications: ReplicationService | None) -> None:
        self._vms = vms
        self._replications = replications

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vms, name)

    def _with_copies(self, stats: dict[str, Any]) -> dict[str, Any]:
        if self._replications is None or not stats.get("vmId"):
            return stats
        copies = self._replications.vm_jobs(str(stats["vmId"]))
        return {**stats, "vmJobs": {**stats.get("vmJobs", {}), **copies}} if copies else stats

    def stats(self, vm_id: str) -> dict[str, Any]:
        return self._with_copies(self._vms.stats(vm_id))

    def all_stats(self) -> list[dict[str, Any]]:
        return [self._with_copies(s) for s in self._vms.all_stats()]

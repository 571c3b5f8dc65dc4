"""Handlers of a running VM's snapshots, merges and disk sizes (pier/rpc/schema/vmsnapshot.yml).

Drives are named by volumes (domainID, imageID, volumeID), as VDSM names them; these handlers
turn them into paths with the volume service, refuse what cannot work before anything changes
(a target volume missing, in use, or not made over the drive's leaf; a merge base not below top
in the chain), and after a change leave the volumes' metadata as VDSM does: after a snapshot the
old leaf is INTERNAL and the new one LEAF (Volume.create made them so), after a merge the chain
the disk now has (top ILLEGAL and out of it). A merge interrupted by a restart is reconciled from
libvirt's block job: finished, followed to its end, or reported where it stands; a snapshot from
libvirt's snapshot job and the drives' chains: taken, followed to its end, or undone (its new
volumes deleted).
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from pier.api.drives import Drives
from pier.api.vm_hibernation import MemoryVolumes, VolumeName, memory_volumes
from pier.api.volume import VolumeApi
from pier.host.alignment import partitions_aligned
from pier.host.hibernation import write_conf
from pier.host.services import SnapshotService, VmService, VolumeService
from pier.host.snapshots import SnapshotTarget
from pier.rpc.errors import (
    InvalidParams,
    MergeError,
    PierError,
    ResizeError,
    SnapshotError,
    TaskCancelled,
    Unavailable,
    UnsupportedOperation,
    VolumeDoesNotExist,
)
from pier.rpc.registry import CallContext, precheck, reconciler, verb

log = logging.getLogger(__name__)
BLANK_UUID = "00000000-0000-0000-0000-000000000000"
SNAPSHOT_SETTLE_SECONDS = 5.0
"""How long a restart waits for a snapshot libvirt still takes before following it in a thread."""


class _Snap(NamedTuple):
    target: SnapshotTarget
    sd: str
    img: str
    vol: str


class VmSnapshotsApi:
    def __init__(self, snapshots: SnapshotService | None, volumes: VolumeService, volume_api: VolumeApi,
                 drives: Drives, memory_volumes: MemoryVolumes | None = None) -> None:
        self._snapshots = snapshots
        self._volumes = volumes
        self._volume_api = volume_api
        self._drives = drives
        self._memory_volumes = memory_volumes

    def _service(self) -> SnapshotService:
        if self._snapshots is None:
            raise Unavailable("snapshots and merges are not served by this agent (no libvirt connection)")
        return self._snapshots

    # -- snapshot -----------------------------------------------------------------------------------

    def _snap_targets(self, vm_id: str, snap_drives: list[dict[str, Any]]) -> list[_Snap]:
        """Each drive's snapshot target, refused (naming the field) unless it can be taken."""
        chains = self._service().chains(vm_id)
        leaves = {chain[0]: name for name, chain in chains.items() if chain}
        found: list[_Snap] = []
        for index, drive in enumerate(snap_drives):
            where = f"snapDrives.{index}"
            sd, img = str(drive["domainID"]), str(drive["imageID"])
            base, vol = str(drive["baseVolumeID"]), str(drive["volumeID"])
            base_path = self._volumes.volume_path(sd, img, base)
            if base_path not in leaves:
                raise SnapshotError(f"{where}.baseVolumeID: volume {base} is not the leaf of a drive of VM {vm_id}",
                                    data={"field": f"{where}.baseVolumeID", "vmId": vm_id})
            if any(s.target.base_path == base_path for s in found):
                raise InvalidParams(f"{where}: drive {leaves[base_path]} is named twice",
                                    data={"field": f"{where}.baseVolumeID"})
            try:
                path = self._volumes.volume_path(sd, img, vol)
            except VolumeDoesNotExist:
                raise VolumeDoesNotExist(
                    f"{where}.volumeID: volume {vol} does not exist in image {img}; make it first with "
                    f"Volume.create over {base}", data={"field": f"{where}.volumeID", "volUUID": vol}) from None
            info = self._volumes.info(BLANK_UUID, sd, img, vol)
            if info["parent"] != base:
                raise SnapshotError(
                    f"{where}.volumeID: volume {vol} is made over {info['parent']}, not over the drive's leaf {base}",
                    data={"field": f"{where}.volumeID", "volUUID": vol})
            if info["format"] != "COW":
                raise SnapshotError(f"{where}.volumeID: volume {vol} is {info['format']}; a snapshot layer is COW",
                                    data={"field": f"{where}.volumeID", "volUUID": vol})
            self._volume_api.refuse_busy(sd, img, vol)
            found.append(_Snap(SnapshotTarget(base_path, path), sd, img, vol))
        return found

    @precheck("VM.snapshot")
    def snapshot_allowed(self, ctx: CallContext, vmID: str, snapDrives: list[dict[str, Any]],
                         snapMemory: str | None = None, frozen: bool = False, **ignored: Any) -> None:
        if snapMemory:
            volumes, dump, conf = self._memory(snapMemory)
            volumes.check(dump, raw=True, state_of=vmID)
            volumes.check(conf)
        self._snap_targets(vmID, snapDrives)

    def _memory(self, snap_memory: str) -> tuple[MemoryVolumes, VolumeName, VolumeName]:
        if self._memory_volumes is None:
            raise UnsupportedOperation("snapMemory: memory snapshots are not served by this agent",
                                       data={"field": "snapMemory"})
        return (self._memory_volumes, *memory_volumes(snap_memory, "snapMemory"))

    @verb("VM.snapshot")
    def snapshot(self, ctx: CallContext, vmID: str, snapDrives: list[dict[str, Any]], snapMemory: str | None = None,
                 frozen: bool = False, **ignored: Any) -> dict[str, Any]:
        self.snapshot_allowed(ctx, vmID, snapDrives, snapMemory, frozen)
        snaps = self._snap_targets(vmID, snapDrives)
        ctx.task.step("snapshotting", 10, f"snapshot of {len(snaps)} drive(s)" + (" and memory" if snapMemory else ""))
        targets = [s.target for s in snaps]
        if snapMemory:
            result = self._memory_snapshot(vmID, targets, snapMemory)
        else:
            result = self._service().snapshot(vmID, targets, quiesce=not frozen)
        for snap in snaps:
            self._drives.moved(vmID, snap.target.base_path, snap.sd, snap.img, snap.vol, snap.target.path)
        return result

    def _memory_snapshot(self, vm_id: str, targets: list[SnapshotTarget], snap_memory: str) -> dict[str, Any]:
        """The disks and the memory in one libvirt snapshot: the memory-config volume written first
        (as VDSM does), the memory volume prepared for the snapshot and torn down after it."""
        volumes, dump, conf = self._memory(snap_memory)
        with volumes.claimed([dump, conf], f"the memory snapshot of VM {vm_id}"):
            conf_path = volumes.prepare(conf)
            try:
                write_conf(conf_path, {"vmId": vm_id, "restoreFromSnapshot": True, "savedAt": time.time()})
            finally:
                volumes.teardown(conf)
            dump_path = volumes.prepare(dump)
            try:
                result = self._service().snapshot(vm_id, targets, quiesce=False, memory_path=dump_path)
            finally:
                volumes.teardown(dump)
        return {**result, "memory": True}

    @reconciler("VM.snapshot")
    def snapshot_done(self, params: dict[str, Any], step: str | None) -> bool:
        """After a restart. A snapshot is one libvirt transaction, which libvirt finishes without
        the pierd that asked for it: waited for while it runs (then followed), it took effect when
        every drive stands on its new volume; one that did not has its new volumes, in no chain of
        the VM, deleted (their parents are leaves again): no volume of it is left over."""
        vm_id = params["vmID"]
        service = self._service()
        if not service.snapshot_ended(vm_id, SNAPSHOT_SETTLE_SECONDS):
            service.after_snapshot(vm_id, lambda: self._settle_snapshot(params))
            raise SnapshotError("pierd restarted during this snapshot; libvirt is still taking it (the guest agent "
                                "may be freezing the guest) and pierd follows it: if it takes, the drives stand on "
                                "the new volumes, if not these are deleted (see VM.getDevices)",
                                data={"vmId": vm_id, "following": True})
        if self._settle_snapshot(params):
            return True
        raise SnapshotError("pierd restarted during this snapshot and libvirt did not take it: the drives are on "
                            "their old leaves and the snapshot's new volumes were deleted; take it again",
                            data={"vmId": vm_id, "following": False})

    def _settle_snapshot(self, params: dict[str, Any]) -> bool:
        """Whether the snapshot took; when it did not, its new volumes that no chain holds are deleted."""
        vm_id = params["vmID"]
        chains = self._service().chains(vm_id)
        leaves = {chain[0] for chain in chains.values() if chain}
        used = {path for chain in chains.values() for path in chain}
        drives = [(str(d["domainID"]), str(d["imageID"]), str(d["baseVolumeID"]), str(d["volumeID"]))
                  for d in params["snapDrives"]]
        if all(self._volumes.legality(sd, img, vol) is not None and self._volumes.volume_path(sd, img, vol) in leaves
               for sd, img, _, vol in drives):
            return True
        for sd, img, base, vol in drives:
            if self._volumes.legality(sd, img, vol) is None or self._volumes.volume_path(sd, img, vol) in used:
                continue
            if self._volumes.info(BLANK_UUID, sd, img, vol)["parent"] != base:
                continue  # not a layer made for this snapshot
            self._volume_api.refuse_busy(sd, img, vol)
            log.info("VM %s: snapshot interrupted by a restart did not take; deleting its volume %s", vm_id, vol)
            self._volumes.delete_volume(sd, img, vol)
        return False

    # -- merge --------------------------------------------------------------------------------------

    def _merge_paths(self, vm_id: str, drive: dict[str, Any], base: str, top: str) -> tuple[str, str, str]:
        """The drive's leaf, base and top paths, refused unless base is below top in the drive's chain."""
        sd, img, leaf = str(drive["domainID"]), str(drive["imageID"]), str(drive["volumeID"])
        chains = self._service().chains(vm_id)
        leaf_path = self._volumes.volume_path(sd, img, leaf)
        chain = next((c for c in chains.values() if c and c[0] == leaf_path), None)
        if chain is None:
            raise MergeError(f"drive.volumeID: volume {leaf} is not the leaf of a drive of VM {vm_id}",
                             data={"field": "drive.volumeID", "vmId": vm_id})
        paths = {}
        for field, vol in (("topVolUUID", top), ("baseVolUUID", base)):
            try:
                paths[field] = self._volumes.volume_path(sd, img, vol)
            except VolumeDoesNotExist:
                raise MergeError(f"{field}: volume {vol} is not in the chain of drive {leaf}",
                                 data={"field": field, "volUUID": vol}) from None
            if paths[field] not in chain:
                raise MergeError(f"{field}: volume {vol} is not in the chain of drive {leaf}",
                                 data={"field": field, "volUUID": vol})
        if chain.index(paths["baseVolUUID"]) <= chain.index(paths["topVolUUID"]):
            raise MergeError(f"baseVolUUID: volume {base} is not below topVolUUID {top} in the chain",
                             data={"field": "baseVolUUID", "volUUID": base})
        return leaf_path, paths["baseVolUUID"], paths["topVolUUID"]

    @precheck("VM.merge")
    def merge_allowed(self, ctx: CallContext, vmID: str, drive: dict[str, Any], baseVolUUID: str,
                      topVolUUID: str, **ignored: Any) -> None:
        self._merge_paths(vmID, drive, baseVolUUID, topVolUUID)

    @verb("VM.merge")
    def merge(self, ctx: CallContext, vmID: str, drive: dict[str, Any], baseVolUUID: str, topVolUUID: str,
              bandwidth: int = 0, jobUUID: str | None = None) -> dict[str, Any]:
        leaf_path, base_path, top_path = self._merge_paths(vmID, drive, baseVolUUID, topVolUUID)
        ctx.task.step("committing", 1, f"committing {topVolUUID} into {baseVolUUID}")
        merged = self._service().commit(vmID, ctx.task.id, str(drive["imageID"]), base_path, top_path, bandwidth,
                                        ctx.task.progress, ctx.task.cancelled, lambda: ctx.task.agent_stopping)
        if merged is None:
            raise TaskCancelled("pierd stops: libvirt goes on with the block commit; the next start follows it")
        if not merged:
            raise TaskCancelled("the merge was cancelled; the block commit was aborted, the chain is as it was")
        chain = self._after_merge(vmID, drive, baseVolUUID, topVolUUID, leaf_path == top_path)
        return {"chain": chain}

    def _after_merge(self, vm_id: str, drive: dict[str, Any], base: str, top: str, active: bool) -> list[str]:
        """The volumes' metadata made to agree with the disk's new chain (top ILLEGAL, out of it)."""
        sd, img, leaf = str(drive["domainID"]), str(drive["imageID"]), str(drive["volumeID"])
        new_leaf = base if active else leaf
        chain = self._volumes.reconcile_chain(sd, img, new_leaf)
        if active:
            self._drives.moved(vm_id, self._volumes.volume_path(sd, img, top), sd, img, base,
                               self._volumes.volume_path(sd, img, base))
        return chain

    @reconciler("VM.merge")
    def merge_done(self, params: dict[str, Any], step: str | None) -> bool:
        """After a restart: merged (the metadata updated), still running in libvirt (followed to
        its end from now on, and said so), or not merged (said where it stands)."""
        if step is None:
            return False
        vm_id, drive = params["vmID"], params["drive"]
        sd, img, leaf = str(drive["domainID"]), str(drive["imageID"]), str(drive["volumeID"])
        base, top = params["baseVolUUID"], params["topVolUUID"]
        base_path, top_path = self._volumes.volume_path(sd, img, base), self._volumes.volume_path(sd, img, top)
        service = self._service()
        state = service.where(vm_id, top_path, base_path)
        active = top == leaf
        if state.state == "merged":
            self._after_merge(vm_id, drive, base, top, active)
            return True
        if state.state == "running":
            def finished(merged: bool) -> None:
                self._after_merge(vm_id, drive, base, top, active)

            service.follow(vm_id, str(params.get("jobUUID") or "restarted"), img, base_path, top_path, finished)
            percent = state.cur * 100 // state.end if state.end else 0
            raise MergeError(f"pierd restarted during this merge; libvirt's block commit of {top} into {base} "
                             f"goes on ({percent} %, {state.cur} of {state.end}) and pierd follows it: the chain "
                             f"is updated when it ends (see the VM's vmJobs)",
                             data={"vmId": vm_id, "cur": state.cur, "end": state.end, "following": True})
        raise MergeError(f"pierd restarted during this merge; libvirt runs no block commit on the drive and "
                         f"{top} is still in its chain: nothing was merged, merge again",
                         data={"vmId": vm_id, "following": False})

    # -- sizes --------------------------------------------------------------------------------------

    def _leaf(self, vm_id: str, drive: dict[str, Any], field: str) -> str:
        sd, img, vol = str(drive["domainID"]), str(drive["imageID"]), str(drive["volumeID"])
        path = self._volumes.volume_path(sd, img, vol)
        if not any(c and c[0] == path for c in self._service().chains(vm_id).values()):
            raise ResizeError(f"{field}.volumeID: volume {vol} is not the leaf of a drive of VM {vm_id}",
                              data={"field": f"{field}.volumeID", "vmId": vm_id})
        return path

    @verb("VM.diskSizeExtend")
    def disk_size_extend(self, ctx: CallContext, vmID: str, driveSpecs: dict[str, Any], newSize: Any) -> str:
        path = self._leaf(vmID, driveSpecs, "driveSpecs")
        sd, img, vol = str(driveSpecs["domainID"]), str(driveSpecs["imageID"]), str(driveSpecs["volumeID"])
        try:
            size = int(str(newSize))
        except ValueError:
            raise ResizeError(f"newSize: {newSize!r} is not a number of bytes", data={"field": "newSize"}) from None
        info = self._volumes.info(BLANK_UUID, sd, img, vol)
        capacity = int(info["capacity"])
        if size < capacity:
            raise ResizeError(f"newSize: {size} is less than the disk's {capacity} bytes; disks only grow",
                              data={"field": "newSize"})
        if info["format"] == "RAW" and int(self._volumes.size(sd, img, vol)["apparentsize"]) < size:
            raise ResizeError(f"newSize: raw volume {vol} has not been extended to {size} bytes; "
                              "extend it first with Volume.extendSize", data={"field": "newSize"})
        if size != capacity:
            self._service().resize(vmID, path, size)
            self._volumes.record_capacity(sd, img, vol, size)
        return str(size)

    @verb("VM.refresh_disk")
    def refresh_disk(self, ctx: CallContext, vmID: str, drive: dict[str, Any]) -> dict[str, str]:
        path = self._leaf(vmID, drive, "drive")
        sd, img, vol = str(drive["domainID"]), str(drive["imageID"]), str(drive["volumeID"])
        info = self._volumes.info(BLANK_UUID, sd, img, vol)
        self._service().resize(vmID, path, int(info["capacity"]))
        return self._volumes.size(sd, img, vol)

    @verb("VM.getDiskAlignment")
    def disk_alignment(self, ctx: CallContext, vmID: str, disk: dict[str, Any]) -> dict[str, bool]:
        sd, img, vol = str(disk["domainID"]), str(disk["imageID"]), str(disk["volumeID"])
        path = self._volumes.volume_path(sd, img, vol)
        fmt = "qcow2" if self._volumes.info(BLANK_UUID, sd, img, vol)["format"] == "COW" else "raw"
        try:
            return {path: partitions_aligned(path, fmt)}
        except OSError as exc:
            raise PierError(f"cannot read the partitions of {path}: {exc}") from None


class VmsWithJobs:
    """The VM service whose stats carry each VM's block jobs (VDSM's vmJobs)."""

    def __init__(self, vms: VmService, snapshots: SnapshotService | None) -> None:
        self._vms = vms
        self._snapshots = snapshots

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vms, name)

    def _with_jobs(self, stats: dict[str, Any]) -> dict[str, Any]:
        if self._snapshots is None or not stats.get("vmId"):
            return stats
        jobs = self._snapshots.vm_jobs(str(stats["vmId"]))
        return {**stats, "vmJobs": jobs} if jobs else stats

    def stats(self, vm_id: str) -> dict[str, Any]:
        return self._with_jobs(self._vms.stats(vm_id))

    def all_stats(self) -> list[dict[str, Any]]:
        return [self._with_jobs(s) for s in self._vms.all_stats()]

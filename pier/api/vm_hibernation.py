"""Handlers of hibernation (pier/rpc/schema/vmhibernate.yml) and VM.create's restore from a saved
memory state, as VDSM shapes them.

VDSM names a VM's memory volumes by one string of six ids (VM.hibernate's hibernationVolHandle,
VM.snapshot's snapMemory, VM.create's hiberVolHandle before 4.2): domainID, poolID, the memory
volume's imageID and volumeID, then the memory-config volume's. Since 4.2 VM.create names them as
two drive specs (memoryDumpVolume, memoryConfVolume); `restoreState` names the memory volume
alone (a drive spec, or a path). Each volume is prepared for the step that uses it and torn down
after it. The memory volume must be RAW: libvirt writes its own format over the whole file, which
would destroy a qcow2 layer.

While a hibernation or a memory snapshot writes its volumes (and a restore reads them) they are
claimed: Volume.delete, Image.delete and the like, or another hibernation into them, answer
VolumeIsBusy; the verbs also lock the volumes' and images' ids (the schema's `locks`), so a delete
already running makes them wait. A memory volume smaller than the engine's estimate of a saved
state (pier.host.hibernation.state_size_estimate) is refused before anything is saved: on a file
domain the state would silently grow the file past the volume's declared size.

A restore that does not name a disk of the saved VM runs it where it was saved; when that is a
volume of a Pier domain, its image is prepared and recorded like a named disk's, so it is torn
down when the VM goes.
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pier.api.drives import Drives, names_volume
from pier.api.volume import VolumeApi
from pier.host.hibernation import file_disks, read_conf, repoint_disks, state_size_estimate, write_conf
from pier.host.services import MemoryStateService, VmService, VolumeService
from pier.rpc.errors import (
    ImageDoesNotExistInSD,
    InvalidParams,
    NoVM,
    PierError,
    Recovering,
    Unavailable,
    VMDown,
    VolumeDoesNotExist,
)
from pier.rpc.registry import CallContext, precheck, reconciler, verb

log = logging.getLogger(__name__)
BLANK_UUID = "00000000-0000-0000-0000-000000000000"
RESTORE_KEYS = ("restoreState", "hiberVolHandle", "memoryDumpVolume")
SAVE_SETTLE_SECONDS = 10.0  # how long the reconciler (at startup) waits for a save libvirt still runs


@dataclass(frozen=True)
class VolumeName:
    """One volume named by its ids; `field` names it in the call (errors name the field)."""

    sd: str
    pool: str
    img: str
    vol: str
    field: str

    @classmethod
    def from_spec(cls, spec: dict[str, Any], field: str) -> VolumeName:
        return cls(str(spec["domainID"]), str(spec.get("poolID") or BLANK_UUID), str(spec["imageID"]),
                   str(spec["volumeID"]), field)


def memory_volumes(handle: str, field: str) -> tuple[VolumeName, VolumeName]:
    """The memory and memory-config volumes of VDSM's six-id string."""
    ids = [part.strip().lower() for part in handle.split(",")]
    if len(ids) != 6:
        raise InvalidParams(f"{field}: expected domainID,poolID,imageID,volumeID,imageID,volumeID; got {len(ids)} "
                            "ids", data={"field": field})
    sd, pool, dump_img, dump_vol, conf_img, conf_vol = ids
    if (dump_img, dump_vol) == (conf_img, conf_vol):
        raise InvalidParams(f"{field}: the memory volume and the memory-config volume are the same volume",
                            data={"field": field})
    return VolumeName(sd, pool, dump_img, dump_vol, field), VolumeName(sd, pool, conf_img, conf_vol, field)


class MemoryVolumes:
    """Checks and prepares memory volumes on the volume service."""

    def __init__(self, volumes: VolumeService, volume_api: VolumeApi, memory: MemoryStateService | None = None) -> None:
        self._volumes = volumes
        self._volume_api = volume_api
        self._memory = memory

    def check(self, name: VolumeName, raw: bool = False, state_of: str | None = None) -> None:
        """Refuse, naming the field, a volume that is missing, in use by a VM or another memory
        operation, (`raw`) not RAW, or (`state_of`: a running VM) too small for its saved state."""
        self._volumes.check_pool(name.pool)
        try:
            self._volumes.volume_path(name.sd, name.img, name.vol)
        except (VolumeDoesNotExist, ImageDoesNotExistInSD) as exc:
            raise type(exc)(f"{name.field}: volume {name.vol} does not exist in image {name.img} of "
                            f"domain {name.sd}; make it first with Volume.create",
                            data={"field": name.field, "volUUID": name.vol}) from None
        if raw:
            fmt = self._volumes.info(BLANK_UUID, name.sd, name.img, name.vol)["format"]
            if fmt != "RAW":
                raise InvalidParams(f"{name.field}: memory volume {name.vol} is {fmt}; a saved memory state needs "
                                    "a RAW volume", data={"field": name.field, "volUUID": name.vol})
        self._volume_api.refuse_busy(name.sd, name.img, name.vol)
        if state_of is not None and self._memory is not None:
            self.check_room(name, state_of)

    def check_room(self, name: VolumeName, vm_id: str) -> None:
        """Refuse a memory volume whose declared size is below the estimate of the VM's saved state."""
        assert self._memory is not None
        needed = state_size_estimate(self._memory.domain_xml(vm_id))
        capacity = int(self._volumes.info(BLANK_UUID, name.sd, name.img, name.vol)["capacity"])
        if capacity < needed:
            raise InvalidParams(
                f"{name.field}: memory volume {name.vol} holds {capacity} bytes; the saved state of VM {vm_id} may "
                f"take {needed} (its memory, 200 MiB of device state and its video RAM, as the engine sizes it): "
                "refused before saving, as the state would outgrow the volume; make one at least that large",
                data={"field": name.field, "volUUID": name.vol, "capacity": capacity, "needed": needed})

    def capacity(self, name: VolumeName) -> int:
        return int(self._volumes.info(BLANK_UUID, name.sd, name.img, name.vol)["capacity"])

    def record_capacity(self, name: VolumeName, size: int) -> None:
        self._volumes.record_capacity(name.sd, name.img, name.vol, size)

    @contextmanager
    def claimed(self, names: list[VolumeName], by: str) -> Iterator[None]:
        """Each volume in use by `by` for the `with` block (see the module docstring)."""
        with ExitStack() as stack:
            for name in names:
                stack.enter_context(self._volume_api.claimed(name.sd, name.img, name.vol, by))
            yield

    def volume_of(self, path: str) -> tuple[str, str, str] | None:
        """The (domain, image, volume) a file disk's path is, when it is a volume of a Pier domain."""
        parts = Path(path).parts
        if len(parts) < 4 or parts[-3] != "images":
            return None
        sd, img, vol = parts[-4], parts[-2], parts[-1]
        try:
            found = self._volumes.volume_path(sd, img, vol)
        except PierError:
            return None
        return (sd, img, vol) if Path(found).resolve() == Path(path).resolve() else None

    def prepare(self, name: VolumeName) -> str:
        return str(self._volumes.prepare(name.sd, name.img, name.vol)["path"])

    def teardown(self, name: VolumeName) -> None:
        try:
            self._volumes.teardown(name.sd, name.img, name.vol)
        except Exception:  # the image went away meanwhile: nothing is left to tear down
            pass


class VmHibernationApi:
    def __init__(self, memory: MemoryStateService | None, vms: VmService, volumes: MemoryVolumes) -> None:
        self._memory = memory
        self._vms = vms
        self._volumes = volumes

    def _service(self) -> MemoryStateService:
        if self._memory is None:
            raise Unavailable("hibernation is not served by this agent (no libvirt connection)")
        return self._memory

    @precheck("VM.hibernate")
    def hibernate_allowed(self, ctx: CallContext, vmID: str, hibernationVolHandle: str) -> None:
        self._service()
        if self._vms.status(vmID) == "Down":
            raise VMDown(f"Virtual machine {vmID} is down: only a running VM can be hibernated", data={"vmId": vmID})
        dump, conf = memory_volumes(hibernationVolHandle, "hibernationVolHandle")
        self._volumes.check(dump, raw=True, state_of=vmID)
        self._volumes.check(conf)

    @verb("VM.hibernate")
    def hibernate(self, ctx: CallContext, vmID: str, hibernationVolHandle: str) -> dict[str, Any]:
        self.hibernate_allowed(ctx, vmID, hibernationVolHandle)
        service = self._service()
        dump, conf = memory_volumes(hibernationVolHandle, "hibernationVolHandle")
        task = ctx.task
        with self._volumes.claimed([dump, conf], f"the hibernation of VM {vmID}"):
            task.step("preparing", 1, "preparing the memory volumes")
            dump_path = self._volumes.prepare(dump)
            try:
                conf_path = self._volumes.prepare(conf)
                try:
                    config = {"vmId": vmID, "_srcDomXML": service.domain_xml(vmID), "savedAt": time.time()}
                    task.step("saving", 5, f"saving the state of VM {vmID}")
                    saved = service.save(vmID, dump_path, task.progress, task.cancelled)
                    write_conf(conf_path, config)
                finally:
                    self._volumes.teardown(conf)
            finally:
                self._volumes.teardown(dump)
            self._keep_declared_size_true(dump, int(saved.get("stateBytes") or 0))
        return {**saved, "status": "Down"}

    def _keep_declared_size_true(self, dump: VolumeName, state_bytes: int) -> None:
        """A state larger than the volume (its device state beyond the estimate) grew the file of a
        file domain: the saved state is whole, so the volume's metadata is made to say its size."""
        capacity = self._volumes.capacity(dump)
        if state_bytes > capacity:
            log.warning("the saved state (%d bytes) outgrew memory volume %s (%d bytes); its size is now recorded",
                        state_bytes, dump.vol, capacity)
            self._volumes.record_capacity(dump, state_bytes)

    @reconciler("VM.hibernate")
    def hibernate_done(self, params: dict[str, Any], step: str | None) -> bool:
        """After a restart: libvirt goes on with a save without pierd, so its job is waited for
        (up to SAVE_SETTLE_SECONDS); then the hibernation took effect when the VM is Down, and a VM
        running again (the save failed, or was aborted) was not saved."""
        vm_id = params["vmID"]
        try:
            if self._memory is not None and not self._memory.save_ended(vm_id, SAVE_SETTLE_SECONDS):
                raise Recovering(f"the agent restarted during the hibernation of VM {vm_id} and libvirt is still "
                                 f"saving it after {SAVE_SETTLE_SECONDS:.0f} s: see VM.getStats for how it ends",
                                 data={"vmId": vm_id, "status": "Saving State"})
            status = self._vms.status(vm_id)
        except NoVM:
            raise NoVM(f"VM {vm_id} no longer exists; whether its state was saved is not known",
                       data={"vmId": vm_id}) from None
        if status == "Down":
            return True
        raise Recovering(f"the agent restarted during the hibernation of VM {vm_id}; the VM is {status}: "
                         "hibernate it again", data={"vmId": vm_id, "status": status})


class MemoryRestore:
    """VM.create with a saved memory state (see the module docstring); used by pier.api.vm."""

    def __init__(self, memory: MemoryStateService | None, volumes: MemoryVolumes) -> None:
        self._memory = memory
        self._volumes = volumes

    @staticmethod
    def wanted(params: dict[str, Any]) -> bool:
        return any(key in params for key in RESTORE_KEYS)

    @staticmethod
    def _names(params: dict[str, Any]) -> tuple[VolumeName | str, VolumeName | None]:
        """The memory volume (or its path) and the memory-config volume (None: not named)."""
        if "hiberVolHandle" in params:
            return memory_volumes(str(params["hiberVolHandle"]), "vmParams.hiberVolHandle")
        if "memoryDumpVolume" in params:
            if "memoryConfVolume" not in params:
                raise InvalidParams("vmParams.memoryConfVolume: needed with memoryDumpVolume",
                                    data={"field": "vmParams.memoryConfVolume"})
            return (VolumeName.from_spec(params["memoryDumpVolume"], "vmParams.memoryDumpVolume"),
                    VolumeName.from_spec(params["memoryConfVolume"], "vmParams.memoryConfVolume"))
        state = params["restoreState"]
        if isinstance(state, str):
            return state, None
        return VolumeName.from_spec(state, "vmParams.restoreState"), None

    def create(self, vm_id: str | None, params: dict[str, Any], drives: Drives | None) -> dict[str, Any]:
        if self._memory is None:
            raise Unavailable("restoring a saved state is not served by this agent (no libvirt connection)")
        dump, conf = self._names(params)
        if isinstance(dump, VolumeName):
            self._volumes.check(dump, raw=True)
        if conf is not None:
            self._volumes.check(conf)
        named = [v for v in (dump, conf) if isinstance(v, VolumeName)]
        with self._volumes.claimed(named, f"the restore of VM {vm_id or params.get('vmId') or '(unnamed)'}"):
            return self._restore(vm_id, params, drives, dump, conf)

    def _restore(self, vm_id: str | None, params: dict[str, Any], drives: Drives | None,
                 dump: VolumeName | str, conf: VolumeName | None) -> dict[str, Any]:
        assert self._memory is not None
        from_snapshot = bool(params.get("restoreFromSnapshot", False))
        config = None
        if conf is not None:
            conf_path = self._volumes.prepare(conf)
            try:
                config = read_conf(conf_path)
            finally:
                self._volumes.teardown(conf)
        dump_path = self._volumes.prepare(dump) if isinstance(dump, VolumeName) else dump
        try:
            xml = str(config["_srcDomXML"]) if config and config.get("_srcDomXML") else \
                self._memory.saved_xml(dump_path)
            vm_id = vm_id or params.get("vmId") or (config or {}).get("vmId") or None
            named = [d for d in params.get("devices") or [] if names_volume(d)]
            if from_snapshot:
                self._check_all_disks_given(xml, named)
            if drives is not None:
                params = {**params, "devices": [*(params.get("devices") or []), *self._saved_disks(xml, named)]}
            prepared = drives.prepare(params) if drives is not None else params
            try:
                given = [d for d in prepared.get("devices") or [] if names_volume(d)]
                made = self._memory.restore(vm_id or _uuid_of(xml), repoint_disks(xml, given), dump_path)
            except BaseException:
                if drives is not None:
                    drives.discard(prepared)
                raise
            if drives is not None:
                drives.remember(made["vmId"], prepared)
            return made
        finally:
            if isinstance(dump, VolumeName):
                self._volumes.teardown(dump)

    def _saved_disks(self, xml: str, named: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drive specs for the saved VM's disks on Pier volumes that the call did not name: they
        are prepared (and torn down when the VM goes) like named ones, and stay where they were."""
        images = {str(d.get("imageID")) for d in named}
        found = []
        for path in file_disks(xml).values():
            volume = self._volumes.volume_of(path)
            if volume is not None and volume[1] not in images:
                sd, img, vol = volume
                found.append({"deviceType": "disk", "device": "disk", "domainID": sd, "imageID": img, "volumeID": vol})
                images.add(img)
        return found

    @staticmethod
    def _check_all_disks_given(xml: str, given: list[dict[str, Any]]) -> None:
        """A memory snapshot's disks were layered over since: running on them again would write
        into a volume other layers stand on. Each must be named (the volume to run on now)."""
        images = {str(d["imageID"]) for d in given}
        for name, path in file_disks(xml).items():
            image = path.rstrip("/").split("/")[-2] if path.count("/") >= 2 else ""
            if image not in images:
                raise InvalidParams(f"vmParams.devices: disk {name} of the snapshot was on {path}; restoring a "
                                    "memory snapshot needs each disk named by the volume to run on (made over "
                                    "the snapshot's)", data={"field": "vmParams.devices", "disk": name})


def _uuid_of(xml: str) -> str:
    found = ET.fromstring(xml).findtext("uuid")
    if not found:
        raise InvalidParams("restoreState: the saved state names no VM; give vmParams.vmId",
                            data={"field": "vmParams.vmId"})
    return found.strip()

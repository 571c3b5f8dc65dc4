"""What guards a hibernation over the registry and fakes: its memory volumes locked and claimed
while it writes them (Volume.delete, Image.delete and a second hibernation refused), a memory
volume too small for the guest's state refused before anything is saved, and a restore that names
no disk recording the saved VM's images so that its destroy tears them down."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from pier.host.hibernation import DEVICE_STATE_ALLOWANCE, state_size_estimate
from pier.host.services import MemoryStateService
from pier.rpc.errors import InvalidParams, PierError, Recovering, TaskCancelled
from pier.rpc.schema import Schema
from tests.unit.conftest import Stack, build_stack

SD, POOL = "5d000000-0000-4000-8000-000000000001", "50000000-0000-4000-8000-000000000002"
DUMP_IMG, DUMP_VOL, CONF_IMG, CONF_VOL = (f"{n}0000000-0000-4000-8000-00000000000{n}" for n in "1234")
IMG, VOL = "1a000000-0000-4000-8000-000000000000", "0e000000-0000-4000-8000-000000000000"
VM, OTHER = "a0000000-0000-4000-8000-000000000000", "b0000000-0000-4000-8000-000000000000"
HANDLE = ",".join([SD, POOL, DUMP_IMG, DUMP_VOL, CONF_IMG, CONF_VOL])
MiB, GiB = 1 << 20, 1 << 30


def domain_xml(memory_kib: int = 1 << 20, disk: str = "/nowhere/disk.img") -> str:
    return f"""<domain type='kvm'><name>vm</name><uuid>{VM}</uuid><memory unit='KiB'>{memory_kib}</memory>
      <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk>
      <video><model type='qxl' ram='65536' vram='32768' vgamem='16384' heads='1'/></video></devices></domain>"""


class BlockingMemory:
    """A MemoryStateService whose save waits for `release` (or the task's cancel); it writes
    `state_bytes` of state, and its restore makes the VM in the fake VM service."""

    def __init__(self, stack_vms: Any, xml: str) -> None:
        self.vms = stack_vms
        self.xml = xml
        self.saving = threading.Event()
        self.release = threading.Event()
        self.state_bytes = 10 * MiB

    def domain_xml(self, vm_id: str) -> str:
        return self.xml

    def save(self, vm_id: str, path: str, progress: Any, cancelled: threading.Event,
             down_timeout: float = 30.0) -> dict[str, Any]:
        self.saving.set()
        while not self.release.wait(0.01):
            if cancelled.is_set():
                raise TaskCancelled("cancelled; the VM runs on", data={"vmId": vm_id})
        self.vms.records[vm_id]["status"] = "Down"
        return {"vmId": vm_id, "stateBytes": self.state_bytes}

    def save_ended(self, vm_id: str, timeout: float) -> bool:
        return self.release.is_set()

    def saved_xml(self, path: str) -> str:
        return self.xml

    def restore(self, vm_id: str, xml: str, path: str) -> dict[str, Any]:
        return self.vms.create(vm_id, {"vmName": "restored"})


@pytest.fixture
def site(schema: Schema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, BlockingMemory]]:
    monkeypatch.setattr("pier.api.vm_hibernation.write_conf", lambda path, conf: 4096)  # the fake's paths are not files
    memory = BlockingMemory(None, domain_xml())
    stack = build_stack(schema, tmp_path / "state.db", memory=cast(MemoryStateService, memory))
    memory.vms = stack.vms
    stack.volumes.domains.add(SD)
    stack.volumes.pools.add(POOL)
    blank = "00000000-0000-0000-0000-000000000000"
    stack.volumes.create(SD, DUMP_IMG, DUMP_VOL, str(2 * GiB), "RAW", "SPARSE", "MEMD", "", blank, blank)
    stack.volumes.create(SD, CONF_IMG, CONF_VOL, str(MiB), "RAW", "SPARSE", "MEMM", "", blank, blank)
    stack.volumes.create(SD, IMG, VOL, str(GiB), "COW", "SPARSE", "DATA", "", blank, blank)
    stack.vms.create(VM, {"vmName": "db"})
    stack.vms.create(OTHER, {"vmName": "web"})
    yield stack, memory
    memory.release.set()
    stack.tasks.stop()
    stack.events.close()
    stack.credentials.close()
    stack.audit.close()


def refused(stack: Stack, verb: str, **params: object) -> PierError:
    tasks = set(stack.tasks.all())
    with pytest.raises(PierError) as caught:
        stack.call(verb, **params)
    assert set(stack.tasks.all()) == tasks, "a refused call started a task"
    return caught.value


def test_hibernate_and_a_memory_snapshot_lock_the_memory_images_and_volumes(schema: Schema) -> None:
    hibernate, snapshot = schema.verbs["VM.hibernate"], schema.verbs["VM.snapshot"]
    spaced = " " + HANDLE.upper().replace(",", " , ")
    assert hibernate.lock_keys({"vmID": VM, "hibernationVolHandle": spaced}) == [VM, DUMP_IMG, DUMP_VOL, CONF_IMG,
                                                                                 CONF_VOL]
    assert snapshot.lock_keys({"vmID": VM, "snapDrives": [], "snapMemory": HANDLE})[1:] == [DUMP_IMG, DUMP_VOL,
                                                                                             CONF_IMG, CONF_VOL]
    assert snapshot.lock_keys({"vmID": VM, "snapDrives": []}) == [VM]  # no memory: only the VM
    assert schema.verbs["Volume.delete"].lock_keys({"imageID": DUMP_IMG, "volumeID": DUMP_VOL}) == [DUMP_IMG, DUMP_VOL]


def test_the_memory_volumes_of_a_running_hibernation_cannot_be_deleted_or_reused(site: Any) -> None:
    stack, memory = site
    task = stack.call("VM.hibernate", vmID=VM, hibernationVolHandle=HANDLE)
    assert isinstance(task, dict)
    assert memory.saving.wait(5)
    volume = {"storagepoolID": POOL, "storagedomainID": SD, "postZero": False, "force": False}
    error = refused(stack, "Volume.delete", volumeID=DUMP_VOL, imageID=DUMP_IMG, **volume)
    assert error.code == 203 and error.data["usedBy"] == f"the hibernation of VM {VM}", error  # VolumeIsBusy
    error = refused(stack, "Image.delete", imageID=CONF_IMG, storagepoolID=POOL, storagedomainID=SD, postZero=False,
                    force=False)
    assert error.code == 203, error
    error = refused(stack, "VM.hibernate", vmID=OTHER, hibernationVolHandle=HANDLE)
    assert error.code == 203 and "hibernationVolHandle" not in error.message, error
    memory.release.set()
    ended = stack.tasks.wait(task["taskID"], 10)
    assert ended["state"] == "succeeded", ended
    deleted = stack.call("Volume.delete", volumeID=DUMP_VOL, imageID=DUMP_IMG, **volume)
    assert stack.tasks.wait(deleted["taskID"], 10)["state"] == "succeeded"
    assert (SD, DUMP_IMG, DUMP_VOL) not in stack.volumes.volumes


def test_a_cancelled_hibernation_lets_go_of_its_volumes(site: Any) -> None:
    stack, memory = site
    task = stack.call("VM.hibernate", vmID=VM, hibernationVolHandle=HANDLE)
    assert memory.saving.wait(5)
    stack.call("Task.stop", taskID=task["taskID"])
    ended = stack.tasks.wait(task["taskID"], 10)
    assert ended["state"] in ("cancelled", "failed") and stack.vms.status(VM) == "Up", ended
    assert stack.volumes.prepared == set()
    refused_again = stack.call("Image.delete", imageID=CONF_IMG, storagepoolID=POOL, storagedomainID=SD,
                               postZero=False, force=False)
    assert stack.tasks.wait(refused_again["taskID"], 10)["state"] == "succeeded"


def test_a_memory_volume_smaller_than_the_state_estimate_is_refused_before_saving(site: Any) -> None:
    stack, memory = site
    memory.xml = domain_xml(memory_kib=2 << 20)  # 2 GiB of guest memory, beside qxl's video RAM
    error = refused(stack, "VM.hibernate", vmID=VM, hibernationVolHandle=HANDLE)
    needed = 2 * GiB + DEVICE_STATE_ALLOWANCE + (65536 + 32768 + 16384) * 1024
    assert isinstance(error, InvalidParams) and error.data == {
        "field": "hibernationVolHandle", "volUUID": DUMP_VOL, "capacity": 2 * GiB, "needed": needed}, error
    assert "refused before saving" in error.message
    assert not memory.saving.is_set() and stack.vms.status(VM) == "Up"


def test_a_state_that_outgrew_its_volume_has_its_size_recorded(site: Any) -> None:
    stack, memory = site
    memory.state_bytes = 2 * GiB + 4096  # device state beyond the estimate grew the file
    memory.release.set()
    task = stack.call("VM.hibernate", vmID=VM, hibernationVolHandle=HANDLE)
    assert stack.tasks.wait(task["taskID"], 10)["state"] == "succeeded"
    assert stack.volumes.volumes[(SD, DUMP_IMG, DUMP_VOL)]["capacity"] == str(2 * GiB + 4096)


def test_the_state_estimate_is_memory_device_state_and_video_ram() -> None:
    assert state_size_estimate(domain_xml(memory_kib=1 << 20)) == GiB + 200 * MiB + 112 * MiB
    assert state_size_estimate(f"<domain><uuid>{VM}</uuid><memory unit='GiB'>4</memory></domain>") == \
        4 * GiB + 200 * MiB


def test_a_restore_naming_no_disk_tears_the_saved_disks_image_down_when_the_vm_goes(site: Any,
                                                                                    tmp_path: Path) -> None:
    stack, memory = site
    stack.vms.destroy(VM)
    memory.xml = domain_xml(disk=stack.volumes.volume_path(SD, IMG, VOL))
    state = tmp_path / "state"
    state.write_bytes(b"saved")
    made = stack.call("VM.create", vmParams={"vmId": VM, "restoreState": str(state)})
    assert isinstance(made, dict) and made["vmId"] == VM
    assert stack.volumes.prepared == {(SD, IMG, VOL)}
    stack.call("VM.destroy", vmID=VM)
    assert stack.volumes.prepared == set()


def test_after_a_restart_the_verdict_waits_for_libvirts_save_and_then_follows_the_vm(site: Any) -> None:
    stack, memory = site
    settle = stack.registry.reconcilers["VM.hibernate"]
    params = {"vmID": VM, "hibernationVolHandle": HANDLE}
    with pytest.raises(Recovering) as still:  # libvirt still saves: no verdict on a paused VM
        settle(params, "saving")
    assert still.value.data["status"] == "Saving State"
    memory.release.set()
    with pytest.raises(Recovering) as running:  # the save failed: the VM runs on, unsaved
        settle(params, "saving")
    assert running.value.data["status"] == "Up" and "hibernate it again" in running.value.message
    stack.vms.records[VM]["status"] = "Down"
    assert settle(params, "saving") is True

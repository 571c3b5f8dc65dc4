"""VM.diskReplicateStart/Finish over fakes: what is refused (and that nothing changes then), when
Finish pivots and when it cancels, the copies in vmJobs; and the live XML a copy shows in."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import Any

import pytest

from pier.api.drives import Drives
from pier.api.vm_replicate import VmReplicateApi, VmsWithCopies
from pier.api.volume import VolumeApi
from pier.host.devices import Disk
from pier.host.replicate import CopyEnded, Replica, mirror_xml, replicas_in
from pier.host.services import ReplicationService
from pier.rpc.errors import (
    ImageDoesNotExistInSD,
    ImageError,
    PierError,
    ReplicaError,
    ReplicationNotInProgress,
    Unavailable,
    VolumeDoesNotExist,
    VolumeIsBusy,
)
from pier.rpc.registry import CallContext
from tests.fakes import BLANK, FakeVms, FakeVolumes, as_volume_service

SD, SD2, SD3, IMG, IMG2 = (str(uuid.uuid4()) for _ in range(5))  # SD3: a domain without the image
VM = str(uuid.uuid4())
BASE, TOP, OTHER = (str(uuid.uuid4()) for _ in range(3))

LIVE_XML = """<domain><devices>
<disk type='file' device='disk'><source file='/a/top'/><target dev='vda'/>
  <backingStore type='file'><source file='/a/base'/><backingStore/></backingStore>
  <mirror type='file' job='copy' ready='yes'><format type='qcow2'/><source file='/b/top'/></mirror></disk>
<disk type='file' device='disk'><source file='/c/top'/><target dev='vdb'/>
  <mirror type='file' job='copy'><format type='raw'/><source file='/d/top'/></mirror></disk>
<disk type='file' device='disk'><source file='/e/top'/><target dev='vdc'/>
  <mirror type='file' job='active-commit'><source file='/e/base'/></mirror></disk>
</devices></domain>"""


def test_copies_are_read_from_the_live_xml_and_a_commit_is_not_one() -> None:
    assert replicas_in(LIVE_XML) == {"vda": Replica("vda", "/a/top", "/b/top", "qcow2", True),
                                     "vdb": Replica("vdb", "/c/top", "/d/top", "raw", False)}
    disk = ET.fromstring(mirror_xml("/b/top", "qcow2"))
    assert (disk.get("type"), disk.findtext("source"), disk.find("source[@file='/b/top']") is not None,
            disk.find("driver[@type='qcow2']") is not None) == ("file", "", True, True)


def test_a_copied_disk_names_its_replica_among_its_devices() -> None:
    dest = f"/dc/{SD2}/images/{IMG}/{TOP}"
    xml = LIVE_XML.replace("/b/top", dest)
    disks = [Disk(el).to_vdsm() for el in ET.fromstring(xml).iterfind("devices/disk")]
    assert disks[0]["diskReplicate"] == {"path": dest, "format": "qcow2", "domainID": SD2, "imageID": IMG,
                                         "volumeID": TOP}
    assert disks[1]["diskReplicate"] == {"path": "/d/top", "format": "raw"}
    assert "diskReplicate" not in disks[2]  # an active commit's mirror is no copy


def test_a_copy_keeps_its_job_id_across_restarts() -> None:
    copy = Replica("vda", "/a/top", "/b/top", "qcow2", False, 5, 10)
    assert copy.job_id(VM) == replace(copy, cur=10, ready=True).job_id(VM) != copy.job_id(str(uuid.uuid4()))
    entry = copy.vdsm(VM)
    assert (entry["blockJobType"], entry["cur"], entry["end"], entry["drive"]) == ("copy", "5", "10", "vda")


class FakeReplications:
    """A ReplicationService over one VM whose disks' chains are `chains`; copies as libvirt keeps them."""

    def __init__(self, chains: dict[str, list[str]]) -> None:
        self.chains_now = chains
        self.copies: dict[str, Replica] = {}
        self.ended: list[tuple[str, bool]] = []
        self.listeners: list[Any] = []

    def chains(self, vm_id: str) -> dict[str, list[str]]:
        return {name: list(chain) for name, chain in self.chains_now.items()}

    def replicas(self, vm_id: str) -> dict[str, Any]:
        return dict(self.copies)

    def start(self, vm_id: str, source: str, dest: str, fmt: str) -> Any:
        drive = next(name for name, chain in self.chains_now.items() if chain[0] == source)
        if drive in self.copies:
            raise ReplicaError(f"drive {drive} is already being copied")
        self.copies[drive] = Replica(drive, source, dest, fmt, False)
        return self.copies[drive]

    def finish(self, vm_id: str, source: str, pivot: bool) -> Any:
        drive = next(name for name, chain in self.chains_now.items() if chain[0] == source)
        copy = self.copies[drive]
        if pivot and not copy.ready:
            raise Unavailable("not ready")
        del self.copies[drive]
        if pivot:
            self.chains_now[drive][0] = copy.dest
        self.ended.append((drive, pivot))
        return copy

    def vm_jobs(self, vm_id: str) -> dict[str, dict[str, Any]]:
        return {c.job_id(vm_id): c.vdsm(vm_id) for c in self.copies.values()} if vm_id == VM else {}

    def on_copy_ended(self, listener: Any) -> None:
        self.listeners.append(listener)

    def libvirt_ends(self, drive: str, status: str, pivot: bool = False) -> None:
        """libvirt ends the drive's copy on its own (failed, or pivoted/aborted by virsh) and tells."""
        copy = self.copies.pop(drive)
        if pivot:
            self.chains_now[drive][0] = copy.dest
        for listener in self.listeners:
            listener(CopyEnded(VM, copy, status, pivot))


def as_replication_service(fake: FakeReplications) -> ReplicationService:
    return fake


@pytest.fixture
def world() -> tuple[VmReplicateApi, FakeReplications, FakeVolumes, FakeVms]:
    volumes = FakeVolumes(domains=[SD, SD2, SD3])
    for sd in (SD, SD2):  # the destination made as Image.cloneStructure makes it
        for vol, parent in ((BASE, BLANK), (TOP, BASE)):
            volumes.create(sd, IMG, vol, "1048576", "COW", "SPARSE", "DATA", "", IMG if parent != BLANK else BLANK,
                           parent)
    volumes.create(SD2, IMG2, OTHER, "1048576", "COW", "SPARSE", "DATA", "", BLANK, BLANK)
    service = as_volume_service(volumes)
    copies = FakeReplications({"vda": [service.volume_path(SD, IMG, TOP), service.volume_path(SD, IMG, BASE)]})
    vms = FakeVms()
    vms.records = {VM: {"vmId": VM, "status": "Up", "devices": []}}
    api = VmReplicateApi(as_replication_service(copies), service, VolumeApi(service, vms), Drives(service))
    return api, copies, volumes, vms


def ctx() -> CallContext:
    return CallContext("test")


def disk(sd: str, vol: str = TOP, img: str = IMG) -> dict[str, Any]:
    return {"domainID": sd, "imageID": img, "volumeID": vol}


@pytest.mark.parametrize(("src", "dst", "error", "field"), [
    (disk(SD, str(uuid.uuid4())), disk(SD2), ImageError, "srcDisk.volumeID"),  # no such volume
    (disk(SD, BASE), disk(SD2, BASE), ImageError, "srcDisk.volumeID"),  # not the drive's leaf
    (disk(SD), disk(SD), ReplicaError, "dstDisk.domainID"),  # the same domain
    (disk(SD), disk(SD2, OTHER, IMG2), ReplicaError, "dstDisk.imageID"),  # another image
    (disk(SD), disk(SD2, str(uuid.uuid4())), VolumeDoesNotExist, "dstDisk.volumeID"),  # not made
    (disk(SD), disk(SD2, BASE), ReplicaError, "dstDisk.volumeID"),  # made over other parents
])
def test_a_start_that_cannot_work_is_refused_naming_the_field_and_changes_nothing(
        world: Any, src: dict[str, Any], dst: dict[str, Any], error: type[PierError], field: str) -> None:
    api, copies, volumes, _ = world
    with pytest.raises(error) as caught:
        api.start(ctx(), VM, src, dst)
    assert caught.value.data["field"] == field, caught.value
    assert copies.copies == {} and volumes.prepared == set()


def test_a_destination_image_missing_says_how_to_make_it(world: Any) -> None:
    api, copies, volumes, _ = world
    with pytest.raises(ImageDoesNotExistInSD) as caught:
        api.start(ctx(), VM, disk(SD), disk(SD3))
    assert "cloneStructure" in caught.value.message and caught.value.data["field"] == "dstDisk.volumeID"
    assert copies.copies == {} and volumes.prepared == set()


def test_a_destination_a_vm_uses_is_refused(world: Any) -> None:
    api, copies, volumes, vms = world
    other = str(uuid.uuid4())
    vms.records[other] = {"vmId": other, "status": "Up", "devices": [
        {"deviceType": "disk", "device": "disk", "path": f"/fake/{SD2}/images/{IMG}/{TOP}"}]}
    with pytest.raises(VolumeIsBusy):
        api.start(ctx(), VM, disk(SD), disk(SD2))
    assert copies.copies == {} and volumes.prepared == set()


def test_a_second_start_on_the_same_drive_is_refused(world: Any) -> None:
    api, copies, volumes, _ = world
    assert api.start(ctx(), VM, disk(SD), disk(SD2)) is True
    assert volumes.prepared == {(SD2, IMG, TOP)}
    with pytest.raises(ReplicaError):
        api.start(ctx(), VM, disk(SD), disk(SD2))
    assert list(copies.copies) == ["vda"] and volumes.prepared == {(SD2, IMG, TOP)}


def test_finish_with_nothing_copied_is_refused(world: Any) -> None:
    api, copies, _, _ = world
    with pytest.raises(ReplicationNotInProgress) as caught:
        api.finish(ctx(), VM, disk(SD), disk(SD2))
    assert caught.value.code == 88 and copies.ended == []


def test_finish_pivots_onto_the_copy_once_it_is_ready(world: Any) -> None:
    api, copies, volumes, _ = world
    api.start(ctx(), VM, disk(SD), disk(SD2))
    with pytest.raises(Unavailable):  # not ready: it goes on, on the source
        api.finish(ctx(), VM, disk(SD), disk(SD2))
    assert "vda" in copies.copies
    copies.copies["vda"] = replace(copies.copies["vda"], ready=True)
    volumes.prepared.add((SD, IMG, TOP))
    ended = api.finish(ctx(), VM, disk(SD), disk(SD2))
    dest = f"/fake/{SD2}/images/{IMG}/{TOP}"
    assert ended == {"drive": "vda", "pivoted": True, "path": dest, "domainID": SD2}
    assert copies.ended == [("vda", True)] and copies.chains_now["vda"][0] == dest
    assert volumes.prepared == {(SD2, IMG, TOP)}  # the source image torn down, the destination kept


@pytest.mark.parametrize("dst", [disk(SD), disk(SD2, BASE)])
def test_finish_onto_anything_but_the_copy_cancels_it(world: Any, dst: dict[str, Any]) -> None:
    api, copies, volumes, _ = world
    api.start(ctx(), VM, disk(SD), disk(SD2))
    ended = api.finish(ctx(), VM, disk(SD), dst)
    assert ended == {"drive": "vda", "pivoted": False, "path": f"/fake/{SD}/images/{IMG}/{TOP}", "domainID": SD}
    assert copies.ended == [("vda", False)] and volumes.prepared == set()  # the destination torn down


def test_copies_join_the_vms_jobs_in_its_stats(world: Any) -> None:
    api, copies, _, vms = world
    vms.stats = lambda vm_id: {"vmId": vm_id, "vmJobs": {"merge": {"id": "merge"}}}
    wrapped = VmsWithCopies(vms, as_replication_service(copies))
    assert wrapped.stats(VM)["vmJobs"] == {"merge": {"id": "merge"}}
    api.start(ctx(), VM, disk(SD), disk(SD2))
    jobs = wrapped.stats(VM)["vmJobs"]
    assert set(jobs) == {"merge", copies.copies["vda"].job_id(VM)}
    assert VmsWithCopies(vms, None).stats(VM)["vmJobs"] == {"merge": {"id": "merge"}}


def test_without_libvirt_the_verbs_answer_unavailable() -> None:
    service = as_volume_service(FakeVolumes(domains=[SD]))
    api = VmReplicateApi(None, service, VolumeApi(service, FakeVms()), Drives(service))
    with pytest.raises(Unavailable):
        api.start(ctx(), VM, disk(SD), disk(SD2))


def test_a_finish_asked_again_after_its_pivot_answers_it_again(world: Any) -> None:
    api, copies, volumes, _ = world
    api.start(ctx(), VM, disk(SD), disk(SD2))
    copies.copies["vda"] = replace(copies.copies["vda"], ready=True)
    first = api.finish(ctx(), VM, disk(SD), disk(SD2))
    assert api.finish(ctx(), VM, disk(SD), disk(SD2)) == first
    assert copies.ended == [("vda", True)]
    with pytest.raises(ImageError):  # cancelling a copy that has pivoted: the source is no drive's leaf
        api.finish(ctx(), VM, disk(SD), disk(SD))
    with pytest.raises(ReplicationNotInProgress):
        api.finish(ctx(), VM, disk(SD2), disk(SD))


def test_a_copy_libvirt_failed_has_its_destination_torn_down_and_can_start_again(world: Any) -> None:
    api, copies, volumes, _ = world
    api.start(ctx(), VM, disk(SD), disk(SD2))
    assert volumes.prepared == {(SD2, IMG, TOP)}
    copies.libvirt_ends("vda", "failed")
    assert volumes.prepared == set() and copies.chains_now["vda"][0] == f"/fake/{SD}/images/{IMG}/{TOP}"
    with pytest.raises(ReplicationNotInProgress) as caught:
        api.finish(ctx(), VM, disk(SD), disk(SD2))
    assert "ended without Finish: failed" in caught.value.message and caught.value.data["ended"] == "failed"
    assert api.start(ctx(), VM, disk(SD), disk(SD2)) is True
    assert volumes.prepared == {(SD2, IMG, TOP)}


def test_a_pivot_done_outside_pier_keeps_the_destination_and_tears_down_the_source(world: Any) -> None:
    api, copies, volumes, _ = world
    api.start(ctx(), VM, disk(SD), disk(SD2))
    volumes.prepared.add((SD, IMG, TOP))  # the drive's image, prepared when the VM was made
    copies.libvirt_ends("vda", "completed", pivot=True)
    assert volumes.prepared == {(SD2, IMG, TOP)}
    again = api.finish(ctx(), VM, disk(SD), disk(SD2))  # the engine's Finish after it: the pivot answered
    assert again == {"drive": "vda", "pivoted": True, "path": f"/fake/{SD2}/images/{IMG}/{TOP}", "domainID": SD2}

"""VM.snapshot and VM.merge refusals over fakes, the snapshot XML, and partition alignment."""

from __future__ import annotations

import struct
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest

from pier.api.drives import Drives
from pier.api.vm_snapshots import VmSnapshotsApi, VmsWithJobs
from pier.api.volume import VolumeApi
from pier.host.alignment import partition_starts
from pier.host.services import SnapshotService
from pier.host.snapshots import MergeState, SnapshotTarget, disk_chains, snapshot_xml
from pier.rpc.errors import MergeError, SnapshotError, VolumeDoesNotExist, VolumeIsBusy
from pier.rpc.registry import CallContext
from tests.fakes import BLANK, FakeVms, FakeVolumes, as_volume_service

SD, IMG, IMG2 = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
VM = str(uuid.uuid4())
BASE, TOP, NEW, OTHER = (str(uuid.uuid4()) for _ in range(4))

DOMAIN_XML = """<domain><devices>
<disk type='file' device='disk'><source file='/a/top'/><target dev='vda'/>
  <backingStore type='file'><source file='/a/base'/><backingStore/></backingStore></disk>
<disk type='file' device='disk'><source file='/b/only'/><target dev='vdb'/></disk>
<disk type='file' device='cdrom'><target dev='sda'/></disk>
</devices></domain>"""


def test_disk_chains_follow_backing_stores_leaf_first() -> None:
    assert dict(disk_chains(DOMAIN_XML)) == {"vda": ["/a/top", "/a/base"], "vdb": ["/b/only"], "sda": []}


def test_a_snapshot_names_every_disk_and_moves_only_the_targets() -> None:
    xml = snapshot_xml(dict(disk_chains(DOMAIN_XML)), [SnapshotTarget("/a/top", "/a/new")])
    disks = {d.get("name"): d for d in ET.fromstring(xml).iterfind("disks/disk")}
    assert disks["vda"].get("snapshot") == "external"
    assert disks["vda"].find("source").get("file") == "/a/new"  # type: ignore[union-attr]
    assert disks["vda"].find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disks["vdb"].get("snapshot") == disks["sda"].get("snapshot") == "no"  # else libvirt makes files


def mbr(*starts: int) -> bytes:
    head = bytearray(512)
    for index, start in enumerate(starts):
        struct.pack_into("<BBBBBBBBII", head, 446 + 16 * index, 0, 0, 0, 0, 0x83, 0, 0, 0, start, 1000)
    head[510:512] = b"\x55\xaa"
    return bytes(head)


def gpt(*starts: int) -> bytes:
    protective = bytearray(mbr(1))
    protective[446 + 4] = 0xEE
    header = bytearray(512)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, 2, 128, 128)
    entries = bytearray(128 * 128)
    for index, start in enumerate(starts):
        entries[index * 128: index * 128 + 16] = uuid.uuid4().bytes
        struct.pack_into("<QQ", entries, index * 128 + 32, start, start + 100)
    return bytes(protective) + bytes(header) + bytes(entries)


def test_partition_starts_of_mbr_and_gpt_tables() -> None:
    assert partition_starts(bytes(512)) == []
    assert partition_starts(mbr(2048, 63)) == [2048, 63]
    assert partition_starts(gpt(2048, 4096 + 7)) == [2048, 4103]


class FakeSnapshots:
    """A SnapshotService over one VM whose disks' chains are `chains`; records what it was asked."""

    def __init__(self, chains: dict[str, list[str]]) -> None:
        self.chains_now = chains
        self.taken: list[list[SnapshotTarget]] = []
        self.memory: list[str | None] = []
        self.commits: list[tuple[str, str]] = []

    def chains(self, vm_id: str) -> dict[str, list[str]]:
        return {name: list(chain) for name, chain in self.chains_now.items()}

    def snapshot(self, vm_id: str, targets: list[Any], quiesce: bool, memory_path: str | None = None) -> dict[str, Any]:
        self.taken.append(targets)
        self.memory.append(memory_path)
        for target in targets:
            for chain in self.chains_now.values():
                if chain and chain[0] == target.base_path:
                    chain.insert(0, target.path)
        return {"quiesce": quiesce}

    def commit(self, vm_id: str, job_id: str, image: str, base_path: str, top_path: str, bandwidth: int,
               progress: Callable[[int, str], None], cancelled: threading.Event,
               leave: Callable[[], bool] = lambda: False) -> bool | None:
        self.commits.append((base_path, top_path))
        return True

    def where(self, vm_id: str, top_path: str, base_path: str) -> Any:
        return MergeState("not-merged")

    def follow(self, vm_id: str, job_id: str, image: str, base_path: str, top_path: str,
               done: Callable[[bool], None]) -> None:
        pass

    def vm_jobs(self, vm_id: str) -> dict[str, dict[str, Any]]:
        return {"job": {"id": "job"}} if vm_id == VM else {}

    def resize(self, vm_id: str, path: str, size: int) -> None:
        pass


def as_snapshot_service(fake: FakeSnapshots) -> SnapshotService:
    return fake


class Task:
    id = "task"
    cancelled = threading.Event()

    def progress(self, percent: int, message: str = "") -> None:
        pass

    def step(self, name: str, percent: int, message: str = "") -> None:
        pass


@pytest.fixture
def world() -> tuple[VmSnapshotsApi, FakeSnapshots, FakeVolumes, FakeVms]:
    volumes = FakeVolumes(domains=[SD])
    for img, vol, parent in ((IMG, BASE, BLANK), (IMG, TOP, BASE), (IMG2, OTHER, BLANK)):
        volumes.create(SD, img, vol, "1048576", "COW", "SPARSE", "DATA", "", img if parent != BLANK else BLANK,
                       parent)
    service = as_volume_service(volumes)
    path = service.volume_path
    snapshots = FakeSnapshots({"vda": [path(SD, IMG, TOP), path(SD, IMG, BASE)], "vdb": [path(SD, IMG2, OTHER)]})
    vms = FakeVms()
    vms.records = {VM: {"vmId": VM, "status": "Up", "devices": []}}
    api = VmSnapshotsApi(as_snapshot_service(snapshots), service, VolumeApi(service, vms), Drives(service))
    return api, snapshots, volumes, vms


def ctx() -> CallContext:
    return CallContext("test", task=Task())


def snap(base: str = TOP, vol: str = NEW, img: str = IMG) -> dict[str, Any]:
    return {"domainID": SD, "imageID": img, "baseVolumeID": base, "volumeID": vol}


def test_a_snapshot_onto_a_volume_made_over_the_leaf_is_taken(world: Any) -> None:
    api, snapshots, volumes, _ = world
    volumes.create(SD, IMG, NEW, "1048576", "COW", "SPARSE", "DATA", "", IMG, TOP)
    assert api.snapshot(ctx(), VM, [snap()]) == {"quiesce": True}
    assert api.snapshot_done({"vmID": VM, "snapDrives": [snap()]}, "snapshotting") is True
    assert [t.path for t in snapshots.taken[0]] == [f"/fake/{SD}/images/{IMG}/{NEW}"]
    assert volumes.volumes[(SD, IMG, TOP)]["voltype"] == "INTERNAL"


def test_snapshots_that_cannot_work_are_refused_naming_the_field(world: Any) -> None:
    api, snapshots, volumes, vms = world
    volumes.create(SD, IMG, NEW, "1048576", "COW", "SPARSE", "DATA", "", IMG, TOP)
    second = str(uuid.uuid4())
    with pytest.raises(VolumeDoesNotExist, match=r"snapDrives\.1\.volumeID"):  # the second target is missing
        api.snapshot_allowed(ctx(), VM, [snap(), snap(OTHER, second, IMG2)])
    over_base = str(uuid.uuid4())
    volumes.create(SD, IMG, over_base, "1048576", "COW", "SPARSE", "DATA", "", IMG, BASE)
    with pytest.raises(SnapshotError, match="not over the drive's leaf"):
        api.snapshot_allowed(ctx(), VM, [snap(TOP, over_base)])
    with pytest.raises(SnapshotError, match="baseVolumeID"):  # base is not a drive's leaf
        api.snapshot_allowed(ctx(), VM, [snap(BASE, over_base)])
    vms.records[str(uuid.uuid4())] = {"vmId": "other", "status": "Up",
                                      "devices": [{"path": f"/fake/{SD}/images/{IMG}/{NEW}"}]}
    with pytest.raises(VolumeIsBusy):  # another running VM uses the target
        api.snapshot_allowed(ctx(), VM, [snap()])
    assert snapshots.taken == []


def test_a_merge_base_must_be_below_top_in_the_drives_chain(world: Any) -> None:
    api, snapshots, _, _ = world
    drive = {"domainID": SD, "imageID": IMG, "volumeID": TOP}
    with pytest.raises(MergeError, match="baseVolUUID"):
        api.merge_allowed(ctx(), VM, drive, str(uuid.uuid4()), TOP)
    with pytest.raises(MergeError, match="baseVolUUID"):
        api.merge_allowed(ctx(), VM, drive, TOP, BASE)  # the wrong way round
    with pytest.raises(MergeError, match="drive.volumeID"):
        api.merge_allowed(ctx(), VM, {**drive, "volumeID": BASE}, BASE, TOP)  # not the drive's leaf
    assert snapshots.commits == []
    with pytest.raises(MergeError, match="nothing was merged"):  # after a restart with no job in libvirt
        api.merge_done({"vmID": VM, "drive": drive, "baseVolUUID": BASE, "topVolUUID": TOP}, "committing")


def test_vm_stats_carry_the_vms_block_jobs(world: Any) -> None:
    _, snapshots, _, vms = world
    wrapped = VmsWithJobs(vms, as_snapshot_service(snapshots))
    assert wrapped.stats(VM)["vmJobs"] == {"job": {"id": "job"}}
    assert wrapped.status(VM) == "Up"


def test_a_disk_on_volumes_reports_its_volume_chain_base_first() -> None:
    from pier.host.devices import Disk

    leaf, base = (f"/dc/{SD}/images/{IMG}/{vol}" for vol in (TOP, BASE))
    element = ET.fromstring(f"""<disk type='file' device='disk'><source file='{leaf}'/><target dev='vda'/>
      <backingStore type='file'><source file='{base}'/><backingStore/></backingStore></disk>""")
    vdsm = Disk(element).to_vdsm()
    assert (vdsm["domainID"], vdsm["imageID"], vdsm["volumeID"]) == (SD, IMG, TOP)
    assert [entry["volumeID"] for entry in vdsm["volumeChain"]] == [BASE, TOP]
    assert "volumeChain" not in Disk(ET.fromstring("<disk><source file='/images/a.img'/></disk>")).to_vdsm()

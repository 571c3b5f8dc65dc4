"""Hibernation without libvirt: VDSM's volume handles, the memory config, disks re-pointed for a
restore, the status events a save and a restore give, and VM.create's restore forms over fakes."""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import libvirt
import pytest

from pier.api.drives import Drives
from pier.api.vm_hibernation import MemoryRestore, MemoryVolumes, memory_volumes
from pier.api.volume import VolumeApi
from pier.host.events import EventDispatcher
from pier.host.hibernation import MemoryStates, file_disks, read_conf, repoint_disks, write_conf
from pier.host.news import Lifecycle, StatusNews
from pier.host.services import MemoryStateService, VolumeService
from pier.host.vmstate import DOWN, RESTORING_STATE, SAVING_STATE, UP, VmCache, VmRecord
from pier.rpc.errors import ImageDoesNotExistInSD, InvalidParams, Unavailable, VolumeDoesNotExist
from tests.fakes import FakeVms, FakeVolumes
from tests.unit.test_host_events import Recorder

SD, POOL = "5d000000-0000-4000-8000-000000000001", "50000000-0000-4000-8000-000000000002"
IDS = [f"{n}0000000-0000-4000-8000-00000000000{n}" for n in "1234"]
VM = "a0000000-0000-4000-8000-000000000000"
IMG, OLD, NEW = "1a000000-0000-4000-8000-000000000000", "01d00000-0000-4000-8000-000000000000", \
    "0e000000-0000-4000-8000-000000000000"

SAVED = f"""<domain type='kvm'><name>vm</name><uuid>{VM}</uuid><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <source file='/dc/{SD}/images/{IMG}/{OLD}' index='2'/>
    <backingStore type='file'><format type='raw'/><source file='/dc/{SD}/images/{IMG}/base'/></backingStore>
    <target dev='vda' bus='virtio'/><alias name='virtio-disk0'/>
    <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/></disk>
  <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/></disk>
</devices></domain>"""


def test_vdsms_six_ids_name_the_memory_and_config_volumes() -> None:
    dump, conf = memory_volumes(" " + ", ".join([SD, POOL, *IDS]).upper(), "snapMemory")
    assert (dump.sd, dump.pool, dump.img, dump.vol) == (SD, POOL, IDS[0], IDS[1])
    assert (conf.img, conf.vol, conf.field) == (IDS[2], IDS[3], "snapMemory")
    for bad in (",".join([SD, POOL, *IDS[:3]]), ",".join([SD, POOL, IDS[0], IDS[1], IDS[0], IDS[1]])):
        with pytest.raises(InvalidParams) as caught:
            memory_volumes(bad, "hibernationVolHandle")
        assert caught.value.data == {"field": "hibernationVolHandle"}


def test_the_memory_config_round_trips_padded_and_keeps_the_volume_size(tmp_path: Path) -> None:
    volume = tmp_path / "conf"
    volume.write_bytes(b"\xff" * 3 * 4096 * 4)
    written = write_conf(str(volume), {"vmId": VM, "_srcDomXML": SAVED})
    assert written % 4096 == 0 and volume.stat().st_size == 3 * 4096 * 4
    assert read_conf(str(volume)) is None  # what follows the config is not zeroes here: not ours
    volume.write_bytes(b"\0" * 3 * 4096 * 4)
    write_conf(str(volume), {"vmId": VM, "_srcDomXML": SAVED})
    assert read_conf(str(volume)) == {"pierMemoryConf": 1, "vmId": VM, "_srcDomXML": SAVED}
    volume.write_bytes(b"\x80\x02}q\x00." + b"\0" * 4090)  # a pickle, as VDSM writes it: never unpickled
    assert read_conf(str(volume)) is None
    volume.write_bytes(json.dumps({"vmId": VM}).encode())  # JSON, but not Pier's config
    assert read_conf(str(volume)) is None


def test_a_restore_moves_each_named_disk_onto_its_volume_and_chain_and_keeps_its_device() -> None:
    new_path = f"/dc/{SD}/images/{IMG}/{NEW}"
    chain = [{"volumeID": NEW, "path": new_path, "format": "qcow2"},
             {"volumeID": OLD, "path": f"/dc/{SD}/images/{IMG}/{OLD}", "format": "qcow2"}]
    xml = repoint_disks(SAVED, [{"imageID": IMG, "path": new_path, "format": "cow", "volumeChain": chain}])
    disk = ET.fromstring(xml).find("devices/disk")
    assert disk is not None
    assert [child.tag for child in disk] == ["driver", "source", "backingStore", "target", "alias", "address"]
    assert disk.find("source").attrib == {"file": new_path}  # type: ignore[union-attr]
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("backingStore/source").get("file") == chain[1]["path"]  # type: ignore[union-attr]
    assert file_disks(xml) == {"vda": new_path, "sda": "/iso/x.iso"}
    assert file_disks(repoint_disks(SAVED, [{"imageID": "other", "path": "/x"}])) == file_disks(SAVED)


@pytest.fixture
def dispatcher() -> Iterator[tuple[EventDispatcher, VmCache, Recorder]]:
    cache = VmCache()
    rec = Recorder()
    disp = EventDispatcher(cache, rec, dict, lambda: None, dict, reboot_grace=0.1)
    disp.start()
    yield disp, cache, rec
    disp.stop()


def test_a_save_is_saving_state_then_down_and_a_failed_one_back_up(dispatcher: Any) -> None:
    disp, cache, rec = dispatcher
    cache.add(VmRecord(VM, "vm", status=UP, emitted=UP))
    disp.put(StatusNews(VM, SAVING_STATE))
    disp.put(Lifecycle(VM, "vm", libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED))
    disp.put(Lifecycle(VM, "vm", libvirt.VIR_DOMAIN_EVENT_RESUMED, 0))  # the save failed: libvirt resumes
    disp.put(StatusNews(VM, UP))
    disp.put(StatusNews(VM, SAVING_STATE))
    disp.put(Lifecycle(VM, "vm", libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED))
    disp.put(Lifecycle(VM, "vm", libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED))
    assert disp.flush()
    assert rec.statuses(VM) == [SAVING_STATE, UP, SAVING_STATE, DOWN]
    assert rec.last(VM)["exitReason"] == 5 and rec.last(VM)["exitMessage"] == "SaveState succeeded"


def test_a_restore_is_announced_restoring_state_then_up(dispatcher: Any) -> None:
    disp, cache, rec = dispatcher
    cache.add(VmRecord(VM, "vm", status=RESTORING_STATE, announce_launch=True, launch_status=RESTORING_STATE))
    disp.put(Lifecycle(VM, "vm", libvirt.VIR_DOMAIN_EVENT_DEFINED, 0))
    disp.put(Lifecycle(VM, "vm", libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED))
    assert disp.flush()
    assert rec.statuses(VM) == [RESTORING_STATE, UP]


class FakeMemory:
    """A MemoryStateService that records the restores it is asked for."""

    def __init__(self, saved_xml: str) -> None:
        self.xml = saved_xml
        self.restored: list[tuple[str, str, str]] = []

    def domain_xml(self, vm_id: str) -> str:
        return self.xml

    def save(self, vm_id: str, path: str, progress: Any, cancelled: threading.Event,
             down_timeout: float = 30.0) -> dict[str, Any]:
        return {"vmId": vm_id}

    def save_ended(self, vm_id: str, timeout: float) -> bool:
        return True

    def saved_xml(self, path: str) -> str:
        return self.xml

    def restore(self, vm_id: str, xml: str, path: str) -> dict[str, Any]:
        self.restored.append((vm_id, xml, path))
        return {"vmId": vm_id, "status": UP}


@pytest.fixture
def restore(tmp_path: Path) -> tuple[MemoryRestore, FakeMemory, FakeVolumes, VolumeService]:
    volumes = FakeVolumes([SD], [POOL])
    service = cast(VolumeService, volumes)
    memory = FakeMemory(SAVED)
    checked = MemoryVolumes(service, VolumeApi(service, FakeVms()))
    return MemoryRestore(cast(MemoryStateService, memory), checked), memory, volumes, service


def test_restore_takes_each_of_vdsms_forms_and_refuses_what_is_missing(restore: Any, tmp_path: Path) -> None:
    api, memory, volumes, service = restore
    assert not MemoryRestore.wanted({"vmName": "x", "memSize": 64})
    state = tmp_path / "state"
    state.write_bytes(b"saved")
    api.create(None, {"restoreState": str(state)}, None)
    assert memory.restored[-1] == (VM, ET.tostring(ET.fromstring(SAVED), encoding="unicode"), str(state))
    with pytest.raises(ImageDoesNotExistInSD) as caught:
        api.create(VM, {"hiberVolHandle": ",".join([SD, POOL, *IDS])}, None)
    assert caught.value.data["field"] == "vmParams.hiberVolHandle"
    volumes.volumes[(SD, IDS[0], "another")] = {"format": "RAW"}
    with pytest.raises(VolumeDoesNotExist) as missing:
        api.create(VM, {"hiberVolHandle": ",".join([SD, POOL, *IDS])}, None)
    assert missing.value.data == {"field": "vmParams.hiberVolHandle", "volUUID": IDS[1]}
    with pytest.raises(InvalidParams) as wrong:
        api.create(VM, {"memoryDumpVolume": {"domainID": SD, "imageID": IDS[0], "volumeID": IDS[1]}}, None)
    assert wrong.value.data == {"field": "vmParams.memoryConfVolume"}
    with pytest.raises(InvalidParams) as unnamed:  # a snapshot's disk must be named: others stand on it now
        api.create(VM, {"restoreState": str(state), "restoreFromSnapshot": True}, Drives(service))
    assert unnamed.value.data["disk"] == "vda"
    with pytest.raises(Unavailable):
        MemoryRestore(None, api._volumes).create(VM, {"restoreState": str(state)}, None)


class SavingDomain:
    """A libvirt domain whose save job reports `stats` and records an abort."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self.aborted = threading.Event()

    def jobStats(self, flags: int) -> dict[str, int]:  # noqa: N802 (libvirt's name)
        return self.stats

    def abortJob(self) -> None:  # noqa: N802 (libvirt's name)
        self.aborted.set()


def test_the_save_reports_libvirts_progress_and_a_cancel_aborts_its_job() -> None:
    domain = SavingDomain({"memory_total": 1000, "memory_processed": 500})
    dom = cast(Any, type("Dom", (), {"virdomain": domain, "vm_id": VM})())
    states = MemoryStates(cast(Any, None), cast(Any, None), lambda news: None, poll_seconds=0.01)
    seen: list[tuple[int, str]] = []
    cancelled, done = threading.Event(), threading.Event()
    watcher = threading.Thread(target=states._watch, args=(dom, lambda p, m: seen.append((p, m)), cancelled, done))
    watcher.start()
    while not seen:
        time.sleep(0.01)
    assert seen[0] == (51, "saved 500 of 1000 bytes of memory")
    cancelled.set()
    assert domain.aborted.wait(5)
    watcher.join(5)
    assert not watcher.is_alive()

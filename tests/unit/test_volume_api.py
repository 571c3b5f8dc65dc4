"""The Volume and Image verbs over the fake VolumeService: VDSM's codes refused at the call (no
task is started), task verbs that end with the fake changed, VDSM's numeric codes accepted, and
every storage legacy name callable."""

from __future__ import annotations

import pytest

from pier.rpc.errors import PierError
from pier.rpc.registry import CallContext
from pier.transports.xmlrpc import XmlRpc
from tests.unit.conftest import ADMIN, Stack

BLANK = "00000000-0000-0000-0000-000000000000"
SP, SD, SD2 = "10000000-0000-4000-8000-000000000001", "20000000-0000-4000-8000-000000000002", \
    "30000000-0000-4000-8000-000000000003"
IMG, BASE, TOP = "40000000-0000-4000-8000-000000000004", "50000000-0000-4000-8000-000000000005", \
    "60000000-0000-4000-8000-000000000006"
IDS = {"storagepoolID": SP, "storagedomainID": SD, "imageID": IMG}


@pytest.fixture
def site(stack: Stack) -> Stack:
    stack.volumes.domains |= {SD, SD2}
    stack.volumes.pools.add(SP)
    stack.volumes.create(SD, IMG, BASE, "1024", "COW", "SPARSE", "DATA", "", BLANK, BLANK)
    stack.volumes.create(SD, IMG, TOP, "1024", "COW", "SPARSE", "DATA", "", IMG, BASE)
    return stack


def create(stack: Stack, **changes: object) -> object:
    params = dict(volumeID="70000000-0000-4000-8000-000000000007", size="1024", volFormat=4, preallocate=2,
                  diskType="DATA", desc="", srcImgUUID=BLANK, srcVolUUID=BLANK, **IDS)
    params.update(changes)
    return stack.call("Volume.create", **params)


def refused_code(stack: Stack, verb: str, **params: object) -> int:
    tasks = set(stack.tasks.all())
    with pytest.raises(PierError) as caught:
        stack.call(verb, **params)
    assert set(stack.tasks.all()) == tasks, "a refused call started a task"
    return caught.value.code


def test_a_create_with_vdsms_numeric_codes_makes_a_cow_sparse_volume(site: Stack) -> None:
    task = create(site)
    assert isinstance(task, dict)
    assert site.tasks.wait(task["taskID"], 5)["state"] == "succeeded"
    made = site.volumes.volumes[(SD, IMG, "70000000-0000-4000-8000-000000000007")]
    assert (made["format"], made["type"]) == ("COW", "SPARSE")


def test_bad_input_is_refused_at_the_call_with_vdsms_codes(site: Stack) -> None:
    before = dict(site.volumes.volumes)
    assert refused_code(site, "Volume.create", **{**_create_params(), "storagepoolID": SD2}) == 309
    assert refused_code(site, "Volume.create", **{**_create_params(), "storagedomainID": SP}) == 358
    assert refused_code(site, "Volume.create", **{**_create_params(), "size": "12abc"}) == 1000
    assert refused_code(site, "Volume.create", **{**_create_params(), "size": "0"}) == 229
    assert refused_code(site, "Volume.create", **{**_create_params(), "volumeID": TOP}) == 212
    assert refused_code(site, "Volume.delete", volumeID=BASE, **IDS) == 204
    assert refused_code(site, "Volume.extendSize", volumeID=TOP, newSize="10", **IDS) == 232
    assert refused_code(site, "Image.move", dstSdUUID=SP, operation=1, **IDS) == 358
    assert site.volumes.volumes == before


def _create_params() -> dict[str, object]:
    return dict(volumeID="70000000-0000-4000-8000-000000000007", size="1024", volFormat="COW",
                preallocate="SPARSE", diskType="DATA", desc="", srcImgUUID=BLANK, srcVolUUID=BLANK, **IDS)


def test_a_volume_a_running_vm_uses_is_busy(site: Stack) -> None:
    path = site.volumes.volume_path(SD, IMG, TOP)
    site.vms.create(None, {"vmName": "db", "memSize": 64, "devices": [{"deviceType": "disk", "path": path}]})
    vm = next(iter(site.vms.records.values()))
    vm.setdefault("devices", [{"deviceType": "disk", "path": path}])
    assert refused_code(site, "Volume.delete", volumeID=TOP, **IDS) == 203
    assert refused_code(site, "Image.delete", **IDS) == 203


def test_storage_legacy_names_are_served(site: Stack) -> None:
    assert site.registry.call("getVolumesList", {"storagedomainID": SD, **{k: v for k, v in IDS.items()
                                                                         if k != "storagedomainID"}},
                              _ctx()) == [BASE, TOP]
    assert site.registry.call("getImageDomainsList", {"storagepoolID": SP, "imageID": IMG}, _ctx()) == [SD]
    info = site.registry.call("getVolumeInfo", {"volumeID": TOP, **IDS}, _ctx())
    assert info["parent"] == BASE


def _ctx() -> CallContext:
    return CallContext("test", identity=ADMIN)


def test_spm_verbs_take_vdsms_positional_order_and_answer_the_task_id_under_uuid_over_xmlrpc(site: Stack) -> None:
    # VDSM's XML-RPC order: sdUUID, spUUID, imgUUID, size, volFormat, preallocate, diskType, volUUID, desc, ...
    params = [SD, SP, IMG, "1024", 4, 2, "DATA", "70000000-0000-4000-8000-000000000007", "", BLANK, BLANK]
    answer = XmlRpc(site.registry).call("createVolume", params, _ctx())
    assert answer["status"]["code"] == 0, answer
    assert isinstance(answer["uuid"], str) and site.tasks.get(answer["uuid"])["verb"] == "Volume.create"
    site.tasks.wait(answer["uuid"], 5)
    assert (SD, IMG, "70000000-0000-4000-8000-000000000007") in site.volumes.volumes
    moved = XmlRpc(site.registry).call("copyImage", [SD, SP, "vm-ignored", IMG, TOP, IMG, "80000000-0000-4000-8000-000000000008",
                                                     "copy", SD2, "LEAF", "COW", "SPARSE"], _ctx())
    assert site.tasks.wait(moved["uuid"], 5)["state"] == "succeeded"
    assert (SD2, IMG, "80000000-0000-4000-8000-000000000008") in site.volumes.volumes


VOLUME_DISK = {"deviceType": "disk", "device": "disk", "poolID": SP, "domainID": SD, "imageID": IMG, "volumeID": TOP}


def _disk_paths(stack: Stack, vm_id: str) -> list[str]:
    assert stack.vm_devices is not None
    return [str(d.get("path")) for d in stack.vm_devices.devices(vm_id) if d.get("deviceType") == "disk"]


def test_a_vm_disk_naming_a_volume_gets_its_chain_and_lets_go_when_the_vm_goes(site: Stack) -> None:
    made = site.call("VM.create", vmParams={"vmName": "db", "memSize": 64, "devices": [VOLUME_DISK]})
    assert isinstance(made, dict)
    vm_id = made["vmId"]
    disk = next(d for d in site.vms.records[vm_id]["devices"] if d["deviceType"] == "disk")
    assert disk["path"] == site.volumes.volume_path(SD, IMG, TOP)
    assert [entry["volumeID"] for entry in disk["volumeChain"]] == [TOP, BASE]
    assert site.volumes.prepared == {(SD, IMG, TOP)}
    site.call("VM.destroy", vmID=vm_id)
    assert site.volumes.prepared == set()


def test_a_hotplugged_volume_is_prepared_and_torn_down_when_unplugged(site: Stack) -> None:
    vm_id = site.call("VM.create", vmParams={"vmName": "db", "memSize": 64, "devices": []})["vmId"]  # type: ignore[index]
    path = site.volumes.volume_path(SD, IMG, TOP)
    assert site.vm_devices is not None
    site.vm_devices.paths.add(path)
    site.call("VM.hotplugDisk", vmID=vm_id, params={"drive": VOLUME_DISK})
    assert _disk_paths(site, vm_id) == [path]
    assert site.volumes.prepared == {(SD, IMG, TOP)}
    with pytest.raises(PierError) as caught:  # plugged twice: refused, and the first keeps its image
        site.call("VM.hotplugDisk", vmID=vm_id, params={"drive": VOLUME_DISK})
    assert caught.value.name == "hotplugDisk"
    assert site.volumes.prepared == {(SD, IMG, TOP)}
    site.call("VM.hotunplugDisk", vmID=vm_id, params={"drive": {"path": path}})
    assert _disk_paths(site, vm_id) == []
    assert site.volumes.prepared == set()


def test_a_disk_naming_a_volume_that_is_not_there_is_refused_with_nothing_prepared(site: Stack) -> None:
    vm_id = site.call("VM.create", vmParams={"vmName": "db", "memSize": 64, "devices": []})["vmId"]  # type: ignore[index]
    missing = {**VOLUME_DISK, "volumeID": "70000000-0000-4000-8000-000000000007"}
    with pytest.raises(PierError) as caught:
        site.call("VM.hotplugDisk", vmID=vm_id, params={"drive": missing})
    assert caught.value.code == 201  # VolumeDoesNotExist
    with pytest.raises(PierError) as caught:
        site.call("VM.create", vmParams={"vmName": "web", "memSize": 64, "devices": [VOLUME_DISK, missing]})
    assert caught.value.code == 201
    assert site.volumes.prepared == set() and _disk_paths(site, vm_id) == []
    assert [vm["vmName"] for vm in site.vms.records.values()] == ["db"]


def test_a_disk_with_neither_a_path_nor_a_volume_is_refused_naming_both(site: Stack) -> None:
    for verb, params in [("VM.create", {"vmParams": {"vmName": "db", "memSize": 64,
                                                      "devices": [{"deviceType": "disk", "imageID": IMG}]}}),
                         ("VM.hotplugDisk", {"vmID": "70000000-0000-4000-8000-000000000007",
                                             "params": {"drive": {"imageID": IMG}}})]:
        with pytest.raises(PierError) as caught:
            site.call(verb, **params)
        assert "path" in caught.value.message and "volumeID" in caught.value.message, caught.value.message


def test_a_volume_added_as_a_device_lets_go_when_the_device_is_removed(site: Stack) -> None:
    vm_id = site.call("VM.create", vmParams={"vmName": "db", "memSize": 64, "devices": []})["vmId"]  # type: ignore[index]
    assert site.vm_devices is not None
    site.vm_devices.paths.add(site.volumes.volume_path(SD, IMG, TOP))
    added = site.call("VM.addDevice", vmID=vm_id, device=VOLUME_DISK)
    assert isinstance(added, dict) and site.volumes.prepared == {(SD, IMG, TOP)}
    site.call("VM.removeDevice", vmID=vm_id, alias=added["alias"])
    assert _disk_paths(site, vm_id) == [] and site.volumes.prepared == set()

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


def test_an_spm_verb_answers_its_task_id_under_uuid_over_xmlrpc(site: Stack) -> None:
    params = ["70000000-0000-4000-8000-000000000007", SP, SD, IMG, "1024", 4, 2, "DATA", "", BLANK, BLANK]
    answer = XmlRpc(site.registry).call("createVolume", params, _ctx())  # the schema's (vdsm-api.yml's) order
    assert answer["status"]["code"] == 0, answer
    assert isinstance(answer["uuid"], str) and site.tasks.get(answer["uuid"])["verb"] == "Volume.create"

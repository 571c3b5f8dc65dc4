"""The block device, LVM, block domain and lease verbs through the registry, XML-RPC and REST, over fakes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from pier.facade import make_app
from pier.rpc.errors import PierError
from pier.rpc.registry import CallContext
from pier.transports.xmlrpc import XmlRpc
from tests.unit.conftest import ADMIN, Stack
from tests.unit.test_facade import request
from tests.unit.test_storage_api import connect, create

SD, SP, LEASE_ID = (str(uuid.uuid4()) for _ in range(3))
LEASE = {"sd_id": SD, "lease_id": LEASE_ID}
GROUP = {"vgUUID": "Ab12-cd", "name": "vg1", "vgsize": "1024", "vgfree": "1024", "attr": {}, "state": "OK",
         "type": 0, "pvlist": []}


def _error(stack: Stack, verb: str, **params: Any) -> PierError:
    with pytest.raises(PierError) as caught:
        stack.call(verb, **params)
    return caught.value


def test_device_list_answers_every_device_or_those_asked_for(stack: Stack) -> None:
    devices: Any = stack.call("Host.getDeviceList")
    assert [dev["GUID"] for dev in devices] == ["0QEMU_QEMU_HARDDISK_drive-1", "loop0"]
    assert [dev["status"] for dev in devices] == ["free", "used"]
    only: Any = stack.call("Host.getDeviceList", guids=["loop0", "unknown"], checkStatus=False)
    assert [(dev["GUID"], dev["status"]) for dev in only] == [("loop0", "unknown")]


@pytest.mark.parametrize("storage_type", [2, 3, "FCP", "ISCSI", "iSCSI"])
def test_iscsi_or_fcp_devices_are_none_here_an_empty_list(stack: Stack, storage_type: Any) -> None:
    assert stack.call("Host.getDeviceList", storageType=storage_type) == []
    assert stack.call("Host.getLVMVolumeGroups", storageType=storage_type) == []


def test_a_san_device_is_kept_by_its_type(stack: Stack) -> None:
    stack.block_devices.listed[0]["devtype"] = "iSCSI"
    assert [dev["GUID"] for dev in stack.call("Host.getDeviceList", storageType=3)] == ["0QEMU_QEMU_HARDDISK_drive-1"]  # type: ignore[attr-defined]
    assert stack.call("Host.getDeviceList", storageType="FCP") == []


def test_visibility_per_guid(stack: Stack) -> None:
    stack.block_devices.unreadable.add("loop0")
    assert stack.call("Host.getDevicesVisibility", guidList=["0QEMU_QEMU_HARDDISK_drive-1", "loop0", "gone"]) == \
        {"0QEMU_QEMU_HARDDISK_drive-1": True, "loop0": False, "gone": False}
    assert stack.call("Host.getDevicesVisibility", guidList=[]) == {}


def test_a_bad_storage_type_or_guid_names_the_field(stack: Stack) -> None:
    assert "storageType" in str(_error(stack, "Host.getDeviceList", storageType=4))
    assert "guids" in str(_error(stack, "Host.getDeviceList", guids=["a/b"]))


def test_volume_groups_are_listed_and_read_by_uuid_or_name(stack: Stack) -> None:
    assert stack.call("Host.getLVMVolumeGroups") == []
    stack.block_devices.groups.append(GROUP)
    assert stack.call("Host.getLVMVolumeGroups") == [GROUP]
    assert stack.call("LVMVolumeGroup.getInfo", lvmvolumegroupID="Ab12-cd") == GROUP
    assert _error(stack, "LVMVolumeGroup.getInfo", lvmvolumegroupID="nope").code == 506


def test_volume_groups_are_neither_made_nor_removed_and_the_error_says_device_mapper(stack: Stack) -> None:
    made = _error(stack, "LVMVolumeGroup.create", name=SD, devlist=["loop0"])
    assert (made.code, made.name) == (502, "VolumeGroupCreateError") and "device-mapper" in made.message
    assert _error(stack, "LVMVolumeGroup.remove", lvmvolumegroupID="nope").code == 506
    stack.block_devices.groups.append(GROUP)
    removed = _error(stack, "LVMVolumeGroup.remove", lvmvolumegroupID="vg1")
    assert removed.code == 508 and "device-mapper" in removed.message
    assert stack.call("Host.getLVMVolumeGroups") == [GROUP]


def test_extend_and_resize_pv_refuse_a_file_domain_and_name_an_unknown_one(stack: Stack, tmp_path: Path) -> None:
    assert _error(stack, "StorageDomain.extend", storagedomainID=SD, storagepoolID=SP, devlist=["loop0"]).code == 358
    assert _error(stack, "StorageDomain.resizePV", storagedomainID=SD, storagepoolID=SP, guid="loop0").code == 358
    connect(stack, tmp_path / "d")
    create(stack, tmp_path / "d", SD)
    extended = _error(stack, "StorageDomain.extend", storagedomainID=SD, storagepoolID=SP, devlist=["loop0"])
    assert extended.code == 372 and "LOCALFS" in extended.message and "device-mapper" in extended.message
    resized = _error(stack, "StorageDomain.resizePV", storagedomainID=SD, storagepoolID=SP, guid="loop0")
    assert resized.code == 372 and "device-mapper" in resized.message


def test_block_domain_jobs_are_refused_and_start_no_job(stack: Stack, tmp_path: Path) -> None:
    job = "70000000-0000-4000-8000-000000000007"
    move = {"job_id": job, "move_params": {"sd_id": SD, "src_guid": "loop0"}}
    reduce = {"job_id": job, "reduce_params": {"sd_id": SD, "guid": "loop0"}}
    assert _error(stack, "SDM.move_domain_device", **move).code == 358
    assert _error(stack, "SDM.reduce_domain", **reduce).code == 358
    connect(stack, tmp_path / "d")
    create(stack, tmp_path / "d", SD)
    for verb, params in (("SDM.move_domain_device", move), ("SDM.reduce_domain", reduce)):
        refused = _error(stack, verb, **params)
        assert refused.code == 372 and "device-mapper" in refused.message, refused.message
    assert job not in stack.call("Host.getJobs")  # type: ignore[operator]


def test_iscsi_discovery_says_what_is_missing(stack: Stack) -> None:
    found = _error(stack, "ISCSIConnection.discoverSendTargets", host="10.0.0.1", port=3260)
    assert (found.code, found.name) == (475, "iSCSIDiscoveryError") and "device-mapper" in found.message


def test_block_domain_types_are_refused_naming_device_mapper(stack: Stack, tmp_path: Path) -> None:
    made = _error(stack, "StorageDomain.create", storagedomainID=SD, domainType=3, typeArgs=str(tmp_path),
                  name="san", domainClass=1)
    assert made.code == 372 and "device-mapper" in made.message
    statuses = stack.call("StoragePool.connectStorageServer", storagepoolID=SP, domainType="FCP",
                          connectionParams=[{"id": "c", "connection": "lun"}])
    assert statuses == [{"id": "c", "status": 372}]


LEASE_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("Lease.create", {"lease": LEASE}), ("Lease.create", {"lease": LEASE, "metadata": {"type": "JOB"}}),
    ("Lease.delete", {"lease": LEASE}), ("Lease.info", {"lease": LEASE}), ("Lease.status", {"lease": LEASE}),
    ("Lease.fence", {"lease": LEASE, "metadata": {"generation": 1}}), ("Lease.rebuild_leases", {"sd_id": SD}),
]


@pytest.mark.parametrize(("verb", "params"), LEASE_CALLS, ids=[f"{v}-{i}" for i, (v, _) in enumerate(LEASE_CALLS)])
def test_every_lease_verb_is_unsupported_because_there_is_no_sanlock_lockspace(stack: Stack, verb: str,
                                                                                params: dict[str, Any]) -> None:
    refused = _error(stack, verb, **params)
    assert (refused.code, refused.name) == (75, "unsupportedOperationErr")
    assert "sanlock lockspace" in refused.message


def test_a_lease_without_its_domain_names_the_field(stack: Stack) -> None:
    refused = _error(stack, "Lease.info", lease={"lease_id": LEASE_ID})
    assert refused.code == -32602 and "sd_id" in str(refused)


def test_legacy_names_answer_vdsms_envelope(stack: Stack) -> None:
    ctx = CallContext("test", identity=ADMIN)
    xmlrpc = XmlRpc(stack.registry)
    listed = xmlrpc.call("getDeviceList", [], ctx)
    assert listed["status"]["code"] == 0 and [dev["GUID"] for dev in listed["devList"]][-1] == "loop0"
    assert xmlrpc.call("getDevicesVisibility", [["loop0"]], ctx)["visible"] == {"loop0": True}
    assert xmlrpc.call("getVGList", [], ctx)["vglist"] == []
    assert xmlrpc.call("getVGInfo", ["nope"], ctx)["status"]["code"] == 506
    refused = xmlrpc.call("createVG", [SD, ["loop0"]], ctx)
    assert refused["status"]["code"] == 502 and set(refused) == {"status"}
    assert xmlrpc.call("extendStorageDomain", [SD, SP, ["loop0"]], ctx)["status"]["code"] == 358
    assert xmlrpc.call("resizePV", [SD, SP, "loop0"], ctx)["status"]["code"] == 358


def test_rest_answers_devices_and_problem_json_for_what_is_not_served(stack: Stack) -> None:
    app = make_app(stack.registry, stack.events)
    listed = request(app, "GET", "/api/v1/host/block-devices?guids=loop0")
    assert listed.status == 200 and [dev["GUID"] for dev in json.loads(listed.body)] == ["loop0"]
    visible = request(app, "POST", "/api/v1/host/block-devices/visibility", {"guidList": ["loop0", "x"]})
    assert json.loads(visible.body) == {"loop0": True, "x": False}
    for method, path, body, status, code in [
            ("POST", "/api/v1/leases", {"lease": LEASE}, 409, 75),
            ("POST", "/api/v1/leases/info", {"lease": LEASE}, 409, 75),
            ("POST", f"/api/v1/storage-domains/{SD}/leases/rebuild", None, 409, 75),
            ("POST", "/api/v1/volume-groups", {"name": SD, "devlist": ["loop0"]}, 409, 502),
            ("GET", "/api/v1/volume-groups/nope", None, 404, 506),
            ("POST", "/api/v1/iscsi/discover", {"host": "10.0.0.1", "port": 3260}, 409, 475)]:
        reply = request(app, method, path, body)
        problem = json.loads(reply.body)
        assert (reply.status, reply.headers["Content-Type"], problem["code"]) == \
            (status, "application/problem+json", code), (path, problem)

"""XML-RPC at /RPC2: VDSM's legacy names and envelope, over a real cheroot listener and the real registry."""

from __future__ import annotations

import http.client
import io
import json
import logging
import xmlrpc.client
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from pier.rpc.registry import CallContext, Registry, verb
from pier.rpc.schema import Schema, SchemaError
from pier.transports.http import HttpListener
from pier.transports.xmlrpc import XmlRpc, to_wire, xmlrpc_app
from tests.fakes import FixedAuthenticator
from tests.unit.conftest import ADMIN, VM_ID, Stack

UNKNOWN_VM = "00000000-0000-4000-8000-0000000000ff"
DONE = {"code": 0, "message": "Done"}
LIMIT = 64 * 1024

# The payload key of each legacy name Pier serves, as VDSM's reference (vdsm-compat.md) gives it.
VDSM_PAYLOAD_KEYS = {
    "getVdsCapabilities": "info", "getVdsHardwareInfo": "info", "getVdsStats": "info", "list": "vmList",
    "getAllVmStats": "statsList", "getHostJobs": "jobs", "getAllTasks": "tasks",
    "getAllTasksStatuses": "allTasksStatus", "getAllTasksInfo": "allTasksInfo", "create": "vmList",
    "pause": "vmList", "cont": "vmList", "getVmStats": "statsList", "getTaskInfo": "TaskInfo",
    "getTaskStatus": "taskStatus", "destroy": None, "shutdown": None, "reset": None, "stopTask": None,
    "clearTask": None, "ping": None, "setupNetworks": None, "setSafeNetworkConfig": None,
    "setKsmTune": None, "setLogLevel": None, "setMOMPolicy": None,
    "setMOMPolicyParameters": None, "hostdevListByCaps": "deviceList", "hostdevChangeNumvfs": None,
    "hostdevReattach": None, "registerSecrets": None, "unregisterSecrets": None, "setVmTicket": None,
    "freeze": None, "thaw": None, "snapshot": None, "hibernate": None, "merge": None, "diskSizeExtend": "size",
    "getDiskAlignment": "alignment", "desktopLock": None, "desktopLogin": None, "desktopLogoff": None,
    "sendHcCmdToDesktop": None,
    "hotplugDisk": "vmList", "hotunplugDisk": "vmList", "changeCD": "vmList", "changeFloppy": "vmList",
    "hotplugNic": "vmList", "hotunplugNic": "vmList", "vmUpdateDevice": "vmList", "hotplugMemory": "vmList",
    "setNumberOfCpus": "vmList", "setBalloonTarget": None, "setIoTune": None, "getIoTune": "ioTuneList",
    "getIoTunePolicy": "ioTunePolicyList", "getAllVmIoTunePolicies": "io_tune_policies_dict",
    "vmSetCpuTunePeriod": None, "vmSetCpuTuneQuota": None, "updateVmPolicy": None,
    "getStorageDomainsList": "domlist", "getConnectedStoragePoolsList": "poollist", "startMonitoringDomain": None,
    "stopMonitoringDomain": None, "connectStorageServer": "statuslist", "disconnectStorageServer": "statuslist",
    "createStoragePool": None, "connectStoragePool": None, "disconnectStoragePool": None,
    "destroyStoragePool": None, "setStoragePoolDescription": None, "spmStart": None, "spmStop": None,
    "getSpmStatus": "spm_st", "createStorageDomain": None, "getStorageDomainInfo": "info",
    "getStorageDomainStats": "stats", "getImagesList": "imageslist", "validateStorageDomain": None,
    "setStorageDomainDescription": None, "formatStorageDomain": None, "attachStorageDomain": None,
    "detachStorageDomain": None, "forcedDetachStorageDomain": None, "activateStorageDomain": None,
    "deactivateStorageDomain": None, "getFileStats": "fileStats",
    "repoStats": "*", "getStoragePoolInfo": "*",  # the result's keys beside status
    "migrateStatus": "migrationStats", "migrateCancel": None, "migrateChangeParams": None,
    "migrate": "*", "migrationCreate": "*",
}
# The legacy names of pier/rpc/schema/volume.yml (VDSM's storage verbs).
STORAGE_LEGACY = {
    "createVolume": "uuid", "copyImage": "uuid", "extendVolumeSize": "uuid", "getVolumeInfo": "info",
    "getVolumeSize": None, "refreshVolume": None, "setVolumeDescription": None, "setVolumeLegality": None,
    "getVolumesList": "uuidlist", "prepareImage": None, "teardownImage": None, "deleteImage": "uuid",
    "deleteVolume": "uuid", "moveImage": "uuid", "cloneImageStructure": "uuid", "syncImageData": "uuid",
    "reconcileVolumeChain": "volumes", "getImageDomainsList": "domainslist", "updateVM": None,
    "removeVM": None, "getVmsList": "vmlist", "getVmsInfo": "vmlist",
    "uploadImage": "uuid", "downloadImage": "uuid",  # pier/rpc/schema/imagesharing.yml
}
VDSM_PAYLOAD_KEYS |= STORAGE_LEGACY
# block devices, LVM and block domains (pier/rpc/schema/blockdev.yml): tests/unit/test_blockdev_api.py
BLOCK_LEGACY = {
    "getDeviceList": "devList", "getDevicesVisibility": "visible", "getVGList": "vglist", "getVGInfo": "info",
    "createVG": "uuid", "removeVG": None, "extendStorageDomain": None, "resizePV": "size",
}
STORAGE_LEGACY |= BLOCK_LEGACY
VDSM_PAYLOAD_KEYS |= BLOCK_LEGACY


def _not_found(environ: dict, start_response) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not here"]


@pytest.fixture
def url(stack: Stack) -> Iterator[str]:
    listener = HttpListener(("127.0.0.1", 0), {"/RPC2": xmlrpc_app(stack.registry, max_bytes=LIMIT)}, _not_found,
                            FixedAuthenticator(ADMIN), threads=4)
    listener.start()
    yield listener.address + "/RPC2"
    listener.stop()


@pytest.fixture
def vdsm(url: str) -> Iterator[xmlrpc.client.ServerProxy]:
    with xmlrpc.client.ServerProxy(url, allow_none=True) as proxy:
        yield proxy


def with_vm(vdsm: xmlrpc.client.ServerProxy, vm_id: str = VM_ID) -> dict:
    res = vdsm.create({"vmId": vm_id, "vmName": "db", "memSize": 64})
    assert res["status"] == DONE
    return res


def post(url: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, parts.path, body=body if method == "POST" else None,
                     headers={"Content-Type": "text/xml"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def fault_of(body: bytes) -> xmlrpc.client.Fault:
    with pytest.raises(xmlrpc.client.Fault) as caught:
        xmlrpc.client.loads(body)
    return caught.value


# -- the envelope -----------------------------------------------------------------------------


def test_the_schema_declares_vdsm_payload_keys(schema: Schema) -> None:
    declared = {name: legacy.payload for name, (_, legacy) in schema.legacy.items()}
    assert declared == VDSM_PAYLOAD_KEYS


def test_every_legacy_name_answers_the_envelope_with_its_payload_key(vdsm, schema: Schema, stack: Stack) -> None:
    stack.vms.guest_obeys_shutdown = True
    with_vm(vdsm)
    with_vm(vdsm, UNKNOWN_VM)
    task = stack.call("VM.shutdown", vmID=UNKNOWN_VM, timeout=0, force=True)
    stack.tasks.wait(task["taskID"], 10)
    args = {"vmID": VM_ID, "taskID": task["taskID"], "networks": {}, "tuningParams": {"sleep_millisecs": 30},
            "level": logging.getLevelName(logging.getLogger().level), "policy": "(defvar x 1)",
            "key_value_store": {"ksmEnabled": True}, "deviceName": "pci_0000_02_00_0", "numvfs": 2,
            "secrets": [{"uuid": VM_ID, "usageType": "ceph", "usageID": "pool-a", "password": "c2VjcmV0"}],
            "uuids": [VM_ID], "domain": "", "username": "u", "password": "p", "force": False, "message": "hc",
            "ttl": 60, "storagedomainID": UNKNOWN_VM, "storagepoolID": UNKNOWN_VM, "sdUUID": UNKNOWN_VM,
            "hostID": 1, "domainType": 4, "connectionParams": [], "name": "x", "masterSdUUID": UNKNOWN_VM,
            "masterVersion": 1, "domainList": [UNKNOWN_VM], "typeArgs": "/not/connected", "domainClass": 1,
            "description": "d", "scsiKey": ""}
    drive = {"domainID": UNKNOWN_VM, "imageID": UNKNOWN_VM, "volumeID": UNKNOWN_VM}
    args.update({"snapDrives": [{**drive, "baseVolumeID": UNKNOWN_VM}], "drive": drive, "driveSpecs": drive,
                 "disk": drive, "baseVolUUID": UNKNOWN_VM, "topVolUUID": UNKNOWN_VM, "newSize": "1024",
                 "hibernationVolHandle": ",".join([UNKNOWN_VM] * 4 + [VM_ID] * 2)})
    stack.guest.agents.add(VM_ID)
    stack.guest.exec_allowed.add(VM_ID)
    # VDSM's XML-RPC took one struct with the vmId inside for these
    own = {"migrateChangeParams": {"params": {"maxBandwidth": 64}},
           "migrate": {"params": {"vmId": VM_ID, "dst": "192.0.2.7:54321"}},
           "migrationCreate": {"params": {"vmId": VM_ID, "vmName": "db", "memSize": 64}},
           "hotplugDisk": {"params": {"vmId": VM_ID, "drive": {"path": "/images/a.img"}}},
           "hotunplugDisk": {"params": {"vmId": VM_ID, "drive": {"path": "/images/a.img"}}},
           "hotplugNic": {"params": {"vmId": VM_ID, "nic": {"network": "default", "macAddr": "52:54:00:12:34:56"}}},
           "hotunplugNic": {"params": {"vmId": VM_ID, "nic": {"macAddr": "52:54:00:12:34:56"}}},
           "hotplugMemory": {"params": {"vmId": VM_ID, "memory": {"size": 128}}},
           "vmUpdateDevice": {"params": {"vmId": VM_ID, "deviceType": "interface", "alias": "ua-none"}},
           "updateVmPolicy": {"params": {"vmId": VM_ID, "vcpuLimit": 50}},
           "changeCD": {"driveSpec": "/images/b.img"}, "changeFloppy": {"driveSpec": ""},
           "numberOfCpus": 1, "target": 1024, "tunables": [{"name": "vda", "ioTune": {"total_iops_sec": 100}}],
           "period": 100000, "quota": -1}
    args.update({key: value for key, value in own.items() if not isinstance(value, dict)})
    failing = {"setMOMPolicy": 54, "setMOMPolicyParameters": 54,  # Pier runs no MOM
               "desktopLogin": 75, "desktopLogoff": 75, "sendHcCmdToDesktop": 75,  # qemu-ga cannot
               # the fake's VM has no CD-ROM or floppy drive, no maxMemSize, no device ua-none
               "changeCD": 41, "changeFloppy": 41, "hotplugMemory": 70, "vmUpdateDevice": 56,
               # the fakes serve no snapshots (unavail); the fake volumes have no such domain
               "snapshot": 40, "merge": 40, "diskSizeExtend": 358, "getDiskAlignment": 358, "hibernate": 40}
    # storage verbs on a domain or pool this host does not have: VDSM's codes (358, 309, 304, 360)
    failing.update({name: 358 for name in ("createStoragePool", "getStorageDomainInfo", "getStorageDomainStats",
                                          "getImagesList", "validateStorageDomain", "setStorageDomainDescription",
                                          "formatStorageDomain", "getFileStats")})
    failing.update({name: 309 for name in ("disconnectStoragePool", "destroyStoragePool", "setStoragePoolDescription",
                                          "spmStart", "spmStop", "getSpmStatus", "attachStorageDomain",
                                          "detachStorageDomain", "forcedDetachStorageDomain", "activateStorageDomain",
                                          "deactivateStorageDomain", "getStoragePoolInfo")})
    failing.update({"connectStoragePool": 304, "createStorageDomain": 360})
    # the unit stack serves no live migration (Services.migrations is None): unsupportedOperationErr
    failing.update({name: 75 for name in ("migrateStatus", "migrateCancel", "migrateChangeParams", "migrate",
                                         "migrationCreate")})
    changing = ["pause", "cont", "reset", "stopTask", "clearTask", "shutdown", "destroy"]
    names = sorted(set(schema.legacy) - set(changing) - {"create"} - set(STORAGE_LEGACY)) + changing
    assert set(names) | {"create"} | set(STORAGE_LEGACY) == set(schema.legacy)  # storage: test_volume_api.py
    for name in names:
        verb, legacy = schema.legacy[name]
        given = {**args, **(own[name] if isinstance(own.get(name), dict) else {})}
        order = legacy.positions(verb)  # VDSM's positional order; None where it is optional or ignored
        last = max((order.index(param) for param in verb.required if param in order), default=-1)
        res = getattr(vdsm, name)(*[given[param] if param in verb.required else None for param in order[:last + 1]])
        if name in failing:
            assert res["status"]["code"] == failing[name] and set(res) == {"status"}, (name, res)
            continue
        assert res["status"] == DONE, (name, res)
        if legacy.payload == "*":
            assert set(res) == {"status"} | set(stack.call(verb.name, **{p: given[p] for p in verb.required})), \
                (name, res)
            continue
        assert set(res) == {"status"} | ({legacy.payload} if legacy.payload else set()), (name, res)


def test_a_vm_life_cycle_the_vdsm_way(vdsm) -> None:
    created = with_vm(vdsm)
    assert created["vmList"]["vmId"] == VM_ID
    assert [vm["vmId"] for vm in vdsm.list()["vmList"]] == [VM_ID]
    assert vdsm.getVmStats(VM_ID)["statsList"][0]["status"] == "Up"
    assert vdsm.pause(VM_ID)["vmList"]["status"] == "Paused"
    assert vdsm.cont(VM_ID)["vmList"]["status"] == "Up"
    assert vdsm.destroy(VM_ID) == {"status": DONE}
    assert vdsm.list()["vmList"] == []


def test_an_error_is_the_envelope_with_vdsm_code_and_no_payload(vdsm) -> None:
    res = vdsm.getVmStats(UNKNOWN_VM)
    assert res["status"]["code"] == 1 and "does not exist" in res["status"]["message"]
    assert set(res) == {"status"}
    with_vm(vdsm)
    again = vdsm.create({"vmId": VM_ID, "vmName": "db", "memSize": 64})
    assert again["status"]["code"] == 4 and set(again) == {"status"}


def test_bad_params_are_an_envelope_naming_the_field(vdsm) -> None:
    res = vdsm.getVmStats("not-a-uuid")
    assert res["status"]["code"] == -32602 and "vmID" in res["status"]["message"]
    too_many = vdsm.ping(1)
    assert too_many["status"]["code"] == -32602 and set(too_many) == {"status"}


def test_none_in_an_optional_position_is_absent(vdsm) -> None:
    with_vm(vdsm)
    assert vdsm.list(None, None, True)["vmList"] == [VM_ID]
    assert vdsm.list(True, None)["vmList"][0]["vmName"] == "db"
    assert vdsm.list(False, [UNKNOWN_VM])["vmList"] == []
    res = vdsm.shutdown(VM_ID, None, None, None, 0, True)
    assert res == {"status": DONE}


def test_the_verbs_own_names_answer_too(vdsm, stack: Stack) -> None:
    with_vm(vdsm)
    assert getattr(vdsm, "Host.ping2")() == {"status": DONE}
    assert getattr(vdsm, "Host.getVMList")(False, None, True) == {"status": DONE, "vmList": [VM_ID]}
    assert getattr(vdsm, "Host.getAgentInfo")() == {"status": DONE, "result": {"name": "pier"}}
    task = getattr(vdsm, "VM.shutdown")(VM_ID, 0, "", False, 0, True)["result"]
    assert task["verb"] == "VM.shutdown"
    assert stack.tasks.wait(task["taskID"], 10)["state"] == "succeeded"
    status = vdsm.getTaskStatus(task["taskID"])["taskStatus"]
    assert status["taskState"] == "finished" and status["taskResult"] == "success"


def test_legacy_names_are_callable_over_json_rpc_with_a_bare_result(stack: Stack) -> None:
    reply = json.loads(stack.jsonrpc.handle('{"jsonrpc": "2.0", "method": "getVdsStats", "id": 1}', CallContext("t", identity=ADMIN)))
    assert "cpuIdle" in reply["result"]


class _Mover:
    """Handlers of a verb declared like VM.migrate: a VM id and a struct of params."""

    @verb("VM.move")
    def move(self, context: CallContext, vmID: str, params: dict, limit: int = 2) -> dict:
        return {"vmID": vmID, "dst": params["dst"], "limit": limit}


def _mover_schema(**legacy: object) -> Schema:
    return Schema({"verbs": {"VM.move": {
        "role": "operator", "target": "vmID", "returns": {"type": "object"},
        "params": {"vmID": {"type": "string", "pattern": "^vm-"}, "params": {"type": "object"},
                   "limit": {"type": "integer", "default": 2}},
        "legacy": [{"name": "move", "payload": "*", "params": ["params", "limit"], **legacy}]}}})


def test_a_legacy_name_takes_a_param_from_inside_a_struct_as_vdsm_sent_it() -> None:
    endpoint = XmlRpc(Registry(_mover_schema(**{"from": {"vmID": "params.vmId"}}), [_Mover()]))
    context = CallContext("test", identity=ADMIN)
    moved = endpoint.call("move", [{"vmId": "vm-1", "dst": "h:1"}, 5], context)
    assert moved == {"status": DONE, "vmID": "vm-1", "dst": "h:1", "limit": 5}
    assert endpoint.method_signature("move") == [["struct", "struct"], ["struct", "struct", "int"]]
    assert "params (struct), limit? (int)" in endpoint.method_help("move")
    missing = endpoint.call("move", [{"dst": "h:1"}], context)
    assert missing["status"]["code"] == -32602 and "params.vmId is missing" in missing["status"]["message"]
    bad = endpoint.call("move", [{"vmId": "nope", "dst": "h:1"}], context)  # still validated as the verb's vmID
    assert bad["status"]["code"] == -32602 and "vmID" in bad["status"]["message"]
    # the verb's own name takes no struct's field: its params are its own
    own = endpoint.call("VM.move", [None, {"vmId": "vm-1", "dst": "h:1"}], context)
    assert own["status"]["code"] == -32602
    # over JSON-RPC, a vmID given by name wins over the struct's
    registry = endpoint.registry
    assert registry.call("move", {"vmID": "vm-2", "params": {"vmId": "vm-1", "dst": "h"}}, context)["vmID"] == "vm-2"


@pytest.mark.parametrize("taken", [{"vmID": "params"}, {"vmID": "nothing.vmId"}, {"vmID": "vmID.x"},
                                   {"other": "params.vmId"}, {}])
def test_a_from_that_names_no_struct_field_fails_the_schema_load(taken: dict) -> None:
    with pytest.raises((SchemaError, ValueError), match="from"):
        _mover_schema(**{"from": taken})


def test_without_from_a_legacy_order_must_give_every_required_param() -> None:
    with pytest.raises((SchemaError, ValueError), match="missing"):
        _mover_schema()


def test_vdsm_migrate_takes_the_vm_from_its_one_struct(vdsm) -> None:
    with_vm(vdsm)
    missing = vdsm.migrate({"dst": "192.0.2.7:54321"})
    assert missing["status"]["code"] == -32602 and "params.vmId" in missing["status"]["message"]
    # the unit stack serves no live migration: past the params, it says so
    served = vdsm.migrate({"vmId": VM_ID, "dst": "192.0.2.7:54321", "method": "online"})
    assert served["status"]["code"] == 75, served
    created = vdsm.migrationCreate({"vmId": VM_ID, "vmName": "db"}, 3)
    assert created["status"]["code"] == 75, created


# -- values ---------------------------------------------------------------------------------


def test_integers_beyond_32_bits_travel_as_strings(vdsm, stack: Stack, monkeypatch) -> None:
    stats = {"memTotal": 2**40, "swapFree": -(2**35), "vmCount": 3, "ksmState": True, "load": 0.5,
             "numa": {0: {"free": 2**31}, 1: {"free": 2**31 - 1}}, "sizes": [2**32, 7], "none": None}
    monkeypatch.setattr(stack.host, "stats", lambda: stats)
    info = vdsm.getVdsStats()["info"]
    assert info == {"memTotal": str(2**40), "swapFree": str(-(2**35)), "vmCount": 3, "ksmState": True,
                    "load": 0.5, "numa": {"0": {"free": "2147483648"}, "1": {"free": 2**31 - 1}},
                    "sizes": ["4294967296", 7], "none": None}


def test_to_wire_leaves_what_fits_alone() -> None:
    assert to_wire([True, False, 2**31 - 1, -(2**31), -(2**31) - 1, (1, 2**63)]) == [
        True, False, 2**31 - 1, -(2**31), str(-(2**31) - 1), [1, str(2**63)]]


def test_digit_strings_are_read_as_numbers_where_the_schema_wants_one(vdsm, stack: Stack) -> None:
    res = vdsm.create({"vmId": VM_ID, "vmName": "12", "memSize": "4096"})
    assert res["status"] == DONE
    assert stack.vms.records[VM_ID]["vmName"] == "12"
    assert vdsm.destroy(VM_ID, "1") == {"status": DONE}


def test_a_result_that_cannot_be_marshalled_is_an_unexpected_error(vdsm, stack: Stack, monkeypatch) -> None:
    monkeypatch.setattr(stack.host, "stats", lambda: {"odd": {1, 2}})
    res = vdsm.getVdsStats()
    assert res["status"]["code"] == 16 and set(res) == {"status"}


# -- introspection ----------------------------------------------------------------------------


def test_list_methods_lists_legacy_names_verb_names_and_system(vdsm, schema: Schema) -> None:
    names = vdsm.system.listMethods()
    assert set(names) == set(schema.legacy) | set(schema.verbs) | {
        "system.listMethods", "system.methodHelp", "system.methodSignature"}


def test_method_help_and_signature_come_from_the_schema(vdsm) -> None:
    text = vdsm.system.methodHelp("list")
    assert "Host.getVMList" in text and "'vmList'" in text and "fullStatus" in text
    assert vdsm.system.methodSignature("list") == [
        ["struct"], ["struct", "boolean"], ["struct", "boolean", "array"], ["struct", "boolean", "array", "boolean"]]
    assert vdsm.system.methodSignature("getVmStats") == [["struct", "string"]]
    assert vdsm.system.methodSignature("create")[0] == ["struct", "struct"]
    assert vdsm.system.methodSignature("system.methodHelp") == [["string", "string"]]
    assert "slow" in vdsm.system.methodHelp("shutdown")


def test_introspection_of_an_unknown_method_is_a_fault(vdsm) -> None:
    with pytest.raises(xmlrpc.client.Fault) as caught:
        vdsm.system.methodHelp("fly")
    assert caught.value.faultCode == -32601


# -- what is not a call -------------------------------------------------------------------------


def test_an_unknown_method_is_a_fault_like_vdsm(vdsm) -> None:
    with pytest.raises(xmlrpc.client.Fault) as caught:
        vdsm.fly(VM_ID)
    assert caught.value.faultCode == -32601
    assert caught.value.faultString == 'method "fly" is not supported'
    assert vdsm.ping() == {"status": DONE}


@pytest.mark.parametrize("body, code", [
    (b"<methodCall><methodName>ping</methodName", -32700),
    (b"not xml at all", -32700),
    (b"", -32700),
    (b"<methodCall><methodName>ping</methodName><params><param><value><int>x</int></value></param>"
     b"</params></methodCall>", -32700),
    (b"<methodResponse><params><param><value><int>1</int></value></param></params></methodResponse>", -32600),
    (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
     b"<methodCall><methodName>&b;</methodName></methodCall>", -32700),
    (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
     b"<methodCall><methodName>&e;</methodName></methodCall>", -32700),
])
def test_a_body_that_is_not_a_method_call_is_a_fault(url: str, vdsm, body: bytes, code: int) -> None:
    status, headers, reply = post(url, body)
    assert status == 200 and headers["Content-Type"].startswith("text/xml")
    assert fault_of(reply).faultCode == code
    assert vdsm.ping() == {"status": DONE}


def test_an_oversized_body_is_refused_and_the_server_keeps_serving(url: str, vdsm) -> None:
    big = {"vmId": VM_ID, "vmName": "x" * (LIMIT + 1)}
    with pytest.raises(xmlrpc.client.ProtocolError) as caught:
        vdsm.create(big)
    assert caught.value.errcode == 413
    status, _, reply = post(url, xmlrpc.client.dumps((big,), "create").encode())
    assert status == 413 and "exceeds the limit" in fault_of(reply).faultString
    with xmlrpc.client.ServerProxy(url, allow_none=True) as fresh:
        assert fresh.ping() == {"status": DONE}


def test_an_oversized_chunked_body_is_refused(stack: Stack) -> None:
    app = xmlrpc_app(stack.registry, max_bytes=16)
    seen: list[str] = []
    environ = {"REQUEST_METHOD": "POST", "wsgi.input": io.BytesIO(b"x" * 17), "REMOTE_ADDR": "127.0.0.1",
               "HTTP_TRANSFER_ENCODING": "chunked"}
    app(environ, lambda status, headers: seen.append(status))
    assert len(seen) == 1 and seen[0].startswith("413 ")


def test_get_is_not_allowed(url: str) -> None:
    status, headers, _ = post(url, b"", method="GET")
    assert status == 405 and headers["Allow"] == "POST"


def test_the_endpoint_answers_bytes_in_process(stack: Stack) -> None:
    endpoint = XmlRpc(stack.registry)
    reply = endpoint.handle(xmlrpc.client.dumps((), "getVdsCapabilities").encode(), CallContext("test", identity=ADMIN))
    (res,), _ = xmlrpc.client.loads(reply)
    assert res["status"] == DONE and res["info"]["cpuCores"] == "2"


def test_introspection_with_the_wrong_number_of_params_is_a_fault(vdsm) -> None:
    with pytest.raises(xmlrpc.client.Fault) as caught:
        vdsm.system.methodHelp()
    assert caught.value.faultCode == -32602 and "takes 1 param" in caught.value.faultString

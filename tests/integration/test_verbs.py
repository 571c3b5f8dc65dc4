"""Every Core verb, over every transport (WebSocket, HTTP JSON-RPC, REST), against a real pierd.

One suite, parametrised by the `client` fixture; each test has its own pierd on its own libvirt
test-driver file.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.clients import CallFailed
from tests.integration.conftest import new_vm_id


def vm_params(vm_id: str, **extra: object) -> dict[str, object]:
    return {"vmId": vm_id, "vmName": f"pier-test-{vm_id[:8]}", "memSize": 64, "smp": "1",
            "devices": [{"deviceType": "interface", "device": "network", "network": "default", "nicModel": "virtio"},
                        {"deviceType": "graphics", "device": "vnc"}], **extra}


def create(client, vm_id: str, **extra: object) -> dict:
    return client.call("VM.create", vmID=vm_id, vmParams=vm_params(vm_id, **extra))


def test_host_facts(client) -> None:
    assert client.call("Host.ping2") is True
    caps = client.call("Host.getCapabilities")
    for field in ("uuid", "cpuCores", "cpuSockets", "cpuThreads", "memSize", "kvmEnabled", "numaNodes",
                  "packages2", "operatingSystem"):
        assert field in caps, field
    assert client.call("Host.getHardwareInfo") is not None
    stats = client.call("Host.getStats")
    for field in ("cpuUser", "cpuSys", "cpuIdle", "memFree", "elapsedTime", "vmCount"):
        assert field in stats, field
    info = client.call("Host.getAgentInfo")
    assert info["hostId"] == caps["uuid"] and info["verbs"] >= 25


def test_vm_lifecycle(client) -> None:
    vm_id = new_vm_id()
    created = create(client, vm_id)
    assert created["vmId"] == vm_id
    assert {"vmId": vm_id} .items() <= client.call("Host.getVMList")[0].items()
    assert client.call("VM.getInfo", vmID=vm_id)["status"] == "Up"
    assert client.call("VM.pause", vmID=vm_id)["status"] == "Paused"
    assert client.call("VM.cont", vmID=vm_id)["status"] == "Up"
    assert client.call("VM.getStats", vmID=vm_id)[0]["vmId"] == vm_id
    assert [s["vmId"] for s in client.call("Host.getAllVmStats")] == [vm_id]
    assert [vm["vmId"] for vm in client.call("Host.getVMFullList")] == [vm_id]
    assert client.call("VM.reset", vmID=vm_id) is True
    assert client.call("VM.destroy", vmID=vm_id) is True
    with pytest.raises(CallFailed) as gone:
        client.call("VM.getInfo", vmID=vm_id)
    assert (gone.value.code, gone.value.name) == (1, "noVM")
    assert client.call("Host.getVMList") == []


def test_create_from_domain_xml(client) -> None:
    vm_id = new_vm_id()
    xml = (f"<domain type='test'><name>pier-test-xml</name><uuid>{vm_id}</uuid><memory unit='MiB'>64</memory>"
           "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")
    created = client.call("VM.create", vmID=vm_id, vmParams={"xml": xml})
    assert created["vmId"] == vm_id and created["vmName"] == "pier-test-xml"
    client.call("VM.destroy", vmID=vm_id)


def test_errors_carry_vdsm_codes(client) -> None:
    vm_id = new_vm_id()
    create(client, vm_id)
    with pytest.raises(CallFailed) as duplicate:
        create(client, vm_id)
    assert duplicate.value.code == 4
    with pytest.raises(CallFailed) as unknown:
        client.call("VM.pause", vmID=new_vm_id())
    assert unknown.value.code == 1
    with pytest.raises(CallFailed) as invalid:
        client.call("VM.pause", vmID="not-a-uuid")
    assert invalid.value.code == -32602 and "vmID" in invalid.value.message
    bad_id = new_vm_id()
    missing_disk = [{"deviceType": "disk", "device": "disk", "path": "/nonexistent/disk.img"}]
    with pytest.raises(CallFailed) as missing_image:
        client.call("VM.create", vmID=bad_id, vmParams={**vm_params(bad_id), "devices": missing_disk})
    assert missing_image.value.code == 13 and "/nonexistent/disk.img" in missing_image.value.message
    assert [vm["vmId"] for vm in client.call("Host.getVMList")] == [vm_id], "a failed create left a VM behind"


def test_shutdown_runs_as_a_task(client) -> None:
    vm_id = new_vm_id()
    create(client, vm_id)
    task = client.call("VM.shutdown", vmID=vm_id, timeout=5, force=True)
    assert task["verb"] == "VM.shutdown" and task["target"] == vm_id
    ended = client.call("Task.getInfo", taskID=task["taskID"], wait=30)
    assert ended["state"] == "succeeded", ended
    assert client.call("VM.getInfo", vmID=vm_id)["status"] == "Down"
    status = client.call("Task.getStatus", taskID=task["taskID"])
    assert (status["taskState"], status["taskResult"]) == ("finished", "success")
    assert task["taskID"] in client.call("Host.getAllTasks")
    assert client.call("Host.getJobs")[task["taskID"]]["status"] == "done"
    assert client.call("Task.clear", taskID=task["taskID"]) is True
    with pytest.raises(CallFailed) as cleared:
        client.call("Task.getInfo", taskID=task["taskID"])
    assert cleared.value.code == 401


def test_events_are_kept_in_order(client) -> None:
    vm_id = new_vm_id()
    start = client.call("Events.poll")["last"]
    create(client, vm_id)
    client.call("VM.pause", vmID=vm_id)
    client.call("VM.cont", vmID=vm_id)
    events, after = [], start
    deadline = time.monotonic() + 10
    while [e["params"][vm_id]["status"] for e in events][-2:] != ["Paused", "Up"]:
        assert time.monotonic() < deadline, events
        batch = client.call("Events.poll", after=after, types=["virt.VM_status"], wait=5)
        events += batch["events"]  # events are dispatched from libvirt's callbacks, a little later
        after = batch["last"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_lifecycle_verbs_in_the_wrong_state_answer_vdsm_errors(client) -> None:
    """A verb the VM's state does not allow is the caller's conflict (VDSM's unsupportedOperationErr, 409
    on REST), never an unexpected error; a pause of a paused VM succeeds, as it does on qemu."""
    vm_id = new_vm_id()
    create(client, vm_id)

    def refused(verb: str) -> CallFailed:
        with pytest.raises(CallFailed) as failed:
            client.call(verb, vmID=vm_id)
        assert (failed.value.code, failed.value.name) == (75, "unsupportedOperationErr"), failed.value
        assert failed.value.status in (None, 409)
        return failed.value

    assert "Up" in refused("VM.cont").message
    assert client.call("VM.pause", vmID=vm_id)["status"] == "Paused"
    assert client.call("VM.pause", vmID=vm_id)["status"] == "Paused"
    assert client.call("VM.cont", vmID=vm_id)["status"] == "Up"
    refused("VM.cont")
    task = client.call("VM.shutdown", vmID=vm_id, timeout=5, force=True)
    assert client.call("Task.getInfo", taskID=task["taskID"], wait=30)["state"] == "succeeded"
    for verb in ("VM.cont", "VM.pause", "VM.reset", "VM.reboot"):
        with pytest.raises(CallFailed) as down:
            client.call(verb, vmID=vm_id)
        assert (down.value.code, down.value.name) == (6, "down"), verb
    assert client.call("VM.destroy", vmID=vm_id) is True

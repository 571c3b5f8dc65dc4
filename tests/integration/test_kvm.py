"""A real VM on qemu:///system (KVM where /dev/kvm exists): created, paused, resumed and destroyed
through REST, with its events seen on WebSocket and on the events collection. No guest OS needed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.clients import WsClient, http_request
from tests.integration.conftest import Pierd, new_vm_id

pytestmark = pytest.mark.kvm


@pytest.fixture
def system_pierd(tmp_path: Path, system_libvirt: str):
    daemon = Pierd(tmp_path / "state", system_libvirt)
    yield daemon
    assert daemon.stop() == 0


def test_real_vm_through_rest_with_events(system_pierd: Pierd) -> None:
    api = system_pierd.http + "/api/v1"
    watcher = WsClient(system_pierd.ws)
    watcher.call("Events.subscribe", types=["virt.VM_status"])
    start = json.loads(http_request("GET", f"{api}/events?wait=0")[2])["last"]
    vm_id = new_vm_id()
    params = {"vmId": vm_id, "vmName": f"pier-test-{vm_id[:8]}", "memSize": 32, "smp": "1",
              "devices": [{"deviceType": "interface", "device": "network", "network": "default",
                           "nicModel": "virtio"},
                          {"deviceType": "graphics", "device": "vnc"}]}
    try:
        status, _, body = http_request("POST", f"{api}/vms", params)
        assert status == 201, body
        caps = json.loads(http_request("GET", f"{api}/host")[2])
        info = json.loads(http_request("GET", f"{api}/vms/{vm_id}")[2])
        assert info["status"] in ("Up", "WaitForLaunch", "Powering up")
        if caps.get("kvmEnabled") == "true":
            assert info.get("kvmEnable") in (True, "true")
        for action, expected in (("pause", "Paused"), ("cont", "Up")):
            status, _, body = http_request("POST", f"{api}/vms/{vm_id}/{action}", {})
            assert status == 200 and json.loads(body)["status"] == expected
        stats = json.loads(http_request("GET", f"{api}/vms/{vm_id}/stats")[2])
        assert stats[0]["vmId"] == vm_id
    finally:
        status, _, body = http_request("DELETE", f"{api}/vms/{vm_id}")
    assert status == 200, body
    assert json.loads(http_request("GET", f"{api}/vms/{vm_id}")[2])["code"] == 1

    pushed = []
    while "Down" not in pushed:
        note = watcher.next_notification(timeout=20)
        if note["method"] == f"|virt|VM_status|{vm_id}":
            pushed.append(note["params"][vm_id]["status"])
    assert "Paused" in pushed and pushed.index("Paused") < len(pushed) - 1
    watcher.close()

    kept = json.loads(http_request("GET", f"{api}/events?after={start}&types=virt.VM_status&limit=100")[2])
    statuses = [e["params"][vm_id]["status"] for e in kept["events"] if vm_id in e["params"]]
    assert statuses[-1] == "Down" and "Paused" in statuses


def test_lifecycle_verbs_in_the_wrong_state_on_qemu(system_pierd: Pierd) -> None:
    """qemu refuses a resume of a running VM and an ACPI shutdown of a paused one as "operation
    invalid": each is a 409 unsupportedOperationErr, not a 500; a pause of a paused VM succeeds."""
    api = system_pierd.http + "/api/v1"
    vm_id = new_vm_id()
    params = {"vmId": vm_id, "vmName": f"pier-test-{vm_id[:8]}", "memSize": 32, "smp": "1"}
    try:
        status, _, body = http_request("POST", f"{api}/vms", params)
        assert status == 201, body
        status, _, body = http_request("POST", f"{api}/vms/{vm_id}/cont", {})
        problem = json.loads(body)
        assert (status, problem["code"], problem["name"]) == (409, 75, "unsupportedOperationErr"), body
        assert problem["data"]["status"] == "Up"
        for _ in range(2):
            status, _, body = http_request("POST", f"{api}/vms/{vm_id}/pause", {})
            assert status == 200 and json.loads(body)["status"] == "Paused", body
        status, _, body = http_request("POST", f"{api}/vms/{vm_id}/shutdown", {"timeout": 5})
        assert status == 202, body
        task = json.loads(http_request("GET", f"{api}/tasks/{json.loads(body)['taskID']}?wait=30")[2])
        assert task["state"] == "failed" and task["error"]["code"] == 75, task
        status, _, body = http_request("POST", f"{api}/vms/{vm_id}/cont", {})
        assert status == 200 and json.loads(body)["status"] == "Up", body
    finally:
        status, _, body = http_request("DELETE", f"{api}/vms/{vm_id}")
    assert status == 200, body


def test_a_guest_that_ignores_the_power_button_is_up_again_when_the_shutdown_gives_up(system_pierd: Pierd) -> None:
    """No OS, so nothing answers ACPI: once the shutdown task times out (no force) the VM is Up,
    in its status and in its last VM_status event, as VDSM reverts "Powering down"."""
    api = system_pierd.http + "/api/v1"
    vm_id = new_vm_id()
    params = {"vmId": vm_id, "vmName": f"pier-test-{vm_id[:8]}", "memSize": 32, "smp": "1"}
    try:
        status, _, body = http_request("POST", f"{api}/vms", params)
        assert status == 201, body
        status, _, body = http_request("POST", f"{api}/vms/{vm_id}/shutdown", {"timeout": 2})
        assert status == 202, body
        task = json.loads(http_request("GET", f"{api}/tasks/{json.loads(body)['taskID']}?wait=30")[2])
        assert task["state"] == "failed" and task["error"]["name"] == "nonresp", task
        assert json.loads(http_request("GET", f"{api}/vms/{vm_id}")[2])["status"] == "Up"
        statuses: list[str] = []
        deadline = time.monotonic() + 10
        while statuses[-1:] != ["Up"] and time.monotonic() < deadline:
            kept = json.loads(http_request("GET", f"{api}/events?after=0&types=virt.VM_status&limit=1000")[2])
            statuses = [e["params"][vm_id]["status"] for e in kept["events"] if vm_id in e["params"]]
            time.sleep(0.1)
        assert statuses[-2:] == ["Powering down", "Up"], statuses
    finally:
        status, _, body = http_request("DELETE", f"{api}/vms/{vm_id}")
    assert status == 200, body

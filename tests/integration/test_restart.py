"""pierd killed (SIGKILL) in the middle of a VM.shutdown and started again on the same state: the
task is reconciled from what is there (never "succeeded" for a reboot that was not asked for), and
each VM's last VM_status event matches what it is now.

On the test driver a VM survives the restart only when it is in the node file; the qemu cases
(a guest with no OS ignores the power button, so it stays "Powering down") are marked kvm.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.clients import http_request
from tests.integration.conftest import Pierd, new_vm_id

KEPT_VM = "5e1f0c52-8a0e-4c55-9c1b-3f9d2a7b6c01"
NODE_WITH_A_VM = f"""<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets><cores>2</cores>
       <threads>1</threads><active>2</active></cpu>
  <memory>8388608</memory>
  <domain type='test'>
    <name>pier-test-kept</name>
    <uuid>{KEPT_VM}</uuid>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
  </domain>
</node>
"""


def get(daemon: Pierd, path: str) -> object:
    status, _, body = http_request("GET", daemon.http + "/api/v1" + path)
    assert status == 200, body
    return json.loads(body)


def start_shutdown(daemon: Pierd, vm_id: str, **params: object) -> str:
    """POST a VM.shutdown and wait until its task runs; its task id."""
    status, _, body = http_request("POST", f"{daemon.http}/api/v1/vms/{vm_id}/shutdown", params)
    assert status == 202, body
    task_id = json.loads(body)["taskID"]
    deadline = time.monotonic() + 10
    while get(daemon, f"/tasks/{task_id}")["state"] != "running":
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.05)
    return task_id


def last_status(daemon: Pierd, vm_id: str) -> dict:
    kept = get(daemon, "/events?after=0&types=virt.VM_status&limit=1000")
    bodies = [event["params"][vm_id] for event in kept["events"] if vm_id in event["params"]]
    assert bodies, f"no VM_status event of {vm_id}"
    return bodies[-1]


def kill_and_restart(daemon: Pierd) -> Pierd:
    daemon.kill()
    return Pierd(daemon.state_dir, daemon.uri)


def test_a_reboot_not_yet_asked_for_fails_after_a_restart(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(NODE_WITH_A_VM)
    first = Pierd(tmp_path / "state", f"test://{node}")
    task_id = start_shutdown(first, KEPT_VM, reboot=True, delay=60)
    second = kill_and_restart(first)
    try:
        task = get(second, f"/tasks/{task_id}")
        assert task["state"] == "failed", task
        assert "before the reboot was asked for" in task["error"]["message"], task
        assert "still Up" in task["error"]["message"], task
        assert get(second, f"/vms/{KEPT_VM}")["status"] == "Up"
    finally:
        assert second.stop() == 0


def test_a_vm_gone_while_the_agent_was_away_is_reported_down(tmp_path: Path, test_uri: str) -> None:
    """The test driver forgets what was created in it when pierd's process dies."""
    first = Pierd(tmp_path / "state", test_uri)
    vm_id = new_vm_id()
    status, _, body = http_request("POST", first.http + "/api/v1/vms",
                                   {"vmId": vm_id, "vmName": "pier-test-gone", "memSize": 64})
    assert status == 201, body
    deadline = time.monotonic() + 10
    while last_status(first, vm_id)["status"] != "Up":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = kill_and_restart(first)
    try:
        down = last_status(second, vm_id)
        assert (down["status"], down["exitReason"]) == ("Down", 9), down
    finally:
        assert second.stop() == 0


# -- qemu:///system ---------------------------------------------------------------------------------


@pytest.fixture
def system_vm(tmp_path: Path, system_libvirt: str) -> Iterator[tuple[Pierd, str]]:
    """A pierd on qemu:///system with a diskless VM (no OS: it ignores the power button); the VM
    is removed through libvirt at the end, whichever pierd is left."""
    daemon = Pierd(tmp_path / "state", system_libvirt)
    vm_id = new_vm_id()
    status, _, body = http_request("POST", daemon.http + "/api/v1/vms",
                                   {"vmId": vm_id, "vmName": f"pier-test-{vm_id[:8]}", "memSize": 32, "smp": "1"})
    assert status == 201, body
    holder = [daemon]
    yield holder, vm_id
    if holder[0].process.poll() is None:
        assert holder[0].stop() == 0
    conn = libvirt.open(system_libvirt)
    try:
        dom = conn.lookupByUUIDString(vm_id)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()


@pytest.mark.kvm
def test_powering_down_left_by_a_killed_agent_is_corrected_on_qemu(system_vm) -> None:
    holder, vm_id = system_vm
    first = holder[0]
    task_id = start_shutdown(first, vm_id, timeout=600)
    deadline = time.monotonic() + 10
    while last_status(first, vm_id)["status"] != "Powering down":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    holder[0] = second = kill_and_restart(first)
    assert last_status(second, vm_id)["status"] == "Up"
    task = get(second, f"/tasks/{task_id}")
    assert task["state"] == "failed" and "while waiting for the guest to power off" in task["error"]["message"]


@pytest.mark.kvm
def test_a_reboot_not_yet_asked_for_fails_after_a_restart_on_qemu(system_vm) -> None:
    holder, vm_id = system_vm
    task_id = start_shutdown(holder[0], vm_id, reboot=True, delay=60)
    holder[0] = second = kill_and_restart(holder[0])
    task = get(second, f"/tasks/{task_id}")
    assert task["state"] == "failed" and "before the reboot was asked for" in task["error"]["message"], task
    assert get(second, f"/vms/{vm_id}")["status"] == "Up"

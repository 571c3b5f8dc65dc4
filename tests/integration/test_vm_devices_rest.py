"""A VM's devices through pierd on qemu:///system: the REST collection /api/v1/vms/{vmID}/devices
(list, add, update, remove by alias) and VDSM's verbs over JSON-RPC with the vmId inside params,
as VDSM's XML-RPC sent them. No guest OS: a virtio-scsi disk leaves at once (QEMU needs no guest
for it), a virtio disk never does (409 hotunplugDisk after the configured timeout)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.clients import HttpRpcClient, http_request
from tests.integration.conftest import Pierd, new_vm_id

pytestmark = pytest.mark.kvm


@pytest.fixture
def daemon(tmp_path: Path, system_libvirt: str) -> Iterator[Pierd]:
    config = tmp_path / "pierd.toml"
    config.write_text("hotunplug_timeout = 1.0\n")
    pierd = Pierd(tmp_path / "state", system_libvirt, "--config", str(config))
    yield pierd
    assert pierd.stop() == 0


@pytest.fixture
def vm(daemon: Pierd) -> Iterator[tuple[str, str]]:
    api = daemon.http + "/api/v1"
    vm_id = new_vm_id()
    params = {"vmId": vm_id, "vmName": f"pier-devices-{vm_id[:8]}", "memSize": 64, "smp": "1",
              "devices": [{"deviceType": "interface", "device": "network", "network": "default"}]}
    status, _, body = http_request("POST", f"{api}/vms", params)
    assert status == 201, body
    try:
        yield api, vm_id
    finally:
        http_request("DELETE", f"{api}/vms/{vm_id}")


@pytest.fixture
def image() -> Iterator[str]:
    path = f"/var/lib/libvirt/images/pier-devices-rest-{os.getpid()}.img"
    subprocess.run(["truncate", "-s", "8M", path], check=True)
    yield path
    os.unlink(path)


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    status, _, raw = http_request(method, url, body)
    return status, json.loads(raw)


def test_the_devices_collection_adds_lists_updates_and_removes_by_alias(vm: tuple[str, str], image: str) -> None:
    api, vm_id = vm
    status, devices = call("GET", f"{api}/vms/{vm_id}/devices")
    assert status == 200 and [d["deviceType"] for d in devices].count("interface") == 1

    status, disk = call("POST", f"{api}/vms/{vm_id}/devices",
                        {"deviceType": "disk", "path": image, "iface": "scsi", "alias": "ua-rest-disk"})
    assert status == 200, disk
    assert (disk["alias"], disk["path"], disk["iface"]) == ("ua-rest-disk", image, "scsi")
    status, devices = call("GET", f"{api}/vms/{vm_id}/devices")
    assert "ua-rest-disk" in [d.get("alias") for d in devices]
    assert "ua-rest-disk" in [d.get("alias") for d in call("GET", f"{api}/vms/{vm_id}")[1]["devices"]]

    nic = next(d for d in devices if d["deviceType"] == "interface")
    status, definition = call("PUT", f"{api}/vms/{vm_id}/devices/{nic['alias']}",
                              {"deviceType": "interface", "linkActive": False})
    assert status == 200, definition
    assert [d["linkActive"] for d in definition["devices"] if d["deviceType"] == "interface"] == [False]

    status, definition = call("DELETE", f"{api}/vms/{vm_id}/devices/ua-rest-disk")
    assert status == 200, definition
    assert "ua-rest-disk" not in [d.get("alias") for d in call("GET", f"{api}/vms/{vm_id}/devices")[1]]

    status, problem = call("DELETE", f"{api}/vms/{vm_id}/devices/ua-rest-disk")
    assert (status, problem["name"]) == (409, "updateDevice") and "ua-rest-disk" in problem["detail"], problem


def test_vdsm_verbs_take_the_vm_inside_params_and_a_held_disk_is_a_409(daemon: Pierd, vm: tuple[str, str],
                                                                       image: str) -> None:
    api, vm_id = vm
    rpc = HttpRpcClient(daemon.http)
    definition = rpc.call("VM.hotplugDisk", params={"vmId": vm_id, "drive": {"path": image, "format": "raw"}})
    assert image in [d.get("path") for d in definition["devices"]]
    status, problem = call("POST", f"{api}/vms/{vm_id}/disks/unplug", {"drive": {"path": image}})
    assert (status, problem["code"], problem["name"]) == (409, 46, "hotunplugDisk"), problem
    assert "did not release" in problem["detail"]
    assert image in [d.get("path") for d in call("GET", f"{api}/vms/{vm_id}/devices")[1]]

    status, problem = call("POST", f"{api}/vms/{vm_id}/memory", {"memory": {"size": 128}})
    assert (status, problem["name"]) == (409, "hotplugMem") and "maxMemSize" in problem["detail"], problem
    status, problem = call("PUT", f"{api}/vms/{vm_id}/cpus", {"numberOfCpus": 2})
    assert (status, problem["name"]) == (409, "setNumberOfCpusErr"), problem

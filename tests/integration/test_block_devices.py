"""Block devices, LVM and the verbs Pier does not serve, through a real pierd, on real loop devices.

Each test makes its loop devices from temporary files (losetup), writes a real partition table
(sfdisk; the partitions are registered with partx, since this kernel's loop driver does not scan
partition tables itself), a filesystem (mkfs.ext4) or an LVM PV and VG (pvcreate, vgcreate), and
always detaches them at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pier.host.testdriver import make_test_uri
from pier.rpc.schema import Schema
from tests.integration.clients import CallFailed, HttpRpcClient, RestClient, http_request
from tests.integration.conftest import Pierd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="losetup needs root")

MIB = 1 << 20
SIZE = 64 * MIB


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pierd]:
    base = tmp_path_factory.mktemp("blockdev")
    pierd = Pierd(base / "state", make_test_uri(base / "testnode.xml"), "--data-center", str(base / "dc"))
    try:
        yield pierd
    finally:
        pierd.stop()


@pytest.fixture
def rpc(daemon: Pierd) -> Iterator[HttpRpcClient]:
    client = HttpRpcClient(daemon.http, daemon.token)
    yield client
    client.close()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Makes loop devices of SIZE bytes over files in tmp_path; each is detached after the test."""
    attached: list[str] = []

    def attach(name: str) -> str:
        image = tmp_path / f"{name}.img"
        run("truncate", "-s", str(SIZE), str(image))
        device = run("losetup", "--find", "--show", str(image)).stdout.strip()
        attached.append(device)
        return device

    try:
        yield attach
    finally:
        for device in attached:
            subprocess.run(["partx", "-d", device], capture_output=True, check=False)
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def listed(rpc: HttpRpcClient, device: str) -> dict[str, Any]:
    [found] = [dev for dev in rpc.call("Host.getDeviceList") if dev["path"] == device]
    return found


def test_a_partitioned_loop_device_is_listed_with_its_size_partitions_and_in_use(
        rpc: HttpRpcClient, daemon: Pierd, loop_device: Callable[[str], str], tmp_path: Path) -> None:
    device = loop_device("parted")
    run("sfdisk", "-q", device, stdin="label: gpt\n,8M\n,\n")
    run("partx", "-a", device)
    name = os.path.basename(device)

    dev = listed(rpc, device)
    assert (dev["GUID"], dev["guidSource"], dev["type"]) == (name, "name", "loop")
    assert dev["capacity"] == str(SIZE) and dev["backingFile"] == str(tmp_path / "parted.img")
    assert dev["partitioned"] is True and dev["pttype"] == "gpt"
    parts = [(p["name"], int(p["capacity"]), p["start"]) for p in dev["partitions"]]
    assert [part[0] for part in parts] == [f"{name}p1", f"{name}p2"]
    assert parts[0][1:] == (8 * MIB, 2048)  # sfdisk's 1 MiB alignment
    assert parts[1][1:] == (SIZE - 10 * MIB, 2048 + 8 * MIB // 512)  # to the last aligned MiB before the GPT backup
    assert dev["status"] == "used" and dev["inUse"] is True and "partition table (gpt)" in dev["usedBy"]

    rest = RestClient(daemon.http, daemon.token)
    assert [d["path"] for d in rest.call("Host.getDeviceList", guids=[name])] == [device]
    assert rpc.call("Host.getDevicesVisibility", guidList=[name, "no-such-device-guid"]) == \
        {name: True, "no-such-device-guid": False}
    assert rpc.call("Host.getDeviceList", storageType="ISCSI") == []


def test_a_blank_device_is_free_until_a_filesystem_is_made_on_it(rpc: HttpRpcClient,
                                                                  loop_device: Callable[[str], str]) -> None:
    device = loop_device("blank")
    dev = listed(rpc, device)
    assert (dev["status"], dev["inUse"], dev["usedBy"], dev["partitioned"]) == ("free", False, [], False)
    run("mkfs.ext4", "-F", "-q", device)
    dev = listed(rpc, device)
    assert (dev["status"], dev["fstype"], dev["usedBy"]) == ("used", "ext4", ["filesystem signature (ext4)"])
    assert rpc.call("Host.getDeviceList", guids=[dev["GUID"]], checkStatus=False)[0]["status"] == "unknown"


def test_an_lvm_pv_and_vg_are_read_but_no_volume_group_is_made_or_removed(
        rpc: HttpRpcClient, loop_device: Callable[[str], str]) -> None:
    device = loop_device("pv")
    vg = f"piertest{uuid.uuid4().hex[:8]}"
    run("pvcreate", "-q", device)
    try:
        run("vgcreate", "-q", vg, device)
        # what Pier's errors say of this kernel: an LV cannot be made for want of device-mapper targets
        made = subprocess.run(["lvcreate", "-q", "-n", "lv", "-L", "8M", vg], capture_output=True, text=True)
        assert made.returncode != 0 and "Required device-mapper target(s) not detected" in made.stderr, made.stderr

        dev = listed(rpc, device)
        assert dev["pvUUID"] and dev["vgUUID"] and int(dev["pvsize"]) > 0
        assert dev["status"] == "used" and "LVM physical volume" in dev["usedBy"]
        [group] = [g for g in rpc.call("Host.getLVMVolumeGroups") if g["name"] == vg]
        assert group["vgUUID"] == dev["vgUUID"] and group["state"] == "OK"
        assert [(pv["pvUUID"], pv["guid"]) for pv in group["pvlist"]] == [(dev["pvUUID"], dev["GUID"])]
        assert rpc.call("LVMVolumeGroup.getInfo", lvmvolumegroupID=group["vgUUID"]) == group

        with pytest.raises(CallFailed) as err:
            rpc.call("LVMVolumeGroup.remove", lvmvolumegroupID=vg)
        assert err.value.code == 508 and "device-mapper" in err.value.message
        with pytest.raises(CallFailed) as err:
            rpc.call("LVMVolumeGroup.create", name=str(uuid.uuid4()), devlist=[dev["GUID"]])
        assert err.value.code == 502 and "device-mapper" in err.value.message
        assert [g["name"] for g in rpc.call("Host.getLVMVolumeGroups") if g["name"] == vg] == [vg]
    finally:
        subprocess.run(["vgremove", "-f", "-q", vg], capture_output=True, check=False)
        subprocess.run(["pvremove", "-q", device], capture_output=True, check=False)


SD, SP = str(uuid.uuid4()), str(uuid.uuid4())
LEASE = {"sd_id": SD, "lease_id": str(uuid.uuid4())}
NO_LOCKSPACE, NO_DM = "no sanlock lockspace", "device-mapper"
REFUSED: list[tuple[str, dict[str, Any], int, int, str]] = [  # verb, params, VDSM code, HTTP status, the reason
    ("Lease.create", {"lease": LEASE}, 75, 409, NO_LOCKSPACE),
    ("Lease.delete", {"lease": LEASE}, 75, 409, NO_LOCKSPACE),
    ("Lease.info", {"lease": LEASE}, 75, 409, NO_LOCKSPACE),
    ("Lease.status", {"lease": LEASE}, 75, 409, NO_LOCKSPACE),
    ("Lease.fence", {"lease": LEASE, "metadata": {"generation": 1}}, 75, 409, NO_LOCKSPACE),
    ("Lease.rebuild_leases", {"sd_id": SD}, 75, 409, NO_LOCKSPACE),
    ("LVMVolumeGroup.create", {"name": SD, "devlist": ["loop0"]}, 502, 409, NO_DM),
    ("LVMVolumeGroup.getInfo", {"lvmvolumegroupID": "no-such-vg"}, 506, 404, "no-such-vg"),
    ("StorageDomain.extend", {"storagedomainID": SD, "storagepoolID": SP, "devlist": ["loop0"]}, 358, 404, SD),
    ("StorageDomain.resizePV", {"storagedomainID": SD, "storagepoolID": SP, "guid": "loop0"}, 358, 404, SD),
    ("ISCSIConnection.discoverSendTargets", {"host": "192.0.2.1", "port": 3260}, 475, 409, NO_DM),
    ("SDM.move_domain_device", {"job_id": SP, "move_params": {"sd_id": SD, "src_guid": "loop0"}}, 358, 404, SD),
    ("SDM.reduce_domain", {"job_id": SP, "reduce_params": {"sd_id": SD, "guid": "loop0"}}, 358, 404, SD),
]


@pytest.mark.parametrize(("verb", "params", "code", "status", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_what_is_not_served_answers_its_error_over_json_rpc_and_rest(
        rpc: HttpRpcClient, daemon: Pierd, verb: str, params: dict[str, Any], code: int, status: int,
        reason: str) -> None:
    with pytest.raises(CallFailed) as err:
        rpc.call(verb, **params)
    assert err.value.code == code and reason in err.value.message, err.value

    route = Schema.load().verbs[verb].rest[0]
    path, body = route.path, dict(params)
    for name in route.path_params:
        path = path.replace("{" + name + "}", str(body.pop(name)))
    answer, headers, raw = http_request(route.method, f"{daemon.http}/api/v1{path}",
                                        body if route.method == "POST" else None)
    problem = json.loads(raw)
    assert (answer, headers.get("Content-Type"), problem["code"]) == (status, "application/problem+json", code)
    assert reason in problem["detail"]

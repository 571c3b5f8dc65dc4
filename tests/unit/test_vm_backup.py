"""The backup and checkpoint verbs through the real registry over a fake backup service: params
checked by the schema, VDSM's error codes for the refusals."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pier.cli_backup import volume_disks
from pier.host.backup import _backup_xml
from pier.host.checkpoints import BackupDisk
from pier.rpc.errors import PierError
from tests.unit.conftest import Stack

VM_ID = "6b0b2c4e-3d8f-4a53-9c61-0f5d1f0b7a11"


def config(**extra: object) -> dict[str, object]:
    disk = {"domainID": str(uuid.uuid4()), "imageID": str(uuid.uuid4()), "volumeID": str(uuid.uuid4())}
    return {"backup_id": str(uuid.uuid4()), "disks": [disk], **extra}


def code_of(stack: Stack, verb: str, **params: object) -> int:
    with pytest.raises(PierError) as caught:
        stack.call(verb, **params)
    return caught.value.code


def test_a_backup_runs_alone_and_from_known_checkpoints(stack: Stack) -> None:
    stack.vms.records = {VM_ID: {"vmId": VM_ID, "vmName": "b", "status": "Up"}}
    first = str(uuid.uuid4())
    started = config(to_checkpoint_id=first)
    info = stack.call("VM.start_backup", vmID=VM_ID, config=started)
    assert isinstance(info, dict) and list(info["disks"].values())[0].startswith("nbd:unix:")
    assert code_of(stack, "VM.start_backup", vmID=VM_ID, config=config()) == 1600
    stack.call("VM.stop_backup", vmID=VM_ID, backup_id=started["backup_id"])
    assert code_of(stack, "VM.backup_info", vmID=VM_ID, backup_id=started["backup_id"]) == 1601
    assert code_of(stack, "VM.start_backup", vmID=VM_ID,
                   config=config(from_checkpoint_id=str(uuid.uuid4()))) == 1611
    assert stack.call("VM.list_checkpoints", vmID=VM_ID) == [first]
    assert code_of(stack, "VM.dump_checkpoint", vmID=VM_ID, checkpoint_id=str(uuid.uuid4())) == 1611
    assert stack.call("VM.delete_checkpoints", vmID=VM_ID, checkpoint_ids=[first]) == {"checkpoint_ids": [first]}


def test_bad_configs_are_refused_by_the_schema(stack: Stack) -> None:
    stack.vms.records = {VM_ID: {"vmId": VM_ID, "vmName": "b", "status": "Up"}}
    assert code_of(stack, "VM.start_backup", vmID=VM_ID, config={"backup_id": str(uuid.uuid4()), "disks": []}) \
        == -32602
    assert code_of(stack, "VM.redefine_checkpoints", vmID=VM_ID, checkpoints=[{"id": str(uuid.uuid4())}]) == -32602
    scratch_on_nvme = config()
    scratch_on_nvme["disks"][0]["scratch_disk"] = {"path": "/dev/nvme0n1", "type": "nvme"}  # type: ignore[index]
    assert code_of(stack, "VM.start_backup", vmID=VM_ID, config=scratch_on_nvme) == -32602
    stack.vms.records[VM_ID]["status"] = "Down"
    assert code_of(stack, "VM.start_backup", vmID=VM_ID, config=config()) == 6


def test_a_scratch_disk_goes_into_libvirts_backup_xml_as_its_type_says() -> None:
    given = BackupDisk("vda", "img-a", Path("/dev/vg/scratch"), None, True, scratch_given=True, scratch_type="block")
    own = BackupDisk("vdb", "img-b", Path("/sd/backup-scratch/b/vdb.qcow2"), None, True)
    disks = {d.get("name"): d for d in ET.fromstring(_backup_xml("/run/b.sock", [given, own], None))
             .iterfind("disks/disk")}
    assert disks["vda"].get("type") == "block" and disks["vda"].find("scratch").attrib == {"dev": "/dev/vg/scratch"}  # type: ignore[union-attr]
    assert disks["vdb"].get("type") == "file" and \
        disks["vdb"].find("scratch").attrib == {"file": "/sd/backup-scratch/b/vdb.qcow2"}  # type: ignore[union-attr]


def test_the_cli_backs_up_the_disks_that_are_volumes() -> None:
    sd, img, vol = (str(uuid.uuid4()) for _ in range(3))
    devices = [{"type": "disk", "device": "disk", "path": f"/rhev/data-center/mnt/x/{sd}/images/{img}/{vol}"},
               {"type": "disk", "device": "disk", "path": "/var/lib/libvirt/images/plain.img"},
               {"type": "disk", "device": "cdrom", "path": f"/x/{sd}/images/{img}/{vol}"}]
    assert volume_disks(devices) == [{"domainID": sd, "imageID": img, "volumeID": vol}]
    assert volume_disks(devices, [str(uuid.uuid4())]) == []


def test_capabilities_say_backups_are_served(stack: Stack) -> None:
    caps = stack.call("Host.getCapabilities")
    assert isinstance(caps, dict) and caps["backupEnabled"] is True

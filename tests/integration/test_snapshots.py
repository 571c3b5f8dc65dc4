"""Live snapshots and merges of a running tiny guest on volume chains (qemu:///system, real qemu-img).

One guest boots for the module, with two disks named by volumes: vda on image A (base, top) and
vdb on image B (one volume). A snapshot moves both onto new layers made with Volume.create; what
the guest writes afterwards lands in the new layers; merges (internal, then active with pivot)
fold the chain back while the guest runs, and the guest and the files still hold what it wrote.
A snapshot refused for one drive leaves both drives as they were.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pier import cli
from tests.integration.clients import JsonRpcError
from tests.integration.guest import Guest
from tests.integration.test_volumes import Site, qemu_chain
from tests.integration.volume_guests import guest_site, restart_pierd

pytestmark = pytest.mark.kvm
MiB = 1 << 20
FIRST, SECOND = "pier-first-write", "pier-other-write"  # 16 bytes: one line of qemu-io
FIRST_SECTOR, SECOND_SECTOR = 4096, 8192


@dataclass
class Lab:
    site: Site
    guest: Guest
    vm_id: str
    img_a: str
    img_b: str
    chain_a: list[str]  # base first, as the test changes it
    chain_b: list[str]

    def path(self, img: str, vol: str) -> Path:
        return self.site.domain_dir(self.site.sd) / "images" / img / vol

    def leaves(self) -> dict[str, str]:
        """Each disk's source path in the running guest."""
        xml = self.guest.dom.XMLDesc(0)
        root = ET.fromstring(xml)
        out = {}
        for disk in root.iterfind("devices/disk"):
            source = disk.find("source")
            target = disk.find("target")
            if source is not None and target is not None:
                out[str(target.get("dev"))] = str(source.get("file"))
        return out

    def info(self, img: str, vol: str) -> dict[str, Any]:
        found: dict[str, Any] = self.site.rpc.call("Volume.getInfo", storagepoolID=self.site.pool,
                                                   storagedomainID=self.site.sd, imageID=img, volumeID=vol)
        return found

    def drive(self, img: str, vol: str) -> dict[str, Any]:
        return {"poolID": self.site.pool, "domainID": self.site.sd, "imageID": img, "volumeID": vol}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, system_libvirt: str) -> Iterator[Lab]:
    with guest_site(tmp_path_factory, system_libvirt, "snapshots") as made:
        site = made.site
        img_a, base_a, top_a = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        img_b, base_b = str(uuid.uuid4()), str(uuid.uuid4())
        site.create(img_a, base_a, size=64 * MiB)
        site.create(img_a, top_a, size=64 * MiB, parent=base_a)
        site.create(img_b, base_b, size=16 * MiB)
        vm_id = str(uuid.uuid4())
        guest = made.boot(vm_id, made.disk(img_a, top_a), made.disk(img_b, base_b))
        yield Lab(site, guest, vm_id, img_a, img_b, [base_a, top_a], [base_b])


def guest_read(lab: Lab, sector: int, length: int) -> str:
    return lab.guest.shell.run(f"echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip={sector} count=1 "
                               f"2>/dev/null | head -c {length}").strip()


def guest_write(lab: Lab, sector: int, text: str) -> None:
    lab.guest.shell.run(f"printf {text} | dd of=/dev/vda bs=512 seek={sector} conv=fsync 2>/dev/null; sync")


def layer_holds(path: Path, sector: int, text: str) -> bool:
    """Whether this layer itself (not read through its backing file) holds `text` (16 bytes) at `sector`."""
    image = json.dumps({"driver": "qcow2", "file": {"driver": "file", "filename": str(path)}, "backing": None})
    out = subprocess.run(["qemu-io", "-U", "-r", "-c", f"read -v {sector * 512} {len(text)}", f"json:{image}"],
                         capture_output=True, text=True, check=True).stdout
    return text.encode().hex(" ") in out.splitlines()[0]


def snapshot(lab: Lab, *drives: tuple[str, str, str]) -> dict[str, Any]:
    result: dict[str, Any] = lab.site.rpc.call("VM.snapshot", vmID=lab.vm_id, snapDrives=[
        {"domainID": lab.site.sd, "imageID": img, "baseVolumeID": base, "volumeID": vol} for img, base, vol in drives])
    return result


def test_a_snapshot_refused_for_one_drive_leaves_both_drives_as_they_were(lab: Lab) -> None:
    before = lab.leaves()
    new_a = str(uuid.uuid4())
    lab.site.create(lab.img_a, new_a, size=64 * MiB, parent=lab.chain_a[-1])
    missing = str(uuid.uuid4())
    with pytest.raises(JsonRpcError) as caught:
        snapshot(lab, (lab.img_a, lab.chain_a[-1], new_a), (lab.img_b, lab.chain_b[-1], missing))
    assert caught.value.code == 201, caught.value  # VolumeDoesNotExist
    assert "snapDrives.1.volumeID" in str(caught.value)
    assert lab.leaves() == before

    not_over_leaf = str(uuid.uuid4())  # made over the base, not over the drive's leaf
    lab.site.create(lab.img_a, not_over_leaf, size=64 * MiB, parent=lab.chain_a[0])
    with pytest.raises(JsonRpcError) as caught:
        snapshot(lab, (lab.img_a, lab.chain_a[-1], not_over_leaf))
    assert caught.value.code == 48, caught.value  # snapshotErr
    assert lab.leaves() == before
    assert lab.info(lab.img_a, lab.chain_a[-1])["voltype"] == "INTERNAL"  # Volume.create made it so

    for vol in (new_a, not_over_leaf):  # nothing of the refused snapshots is in use: they delete
        lab.site.done("Volume.delete", storagepoolID=lab.site.pool, storagedomainID=lab.site.sd,
                      imageID=lab.img_a, volumeID=vol, postZero=False, force=False)
    assert lab.info(lab.img_a, lab.chain_a[-1])["voltype"] == "LEAF"


def test_snapshot_write_and_merge_back_live(lab: Lab) -> None:
    guest_write(lab, FIRST_SECTOR, FIRST)
    snap_a, snap_b = str(uuid.uuid4()), str(uuid.uuid4())
    lab.site.create(lab.img_a, snap_a, size=64 * MiB, parent=lab.chain_a[-1])
    lab.site.create(lab.img_b, snap_b, size=16 * MiB, parent=lab.chain_b[-1])

    done = snapshot(lab, (lab.img_a, lab.chain_a[-1], snap_a), (lab.img_b, lab.chain_b[-1], snap_b))
    assert done["state"] == "succeeded", done
    assert done["result"]["quiesce"] is True  # the tiny guest's agent answers
    lab.chain_a.append(snap_a)
    lab.chain_b.append(snap_b)
    assert lab.leaves() == {"vda": str(lab.path(lab.img_a, snap_a)), "vdb": str(lab.path(lab.img_b, snap_b))}
    assert qemu_chain(lab.path(lab.img_a, snap_a)) == lab.chain_a
    assert qemu_chain(lab.path(lab.img_b, snap_b)) == lab.chain_b
    assert [lab.info(lab.img_a, v)["voltype"] for v in lab.chain_a] == ["INTERNAL", "INTERNAL", "LEAF"]
    devices = lab.site.rpc.call("VM.getDevices", vmID=lab.vm_id)
    vda = next(d for d in devices if d.get("name") == "vda")
    assert vda["path"] == str(lab.path(lab.img_a, snap_a)) and vda["volumeID"] == snap_a
    assert [entry["volumeID"] for entry in vda["volumeChain"]] == lab.chain_a  # base first, as VDSM lists it

    guest_write(lab, SECOND_SECTOR, SECOND)
    assert layer_holds(lab.path(lab.img_a, snap_a), SECOND_SECTOR, SECOND)
    assert not layer_holds(lab.path(lab.img_a, lab.chain_a[1]), SECOND_SECTOR, SECOND)
    assert layer_holds(lab.path(lab.img_a, lab.chain_a[1]), FIRST_SECTOR, FIRST)

    with pytest.raises(JsonRpcError) as caught:  # a base from another image is not in the chain
        lab.site.rpc.call("VM.merge", vmID=lab.vm_id, drive=lab.drive(lab.img_a, snap_a),
                          baseVolUUID=lab.chain_b[0], topVolUUID=snap_a)
    assert caught.value.code == 52, caught.value

    base, top = lab.chain_a[0], lab.chain_a[1]  # internal: the old top into the base
    job = str(uuid.uuid4())
    task = lab.site.rpc.call("VM.merge", vmID=lab.vm_id, drive=lab.drive(lab.img_a, snap_a), baseVolUUID=base,
                             topVolUUID=top, jobUUID=job)
    ended = lab.site.wait(task)
    assert ended["state"] == "succeeded", ended
    assert lab.site.rpc.call("Host.getJobs", job_ids=[job])[job]["status"] == "done"
    assert qemu_chain(lab.path(lab.img_a, snap_a)) == [base, snap_a]
    assert lab.info(lab.img_a, snap_a)["parent"] == base
    assert lab.info(lab.img_a, top)["legality"] == "ILLEGAL"
    assert layer_holds(lab.path(lab.img_a, base), FIRST_SECTOR, FIRST)

    task = lab.site.rpc.call("VM.merge", vmID=lab.vm_id, drive=lab.drive(lab.img_a, snap_a), baseVolUUID=base,
                             topVolUUID=snap_a)  # active: the leaf into the base, then a pivot
    ended = lab.site.wait(task)
    assert ended["state"] == "succeeded", ended
    assert lab.leaves()["vda"] == str(lab.path(lab.img_a, base))
    assert qemu_chain(lab.path(lab.img_a, base)) == [base]
    assert lab.info(lab.img_a, base)["voltype"] == "LEAF"
    assert lab.info(lab.img_a, snap_a)["legality"] == "ILLEGAL"
    assert layer_holds(lab.path(lab.img_a, base), FIRST_SECTOR, FIRST)
    assert layer_holds(lab.path(lab.img_a, base), SECOND_SECTOR, SECOND)
    assert guest_read(lab, FIRST_SECTOR, len(FIRST)) == FIRST
    assert guest_read(lab, SECOND_SECTOR, len(SECOND)) == SECOND
    lab.chain_a[:] = [base]


def test_a_merge_interrupted_by_a_restart_is_followed_to_its_end(lab: Lab) -> None:
    base = lab.chain_a[0]
    filled, leaf = str(uuid.uuid4()), str(uuid.uuid4())
    lab.site.create(lab.img_a, filled, size=64 * MiB, parent=base)
    assert snapshot(lab, (lab.img_a, base, filled))["state"] == "succeeded"
    lab.guest.shell.run("dd if=/dev/urandom of=/dev/vda bs=1M seek=16 count=6 conv=fsync 2>/dev/null; sync", 120)
    written = lab.guest.shell.run("dd if=/dev/vda bs=1M skip=16 count=6 2>/dev/null | md5sum").split()[0]
    lab.site.create(lab.img_a, leaf, size=64 * MiB, parent=filled)
    assert snapshot(lab, (lab.img_a, filled, leaf))["state"] == "succeeded"

    job = str(uuid.uuid4())  # 6 MiB at 1 MiB/s: the commit takes seconds
    lab.site.rpc.call("VM.merge", vmID=lab.vm_id, drive=lab.drive(lab.img_a, leaf), baseVolUUID=base,
                      topVolUUID=filled, bandwidth=1, jobUUID=job)
    deadline = time.monotonic() + 30
    while True:
        jobs = lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0].get("vmJobs", {})
        if job in jobs and int(jobs[job]["end"]) > 0:
            break
        assert time.monotonic() < deadline, "the merge never showed in the VM's vmJobs"
        time.sleep(0.2)
    assert jobs[job]["blockJobType"] == "commit" and jobs[job]["drive"] == "vda" and jobs[job]["imgUUID"] == lab.img_a
    listed = lab.site.rpc.call("Host.getJobs", job_ids=[job])[job]
    assert listed["status"] == "running" and listed["job_type"] == "virt", listed  # VDSM's type of VM jobs

    restart_pierd(lab.site, lab.guest)
    reported = lab.site.rpc.call("Host.getJobs", job_ids=[job])[job]
    merged = lab.info(lab.img_a, filled)["legality"] == "ILLEGAL"
    assert reported["status"] == "failed" or merged, reported
    if not merged:  # libvirt went on with it: said so, and followed to its end
        assert "goes on" in reported["error"]["message"], reported
    deadline = time.monotonic() + 60
    while lab.info(lab.img_a, filled)["legality"] != "ILLEGAL":
        assert time.monotonic() < deadline, "the merge was not followed to its end after the restart"
        time.sleep(0.2)
    assert qemu_chain(lab.path(lab.img_a, leaf)) == [base, leaf]
    assert lab.info(lab.img_a, leaf)["parent"] == base
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0].get("vmJobs", {}) == {}
    assert lab.guest.shell.run("echo 3 > /proc/sys/vm/drop_caches; "
                               "dd if=/dev/vda bs=1M skip=16 count=6 2>/dev/null | md5sum").split()[0] == written
    lab.chain_a[:] = [base, leaf]


def test_pier_vm_snapshot_then_a_disk_grows_live(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = lab.site.daemon
    old_leaf = lab.chain_b[-1]
    assert cli.main(["vm", "snapshot", lab.vm_id, "--url", daemon.http, "--token", daemon.token, "--disk", "vdb",
                     "--pool", lab.site.pool]) == 0
    out = capsys.readouterr().out
    assert f"vdb: {old_leaf} -> " in out, out
    new_leaf = out.split(f"vdb: {old_leaf} -> ")[1].split()[0]
    assert lab.leaves()["vdb"] == str(lab.path(lab.img_b, new_leaf))
    assert lab.info(lab.img_b, new_leaf)["parent"] == old_leaf
    lab.chain_b.append(new_leaf)

    size = lab.site.rpc.call("VM.diskSizeExtend", vmID=lab.vm_id, driveSpecs=lab.drive(lab.img_b, new_leaf),
                             newSize=str(32 * MiB))
    assert size == str(32 * MiB)
    assert lab.info(lab.img_b, new_leaf)["capacity"] == str(32 * MiB)
    seen = "for i in $(seq 50); do [ $(cat /sys/block/vdb/size) = 65536 ] && break; sleep 0.2; done; " \
           "cat /sys/block/vdb/size"
    assert lab.guest.shell.run(seen).strip() == str(32 * MiB // 512)  # the guest sees the bigger disk
    with pytest.raises(JsonRpcError) as caught:  # disks only grow
        lab.site.rpc.call("VM.diskSizeExtend", vmID=lab.vm_id, driveSpecs=lab.drive(lab.img_b, new_leaf),
                          newSize=str(16 * MiB))
    assert caught.value.code == 58, caught.value
    refreshed = lab.site.rpc.call("VM.refresh_disk", vmID=lab.vm_id, drive=lab.drive(lab.img_b, new_leaf))
    assert set(refreshed) == {"apparentsize", "truesize"}

    disk = lab.drive(lab.img_a, lab.chain_a[-1])
    assert lab.site.rpc.call("VM.getDiskAlignment", vmID=lab.vm_id, disk=disk) == {
        str(lab.path(lab.img_a, lab.chain_a[-1])): True}  # no partition table: nothing misaligned


def test_a_cancelled_merge_leaves_the_chain_as_it_was(lab: Lab) -> None:
    base, leaf = lab.chain_a
    lab.guest.shell.run("dd if=/dev/urandom of=/dev/vda bs=1M seek=32 count=6 conv=fsync 2>/dev/null; sync", 120)
    task = lab.site.rpc.call("VM.merge", vmID=lab.vm_id, drive=lab.drive(lab.img_a, leaf), baseVolUUID=base,
                             topVolUUID=leaf, bandwidth=1)  # active, slow: it cannot be done before the stop
    deadline = time.monotonic() + 30
    while not lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0].get("vmJobs"):
        assert time.monotonic() < deadline, "the merge never showed in the VM's vmJobs"
        time.sleep(0.1)
    lab.site.rpc.call("Task.stop", taskID=task["taskID"])
    ended = lab.site.wait(task)
    assert ended["state"] == "cancelled", ended
    assert lab.leaves()["vda"] == str(lab.path(lab.img_a, leaf))
    assert qemu_chain(lab.path(lab.img_a, leaf)) == [base, leaf]
    assert [lab.info(lab.img_a, v)["voltype"] for v in (base, leaf)] == ["INTERNAL", "LEAF"]
    assert lab.info(lab.img_a, leaf)["legality"] == "LEGAL"
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0].get("vmJobs", {}) == {}

"""Live storage moves of a running tiny guest's disk between two file domains (qemu:///system,
real qemu-img), the way VDSM's engine drives them.

The guest's vda is image I (base, top) in domain 1, with a line written into the base before it
boots. The destination is made as the engine makes it: Image.cloneStructure (the same volumes,
empty, in domain 2), VM.diskReplicateStart, Image.syncData INTERNAL (the base's data) while QEMU
mirrors the guest's writes, then VM.diskReplicateFinish pivots. Refused calls change nothing; a
copy cancelled leaves the guest on domain 1; a pierd killed during a copy finds it again.
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

import libvirt
import pytest

from pier import cli
from tests.integration.clients import JsonRpcError, http_request
from tests.integration.guest import Guest
from tests.integration.test_volumes import Site, qemu_chain
from tests.integration.volume_guests import guest_site, restart_pierd

pytestmark = pytest.mark.kvm
MiB = 1 << 20
IN_BASE, BEFORE, DURING, AFTER = "pier-in-the-base", "pier-before-copy", "pier-during-copy", "pier-after-pivot"
BASE_SECTOR, BEFORE_SECTOR, DURING_SECTOR, AFTER_SECTOR = 2048, 4096, 8192, 12288


@dataclass
class Lab:
    site: Site
    guest: Guest
    vm_id: str
    img: str
    base: str
    top: str
    img_b: str  # vdb: one volume
    vol_b: str
    conn: libvirt.virConnect

    def path(self, sd: str, vol: str, img: str | None = None) -> Path:
        return self.site.domain_dir(sd) / "images" / (img or self.img) / vol

    def vda(self, name: str = "vda") -> tuple[str, bool]:
        """The disk's source path in the running guest, and whether libvirt copies it (a <mirror>)."""
        root = ET.fromstring(self.guest.dom.XMLDesc(0))
        for disk in root.iterfind("devices/disk"):
            source, target = disk.find("source"), disk.find("target")
            if source is not None and target is not None and target.get("dev") == name:
                return str(source.get("file")), disk.find("mirror") is not None
        raise AssertionError(f"the guest has no disk {name}")

    def disk(self, sd: str, vol: str | None = None) -> dict[str, Any]:
        return {"poolID": self.site.pool, "domainID": sd, "imageID": self.img, "volumeID": vol or self.top}

    def jobs(self) -> dict[str, Any]:
        found: dict[str, Any] = self.site.rpc.call("VM.getStats", vmID=self.vm_id)[0].get("vmJobs", {})
        return found

    def restart_pierd(self) -> None:
        restart_pierd(self.site, self.guest)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, system_libvirt: str) -> Iterator[Lab]:
    with guest_site(tmp_path_factory, system_libvirt, "replicate") as made:
        site = made.site
        img, base, top = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        site.create(img, base, size=64 * MiB)
        qemu_write(site.domain_dir(site.sd) / "images" / img / base, BASE_SECTOR, IN_BASE)
        site.create(img, top, size=64 * MiB, parent=base)
        img_b, vol_b = str(uuid.uuid4()), str(uuid.uuid4())
        site.create(img_b, vol_b, size=16 * MiB)
        vm_id = str(uuid.uuid4())
        guest = made.boot(vm_id, made.disk(img, top), made.disk(img_b, vol_b))
        yield Lab(site, guest, vm_id, img, base, top, img_b, vol_b, made.conn)


def qemu_write(path: Path, sector: int, text: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0 {sector * 512} 512", "-c",
                    f"write -s /dev/stdin {sector * 512} {len(text)}", str(path)],
                   input=text.encode(), capture_output=True, check=True)


def qemu_read(path: Path, sector: int, text: str) -> bool:
    """Whether the image (read through its backing chain) holds `text` (16 bytes) at `sector`."""
    out = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", f"read -v {sector * 512} {len(text)}",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return text.encode().hex(" ") in out.splitlines()[0]


def guest_read(lab: Lab, sector: int, length: int, disk: str = "vda") -> str:
    return lab.guest.shell.run(f"echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/{disk} bs=512 skip={sector} count=1 "
                               f"2>/dev/null | head -c {length}").strip()


def guest_write(lab: Lab, sector: int, text: str, disk: str = "vda") -> None:
    lab.guest.shell.run(f"printf {text} | dd of=/dev/{disk} bs=512 seek={sector} conv=fsync 2>/dev/null; sync")


def refused(lab: Lab, verb: str, **params: Any) -> JsonRpcError:
    with pytest.raises(JsonRpcError) as caught:
        lab.site.rpc.call(verb, vmID=lab.vm_id, **params)
    return caught.value


def test_bad_moves_are_refused_and_a_cancelled_copy_stays_on_the_source(lab: Lab) -> None:
    site, source = lab.site, str(lab.path(lab.site.sd, lab.top))
    assert lab.vda() == (source, False)

    missing = refused(lab, "VM.diskReplicateStart", srcDisk=lab.disk(site.sd), dstDisk=lab.disk(site.sd2))
    assert missing.code == 268 and "dstDisk" in missing.message, missing  # ImageDoesNotExistInSD: not made yet
    not_a_drive = refused(lab, "VM.diskReplicateStart", srcDisk=lab.disk(site.sd, str(uuid.uuid4())),
                          dstDisk=lab.disk(site.sd2))
    assert not_a_drive.code == 13 and "srcDisk" in not_a_drive.message, not_a_drive  # imageErr
    nothing = refused(lab, "VM.diskReplicateFinish", srcDisk=lab.disk(site.sd), dstDisk=lab.disk(site.sd2))
    assert nothing.code == 88, nothing  # ReplicationNotInProgress
    assert lab.vda() == (source, False) and lab.jobs() == {}

    site.done("Image.cloneStructure", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd,
              dstSdUUID=site.sd2)
    dest = str(lab.path(site.sd2, lab.top))
    status, _, body = http_request("POST", f"{site.daemon.http}/api/v1/vms/{lab.vm_id}/disks/replicate",
                                   {"srcDisk": lab.disk(site.sd), "dstDisk": lab.disk(site.sd2)})
    assert status == 200 and json.loads(body) is True, body
    assert lab.vda() == (source, True)
    again = refused(lab, "VM.diskReplicateStart", srcDisk=lab.disk(site.sd), dstDisk=lab.disk(site.sd2))
    assert again.code == 55 and "already" in again.message, again  # replicaErr
    (job,) = lab.jobs().values()
    assert job["blockJobType"] == "copy" and job["drive"] == "vda" and job["destination"] == dest, job

    status, _, body = http_request("POST", f"{site.daemon.http}/api/v1/vms/{lab.vm_id}/disks/replicate/finish",
                                   {"srcDisk": lab.disk(site.sd), "dstDisk": lab.disk(site.sd)})
    assert status == 200, body  # dstDisk == srcDisk: VDSM's engine cancels so
    assert json.loads(body) == {"drive": "vda", "pivoted": False, "path": source, "domainID": site.sd}
    assert lab.vda() == (source, False) and lab.jobs() == {}
    guest_write(lab, AFTER_SECTOR, AFTER)  # the guest still writes to domain 1
    assert guest_read(lab, AFTER_SECTOR, len(AFTER)) == AFTER
    assert qemu_read(Path(source), AFTER_SECTOR, AFTER)
    site.done("Image.delete", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd2)


def test_a_disk_moves_live_to_another_domain_across_a_pierd_restart(lab: Lab) -> None:
    site, source, dest = lab.site, lab.path(lab.site.sd, lab.top), lab.path(lab.site.sd2, lab.top)
    guest_write(lab, BEFORE_SECTOR, BEFORE)
    site.done("Image.cloneStructure", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd,
              dstSdUUID=site.sd2)
    assert not qemu_read(dest, BASE_SECTOR, IN_BASE)  # the structure only: no data yet
    assert site.rpc.call("VM.diskReplicateStart", vmID=lab.vm_id, srcDisk=lab.disk(site.sd),
                         dstDisk=lab.disk(site.sd2)) is True
    guest_write(lab, DURING_SECTOR, DURING)
    site.done("Image.syncData", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd,
              dstSdUUID=site.sd2, syncType="INTERNAL")  # the parents' data, while QEMU mirrors the leaf

    lab.restart_pierd()  # the copy is libvirt's: the new pierd finds it
    deadline = time.monotonic() + 60
    while True:
        jobs = list(lab.jobs().values())
        if jobs and jobs[0]["ready"]:
            break
        assert jobs, "the copy is not in the VM's vmJobs after the restart"
        assert time.monotonic() < deadline, f"the copy never became ready: {jobs}"
        time.sleep(0.2)
    assert jobs[0]["cur"] == jobs[0]["end"] != "0" and jobs[0]["destination"] == str(dest), jobs
    vda = next(d for d in site.rpc.call("VM.getDevices", vmID=lab.vm_id) if d.get("name") == "vda")
    assert vda["diskReplicate"]["domainID"] == site.sd2 and vda["domainID"] == site.sd, vda
    wrong = refused(lab, "VM.diskReplicateFinish", srcDisk=lab.disk(site.sd, lab.base), dstDisk=lab.disk(site.sd2))
    assert wrong.code == 13, wrong  # the base is not the drive's leaf: imageErr, still copying
    assert lab.vda() == (str(source), True)

    ended = site.rpc.call("VM.diskReplicateFinish", vmID=lab.vm_id, srcDisk=lab.disk(site.sd),
                          dstDisk=lab.disk(site.sd2))
    assert ended == {"drive": "vda", "pivoted": True, "path": str(dest), "domainID": site.sd2}
    assert site.rpc.call("VM.diskReplicateFinish", vmID=lab.vm_id, srcDisk=lab.disk(site.sd),
                         dstDisk=lab.disk(site.sd2)) == ended  # asked again (a retry): the same answer
    assert lab.vda() == (str(dest), False) and lab.jobs() == {}
    vda = next(d for d in site.rpc.call("VM.getDevices", vmID=lab.vm_id) if d.get("name") == "vda")
    assert (vda["domainID"], vda["volumeID"]) == (site.sd2, lab.top) and "diskReplicate" not in vda, vda
    assert [entry["path"] for entry in vda["volumeChain"]] == [str(lab.path(site.sd2, v)) for v in (lab.base, lab.top)]
    for sector, text in ((BASE_SECTOR, IN_BASE), (BEFORE_SECTOR, BEFORE), (DURING_SECTOR, DURING)):
        assert guest_read(lab, sector, len(text)) == text
    guest_write(lab, AFTER_SECTOR, AFTER[::-1])  # written after the pivot: lands in domain 2 only
    assert qemu_read(dest, AFTER_SECTOR, AFTER[::-1])
    assert not qemu_read(source, AFTER_SECTOR, AFTER[::-1])
    after = refused(lab, "VM.diskReplicateFinish", srcDisk=lab.disk(site.sd2), dstDisk=lab.disk(site.sd))
    assert after.code == 88, after  # nothing runs any more



def test_pier_vm_move_disk_moves_a_one_volume_disk(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    site = lab.site
    guest_write(lab, BEFORE_SECTOR, BEFORE, "vdb")
    assert cli.main(["vm", "move-disk", lab.vm_id, "--url", site.daemon.http, "--token", site.daemon.token,
                     "--drive", "vdb", "--to-domain", site.sd2, "--pool", site.pool, "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    dest = lab.path(site.sd2, lab.vol_b, lab.img_b)
    assert f"vdb: domain {site.sd} -> {site.sd2} ({dest})" in out, out
    assert lab.vda("vdb") == (str(dest), False)
    assert guest_read(lab, BEFORE_SECTOR, len(BEFORE), "vdb") == BEFORE
    guest_write(lab, AFTER_SECTOR, AFTER, "vdb")

    code = cli.main(["vm", "move-disk", lab.vm_id, "--url", site.daemon.http, "--token", site.daemon.token,
                     "--drive", "vdb", "--to-domain", site.sd2])
    assert code == 1 and "already" in capsys.readouterr().err


def test_after_a_destroy_the_moved_volumes_hold_what_the_guest_wrote(lab: Lab) -> None:
    site, dest = lab.site, lab.path(lab.site.sd2, lab.top)
    lab.guest.close()
    site.rpc.call("VM.destroy", vmID=lab.vm_id)
    assert qemu_chain(dest) == [lab.base, lab.top]
    for sector, text in ((BASE_SECTOR, IN_BASE), (BEFORE_SECTOR, BEFORE), (DURING_SECTOR, DURING),
                         (AFTER_SECTOR, AFTER[::-1])):
        assert qemu_read(dest, sector, text), text
    vdb = lab.path(site.sd2, lab.vol_b, lab.img_b)
    assert qemu_read(vdb, BEFORE_SECTOR, BEFORE) and qemu_read(vdb, AFTER_SECTOR, AFTER)
    for path in (dest, vdb):
        checked = json.loads(subprocess.run(["qemu-img", "check", "--output", "json", str(path)],
                                            capture_output=True, text=True).stdout)
        assert checked.get("corruptions", 0) == 0 and checked.get("leaks", 0) == 0, checked

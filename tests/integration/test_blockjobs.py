"""libvirt's block job events followed by pierd, on a running tiny guest (qemu:///system): a copy
that libvirt fails on its own (its destination's filesystem, a small tmpfs, fills up), a copy
announced ready, and a pivot done with raw libvirt behind pierd's back.

The guest's vda is image I (base, top) in domain 1; domain 2 is a tmpfs of a few MiB, so a guest
write larger than it makes QEMU's mirror fail with ENOSPC. Each block job event is published as
`|pier|VM_block_job|<vmId>`; the VM's devices follow libvirt's XML whoever changed it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.integration.clients import JsonRpcError
from tests.integration.test_replicate import Lab, guest_read, guest_write, refused
from tests.integration.volume_guests import guest_site

pytestmark = pytest.mark.kvm
MiB = 1 << 20
SMALL, LARGE = "4m", "256m"  # the destination domain's tmpfs (Pier makes no volume larger than a domain)
MARK, MARK_SECTOR = "pier-block-jobs", 4096


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, system_libvirt: str) -> Iterator[Lab]:
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) for the destination's tmpfs")
    with guest_site(tmp_path_factory, system_libvirt, "blockjobs", sd2_tmpfs=LARGE) as made:
        site = made.site
        img, base, top = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        site.create(img, base, size=64 * MiB)
        site.create(img, top, size=64 * MiB, parent=base)
        vm_id = str(uuid.uuid4())
        yield Lab(site, made.boot(vm_id, made.disk(img, top)), vm_id, img, base, top, "", "", made.conn)


def remount(lab: Lab, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(lab.site.domain_dir(lab.site.sd2))], check=True)


def cursor(lab: Lab) -> int:
    last: int = lab.site.rpc.call("Events.poll", types=["|pier|VM_block_job|"])["last"]
    return last


def block_job_event(lab: Lab, after: int, status: str, timeout: float = 120) -> dict[str, Any]:
    """The first `|pier|VM_block_job|<vmId>` event after `after` with this status (waiting for it)."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        batch = lab.site.rpc.call("Events.poll", after=after, types=[f"|pier|VM_block_job|{lab.vm_id}"], wait=5)
        for event in batch["events"]:
            body: dict[str, Any] = event["params"][lab.vm_id]
            seen.append(body)
            if body["status"] == status:
                return body
        after = batch["last"]
    raise AssertionError(f"no block job event {status!r} in {timeout} s; seen {seen}")


def devices_changed(lab: Lab, after: int, timeout: float = 60) -> None:
    """Wait for a VM_status event with the definition's hash (VDSM's "the devices changed") after `after`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = lab.site.rpc.call("Events.poll", after=after, types=[f"|virt|VM_status|{lab.vm_id}"], wait=5)
        if any("hash" in event["params"][lab.vm_id] for event in batch["events"]):
            return
        after = batch["last"]
    raise AssertionError(f"no VM_status event with a hash in {timeout} s")


def vda_device(lab: Lab) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in lab.site.rpc.call("VM.getDevices", vmID=lab.vm_id)
                                 if d.get("name") == "vda")
    return found


def test_a_copy_libvirt_fails_is_told_and_leaves_the_drive_on_the_source(lab: Lab) -> None:
    site, source = lab.site, str(lab.path(lab.site.sd, lab.top))
    site.done("Image.cloneStructure", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd,
              dstSdUUID=site.sd2)
    remount(lab, SMALL)  # the structure made, the domain shrinks to a few MiB
    after = cursor(lab)
    assert site.rpc.call("VM.diskReplicateStart", vmID=lab.vm_id, srcDisk=lab.disk(site.sd),
                         dstDisk=lab.disk(site.sd2)) is True
    assert lab.vda() == (source, True)
    # more than the destination's filesystem holds: QEMU's mirror fails with ENOSPC, the guest goes on
    lab.guest.shell.run("dd if=/dev/urandom of=/dev/vda bs=1M seek=16 count=24 conv=fsync 2>/dev/null; sync",
                        timeout=120)

    failed = block_job_event(lab, after, "failed")
    assert failed == {"drive": "vda", "jobType": "copy", "status": "failed"}, failed
    assert lab.vda() == (source, False)
    vda = vda_device(lab)
    assert vda["path"] == source and vda["domainID"] == site.sd and "diskReplicate" not in vda, vda
    assert lab.jobs() == {}
    gone = refused(lab, "VM.diskReplicateFinish", srcDisk=lab.disk(site.sd), dstDisk=lab.disk(site.sd2))
    assert gone.code == 88 and "failed" in gone.message, gone  # ReplicationNotInProgress, saying why
    guest_write(lab, MARK_SECTOR, MARK)  # the guest still writes to domain 1
    assert guest_read(lab, MARK_SECTOR, len(MARK)) == MARK

    # the destination is free again: its image can go, and a new Start prepares it again (below)
    site.done("Image.delete", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd2)
    remount(lab, LARGE)


def test_a_new_copy_is_announced_ready(lab: Lab) -> None:
    site, source = lab.site, str(lab.path(lab.site.sd, lab.top))
    site.done("Image.cloneStructure", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd,
              dstSdUUID=site.sd2)
    after = cursor(lab)
    assert site.rpc.call("VM.diskReplicateStart", vmID=lab.vm_id, srcDisk=lab.disk(site.sd),
                         dstDisk=lab.disk(site.sd2)) is True
    ready = block_job_event(lab, after, "ready")
    assert ready == {"drive": "vda", "jobType": "copy", "status": "ready"}, ready
    (job,) = lab.jobs().values()
    assert job["ready"] is True and job["destination"] == str(lab.path(site.sd2, lab.top)), job
    assert lab.vda() == (source, True)
    site.done("Image.syncData", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd,
              dstSdUUID=site.sd2, syncType="INTERNAL")  # the base's data, as the engine copies it


def test_a_pivot_done_with_raw_libvirt_shows_in_the_devices(lab: Lab) -> None:
    site, dest = lab.site, str(lab.path(lab.site.sd2, lab.top))
    with pytest.raises(JsonRpcError) as busy:
        site.rpc.call("Image.delete", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd)
    assert busy.value.code == 203, busy.value  # VolumeIsBusy: the drive stands on domain 1 still
    after = cursor(lab)

    lab.guest.dom.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)  # behind pierd's back

    deadline = time.monotonic() + 60
    while (vda := vda_device(lab))["path"] != dest:
        assert time.monotonic() < deadline, f"VM.getDevices still shows {vda['path']}, libvirt {lab.vda()}"
        time.sleep(0.2)
    assert (vda["domainID"], vda["volumeID"]) == (site.sd2, lab.top) and "diskReplicate" not in vda, vda
    assert [e["path"] for e in vda["volumeChain"]] == [str(lab.path(site.sd2, v)) for v in (lab.base, lab.top)]
    done = block_job_event(lab, after, "completed")
    assert done == {"drive": "vda", "jobType": "copy", "status": "completed"}, done
    devices_changed(lab, after)
    assert guest_read(lab, MARK_SECTOR, len(MARK)) == MARK  # what the guest wrote came along
    site.done("Image.delete", imageID=lab.img, storagepoolID=site.pool, storagedomainID=site.sd)
    assert not Path(lab.path(site.sd, lab.top)).exists()
    guest_write(lab, MARK_SECTOR, MARK[::-1])
    assert guest_read(lab, MARK_SECTOR, len(MARK)) == MARK[::-1]

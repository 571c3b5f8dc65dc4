"""Volumes and images on directory domains through a real pierd and the real qemu-img.

The domains are made by hand, as vdsm-compat.md describes VDSM's tree (`<dc>/mnt/<name>/<sdUUID>/
{dom_md/metadata,images/}` and the pool's links), so these tests depend on nothing but the volume
verbs. Every bad input is answered with VDSM's code, and nothing is made or changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pier import cli
from tests.integration.clients import HttpRpcClient, JsonRpcError, http_request
from tests.integration.conftest import Pierd

BLANK = "00000000-0000-0000-0000-000000000000"
GiB = 1 << 30


@dataclass
class Site:
    """A pierd whose data-center root holds a pool and two directory domains."""

    daemon: Pierd
    rpc: HttpRpcClient
    dc: Path
    pool: str
    sd: str
    sd2: str

    def domain_dir(self, sd: str) -> Path:
        return self.dc / "mnt" / "_data" / sd

    def wait(self, task: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        status, _, body = http_request("GET", f"{self.daemon.http}/api/v1/tasks/{task['taskID']}?wait={timeout}")
        assert status == 200, body
        ended: dict[str, Any] = json.loads(body)
        assert ended["state"] in ("succeeded", "failed", "cancelled"), ended
        return ended

    def done(self, verb: str, **params: Any) -> dict[str, Any]:
        """Call a task verb and wait for it to succeed."""
        ended = self.wait(self.rpc.call(verb, **params))
        assert ended["state"] == "succeeded", ended
        return ended

    def create(self, img: str, vol: str, size: int = GiB, fmt: str = "COW", parent: str = BLANK,
               sd: str | None = None, prealloc: str = "SPARSE") -> None:
        self.done("Volume.create", volumeID=vol, storagepoolID=self.pool, storagedomainID=sd or self.sd,
                  imageID=img, size=str(size), volFormat=fmt, preallocate=prealloc, diskType="DATA", desc="test",
                  srcImgUUID=img if parent != BLANK else BLANK, srcVolUUID=parent)

    def tree(self) -> list[str]:
        """Every file under both domains' images/."""
        out = []
        for sd in (self.sd, self.sd2):
            for root, _, files in os.walk(self.domain_dir(sd) / "images"):
                out += [os.path.join(root, name) for name in files]
        return sorted(out)


def make_domain(dc: Path, sd: str, pool: str) -> None:
    domain = dc / "mnt" / "_data" / sd
    (domain / "dom_md").mkdir(parents=True)
    (domain / "images").mkdir()
    for special in ("ids", "leases", "xleases", "inbox", "outbox"):
        (domain / "dom_md" / special).write_bytes(b"")
    (domain / "dom_md" / "metadata").write_text(
        f"CLASS=Data\nDESCRIPTION=test\nPOOL_UUID={pool}\nROLE=Regular\nSDUUID={sd}\nTYPE=LOCALFS\nVERSION=5\n")
    (dc / pool).mkdir(exist_ok=True)
    (dc / pool / sd).symlink_to(domain)


def start_site(tmp_path: Path, test_uri: str) -> Site:
    dc, pool, sd, sd2 = tmp_path / "dc", str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for domain in (sd, sd2):
        make_domain(dc, domain, pool)
    (dc / pool / "mastersd").symlink_to(dc / "mnt" / "_data" / sd)
    daemon = Pierd(tmp_path / "state", test_uri, "--data-center", str(dc))
    return Site(daemon, HttpRpcClient(daemon.http), dc, pool, sd, sd2)


@pytest.fixture
def site(tmp_path: Path, test_uri: str) -> Iterator[Site]:
    made = start_site(tmp_path, test_uri)
    yield made
    made.daemon.stop()


def new() -> str:
    return str(uuid.uuid4())


def qemu_chain(path: Path) -> list[str]:
    out = subprocess.run(["qemu-img", "info", "--output", "json", "-U", "--backing-chain", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [Path(entry["filename"]).name for entry in json.loads(out)][::-1]


def test_a_snapshot_chain_is_qemu_imgs_own_and_copies_to_another_domain(site: Site) -> None:
    img, base, top = new(), new(), new()
    site.create(img, base)
    site.create(img, top, parent=base)
    ids = dict(storagepoolID=site.pool, storagedomainID=site.sd, imageID=img)
    assert sorted(site.rpc.call("Image.getVolumes", **ids)) == sorted([base, top])
    leaf = site.domain_dir(site.sd) / "images" / img / top
    assert qemu_chain(leaf) == [base, top]
    assert site.rpc.call("Image.reconcileVolumeChain", leafVolID=top, **ids) == [base, top]
    meta = (leaf.parent / f"{top}.meta").read_text()
    assert f"PUUID={base}\n" in meta and "VOLTYPE=LEAF\n" in meta and meta.endswith("EOF\n")
    assert "VOLTYPE=INTERNAL\n" in (leaf.parent / f"{base}.meta").read_text()
    info = site.rpc.call("Volume.getInfo", volumeID=top, **ids)
    assert (info["parent"], info["format"], info["capacity"], info["legality"]) == (base, "COW", str(GiB), "LEGAL")
    assert site.rpc.call("Volume.getQemuImageInfo", volumeID=top, **ids)["backingfile"] == base
    prepared = site.rpc.call("Image.prepare", volumeID=top, **ids)
    assert prepared["path"] == str(leaf)
    assert [v["volumeID"] for v in prepared["imgVolumesInfo"]] == [base, top]

    site.done("Image.move", dstSdUUID=site.sd2, operation=1, **ids)
    copied = site.domain_dir(site.sd2) / "images" / img / top
    assert qemu_chain(copied) == [base, top]
    assert site.rpc.call("StoragePool.getDomainsContainingImage", storagepoolID=site.pool,
                         imageID=img) == sorted([site.sd, site.sd2])
    site.rpc.call("Volume.verify_untrusted", storagepoolID=site.pool, storagedomainID=site.sd2, imageID=img,
                  volumeID=top)

    site.rpc.call("Image.teardown", **ids)
    for sd in (site.sd, site.sd2):
        site.done("Image.delete", imageID=img, storagepoolID=site.pool, storagedomainID=sd)
    assert site.tree() == []


def test_copy_collapses_the_chain_extend_grows_and_delete_leaves_nothing(site: Site) -> None:
    img, base, top, dst_img, dst = new(), new(), new(), new(), new()
    site.create(img, base, fmt="RAW")
    site.create(img, top, parent=base)
    ids = dict(storagepoolID=site.pool, storagedomainID=site.sd, imageID=img)
    done = site.done("Volume.copy", volumeID=top, dstSdUUID=site.sd2, dstImgUUID=dst_img, dstVolUUID=dst,
                     desc="a copy", volType="LEAF", volFormat="COW", preallocate="SPARSE", postZero=False,
                     force=False, **ids)
    assert done["progress"] == 100
    dst_ids = dict(storagepoolID=site.pool, storagedomainID=site.sd2, imageID=dst_img)
    assert site.rpc.call("Volume.getInfo", volumeID=dst, **dst_ids)["parent"] == BLANK
    site.done("Volume.extendSize", volumeID=dst, newSize=str(2 * GiB), **dst_ids)
    assert site.rpc.call("Volume.getQemuImageInfo", volumeID=dst, **dst_ids)["virtualsize"] == 2 * GiB
    site.rpc.call("Volume.setDescription", volumeID=dst, description="renamed", **dst_ids)
    assert site.rpc.call("Volume.getInfo", volumeID=dst, **dst_ids)["description"] == "renamed"
    site.done("Volume.delete", volumeID=dst, postZero=True, force=False, **dst_ids)
    site.done("Image.deleteVolumes", volumeList=[base, top], **ids)
    assert site.tree() == []


def refused(site: Site, verb: str, **params: Any) -> JsonRpcError:
    before = site.tree()
    with pytest.raises(JsonRpcError) as caught:
        site.rpc.call(verb, **params)
    assert site.tree() == before
    return caught.value


def test_bad_input_gets_vdsms_codes_and_changes_nothing(site: Site) -> None:
    img, base, top, other_img = new(), new(), new(), new()
    site.create(img, base)
    site.create(img, top, parent=base)
    ids = dict(storagepoolID=site.pool, storagedomainID=site.sd, imageID=img)

    def create(**changes: Any) -> JsonRpcError:
        params = dict(volumeID=new(), size=str(GiB), volFormat="COW", preallocate="SPARSE", diskType="DATA",
                      desc="", srcImgUUID=BLANK, srcVolUUID=BLANK, **ids)
        params.update(changes)
        return refused(site, "Volume.create", **params)

    assert create(storagedomainID=new()).code == 358
    assert create(storagepoolID=new()).code == 309
    assert create(size="ten gigabytes").code == 1000
    assert create(size="0").code == 229
    assert create(size=str(1 << 60)).code == 397
    assert create(size=str(1 << 60), preallocate="PREALLOCATED", volFormat="RAW").code == 397
    error = create(srcImgUUID=other_img, srcVolUUID=base)
    assert error.code == 216 and other_img in error.message
    assert create(volumeID=top).code == 212
    assert refused(site, "Volume.getInfo", volumeID=new(), **ids).code == 201
    assert refused(site, "Volume.getInfo", volumeID=top, **dict(ids, imageID=new())).code == 268
    error = refused(site, "Volume.delete", volumeID=base, postZero=False, force=False, **ids)
    assert error.code == 204 and top in error.message
    assert refused(site, "Volume.extendSize", volumeID=top, newSize="1024", **ids).code == 232


def test_a_volume_a_running_vm_uses_is_not_deleted(site: Site) -> None:
    img, vol = new(), new()
    site.create(img, vol, fmt="RAW", size=1 << 20)
    ids = dict(storagepoolID=site.pool, storagedomainID=site.sd, imageID=img)
    path = site.rpc.call("Image.prepare", volumeID=vol, **ids)["path"]
    vm = site.rpc.call("VM.create", vmParams={"vmId": new(), "vmName": "pier-volumes-busy", "memSize": 64,
                                              "devices": [{"deviceType": "disk", "device": "disk", "path": path,
                                                           "format": "raw"}]})
    try:
        error = refused(site, "Volume.delete", volumeID=vol, postZero=False, force=False, **ids)
        assert error.code == 203 and vm["vmId"] in error.message
        assert refused(site, "Image.delete", imageID=img, storagepoolID=site.pool,
                       storagedomainID=site.sd).code == 203
    finally:
        site.rpc.call("VM.destroy", vmID=vm["vmId"])
    site.done("Volume.delete", volumeID=vol, postZero=False, force=False, **ids)


def fill(path: Path, size: int) -> None:
    """Write `size` bytes of data that does not compress or read as zeros."""
    block = os.urandom(1 << 20)
    with open(path, "r+b") as out:
        for _ in range(size >> 20):
            out.write(block)


def copy_params(site: Site, img: str, vol: str, dst_img: str, dst: str) -> dict[str, Any]:
    return dict(volumeID=vol, storagepoolID=site.pool, storagedomainID=site.sd, imageID=img, dstSdUUID=site.sd2,
                dstImgUUID=dst_img, dstVolUUID=dst, desc="", volType="LEAF", volFormat="COW",
                preallocate="SPARSE", postZero=False, force=False)


def test_copies_of_one_image_take_turns_and_of_two_images_run_side_by_side(site: Site) -> None:
    images = {new(): new() for _ in range(2)}
    for img, vol in images.items():
        site.create(img, vol, fmt="RAW", size=256 << 20)
        fill(site.domain_dir(site.sd) / "images" / img / vol, 256 << 20)
    (img_a, vol_a), (img_b, vol_b) = images.items()

    def run_together(*calls: dict[str, Any]) -> list[dict[str, Any]]:
        tasks = [site.rpc.call("Volume.copy", **params) for params in calls]
        return [site.wait(task) for task in tasks]

    one = run_together(copy_params(site, img_a, vol_a, new(), new()), copy_params(site, img_a, vol_a, new(), new()))
    assert all(task["state"] == "succeeded" for task in one), one
    first, second = sorted(one, key=lambda task: task["started"])
    assert second["started"] >= first["ended"] - 0.01, "two copies of one image overlapped"
    two = run_together(copy_params(site, img_a, vol_a, new(), new()), copy_params(site, img_b, vol_b, new(), new()))
    assert all(task["state"] == "succeeded" for task in two), two
    first, second = sorted(two, key=lambda task: task["started"])
    assert second["started"] < first["ended"], "copies of two images did not run side by side"


def test_a_copy_interrupted_by_a_restart_is_reconciled(tmp_path: Path, test_uri: str) -> None:
    site = start_site(tmp_path, test_uri)
    img, vol, dst_img, dst = new(), new(), new(), new()
    try:
        site.create(img, vol, fmt="RAW", size=GiB)
        source = site.domain_dir(site.sd) / "images" / img / vol
        fill(source, GiB)
        before = source.stat().st_size, (source.parent / f"{vol}.meta").read_bytes()
        task = site.rpc.call("Volume.copy", **copy_params(site, img, vol, dst_img, dst))
        half = site.domain_dir(site.sd2) / "images" / dst_img
        deadline = time.monotonic() + 30
        while not (half / f"{dst}.pier-pending").exists() or not (half / dst).exists():
            assert time.monotonic() < deadline, "the copy did not start"
            time.sleep(0.01)
        assert "LEGALITY=ILLEGAL\n" in (half / f"{dst}.meta").read_text()
        site.daemon.kill()
    finally:
        site.daemon.kill()
    again = Pierd(site.daemon.state_dir, site.daemon.uri, "--data-center", str(site.dc))
    try:
        status, _, body = http_request("GET", f"{again.http}/api/v1/tasks/{task['taskID']}")
        ended = json.loads(body)
        assert ended["state"] == "failed", ended
        assert not half.exists(), list(half.iterdir())
        assert (source.stat().st_size, (source.parent / f"{vol}.meta").read_bytes()) == before
    finally:
        again.stop()


def test_validate_removes_what_a_crash_left_but_not_what_a_task_is_making(site: Site) -> None:
    img, vol, kept = new(), new(), new()
    site.create(img, vol, fmt="RAW", size=GiB)
    site.create(img, kept, fmt="RAW", size=1 << 20)
    fill(site.domain_dir(site.sd) / "images" / img / vol, GiB)
    images = site.domain_dir(site.sd) / "images"
    crashed_img, crashed = new(), new()  # what a create killed before its metadata was durable leaves
    (images / crashed_img).mkdir()
    (images / crashed_img / crashed).write_bytes(b"\0" * 4096)
    (images / crashed_img / f"{crashed}.pier-pending").touch()
    (images / f"_remove_me_{new()}").mkdir()  # an image delete killed after its rename
    dst_img, dst = new(), new()
    task = site.rpc.call("Volume.copy", **{**copy_params(site, img, vol, dst_img, dst), "dstSdUUID": site.sd})
    making = images / dst_img
    deadline = time.monotonic() + 30
    while not (making / f"{dst}.pier-pending").exists():
        assert time.monotonic() < deadline, "the copy did not start"
        time.sleep(0.01)
    site.rpc.call("StorageDomain.validate", storagedomainID=site.sd)
    still_copying = site.rpc.call("Task.getInfo", taskID=task["taskID"])["state"] == "running"
    assert (making / f"{dst}.pier-pending").exists() or not still_copying
    assert not (images / crashed_img).exists()
    assert not [name for name in os.listdir(images) if name.startswith("_remove_me_")]
    assert site.wait(task)["state"] == "succeeded"  # the copy under way was left alone
    assert sorted(site.rpc.call("Image.getVolumes", storagepoolID=site.pool, storagedomainID=site.sd,
                                imageID=dst_img)) == [dst]
    assert sorted(os.listdir(images / img)) == sorted(f"{v}{ext}" for v in (vol, kept) for ext in ("", ".meta", ".lease"))


def test_ovfs_are_kept_on_the_master_domain(site: Site) -> None:
    vm = new()
    site.rpc.call("StoragePool.updateVMs", storagepoolID=site.pool, vmList=[{"vm": vm, "ovf": "<ovf/>"}])
    assert (site.domain_dir(site.sd) / "master" / "vms" / vm / f"{vm}.ovf").read_text() == "<ovf/>"
    assert site.rpc.call("StoragePool.getBackedUpVmsList", storagepoolID=site.pool,
                         storagedomainID=site.sd) == [vm]
    assert site.rpc.call("StoragePool.getBackedUpVmsInfo", storagepoolID=site.pool, storagedomainID=site.sd,
                         vmList=[vm]) == {vm: "<ovf/>"}
    site.rpc.call("StoragePool.removeVM", storagepoolID=site.pool, vmUUID=vm)
    assert site.rpc.call("StoragePool.getBackedUpVmsList", storagepoolID=site.pool, storagedomainID=site.sd) == []
    assert refused(site, "StoragePool.removeVM", storagepoolID=site.pool, vmUUID=vm).code == 320




def test_a_vm_disk_named_by_volume_gets_the_chain(site: Site) -> None:
    img, base, top = new(), new(), new()
    site.create(img, base, fmt="RAW", size=1 << 20)
    site.create(img, top, size=1 << 20, parent=base)
    disk = {"deviceType": "disk", "device": "disk", "iface": "virtio", "poolID": site.pool,
            "domainID": site.sd, "imageID": img, "volumeID": top}
    vm_id = new()
    made = site.rpc.call("VM.create", vmParams={"vmId": vm_id, "vmName": "pier-volumes-chain", "memSize": 64,
                                                "devices": [disk]})
    try:
        leaf = site.domain_dir(site.sd) / "images" / img / top
        assert [d["path"] for d in made["devices"] if d["deviceType"] == "disk"] == [str(leaf)]
        xml = site.rpc.call("Host.dumpxmls", vmList=[vm_id])[vm_id]
        assert f"<source file='{leaf.parent / base}'" in xml.replace('"', "'")
        assert "<format type='raw'" in xml.replace('"', "'")
    finally:
        site.rpc.call("VM.destroy", vmID=vm_id)
    missing, refused_vm = dict(disk, volumeID=new()), new()
    with pytest.raises(JsonRpcError) as caught:
        site.rpc.call("VM.create", vmParams={"vmId": refused_vm, "vmName": "pier-volumes-none", "memSize": 64,
                                             "devices": [missing]})
    assert caught.value.code == 201
    assert refused_vm not in json.dumps(site.rpc.call("Host.getVMList"))


def test_pier_volume_create_makes_a_volume_and_waits_for_it(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    img, vol = new(), new()
    base = ["--url", site.daemon.http, "--token", site.daemon.token]
    assert cli.main(["volume", "create", *base, "--domain", site.sd, "--pool", site.pool, "--image", img,
                     "--id", vol, "--size", "3G", "--format", "qcow2"]) == 0
    info = site.rpc.call("Volume.getInfo", volumeID=vol, storagepoolID=site.pool, storagedomainID=site.sd,
                         imageID=img)
    assert (info["capacity"], info["format"], info["type"]) == (str(3 * GiB), "COW", "SPARSE")
    capsys.readouterr()
    assert cli.main(["volume", "list", *base, "--domain", site.sd, "--pool", site.pool, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [vol]
    assert cli.main(["volume", "list", *base, "--domain", site.sd, "--pool", site.pool]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:6] == ["VOLUME", "IMAGE", "FORMAT", "TYPE", "ROLE", "LEGALITY"]
    assert listed[1].split()[:8] == [vol, img, "COW", "SPARSE", "LEAF", "LEGAL", "3.0", "GiB"], listed
    assert cli.main(["volume", "create", *base, "--domain", new(), "--size", "1G"]) != 0


def test_volumes_on_a_domain_and_pool_pier_made(tmp_path: Path, test_uri: str) -> None:
    """The seam with the domain verbs: a localfs domain and a pool made by StorageDomain.create and
    StoragePool.create/connect hold volumes, and getDomainsContainingImage finds them."""
    dc = tmp_path / "dc"
    daemon = Pierd(tmp_path / "state", test_uri, "--data-center", str(dc))
    rpc = HttpRpcClient(daemon.http)
    try:
        local = tmp_path / "local"
        local.mkdir()
        sd, sp, img, vol = new(), new(), new(), new()
        assert rpc.call("StoragePool.connectStorageServer", storagepoolID=BLANK, domainType=4,
                        connectionParams=[{"id": "c1", "connection": str(local)}])[0]["status"] == 0
        rpc.call("StorageDomain.create", storagedomainID=sd, domainType=4, typeArgs=str(local), name="data",
                 domainClass=1)
        rpc.call("StoragePool.create", storagepoolID=sp, name="dc", masterSdUUID=sd, masterVersion=1, domainList=[sd])
        rpc.call("StoragePool.connect", storagepoolID=sp, hostID=1, scsiKey="", masterSdUUID=sd, masterVersion=1)
        site = Site(daemon, rpc, dc, sp, sd, sd)
        site.create(img, vol, size=GiB)
        assert (local / sd / "images" / img / f"{vol}.meta").is_file()
        assert rpc.call("StoragePool.getDomainsContainingImage", storagepoolID=sp, imageID=img) == [sd]
        assert rpc.call("StorageDomain.getImages", storagedomainID=sd) == [img]
        assert rpc.call("StorageDomain.getVolumes", storagedomainID=sd, storagepoolID=sp, imageID=img) == [vol]
        rpc.call("StorageDomain.validate", storagedomainID=sd)
    finally:
        daemon.stop()


def test_clone_structure_then_sync_data_and_a_cold_merge(site: Site) -> None:
    img, base, top, leaf = new(), new(), new(), new()
    site.create(img, base, size=64 << 20)
    images = site.domain_dir(site.sd) / "images" / img
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", str(images / base)], check=True,
                   capture_output=True)
    site.create(img, top, size=64 << 20, parent=base)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x62 1M 1M", str(images / top)], check=True,
                   capture_output=True)
    site.create(img, leaf, size=64 << 20, parent=top)
    ids = dict(storagepoolID=site.pool, storagedomainID=site.sd, imageID=img)

    site.done("Image.cloneStructure", dstSdUUID=site.sd2, **ids)
    cloned = site.domain_dir(site.sd2) / "images" / img
    assert qemu_chain(cloned / leaf) == [base, top, leaf]
    site.done("Image.syncData", dstSdUUID=site.sd2, syncType="INTERNAL", **ids)
    read = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0x62 1M 1M", str(cloned / leaf)],
                          capture_output=True, text=True)
    assert "Pattern verification failed" not in read.stdout and read.returncode == 0, read.stdout

    subchain = {"sd_id": site.sd, "img_id": img, "base_id": base, "top_id": top, "base_generation": 0}
    site.done("StoragePool.prepareMerge", storagepoolID=site.pool, subchainInfo=subchain)
    subprocess.run(["qemu-img", "commit", "-q", "-b", base, str(images / top)], check=True, cwd=images)  # SDM.merge
    site.done("StoragePool.finalizeMerge", storagepoolID=site.pool, subchainInfo=subchain)
    assert qemu_chain(images / leaf) == [base, leaf]
    assert site.rpc.call("Volume.getInfo", volumeID=top, **ids)["legality"] == "ILLEGAL"
    site.done("Volume.delete", volumeID=top, postZero=False, force=False, **ids)
    assert site.rpc.call("Image.reconcileVolumeChain", leafVolID=leaf, **ids) == [base, leaf]
    reduced = site.done("StoragePool.reduceVolume", volumeID=leaf, **ids)
    assert "nothing to reduce" in reduced["message"] + json.dumps(reduced["result"])

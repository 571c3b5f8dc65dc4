"""Backups of a running tiny guest on qemu:///system, read back over NBD by the real qemu-img.

One guest for the module (it runs under TCG): its disk is a qcow2 volume of a directory domain
under /var/lib/libvirt/images (where QEMU may open files), with a pattern written before it boots.
A full backup read from the NBD socket equals the disk; a pattern the guest writes after the
checkpoint is exactly what the incremental backup's dirty bitmap marks; the refusals leave the VM
as it was; a pierd restart finds a running backup again and removes what ended backups left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests.integration.clients import HttpRpcClient, JsonRpcError
from tests.integration.conftest import Pierd
from tests.integration.guest import DISK_DIR, Guest, new_guest, remove_vm, skip_reason, start_default_network
from tests.integration.test_volumes import Site, make_domain

pytestmark = pytest.mark.kvm
MiB = 1 << 20
WRITTEN_AT, WRITTEN_SIZE = 8 * MiB, 64 * 1024  # one bitmap granule (64 KiB), aligned


@dataclass
class Backed:
    site: Site
    guest: Guest
    img: str
    vol: str
    state: Path

    @property
    def rpc(self) -> HttpRpcClient:
        return self.site.rpc

    @property
    def volume_path(self) -> Path:
        return self.site.domain_dir(self.site.sd) / "images" / self.img / self.vol

    def config(self, **extra: object) -> dict[str, object]:
        disk = {"domainID": self.site.sd, "imageID": self.img, "volumeID": self.vol}
        return {"backup_id": str(uuid.uuid4()), "disks": [disk], **extra}

    def restart(self) -> None:
        assert self.site.daemon.stop() == 0
        self.site.daemon = Pierd(self.state, self.site.daemon.uri, "--data-center", str(self.site.dc))
        self.site.rpc = HttpRpcClient(self.site.daemon.http)


@pytest.fixture(scope="module")
def backed(tmp_path_factory: pytest.TempPathFactory, system_libvirt: str) -> Iterator[Backed]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(f"no tiny guest: {reason}")
    conn = libvirt.open(system_libvirt)
    start_default_network(conn)
    dc = DISK_DIR / f"pier-backup-{uuid.uuid4().hex[:8]}"
    pool, sd, sd2 = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for domain in (sd, sd2):
        make_domain(dc, domain, pool)
    state = tmp_path_factory.mktemp("backup") / "state"
    daemon = Pierd(state, system_libvirt, "--data-center", str(dc))
    site = Site(daemon, HttpRpcClient(daemon.http), dc, pool, sd, sd2)
    img, vol, vm_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    guest = None
    try:
        site.create(img, vol, size=64 * MiB)
        qemu_io(site.domain_dir(sd) / "images" / img / vol, "write -P 0x5a 0 1M")
        disk = {"deviceType": "disk", "device": "disk", "iface": "virtio", "poolID": pool, "domainID": sd,
                "imageID": img, "volumeID": vol}
        console = {"deviceType": "console", "device": "console", "specParams": {"consoleType": "serial"}}
        guest = new_guest(daemon, conn, vm_id=vm_id, devices=[console, disk], nic=False)
        yield Backed(site, guest, img, vol, state)
    finally:
        if guest is not None:
            guest.close()
        remove_vm(site.daemon, conn, vm_id)
        conn.close()
        assert site.daemon.stop() == 0
        shutil.rmtree(dc, ignore_errors=True)


def qemu_io(path: Path, command: str) -> str:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True,
                          check=True).stdout


def in_guest(guest: Guest, script: str, timeout: float = 30) -> None:
    """Run a shell script in the guest through its agent (guest-exec) and wait for it to succeed."""
    pid = guest.agent("guest-exec", {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True})["pid"]
    deadline = time.monotonic() + timeout
    while not (status := guest.agent("guest-exec-status", {"pid": pid})).get("exited"):
        assert time.monotonic() < deadline, f"{script!r} did not end within {timeout} s"
        time.sleep(0.1)
    assert status.get("exitcode") == 0, status


def nbd_uri(url: str) -> str:
    """qemu's NBD URI for VDSM's "nbd:unix:<socket>:exportname=<export>"."""
    socket, _, export = url.removeprefix("nbd:unix:").partition(":exportname=")
    return f"nbd+unix:///{export}?socket={socket}"


def dirty_extents(url: str) -> list[tuple[int, int]]:
    """(start, length) of each dirty extent of an incremental export: qemu-img map reads the dirty
    bitmap context in place of allocation, where a dirty block shows as `"data": false`."""
    socket, _, export = url.removeprefix("nbd:unix:").partition(":exportname=")
    opts = f"driver=nbd,server.type=unix,server.path={socket},export={export}," \
           f"x-dirty-bitmap=qemu:dirty-bitmap:backup-{export}"
    mapped = json.loads(subprocess.run(["qemu-img", "map", "--output=json", "--image-opts", opts],
                                       capture_output=True, text=True, check=True).stdout)
    return [(extent["start"], extent["length"]) for extent in mapped if not extent["data"]]


def test_full_backup_reads_the_disk_as_it_was(backed: Backed) -> None:
    vm_id, first = backed.guest.vm_id, str(uuid.uuid4())
    config = backed.config(to_checkpoint_id=first)
    backed.rpc.call("VM.pause", vmID=vm_id)  # the disk holds still while both are read
    try:
        info = backed.rpc.call("VM.start_backup", vmID=vm_id, config=config)
        url = info["disks"][backed.img]
        assert url == f"nbd:unix:/run/pier/backup/{config['backup_id']}.sock:exportname=vda"
        assert f"<name>{first}</name>" in info["checkpoint"]
        assert backed.rpc.call("VM.backup_info", vmID=vm_id, backup_id=config["backup_id"])["disks"] == info["disks"]
        scratch = backed.site.domain_dir(backed.site.sd) / "backup-scratch" / str(config["backup_id"])
        assert [p.name for p in scratch.iterdir()] == ["vda.qcow2"]
        compared = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", nbd_uri(url),
                                   str(backed.volume_path)], capture_output=True, text=True)
        assert compared.returncode == 0, compared.stdout + compared.stderr
        read = subprocess.run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 0 1M", nbd_uri(url)],
                              capture_output=True, text=True)  # the pattern written before the boot
        assert read.returncode == 0 and "failed" not in read.stdout + read.stderr, read.stdout + read.stderr
    finally:
        backed.rpc.call("VM.cont", vmID=vm_id)
    backed.rpc.call("VM.stop_backup", vmID=vm_id, backup_id=config["backup_id"])
    assert not scratch.exists()
    assert not Path(url.removeprefix("nbd:unix:").partition(":")[0]).exists()
    with pytest.raises(JsonRpcError) as caught:
        backed.rpc.call("VM.backup_info", vmID=vm_id, backup_id=config["backup_id"])
    assert caught.value.code == 1601
    assert backed.rpc.call("VM.list_checkpoints", vmID=vm_id) == [first]


def test_incremental_backup_marks_what_the_guest_wrote(backed: Backed) -> None:
    vm_id = backed.guest.vm_id
    first = backed.rpc.call("VM.list_checkpoints", vmID=vm_id)[-1]
    pattern = "\\253" * 16  # 0xab, as printf reads it
    in_guest(backed.guest, f"yes $(printf '{pattern}') | tr -d '\\n' | head -c {WRITTEN_SIZE} | "
                           f"dd of=/dev/vda bs=4096 seek={WRITTEN_AT // 4096} conv=fsync 2>/dev/null; sync")
    second = str(uuid.uuid4())
    config = backed.config(from_checkpoint_id=first, to_checkpoint_id=second)
    info = backed.rpc.call("VM.start_backup", vmID=vm_id, config=config)
    url = info["disks"][backed.img]
    try:
        assert dirty_extents(url) == [(WRITTEN_AT, WRITTEN_SIZE)]
        read = subprocess.run(["qemu-io", "-r", "-f", "raw", "-c", f"read -P 0xab {WRITTEN_AT} {WRITTEN_SIZE}",
                               nbd_uri(url)], capture_output=True, text=True)
        assert read.returncode == 0 and "failed" not in read.stdout + read.stderr, read.stdout + read.stderr
        assert backed.rpc.call("VM.list_checkpoints", vmID=vm_id) == [first, second]
    finally:
        backed.rpc.call("VM.stop_backup", vmID=vm_id, backup_id=config["backup_id"])
    dumped = backed.rpc.call("VM.dump_checkpoint", vmID=vm_id, checkpoint_id=second)["checkpoint"]
    assert f"<name>{second}</name>" in dumped and f"<name>{first}</name>" in dumped  # its parent


def test_refusals_leave_the_vm_as_it_was(backed: Backed) -> None:
    vm_id = backed.guest.vm_id
    checkpoints = backed.rpc.call("VM.list_checkpoints", vmID=vm_id)
    with pytest.raises(JsonRpcError) as caught:
        backed.rpc.call("VM.start_backup", vmID=vm_id, config=backed.config(from_checkpoint_id=str(uuid.uuid4())))
    assert caught.value.code == 1611 and "from_checkpoint_id" in caught.value.message
    running = backed.config()
    backed.rpc.call("VM.start_backup", vmID=vm_id, config=running)
    try:
        with pytest.raises(JsonRpcError) as caught:
            backed.rpc.call("VM.start_backup", vmID=vm_id, config=backed.config(to_checkpoint_id=str(uuid.uuid4())))
        assert caught.value.code == 1600 and str(running["backup_id"]) in caught.value.message
        with pytest.raises(JsonRpcError) as caught:  # another backup's id does not stop this one
            backed.rpc.call("VM.stop_backup", vmID=vm_id, backup_id=str(uuid.uuid4()))
        assert caught.value.code == 1601
        assert backed.rpc.call("VM.backup_info", vmID=vm_id, backup_id=running["backup_id"])["disks"]
    finally:
        backed.rpc.call("VM.stop_backup", vmID=vm_id, backup_id=running["backup_id"])
    assert backed.rpc.call("VM.list_checkpoints", vmID=vm_id) == checkpoints
    scratch_root = backed.site.domain_dir(backed.site.sd) / "backup-scratch"
    assert list(scratch_root.iterdir()) == []


def scratch_extents(path: Path) -> list[dict[str, object]]:
    """The extents a qcow2 file holds data for itself (not through a backing file)."""
    mapped = json.loads(subprocess.run(["qemu-img", "map", "-U", "--output=json", str(path)], capture_output=True,
                                       text=True, check=True).stdout)
    return [extent for extent in mapped if extent["data"] and extent.get("depth", 0) == 0]


def test_a_scratch_volume_the_engine_made_keeps_what_the_guest_overwrote(backed: Backed) -> None:
    vm_id, sd = backed.guest.vm_id, backed.site.sd
    patterns = ["\\132", "\\063", "\\132"]  # 0x5a (written before the boot), 0x33, 0x5a again
    for index, how in enumerate(("ids", "path")):
        scratch_img, scratch_vol = str(uuid.uuid4()), str(uuid.uuid4())
        backed.site.create(scratch_img, scratch_vol, size=64 * MiB)  # qcow2 of the disk's size, as the engine's
        scratch = backed.site.domain_dir(sd) / "images" / scratch_img / scratch_vol
        named = {"domainID": sd, "imageID": scratch_img, "volumeID": scratch_vol} if how == "ids" else \
            {"path": str(scratch)}
        config = backed.config()
        config["disks"][0]["scratch_disk"] = {**named, "type": "file"}
        url = backed.rpc.call("VM.start_backup", vmID=vm_id, config=config)["disks"][backed.img]
        try:
            running = backed.guest.dom.backupGetXMLDesc(0)
            assert f"<scratch file='{scratch}'" in running, running
            assert not (backed.site.domain_dir(sd) / "backup-scratch" / str(config["backup_id"])).exists()
            assert scratch_extents(scratch) == []
            old, new = patterns[index], patterns[index + 1]
            in_guest(backed.guest, f"yes $(printf '{new * 16}') | tr -d '\\n' | head -c {WRITTEN_SIZE} | "
                                   "dd of=/dev/vda bs=4096 conv=fsync 2>/dev/null; sync")
            byte = f"0x{int(old.strip(chr(92)), 8):02x}"
            read = subprocess.run(["qemu-io", "-r", "-f", "raw", "-c", f"read -P {byte} 0 {WRITTEN_SIZE}",
                                   nbd_uri(url)], capture_output=True, text=True)  # the disk as the backup began
            assert read.returncode == 0 and "failed" not in read.stdout + read.stderr, read.stdout + read.stderr
        finally:
            backed.rpc.call("VM.stop_backup", vmID=vm_id, backup_id=config["backup_id"])
        assert scratch.exists()  # the engine's volume: it deletes it
        deadline = time.monotonic() + 30  # QEMU flushes and closes the scratch node a moment after the job
        while not scratch_extents(scratch) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scratch_extents(scratch), f"the guest's overwritten data did not go to {how}-named {scratch}"
        assert backed.site.rpc.call("Volume.getInfo", storagepoolID=backed.site.pool, storagedomainID=sd,
                                    imageID=scratch_img, volumeID=scratch_vol)["legality"] == "LEGAL"
        backed.site.done("Volume.delete", storagepoolID=backed.site.pool, storagedomainID=sd, imageID=scratch_img,
                         volumeID=scratch_vol, postZero=False, force=False)
    with pytest.raises(JsonRpcError) as caught:  # a path that is no volume of the host's domains
        config = backed.config()
        config["disks"][0]["scratch_disk"] = {"path": "/etc/hostname", "type": "file"}
        backed.rpc.call("VM.start_backup", vmID=vm_id, config=config)
    assert caught.value.code == 1600 and "scratch_disk.path" in caught.value.message, caught.value


def test_a_restart_finds_the_backup_again(backed: Backed) -> None:
    vm_id = backed.guest.vm_id
    config = backed.config()
    url = backed.rpc.call("VM.start_backup", vmID=vm_id, config=config)["disks"][backed.img]
    scratch_root = backed.site.domain_dir(backed.site.sd) / "backup-scratch"
    orphan = scratch_root / str(uuid.uuid4())  # what a backup that ended while pierd was away left
    orphan.mkdir()
    (orphan / "vda.qcow2").write_bytes(b"")
    stale = Path(url.removeprefix("nbd:unix:").partition(":")[0]).with_name(f"{uuid.uuid4()}.sock")
    stale.write_bytes(b"")  # a socket no server listens on any more
    backed.restart()
    assert not orphan.exists() and not stale.exists()
    assert Path(url.removeprefix("nbd:unix:").partition(":")[0]).exists()
    assert backed.rpc.call("VM.backup_info", vmID=vm_id, backup_id=config["backup_id"])["disks"] == \
        {backed.img: url}
    backed.rpc.call("VM.stop_backup", vmID=vm_id, backup_id=config["backup_id"])
    assert list(scratch_root.iterdir()) == []


def test_pier_backup_writes_full_then_incremental_qcow2(backed: Backed, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from pier import cli

    vm_id, first, second = backed.guest.vm_id, str(uuid.uuid4()), str(uuid.uuid4())
    base = ["--url", backed.site.daemon.http, "--token", backed.site.daemon.token, "--json"]
    full, incremental = tmp_path / "full.qcow2", tmp_path / "incremental.qcow2"
    backed.rpc.call("VM.pause", vmID=vm_id)
    try:
        capsys.readouterr()
        assert cli.main(["backup", vm_id, "--to", str(full), "--checkpoint", first, *base]) == 0
        done = json.loads(capsys.readouterr().out)
        assert [d["image"] for d in done["disks"]] == [backed.img] and not done["incremental"]
        compared = subprocess.run(["qemu-img", "compare", "-U", str(full), str(backed.volume_path)],
                                  capture_output=True, text=True)
        assert compared.returncode == 0, compared.stdout + compared.stderr
    finally:
        backed.rpc.call("VM.cont", vmID=vm_id)
    in_guest(backed.guest, f"printf pier-backup | dd of=/dev/vda bs=512 seek={WRITTEN_AT // 512 + 1024} "
                           "conv=fsync 2>/dev/null; sync")
    backed.rpc.call("VM.pause", vmID=vm_id)
    try:
        assert cli.main(["backup", vm_id, "--to", str(incremental), "--from-checkpoint", first,
                         "--checkpoint", second, "--backing", str(full), *base]) == 0
        done = json.loads(capsys.readouterr().out)
        assert done["incremental"] and done["disks"][0]["bytes"] == WRITTEN_SIZE  # one granule
        compared = subprocess.run(["qemu-img", "compare", "-U", str(incremental), str(backed.volume_path)],
                                  capture_output=True, text=True)
        assert compared.returncode == 0, compared.stdout + compared.stderr
    finally:
        backed.rpc.call("VM.cont", vmID=vm_id)
    assert incremental.stat().st_size < full.stat().st_size
    assert backed.rpc.call("VM.list_checkpoints", vmID=vm_id)[-2:] == [first, second]
    assert list((backed.site.domain_dir(backed.site.sd) / "backup-scratch").iterdir()) == []


def test_checkpoints_are_redefined_after_libvirt_lost_them_and_deleted(backed: Backed) -> None:
    vm_id = backed.guest.vm_id
    ids = backed.rpc.call("VM.list_checkpoints", vmID=vm_id)
    assert len(ids) >= 2
    xmls = [backed.rpc.call("VM.dump_checkpoint", vmID=vm_id, checkpoint_id=c)["checkpoint"] for c in ids]
    for checkpoint in reversed(ids):  # libvirt forgets them (as when a VM is defined again); the bitmaps stay
        backed.guest.dom.checkpointLookupByName(checkpoint).delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    assert backed.rpc.call("VM.list_checkpoints", vmID=vm_id) == []
    with pytest.raises(JsonRpcError) as caught:  # an XML naming another checkpoint: nothing is redefined
        backed.rpc.call("VM.redefine_checkpoints", vmID=vm_id, checkpoints=[{"id": ids[0], "xml": xmls[0]},
                                                                            {"id": str(uuid.uuid4()), "xml": xmls[1]}])
    assert caught.value.code == 1610 and backed.rpc.call("VM.list_checkpoints", vmID=vm_id) == []
    done = backed.rpc.call("VM.redefine_checkpoints", vmID=vm_id,
                           checkpoints=[{"id": c, "xml": x} for c, x in zip(ids, xmls, strict=True)])
    assert done == {"checkpoint_ids": ids}
    assert backed.rpc.call("VM.list_checkpoints", vmID=vm_id) == ids
    config = backed.config(from_checkpoint_id=ids[-1])  # the redefined checkpoint serves a backup
    backed.rpc.call("VM.start_backup", vmID=vm_id, config=config)
    backed.rpc.call("VM.stop_backup", vmID=vm_id, backup_id=config["backup_id"])
    assert backed.rpc.call("VM.delete_checkpoints", vmID=vm_id, checkpoint_ids=ids) == {"checkpoint_ids": ids}
    assert backed.rpc.call("VM.list_checkpoints", vmID=vm_id) == []
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(backed.volume_path)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format-specific"]["data"].get("bitmaps", []) == []  # their bitmaps went with them


def test_a_vm_that_is_not_running_is_not_backed_up(backed: Backed) -> None:
    backed.guest.dom.destroy()  # powered off, still defined
    with pytest.raises(JsonRpcError) as caught:
        backed.rpc.call("VM.start_backup", vmID=backed.guest.vm_id, config=backed.config())
    assert caught.value.code == 6
    assert not (backed.site.domain_dir(backed.site.sd) / "backup-scratch").exists() or \
        list((backed.site.domain_dir(backed.site.sd) / "backup-scratch").iterdir()) == []

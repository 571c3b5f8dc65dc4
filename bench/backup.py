"""Incremental backup throughput through pierd, beside `qemu-img convert` from the same NBD export.

A VM on qemu:///system (no guest OS: firmware only, which never writes its disk) has a 1 GiB qcow2
volume holding --base MiB of data. A full backup makes checkpoint cp1; the VM is powered off, and
--dirty MiB are written in 1 MiB pieces every 4 MiB with qemu-io (the persistent bitmap marks
them), and the VM starts again. Then, from one incremental backup's NBD export:

  dirty-extent copy        what `pier backup --from-checkpoint` runs (ovirt-imageio's NBD client and
                           copier, only the dirty extents, into a new qcow2): MiB/s of dirty data
  qemu-img convert         the whole export into a qcow2 (the floor: it reads all data, clean or not)
  pier backup (CLI)        the whole command: VM.start_backup, the copy, VM.stop_backup

Each figure beside its floor, in one run. The data center is deleted at the end.

Run (as root, with libvirtd): .venv/bin/python bench/backup.py [--base MiB] [--dirty MiB]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import libvirt
from common import PierdProcess
from storage_volumes import BLANK, GiB, Rpc, make_domain

from pier import cli
from pier.cli_backup import copy_dirty, nbd_uri

MiB = 1 << 20
DISK_DIR = Path("/var/lib/libvirt/images")  # where QEMU may open files


def qemu_io(path: Path, *commands: str) -> None:
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, str(path)], check=True, capture_output=True)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=512, help="MiB of data on the disk (default 512)")
    parser.add_argument("--dirty", type=int, default=128, help="MiB written after the checkpoint (default 128)")
    args = parser.parse_args()
    root = DISK_DIR / f"pier-bench-backup-{uuid.uuid4().hex[:8]}"
    sd, img, vol, vm_id = (str(uuid.uuid4()) for _ in range(4))
    domain = make_domain(root / "dc", sd)
    out = root / "out"
    out.mkdir()
    daemon = PierdProcess("qemu:///system", None, "--data-center", str(root / "dc"))
    conn = libvirt.open("qemu:///system")
    try:
        rpc = Rpc(daemon)
        rpc.task("Volume.create", volumeID=vol, storagepoolID=BLANK, storagedomainID=sd, imageID=img,
                 size=str(GiB), volFormat="COW", preallocate="SPARSE", diskType="DATA", desc="", srcImgUUID=BLANK,
                 srcVolUUID=BLANK)
        path = domain / "images" / img / vol
        qemu_io(path, f"write -P 0x11 0 {args.base}M")
        disk = {"deviceType": "disk", "device": "disk", "iface": "virtio", "poolID": BLANK, "domainID": sd,
                "imageID": img, "volumeID": vol}
        rpc.call("VM.create", vmParams={"vmId": vm_id, "vmName": f"pier-bench-{vm_id[:8]}", "memSize": 64,
                                        "smp": "1", "kvmEnable": False, "devices": [disk]})
        config = {"disks": [{"domainID": sd, "imageID": img, "volumeID": vol}]}
        first, checkpoint = str(uuid.uuid4()), str(uuid.uuid4())
        rpc.call("VM.start_backup", vmID=vm_id, config={**config, "backup_id": first, "to_checkpoint_id": checkpoint})
        rpc.call("VM.stop_backup", vmID=vm_id, backup_id=first)
        dom = conn.lookupByUUIDString(vm_id)
        dom.destroy()
        qemu_io(path, *(f"write -P 0x22 {i * 4}M 1M" for i in range(args.dirty)))
        dom.create()

        backup = str(uuid.uuid4())
        url = rpc.call("VM.start_backup", vmID=vm_id,
                       config={**config, "backup_id": backup, "from_checkpoint_id": checkpoint})["disks"][img]
        try:
            copied: list[int] = []
            pier_s = timed(lambda: copied.append(copy_dirty(url, out / "incremental.qcow2", None)))
            floor_s = timed(lambda: subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", nbd_uri(url),
                                                    str(out / "convert.qcow2")], check=True, capture_output=True))
        finally:
            rpc.call("VM.stop_backup", vmID=vm_id, backup_id=backup)
        with contextlib.redirect_stdout(io.StringIO()):
            cli_s = timed(lambda: cli.main(["backup", vm_id, "--to", str(out / "cli.qcow2"), "--from-checkpoint",
                                            checkpoint, "--url", daemon.http, "--token", daemon.token, "--json"]))
        dirty = copied[0] / MiB
        data = args.base + sum(1 for i in range(args.dirty) if i * 4 >= args.base)  # the export's data, MiB
        print(f"incremental backup of a 1 GiB disk holding {args.base} MiB, {dirty:.0f} MiB dirty since the checkpoint")
        print(f"  dirty-extent copy    {pier_s:7.2f} s  {dirty / pier_s:7.1f} MiB/s of dirty data")
        print(f"  qemu-img convert     {floor_s:7.2f} s  {data / floor_s:7.1f} MiB/s of the export's data"
              f"   (floor; time ratio {pier_s / floor_s:.2f}x)")
        print(f"  pier backup (CLI)    {cli_s:7.2f} s  {dirty / cli_s:7.1f} MiB/s of dirty data, with start and stop")
    finally:
        with contextlib.suppress(Exception):
            Rpc(daemon).call("VM.destroy", vmID=vm_id)
        daemon.stop()
        conn.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

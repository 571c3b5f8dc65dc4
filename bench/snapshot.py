"""How long a live snapshot holds the guest, through pierd beside raw libvirt, on the tiny real guest.

  VM.snapshot (pierd)         one drive onto a volume made over its leaf (Volume.create, untimed),
                              quiesced through the guest agent: the time libvirt's snapshot call
                              took inside pierd (`heldSeconds`: the window in which the guest can be
                              frozen or held), and the whole call as a client waits for it
  snapshotCreateXML (floor)   the same snapshot of the same guest onto a volume made the same way,
                              by libvirt-python in this process, same flags (REUSE_EXT, DISK_ONLY,
                              NO_METADATA, QUIESCE)

The two take turns on one guest booted from a volume (under TCG unless KVM is usable); the chain
grows by one layer each time. Target: pierd's held window the same as the floor's within noise.
Needs root, /dev/kvm and the built guest (python3 tests/guest/build.py). The data center is
deleted at the end.

Run: .venv/bin/python bench/snapshot.py [--rounds N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import uuid
from pathlib import Path

import libvirt
from common import ROOT, PierdProcess, report
from storage_volumes import BLANK, Rpc

sys.path.insert(0, str(ROOT))
from tests.guest import build  # noqa: E402

URI = "qemu:///system"
MiB = 1 << 20
FLAGS = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
         | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)


def make_domain(dc: Path, sd: str, pool: str) -> Path:
    domain = dc / "mnt" / "_bench" / sd
    (domain / "dom_md").mkdir(parents=True)
    (domain / "images").mkdir()
    (domain / "dom_md" / "metadata").write_text(
        f"CLASS=Data\nDESCRIPTION=bench\nPOOL_UUID={pool}\nROLE=Regular\nSDUUID={sd}\nTYPE=LOCALFS\nVERSION=5\n")
    (dc / pool).mkdir(exist_ok=True)
    (dc / pool / sd).symlink_to(domain)
    return domain


def wait_agent(dom: libvirt.virDomain, timeout: float = 180) -> None:
    import libvirt_qemu

    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute": "guest-ping"}', 2, 0)
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise RuntimeError("the guest agent did not answer") from None
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="snapshots on each side")
    args = parser.parse_args()
    image = build.find()
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(URI)
    dc = Path("/var/lib/libvirt/images") / f"pier-bench-snapshot-{uuid.uuid4().hex[:8]}"
    pool, sd, img = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    domain = make_domain(dc, sd, pool)
    pierd = PierdProcess(URI, None, "--data-center", str(dc))
    rpc = Rpc(pierd)
    vm_id = str(uuid.uuid4())
    leaf = str(uuid.uuid4())

    def new_volume(parent: str) -> str:
        vol = str(uuid.uuid4())
        rpc.task("Volume.create", volumeID=vol, storagepoolID=pool, storagedomainID=sd, imageID=img,
                 size=str(64 * MiB), volFormat="COW", preallocate="SPARSE", diskType="DATA", desc="bench",
                 srcImgUUID=img if parent != BLANK else BLANK, srcVolUUID=parent)
        return vol

    try:
        leaf = new_volume(BLANK)
        kvm = not Path("/sys/module/kvm_pvm").exists()
        rpc.call("VM.create", vmID=vm_id, vmParams={
            "vmId": vm_id, "vmName": f"pier-bench-snapshot-{vm_id[:8]}", "memSize": 256, "smp": "1",
            "kvmEnable": kvm, **image, "devices": [
                {"deviceType": "console", "device": "console", "specParams": {"consoleType": "serial"}},
                {"deviceType": "disk", "device": "disk", "iface": "virtio", "poolID": pool, "domainID": sd,
                 "imageID": img, "volumeID": leaf}]})
        dom = conn.lookupByUUIDString(vm_id)
        wait_agent(dom)
        held, whole, floor = [], [], []
        quiesced = True
        for _ in range(args.rounds):
            vol = new_volume(leaf)
            started = time.perf_counter()
            task = rpc.call("VM.snapshot", vmID=vm_id, snapDrives=[
                {"domainID": sd, "imageID": img, "baseVolumeID": leaf, "volumeID": vol}])
            whole.append(time.perf_counter() - started)
            if task.get("state") != "succeeded":
                raise RuntimeError(task)
            held.append(task["result"]["heldSeconds"])
            quiesced = quiesced and task["result"]["quiesce"]
            leaf = vol

            vol = new_volume(leaf)
            path = domain / "images" / img / vol
            xml = (f"<domainsnapshot><disks><disk name='vda' snapshot='external' type='file'>"
                   f"<source file='{path}'/><driver type='qcow2'/></disk></disks></domainsnapshot>")
            started = time.perf_counter()
            dom.snapshotCreateXML(xml, FLAGS)
            floor.append(time.perf_counter() - started)
            leaf = vol
        print(f"live disk-only snapshot of one drive, {args.rounds} on each side, guest under "
              f"{'KVM' if kvm else 'TCG'}, {'quiesced' if quiesced else 'NOT quiesced'} through the guest agent")
        report("held (libvirt call inside pierd)", held, floor, "same as the floor within noise")
        report("VM.snapshot as the client waits", whole, floor)
    finally:
        rpc.request("DELETE", f"/api/v1/vms/{vm_id}")
        pierd.stop()
        try:
            dom = conn.lookupByUUIDString(vm_id)
            dom.destroy()
        except libvirt.libvirtError:
            pass
        conn.close()
        shutil.rmtree(dc, ignore_errors=True)


if __name__ == "__main__":
    main()

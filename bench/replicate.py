"""What a live storage move costs the caller through pierd, beside raw libvirt, on the tiny real guest.

  VM.diskReplicateStart (pierd)   the drive's leaf copied onto the destination leaf, as a client
                                  waits for the call (the drive and the destination looked up,
                                  checked, prepared, then libvirt's block copy)
  VM.diskReplicateFinish (pierd)  the pivot onto the ready copy, as a client waits for it
  blockCopy / blockJobAbort(PIVOT) (floor)   the same copy and pivot of the same guest by
                                  libvirt-python in this process, same flags (SHALLOW, REUSE_EXT,
                                  TRANSIENT_JOB)

Two guests, each on a base and a leaf of 64 MiB (8 MiB written into the leaf), move back and
forth between two file domains, taking turns: one through pierd, the other by libvirt alone (pierd
does not see that one move). Each destination is made as
the engine makes it (Image.cloneStructure, Image.syncData INTERNAL, untimed) and the image left
behind is deleted (Image.delete, untimed). Target: pierd within 50 ms of the floor: besides
libvirt's own call it checks the drive and the destination (the domain's XML, the volumes'
metadata), refreshes the VM's cached definition and audits the call (a changing verb costs
~15 ms here through HTTP). Measured on this 2-core machine with two TCG guests (6 rounds):
Start p50 93 ms against 54 ms, Finish p50 86 ms against 66 ms; libvirt's calls vary by 2x.
Needs root, /dev/kvm and the built guest (python3 tests/guest/build.py). The data center is
deleted at the end.

Run: .venv/bin/python bench/replicate.py [--rounds N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import libvirt
from common import ROOT, PierdProcess, report
from snapshot import make_domain, wait_agent
from storage_volumes import BLANK, Rpc

sys.path.insert(0, str(ROOT))
from tests.guest import build  # noqa: E402

URI = "qemu:///system"
MiB = 1 << 20
COPY_FLAGS = (libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW | libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
              | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)


def wait_ready(dom: libvirt.virDomain, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = dom.blockJobInfo("vda", 0)
        if info and info["end"] and info["cur"] == info["end"] and "ready='yes'" in dom.XMLDesc(0):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the copy never became ready: {info}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="moves on each side")
    args = parser.parse_args()
    image = build.find()
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(URI)
    dc = Path("/var/lib/libvirt/images") / f"pier-bench-replicate-{uuid.uuid4().hex[:8]}"
    pool = str(uuid.uuid4())
    domains = [str(uuid.uuid4()), str(uuid.uuid4())]
    dirs = {sd: make_domain(dc, sd, pool) for sd in domains}
    pierd = PierdProcess(URI, None, "--data-center", str(dc))
    rpc = Rpc(pierd)
    kvm = not Path("/sys/module/kvm_pvm").exists()
    vms: list[str] = []

    def new_guest(img: str, leaf: str) -> libvirt.virDomain:
        """A guest on a base and a leaf (8 MiB written) in the first domain."""
        base = str(uuid.uuid4())
        for vol, parent in ((base, BLANK), (leaf, base)):
            rpc.task("Volume.create", volumeID=vol, storagepoolID=pool, storagedomainID=domains[0], imageID=img,
                     size=str(64 * MiB), volFormat="COW", preallocate="SPARSE", diskType="DATA", desc="bench",
                     srcImgUUID=img if parent != BLANK else BLANK, srcVolUUID=parent)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 8M",
                        str(dirs[domains[0]] / "images" / img / leaf)], check=True, capture_output=True)
        vm_id = str(uuid.uuid4())
        vms.append(vm_id)
        rpc.call("VM.create", vmID=vm_id, vmParams={
            "vmId": vm_id, "vmName": f"pier-bench-replicate-{vm_id[:8]}", "memSize": 256, "smp": "1",
            "kvmEnable": kvm, **image, "devices": [
                {"deviceType": "console", "device": "console", "specParams": {"consoleType": "serial"}},
                {"deviceType": "disk", "device": "disk", "iface": "virtio", "poolID": pool, "domainID": domains[0],
                 "imageID": img, "volumeID": leaf}]})
        dom = conn.lookupByUUIDString(vm_id)
        wait_agent(dom)
        return dom

    def make_destination(img: str, src: str, dst: str) -> None:
        rpc.task("Image.cloneStructure", imageID=img, storagepoolID=pool, storagedomainID=src, dstSdUUID=dst)

    def sync(img: str, src: str, dst: str) -> None:
        rpc.task("Image.syncData", imageID=img, storagepoolID=pool, storagedomainID=src, dstSdUUID=dst,
                 syncType="INTERNAL")

    try:
        # the floor's guest is moved behind pierd's back, so it has its own (pierd's cached view of
        # it goes stale: its images left behind are removed as files)
        img, leaf, floor_img, floor_leaf = (str(uuid.uuid4()) for _ in range(4))
        dom, floor_dom = new_guest(img, leaf), new_guest(floor_img, floor_leaf)
        starts, finishes, floor_starts, floor_finishes = [], [], [], []
        for number in range(args.rounds):
            src, dst = domains[number % 2], domains[1 - number % 2]
            make_destination(img, src, dst)
            disk = {"poolID": pool, "imageID": img, "volumeID": leaf}
            started = time.perf_counter()
            rpc.call("VM.diskReplicateStart", vmID=vms[0], srcDisk={**disk, "domainID": src},
                     dstDisk={**disk, "domainID": dst})
            starts.append(time.perf_counter() - started)
            sync(img, src, dst)
            wait_ready(dom)
            started = time.perf_counter()
            ended = rpc.call("VM.diskReplicateFinish", vmID=vms[0], srcDisk={**disk, "domainID": src},
                             dstDisk={**disk, "domainID": dst})
            finishes.append(time.perf_counter() - started)
            assert ended["pivoted"], ended
            rpc.task("Image.delete", imageID=img, storagepoolID=pool, storagedomainID=src)

            make_destination(floor_img, src, dst)
            path = dirs[dst] / "images" / floor_img / floor_leaf
            xml = f"<disk type='file'><source file='{path}'/><driver type='qcow2'/></disk>"
            started = time.perf_counter()
            floor_dom.blockCopy("vda", xml, None, COPY_FLAGS)
            floor_starts.append(time.perf_counter() - started)
            sync(floor_img, src, dst)
            wait_ready(floor_dom)
            started = time.perf_counter()
            floor_dom.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            floor_finishes.append(time.perf_counter() - started)
            if f"{path}'" not in floor_dom.XMLDesc(0):
                raise RuntimeError("the floor's pivot did not move the drive")
            shutil.rmtree(dirs[src] / "images" / floor_img)
        print(f"live storage move of one drive (64 MiB base + a leaf with 8 MiB written), {args.rounds} on each "
              f"side, guests under {'KVM' if kvm else 'TCG'}")
        report("VM.diskReplicateStart", starts, floor_starts, "floor + 50 ms")
        report("VM.diskReplicateFinish (pivot)", finishes, floor_finishes, "floor + 50 ms")
    finally:
        for vm_id in vms:
            rpc.request("DELETE", f"/api/v1/vms/{vm_id}")
        pierd.stop()
        for vm_id in vms:
            try:
                conn.lookupByUUIDString(vm_id).destroy()
            except libvirt.libvirtError:
                pass
        conn.close()
        shutil.rmtree(dc, ignore_errors=True)


if __name__ == "__main__":
    main()

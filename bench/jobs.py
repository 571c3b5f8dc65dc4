"""SDM.copy_data through pierd beside qemu-img convert alone, on directory domains of a throwaway data center.

  SDM.copy_data of 1 GiB of data, raw to an existing qcow2 volume on another domain, timed from
  the call until its job (task) ended     vs qemu-img convert -n of the same source into an
                                             existing qcow2, as Pier runs it (-t none -T none;
                                             target <= 1.1x)

The figure beside its floor, in one run; the data center is deleted at the end.

Run: .venv/bin/python bench/jobs.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from common import PierdProcess, report
from storage_volumes import BLANK, GiB, Rpc, make_domain, qemu_img


def fill(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "r+b") as out:
        for _ in range(size >> 20):
            out.write(block)
        os.fsync(out.fileno())


def bench_copy_data(rpc: Rpc, sd: str, sd2: str, domain: Path, scratch: Path, rounds: int) -> None:
    img, vol = str(uuid.uuid4()), str(uuid.uuid4())
    rpc.task("Volume.create", volumeID=vol, storagepoolID=BLANK, storagedomainID=sd, imageID=img, size=str(GiB),
             volFormat="RAW", preallocate="SPARSE", diskType="DATA", desc="", srcImgUUID=BLANK, srcVolUUID=BLANK)
    source = domain / "images" / img / vol
    fill(source, GiB)
    pier_times: list[float] = []
    floor_times: list[float] = []
    for _ in range(rounds):
        target = scratch / str(uuid.uuid4())
        qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=1.1", str(target), str(GiB))
        started = time.perf_counter()
        qemu_img("convert", "-p", "-t", "none", "-T", "none", "-f", "raw", "-O", "qcow2", "-n",
                 str(source), str(target))
        floor_times.append(time.perf_counter() - started)
        target.unlink()
        dst_img, dst = str(uuid.uuid4()), str(uuid.uuid4())
        rpc.task("Volume.create", volumeID=dst, storagepoolID=BLANK, storagedomainID=sd2, imageID=dst_img,
                 size=str(GiB), volFormat="COW", preallocate="SPARSE", diskType="DATA", desc="", srcImgUUID=BLANK,
                 srcVolUUID=BLANK)
        started = time.perf_counter()
        rpc.task("SDM.copy_data", job_id=str(uuid.uuid4()),
                 source={"endpoint_type": "div", "sd_id": sd, "img_id": img, "vol_id": vol},
                 destination={"endpoint_type": "div", "sd_id": sd2, "img_id": dst_img, "vol_id": dst})
        pier_times.append(time.perf_counter() - started)
        rpc.task("Image.delete", imageID=dst_img, storagepoolID=BLANK, storagedomainID=sd2)
    report("SDM.copy_data 1 GiB raw -> qcow2", pier_times, floor_times, "<= 1.1x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    root = Path(tempfile.mkdtemp(prefix="pier-bench-jobs-", dir="/var/tmp"))
    dc, scratch = root / "dc", root / "scratch"
    scratch.mkdir()
    sd, sd2 = str(uuid.uuid4()), str(uuid.uuid4())
    domain = make_domain(dc, sd)
    make_domain(dc, sd2)
    daemon = PierdProcess(None, None, "--data-center", str(dc))
    try:
        bench_copy_data(Rpc(daemon), sd, sd2, domain, scratch, rounds)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

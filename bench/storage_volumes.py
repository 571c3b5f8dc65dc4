"""Volumes through pierd beside qemu-img alone, on a directory domain of a throwaway data center.

  Volume.create, a 10 GiB sparse qcow2    vs qemu-img create of the same file (target <= 1.3x);
                                             the verb timed from the call until its task ended
                                             (JSON-RPC over HTTP, then REST's ?wait)
                                             (and the same work in process, without RPC or task)
  Volume.copy of 1 GiB of data            vs qemu-img convert of the same file, as Pier runs it
                                             (-t none -T none, raw to qcow2; target <= 1.1x)
  StorageDomain.getVolumes, 1000 volumes  vs os.listdir of the image directories (target < 20 ms)

Each figure beside its floor, in one run. The data center is deleted at the end.

Run: .venv/bin/python bench/storage_volumes.py [--rounds N] (bench/storage.py runs it too)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import PierdProcess, interleaved, report, time_calls

from pier.host.storage import volume_md as md
from pier.host.storage.images import PoolImages

BLANK = "00000000-0000-0000-0000-000000000000"
GiB = 1 << 30


class Rpc:
    def __init__(self, daemon: PierdProcess) -> None:
        host, port = daemon.http.split("//")[1].split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=600)
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {daemon.token}"}

    def request(self, method: str, path: str, body: Any = None) -> Any:
        self.connection.request(method, path, body=None if body is None else json.dumps(body), headers=self.headers)
        reply = json.loads(self.connection.getresponse().read())
        return reply

    def call(self, verb: str, **params: Any) -> Any:
        reply = self.request("POST", "/jsonrpc", {"jsonrpc": "2.0", "method": verb, "params": params, "id": 1})
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def task(self, verb: str, **params: Any) -> None:
        task = self.call(verb, **params)
        ended = self.request("GET", f"/api/v1/tasks/{task['taskID']}?wait=300")
        if ended.get("state") != "succeeded":
            raise RuntimeError(ended)


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def make_domain(dc: Path, sd: str) -> Path:
    domain = dc / "mnt" / "_bench" / sd
    (domain / "dom_md").mkdir(parents=True)
    (domain / "images").mkdir()
    (domain / "dom_md" / "metadata").write_text(f"SDUUID={sd}\nVERSION=5\n")
    return domain


def bench_create(rpc: Rpc, data_center: Path, sd: str, scratch: Path, rounds: int) -> None:
    def pier() -> None:
        img = str(uuid.uuid4())
        rpc.task("Volume.create", volumeID=str(uuid.uuid4()), storagepoolID=BLANK, storagedomainID=sd, imageID=img,
                 size=str(10 * GiB), volFormat="COW", preallocate="SPARSE", diskType="DATA", desc="",
                 srcImgUUID=BLANK, srcVolUUID=BLANK)

    def floor() -> None:
        path = scratch / str(uuid.uuid4())
        qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=1.1", str(path), str(10 * GiB))

    subject, base = interleaved(pier, floor, rounds, rounds=max(1, rounds // 4))
    report("Volume.create 10 GiB sparse qcow2", subject, base, "<= 1.3x")

    store = PoolImages(data_center)

    def in_process() -> None:  # the storage work alone: no RPC, no task
        store.create(sd, str(uuid.uuid4()), str(uuid.uuid4()), str(10 * GiB), "COW", "SPARSE", "DATA", "", BLANK,
                     BLANK)

    subject, base = interleaved(in_process, floor, rounds, rounds=max(1, rounds // 4))
    report("  its storage work alone (in process)", subject, base)


def bench_copy(rpc: Rpc, sd: str, sd2: str, domain: Path, scratch: Path, rounds: int) -> None:
    img, vol = str(uuid.uuid4()), str(uuid.uuid4())
    rpc.task("Volume.create", volumeID=vol, storagepoolID=BLANK, storagedomainID=sd, imageID=img, size=str(GiB),
             volFormat="RAW", preallocate="SPARSE", diskType="DATA", desc="", srcImgUUID=BLANK, srcVolUUID=BLANK)
    source = domain / "images" / img / vol
    block = os.urandom(1 << 20)
    with open(source, "r+b") as out:
        for _ in range(GiB >> 20):
            out.write(block)
        os.fsync(out.fileno())
    pier_times: list[float] = []
    floor_times: list[float] = []
    for _ in range(rounds):
        target = scratch / str(uuid.uuid4())
        started = time.perf_counter()
        qemu_img("convert", "-t", "none", "-T", "none", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1",
                 str(source), str(target))
        floor_times.append(time.perf_counter() - started)
        target.unlink()
        dst_img = str(uuid.uuid4())
        started = time.perf_counter()
        rpc.task("Volume.copy", volumeID=vol, storagepoolID=BLANK, storagedomainID=sd, imageID=img, dstSdUUID=sd2,
                 dstImgUUID=dst_img, dstVolUUID=str(uuid.uuid4()), desc="", volType="LEAF", volFormat="COW",
                 preallocate="SPARSE", postZero=False, force=False)
        pier_times.append(time.perf_counter() - started)
        rpc.task("Image.delete", imageID=dst_img, storagepoolID=BLANK, storagedomainID=sd2)
    report("Volume.copy 1 GiB raw -> qcow2", pier_times, floor_times, "<= 1.1x")


def bench_listing(rpc: Rpc, sd: str, domain: Path, count: int) -> None:
    images = domain / "images"
    for _ in range(1000):  # written directly: what is timed is the listing, not 1000 creates
        img, vol = str(uuid.uuid4()), str(uuid.uuid4())
        (images / img).mkdir()
        (images / img / vol).touch()
        md.write(images / img / f"{vol}.meta", md.VolumeMetadata(
            domain=sd, image=img, parent=BLANK, capacity=GiB, format="COW", type="SPARSE", voltype="LEAF",
            disktype="DATA"))

    def floor() -> None:
        for name in os.listdir(images):
            os.listdir(images / name)

    listed = rpc.call("StorageDomain.getVolumes", storagedomainID=sd, storagepoolID=BLANK, imageID=BLANK)
    assert len(listed) >= 1000, len(listed)
    subject = time_calls(lambda: rpc.call("StorageDomain.getVolumes", storagedomainID=sd, storagepoolID=BLANK,
                                          imageID=BLANK), count, warmup=5)
    report(f"StorageDomain.getVolumes {len(listed)} volumes", subject, time_calls(floor, count, warmup=5), "< 20 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    run(parser.parse_args().rounds)


def run(rounds: int) -> None:
    """The volume figures, `rounds` of each (more of the quick ones)."""
    root = Path(tempfile.mkdtemp(prefix="pier-bench-storage-", dir="/var/tmp"))
    dc, scratch = root / "dc", root / "scratch"
    scratch.mkdir()
    sd, sd2 = str(uuid.uuid4()), str(uuid.uuid4())
    domain = make_domain(dc, sd)
    make_domain(dc, sd2)
    daemon = PierdProcess(None, None, "--data-center", str(dc))
    try:
        rpc = Rpc(daemon)
        bench_create(rpc, dc, sd, scratch, rounds * 4)
        bench_copy(rpc, sd, sd2, domain, scratch, rounds)
        bench_listing(rpc, sd, domain, rounds * 20)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

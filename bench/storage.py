"""Host.getStorageRepoStats from the monitor's cache, with 1000 volumes on the watched domains.

  GET /host/storage-repo-stats (pierd, unix socket)   vs GET /host/ping (the same wire, no work)
                                                        (target: p99 < 20 ms)
  Host.getStorageRepoStats, in process                 vs a bare dict copy of the same size

Four localfs domains in a temporary data-center root, 1000 volumes in all (data file, .meta and
.lease each), all watched by the monitor; nothing outside the temporary directory is touched.

Then the volume figures of bench/storage_volumes.py (Volume.create, Volume.copy,
StorageDomain.getVolumes with 1000 volumes, each beside qemu-img or a listing).

Run: .venv/bin/python bench/storage.py [--count N] [--rounds N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import storage_volumes
from common import PierdProcess, interleaved, report

from pier.host.storage.service import Storage
from tests.integration.clients import unix_request

DOMAINS = 4
VOLUMES = 1000


def fill(root: Path) -> list[tuple[str, str]]:
    """(local directory, sdUUID) of DOMAINS domains made with VOLUMES volumes between them."""
    made = []
    for i in range(DOMAINS):
        local = root / f"sd{i}"
        local.mkdir(parents=True)
        made.append((str(local), str(uuid.uuid4())))
    return made


def add_volumes(domain: Path, count: int) -> None:
    for _ in range(count // 10):
        image = domain / "images" / str(uuid.uuid4())
        image.mkdir()
        for _ in range(10):
            vol = str(uuid.uuid4())
            (image / vol).write_bytes(b"")
            (image / (vol + ".meta")).write_text("CAP=1073741824\nFORMAT=RAW\nEOF\n")
            (image / (vol + ".lease")).write_bytes(b"")


def bench_in_process(root: Path, count: int) -> None:
    storage = Storage(root / "dc", lambda name, params: None, monitor_interval=3600)
    for local, sd in fill(root / "inproc"):
        storage.connect_storage_server(4, [{"id": sd, "connection": local}])
        storage.create_domain(sd, 4, local, "bench", 1)
        add_volumes(Path(local) / sd, VOLUMES // DOMAINS)
        storage.start_monitoring(sd, 1)
    storage.monitor.check_all()
    cache = storage.repo_stats()
    assert len(cache) == DOMAINS and all(v["valid"] for v in cache.values())
    subject, base = interleaved(storage.repo_stats, lambda: {k: dict(v) for k, v in cache.items()}, count)
    report("getStorageRepoStats (in process)", subject, base)


def bench_pierd(root: Path, count: int) -> None:
    pierd = PierdProcess(None, None, "--data-center", str(root / "pierd-dc"), "--storage-monitor-interval", "2")
    try:
        for local, sd in fill(root / "served"):
            status, answer = unix_request(pierd.socket, "POST", "/api/v1/storage-connections", {
                "storagepoolID": "00000000-0000-0000-0000-000000000000", "domainType": 4,
                "connectionParams": [{"id": sd, "connection": local}]})
            assert status == 200 and answer[0]["status"] == 0, answer
            status, answer = unix_request(pierd.socket, "POST", "/api/v1/storage-domains", {
                "storagedomainID": sd, "domainType": 4, "typeArgs": local, "name": "bench", "domainClass": 1})
            assert status == 202, answer
            unix_request(pierd.socket, "GET", f"/api/v1/tasks/{answer['taskID']}?wait=30")
            add_volumes(Path(local) / sd, VOLUMES // DOMAINS)
            status, _ = unix_request(pierd.socket, "POST", f"/api/v1/storage-domains/{sd}/monitor", {"hostID": 1})
            assert status == 200

        def call() -> object:
            status, stats = unix_request(pierd.socket, "GET", "/api/v1/host/storage-repo-stats")
            assert status == 200 and len(stats) == DOMAINS
            return stats

        def floor() -> object:
            return unix_request(pierd.socket, "GET", "/api/v1/host/ping")

        subject, base = interleaved(call, floor, count)
        report("GET /host/storage-repo-stats (pierd)", subject, base, "p99 < 20 ms")
    finally:
        pierd.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the volume figures")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pier-bench-storage-"))
    try:
        bench_in_process(root, args.count)
        bench_pierd(root, args.count)
        storage_volumes.run(args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

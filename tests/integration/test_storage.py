"""Storage on real filesystems: a directory (localfs) and a loop-mounted ext4 image (posixfs), the
SPM lock against another process, and the storage verbs through a real pierd, with bad input
answered by VDSM's codes and nothing created or changed. Mounts need root."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pier.host.storage import layout
from pier.host.storage.connections import mounted_at
from pier.host.storage.service import Storage
from pier.rpc.errors import AcquireLockFailure
from tests.integration.clients import CallFailed, RestClient, WsClient
from tests.integration.conftest import Pierd

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount needs root")


def new_id() -> str:
    return str(uuid.uuid4())


def tree(path: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime) for p in sorted(path.rglob("*"))}


@pytest.fixture
def ext4_image(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB ext4 filesystem in a file; whatever is still mounted from it is unmounted after."""
    image = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-F", "-q", str(image)], check=True, capture_output=True)
    try:
        yield image
    finally:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split(" ")[4]
            if point.startswith(str(tmp_path)):
                subprocess.run(["umount", point], check=False)
        out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False).stdout
        for entry in out.splitlines():
            subprocess.run(["losetup", "-d", entry.split(":")[0]], check=False)


@needs_root
def test_a_domain_on_a_loop_mounted_ext4(tmp_path: Path, ext4_image: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    storage = Storage(tmp_path / "dc", lambda name, params: events.append((name, params)), monitor_interval=3600)
    con = {"id": new_id(), "connection": str(ext4_image), "vfs_type": "ext4", "mnt_options": "loop"}
    try:
        assert storage.connect_storage_server(6, [con]) == [{"id": con["id"], "status": 0}]
        point = layout.mount_point(tmp_path / "dc", str(ext4_image))
        assert mounted_at(point)
        assert storage.connect_storage_server(6, [con])[0]["status"] == 0  # already mounted: fine
        sd, sp = new_id(), new_id()
        storage.create_domain(sd, 6, str(ext4_image), "on ext4", 1)
        sizes = {p.name: p.stat().st_size for p in (point / sd / "dom_md").iterdir()}
        assert {k: v for k, v in sizes.items() if k != "metadata"} == {
            "ids": 1 << 20, "leases": 2 << 20, "xleases": (1 << 20) + 62 * 4096, "inbox": 16 << 20,
            "outbox": 16 << 20}
        stats = storage.domain_stats(sd)
        assert 0 < int(stats["diskfree"]) < int(stats["disktotal"]) <= 64 << 20
        storage.create_pool(sp, "dc", sd, 1, [sd], {})
        storage.connect_pool(sp, 1, sd, 1)
        storage.monitor.check_all()  # the pool's domain is watched; O_DIRECT works on ext4
        vitals = storage.repo_stats()[sd]
        assert vitals["valid"] and vitals["actual"] and float(vitals["delay"]) > 0
        storage.disconnect_pool(sp, 1)
        storage.format_domain(sd, True)
        assert not (point / sd).exists()
        assert storage.disconnect_storage_server(6, [con])[0]["status"] == 0
        assert not mounted_at(point) and not point.exists()
    finally:
        storage.stop()


@needs_root
def test_a_mount_that_fails_answers_477_and_leaves_nothing(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "dc", lambda name, params: None)
    not_fs = tmp_path / "not-a-filesystem"
    not_fs.write_bytes(bytes(1 << 20))
    statuses = storage.connect_storage_server(6, [{"id": "a", "connection": str(not_fs), "vfs_type": "ext4",
                                                   "mnt_options": "loop"}])
    nfs = storage.connect_storage_server(1, [{"id": "b", "connection": "192.0.2.1:/export", "timeout": 10,
                                              "retrans": 1, "mnt_options": "retry=0"}])
    assert statuses == [{"id": "a", "status": 477}]
    assert nfs == [{"id": "b", "status": 477}]  # this kernel has no NFS client
    assert list((tmp_path / "dc" / "mnt").iterdir()) == []


def test_the_spm_lock_keeps_another_process_out(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "dc", lambda name, params: None)
    local = tmp_path / "local"
    local.mkdir()
    storage.connect_storage_server(4, [{"id": "a", "connection": str(local)}])
    sd, sp = new_id(), new_id()
    storage.create_domain(sd, 4, str(local), "d", 1)
    storage.create_pool(sp, "dc", sd, 1, [sd], {})
    storage.connect_pool(sp, 1, sd, 1)
    leases = local / sd / "dom_md" / "leases"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(leases)!r}, 'rb+'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True); sys.stdin.read()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(AcquireLockFailure) as err:
            storage.spm_start(sp, -1, -1)
        assert err.value.code == 651
        assert storage.spm_status(sp) == {"spmStatus": "Free", "spmId": -1, "spmLver": -1}
    finally:
        holder.communicate("", timeout=10)
    storage.spm_start(sp, -1, -1)
    assert storage.spm_status(sp)["spmStatus"] == "SPM"
    storage.stop()


@pytest.fixture
def storage_pierd(tmp_path: Path, test_uri: str) -> Iterator[Pierd]:
    daemon = Pierd(tmp_path / "state", test_uri, "--data-center", str(tmp_path / "dc"))
    try:
        yield daemon
    finally:
        daemon.stop()


def test_storage_verbs_through_pierd(storage_pierd: Pierd, tmp_path: Path) -> None:
    rest = RestClient(storage_pierd.http, storage_pierd.token)
    ws = WsClient(storage_pierd.ws, storage_pierd.token)
    try:
        local = tmp_path / "local"
        local.mkdir()
        statuses = rest.call("StoragePool.connectStorageServer", storagepoolID=layout.BLANK_UUID, domainType=4,
                             connectionParams=[{"id": "c1", "connection": str(local)},
                                               {"id": "c2", "connection": str(tmp_path / "missing")}])
        assert statuses == [{"id": "c1", "status": 0}, {"id": "c2", "status": 453}]
        sd, sp = new_id(), new_id()
        task = ws.call("StorageDomain.create", storagedomainID=sd, domainType=4, typeArgs=str(local), name="data",
                       domainClass=1)
        assert task["state"] == "succeeded", task  # `waits`: the RPC answer comes once the domain is made
        assert rest.call("Host.getStorageDomains") == [sd]
        before = tree(local)

        def refused(code: int, verb: str, **params: Any) -> None:
            with pytest.raises(CallFailed) as err:
                ws.call(verb, **params)
            assert err.value.code == code, (verb, err.value)

        refused(361, "StorageDomain.create", storagedomainID=new_id(), domainType=4, typeArgs=str(local),
                name="second", domainClass=1)
        refused(358, "StorageDomain.getInfo", storagedomainID=new_id())
        refused(309, "StoragePool.getInfo", storagepoolID=sp)
        refused(309, "StorageDomain.attach", storagedomainID=sd, storagepoolID=sp)
        refused(358, "StoragePool.create", storagepoolID=sp, name="dc", masterSdUUID=new_id(), masterVersion=1,
                domainList=[sd])
        refused(387, "StorageDomain.setDescription", storagedomainID=sd, description="x" * 51)
        assert tree(local) == before

        ws.call("StoragePool.create", storagepoolID=sp, name="dc", masterSdUUID=sd, masterVersion=1, domainList=[sd])
        ws.call("StoragePool.connect", storagepoolID=sp, hostID=1, scsiKey="", masterSdUUID=sd, masterVersion=1)
        assert rest.call("Host.getConnectedStoragePools") == [sp]
        assert rest.call("StoragePool.getInfo", storagepoolID=sp)["info"]["name"] == "dc"

        metadata = local / sd / "dom_md" / "metadata"
        metadata.write_bytes(metadata.read_bytes().replace(b"ROLE=Master\n", b"ROLE=Master\n???\n"))
        refused(753, "StorageDomain.getInfo", storagedomainID=sd)
        rows = rest.call("Host.listStorageDomains")
        assert rows[0]["valid"] is False and "metadata, line" in rows[0]["error"]["message"]
    finally:
        ws.close()

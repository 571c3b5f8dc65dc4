"""File domains, pools, connections and the monitor on a temporary directory tree."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pier.host.storage import layout
from pier.host.storage.connections import nfs_options
from pier.host.storage.monitor import EVENT_PREFIX
from pier.host.storage.service import Storage
from pier.rpc.errors import (
    CannotDetachMasterStorageDomain,
    CannotFormatAttachedStorageDomain,
    CannotFormatStorageDomainInConnectedPool,
    SpmStatusError,
    StorageDomainActive,
    StorageDomainAlreadyAttached,
    StorageDomainAlreadyExists,
    StorageDomainDescriptionTooLongError,
    StorageDomainDoesNotExist,
    StorageDomainFSNotMounted,
    StorageDomainNotEmpty,
    StorageDomainNotInPool,
    StorageDomainTypeError,
    StoragePoolUnknown,
    StoragePoolWrongMaster,
)


def new_id() -> str:
    return str(uuid.uuid4())


class Runs:
    """A stand-in for mount/umount: records the command, answers a fixed result."""

    def __init__(self, code: int = 0, out: str = "") -> None:
        self.code, self.out, self.calls = code, out, []  # type: ignore[var-annotated]

    def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        self.calls.append(list(argv))
        return self.code, self.out


@pytest.fixture
def events() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def storage(tmp_path: Path, events: list[tuple[str, dict[str, Any]]]) -> Iterator[Storage]:
    s = Storage(tmp_path / "dc", lambda name, params: events.append((name, params)), monitor_interval=3600,
                run=Runs(32, "mount: nfs not supported"))
    yield s
    s.pools.close()


def local_dir(tmp_path: Path, name: str = "local") -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def connect_local(storage: Storage, path: Path) -> None:
    assert storage.connect_storage_server(4, [{"id": new_id(), "connection": str(path)}])[0]["status"] == 0


def make_domain(storage: Storage, tmp_path: Path, name: str = "local", klass: int = 1) -> str:
    path = local_dir(tmp_path, name)
    connect_local(storage, path)
    sd = new_id()
    storage.create_domain(sd, 4, str(path), f"dom {name}", klass)
    return sd


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(path.rglob("*"))}


# -- connections --------------------------------------------------------------------------------


def test_localfs_connection_is_a_symlink_and_disconnect_removes_it(storage: Storage, tmp_path: Path) -> None:
    path = local_dir(tmp_path)
    connect_local(storage, path)
    link = storage.data_center / "mnt" / layout.mount_name(str(path))
    assert link.is_symlink() and os.readlink(link) == str(path)
    assert storage.disconnect_storage_server(4, [{"id": "x", "connection": str(path)}])[0]["status"] == 0
    assert not link.exists()


def test_connection_statuses_are_per_connection(storage: Storage, tmp_path: Path) -> None:
    good, file = local_dir(tmp_path), tmp_path / "file"
    file.write_text("x")
    ids = [new_id() for _ in range(4)]
    statuses = storage.connect_storage_server(4, [
        {"id": ids[0], "connection": str(good)}, {"id": ids[1], "connection": str(tmp_path / "missing")},
        {"id": ids[2], "connection": str(file)}, {"id": ids[3], "connection": "relative/path"}])
    assert statuses == [{"id": ids[0], "status": 0}, {"id": ids[1], "status": 453},
                        {"id": ids[2], "status": 469}, {"id": ids[3], "status": 453}]


def test_nfs_mount_failure_is_477_and_leaves_no_directory(storage: Storage) -> None:
    cid = new_id()
    status = storage.connect_storage_server(1, [{"id": cid, "connection": "server:/export",
                                                 "protocol_version": "4.1", "mnt_options": "sec=sys"}])
    assert status == [{"id": cid, "status": 477}]
    assert not (storage.data_center / "mnt" / "server:_export").exists()
    run = storage.connections._run
    assert isinstance(run, Runs)
    assert run.calls == [["mount", "-t", "nfs", "-o",
                          "soft,nosharecache,timeo=100,retrans=3,nfsvers=4,minorversion=1,sec=sys",
                          "server:/export", str(storage.data_center / "mnt" / "server:_export")]]


def test_nfs_options_are_vdsms() -> None:
    assert nfs_options({}) == "soft,nosharecache,timeo=100,retrans=3,nolock"
    assert nfs_options({"protocol_version": "3", "timeout": 600, "retrans": 6}) == \
        "soft,nosharecache,timeo=600,retrans=6,nfsvers=3,nolock"
    assert nfs_options({"protocol_version": "auto", "mnt_options": "lock"}) == \
        "soft,nosharecache,timeo=100,retrans=3,lock"


def test_block_storage_types_are_refused_per_connection(storage: Storage) -> None:
    assert storage.connect_storage_server(3, [{"id": "a", "connection": "10.0.0.1"}]) == [{"id": "a", "status": 372}]


# -- domains ------------------------------------------------------------------------------------


def test_create_makes_vdsms_tree(storage: Storage, tmp_path: Path) -> None:
    sd = make_domain(storage, tmp_path)
    dom = tmp_path / "local" / sd
    sizes = {p.name: p.stat().st_size for p in (dom / "dom_md").iterdir()}
    assert sizes == {"ids": 1 << 20, "leases": 2 << 20, "xleases": (1 << 20) + 62 * 4096, "inbox": 16 << 20,
                     "outbox": 16 << 20, "metadata": sizes["metadata"]}
    assert (dom / "images").is_dir()
    lines = (dom / "dom_md" / "metadata").read_text().splitlines()
    assert lines[:-1] == [
        "ALIGNMENT=1048576", "BLOCK_SIZE=512", "CLASS=Data", "DESCRIPTION=dom local", "IOOPTIMEOUTSEC=10",
        "LEASERETRIES=3", "LEASETIMESEC=60", "LOCKPOLICY=", "LOCKRENEWALINTERVALSEC=5", "POOL_UUID=",
        f"REMOTE_PATH={tmp_path / 'local'}", "ROLE=Regular", f"SDUUID={sd}", "TYPE=LOCALFS", "VERSION=5"]
    assert lines[-1] == "_SHA_CKSUM=" + hashlib.sha1("".join(lines[:-1]).encode()).hexdigest()
    assert storage.domain_info(sd)["name"] == "dom local"
    assert storage.domain_ids() == [sd]
    assert storage.domain_ids(storage_type="LOCALFS", domain_class="Data") == [sd]
    assert storage.domain_ids(domain_class="Iso") == []


def test_iso_domain_has_the_iso_image_directory_and_file_stats(storage: Storage, tmp_path: Path) -> None:
    sd = make_domain(storage, tmp_path, klass=2)
    iso_dir = tmp_path / "local" / sd / "images" / "11111111-1111-1111-1111-111111111111"
    (iso_dir / "debian.ISO").write_bytes(b"x" * 10)
    (iso_dir / "notes.txt").write_text("n")
    assert set(storage.file_stats(sd, "*.iso", False)) == {"debian.ISO"}
    assert storage.file_stats(sd, "*.iso", True) == {}
    assert storage.file_stats(sd, "*", True)["debian.ISO"]["size"] == "10"


def test_create_refuses_a_path_holding_a_domain_and_changes_nothing(storage: Storage, tmp_path: Path) -> None:
    make_domain(storage, tmp_path)
    before = tree(tmp_path / "local")
    with pytest.raises(StorageDomainNotEmpty) as err:
        storage.create_domain(new_id(), 4, str(tmp_path / "local"), "second", 1)
    assert err.value.code == 361
    assert tree(tmp_path / "local") == before


def test_create_refusals(storage: Storage, tmp_path: Path) -> None:
    sd = make_domain(storage, tmp_path)
    other = local_dir(tmp_path, "other")
    with pytest.raises(StorageDomainAlreadyExists):
        storage.create_domain(sd, 4, str(other), "again", 1)
    with pytest.raises(StorageDomainFSNotMounted):
        storage.create_domain(new_id(), 4, str(other), "not connected", 1)
    connect_local(storage, other)
    with pytest.raises(StorageDomainTypeError):
        storage.create_domain(new_id(), 3, str(other), "iscsi", 1)
    with pytest.raises(StorageDomainDescriptionTooLongError):
        storage.create_domain(new_id(), 4, str(other), "n" * 51, 1)
    assert list(other.iterdir()) == []


def test_set_description_validate_images_stats_and_dump(storage: Storage, tmp_path: Path) -> None:
    sd = make_domain(storage, tmp_path)
    storage.set_domain_description(sd, "renamed")
    assert storage.domain_info(sd)["name"] == "renamed"
    storage.validate_domain(sd)
    img = new_id()
    (tmp_path / "local" / sd / "images" / img).mkdir()
    assert storage.domain_images(sd) == [img]
    assert int(storage.domain_stats(sd)["disktotal"]) > 0
    dump = storage.dump_domain(sd, full=True)
    assert dump["metadata"]["uuid"] == sd and dump["xleases"]["index"]["lockspace"] == sd


def test_unknown_domain_is_358(storage: Storage) -> None:
    for call in (storage.domain_info, storage.domain_stats, storage.domain_images, storage.validate_domain):
        with pytest.raises(StorageDomainDoesNotExist) as err:
            call(new_id())
        assert err.value.code == 358


def test_format_removes_an_unattached_domain(storage: Storage, tmp_path: Path) -> None:
    sd = make_domain(storage, tmp_path)
    storage.format_domain(sd, False)
    assert list((tmp_path / "local").iterdir()) == []


# -- reading a tree VDSM made -------------------------------------------------------------------


def vdsm_md(pairs: dict[str, str]) -> bytes:
    lines = [f"{k}={v}" for k, v in sorted(pairs.items())]
    return ("".join(line + "\n" for line in lines)
            + "_SHA_CKSUM=" + hashlib.sha1("".join(lines).encode()).hexdigest() + "\n").encode()


def build_vdsm_domain(mount: Path, sd: str, remote: str, **extra: str) -> Path:
    """A file domain laid out by hand from vdsm-compat.md's 'Storage on disk'."""
    dom = mount / sd
    (dom / "dom_md").mkdir(parents=True)
    (dom / "images").mkdir()
    for name, size in (("ids", 1 << 20), ("leases", 2 << 20), ("xleases", 1 << 20), ("inbox", 16 << 20),
                       ("outbox", 16 << 20)):
        with open(dom / "dom_md" / name, "wb") as f:
            f.truncate(size)
    md = {"ALIGNMENT": "1048576", "BLOCK_SIZE": "512", "CLASS": "Data", "DESCRIPTION": "made by vdsm",
          "IOOPTIMEOUTSEC": "10", "LEASERETRIES": "3", "LEASETIMESEC": "60", "LOCKPOLICY": "",
          "LOCKRENEWALINTERVALSEC": "5", "POOL_UUID": "", "REMOTE_PATH": remote, "ROLE": "Regular", "SDUUID": sd,
          "TYPE": "NFS", "VERSION": "5", **extra}
    (dom / "dom_md" / "metadata").write_bytes(vdsm_md(md))
    return dom


def test_reads_a_domain_vdsm_made(storage: Storage) -> None:
    sd, sp = new_id(), new_id()
    mount = storage.data_center / "mnt" / "nfs.example:_export_data"
    build_vdsm_domain(mount, sd, "nfs.example:/export/data", POOL_UUID=sp, ROLE="Master", MASTER_VERSION="3",
                      POOL_DESCRIPTION="dc1", POOL_DOMAINS=f"{sd}:Active", POOL_SPM_ID="-1", POOL_SPM_LVER="7")
    info = storage.domain_info(sd)
    assert (info["type"], info["class"], info["name"], info["pool"], info["master_ver"], info["lver"]) == \
        ("NFS", "Data", "made by vdsm", [sp], 3, 7)
    storage.validate_domain(sd)
    storage.connect_pool(sp, 1, sd, 3)
    assert storage.pool_info(sp)["info"]["name"] == "dc1"
    assert (storage.data_center / sp / sd).resolve() == (mount / sd).resolve()
    assert (storage.data_center / sp / "mastersd").resolve() == (mount / sd).resolve()


# -- pools --------------------------------------------------------------------------------------


def test_pool_life_cycle(storage: Storage, tmp_path: Path) -> None:
    master, other = make_domain(storage, tmp_path, "a"), make_domain(storage, tmp_path, "b")
    sp = new_id()
    storage.create_pool(sp, "dc", master, 1, [master], {"leaseTimeSec": 80})
    assert storage.domain_info(master)["role"] == "Master"
    with pytest.raises(StoragePoolUnknown):
        storage.pool_info(sp)
    with pytest.raises(StoragePoolWrongMaster):
        storage.connect_pool(sp, 1, master, 2)
    storage.connect_pool(sp, 1, master, 1)
    assert storage.connected_pools() == [sp]
    with pytest.raises(SpmStatusError):
        storage.attach_domain(other, sp)
    assert storage.spm_status(sp) == {"spmStatus": "Free", "spmId": -1, "spmLver": -1}
    storage.spm_start(sp, -1, -1)
    assert storage.spm_status(sp) == {"spmStatus": "SPM", "spmId": 1, "spmLver": 0}
    storage.attach_domain(other, sp)
    assert storage.domain_info(other)["pool"] == [sp]
    assert storage.pool_info(sp)["dominfo"][other]["status"] == "Attached"
    storage.activate_domain(other, sp)
    with pytest.raises(StorageDomainActive):
        storage.detach_domain(other, sp)
    with pytest.raises(CannotDetachMasterStorageDomain):
        storage.detach_domain(master, sp)
    with pytest.raises(CannotFormatStorageDomainInConnectedPool):
        storage.format_domain(other, True)
    storage.deactivate_domain(other, sp)
    storage.detach_domain(other, sp)
    assert storage.domain_info(other)["pool"] == []
    with pytest.raises(StorageDomainNotInPool):
        storage.activate_domain(other, sp)
    storage.set_pool_description(sp, "renamed")
    assert storage.pool_info(sp)["info"]["name"] == "renamed"
    storage.spm_stop(sp)
    storage.disconnect_pool(sp, 1)
    assert storage.connected_pools() == [] and not (storage.data_center / sp).exists()
    with pytest.raises(StoragePoolUnknown):
        storage.spm_stop(sp)


def test_pool_create_refuses_a_domain_in_another_pool(storage: Storage, tmp_path: Path) -> None:
    master, other = make_domain(storage, tmp_path, "a"), make_domain(storage, tmp_path, "b")
    storage.create_pool(new_id(), "one", other, 1, [other], {})
    with pytest.raises(StorageDomainAlreadyAttached):
        storage.create_pool(new_id(), "two", master, 1, [master, other], {})
    assert storage.domain_info(master)["pool"] == []


def test_format_of_an_attached_domain_needs_auto_detach(storage: Storage, tmp_path: Path) -> None:
    master = make_domain(storage, tmp_path, "a")
    storage.create_pool(new_id(), "dc", master, 1, [master], {})
    with pytest.raises(CannotFormatAttachedStorageDomain):
        storage.format_domain(master, False)
    storage.format_domain(master, True)
    assert list((tmp_path / "a").iterdir()) == []


def test_destroy_detaches_every_domain(storage: Storage, tmp_path: Path) -> None:
    master, other = make_domain(storage, tmp_path, "a"), make_domain(storage, tmp_path, "b")
    sp = new_id()
    storage.create_pool(sp, "dc", master, 1, [master, other], {})
    storage.connect_pool(sp, 1, master, 1)
    storage.destroy_pool(sp, 1)
    assert storage.domain_info(master)["pool"] == [] and storage.domain_info(master)["role"] == "Regular"
    assert storage.domain_info(other)["pool"] == []
    assert storage.connected_pools() == []


# -- the monitor --------------------------------------------------------------------------------


def test_monitor_reports_a_corrupt_domain_and_keeps_the_rest(storage: Storage, tmp_path: Path,
                                                             events: list[tuple[str, dict[str, Any]]]) -> None:
    good, bad = make_domain(storage, tmp_path, "a"), make_domain(storage, tmp_path, "b")
    for sd in (good, bad):
        storage.start_monitoring(sd, 1)
    storage.monitor.check_all()
    assert all(v["valid"] and v["actual"] for v in storage.repo_stats().values())
    events.clear()
    metadata = tmp_path / "b" / bad / "dom_md" / "metadata"
    metadata.write_bytes(metadata.read_bytes().replace(b"CLASS=Data\n", b"CLASS=Data\nnonsense\n"))
    storage.monitor.check_all()
    shown = layout.metadata_path(storage.domains.path(bad))
    stats = storage.repo_stats()
    assert stats[good]["valid"] and not stats[bad]["valid"] and stats[bad]["code"] == 753
    assert events == [(EVENT_PREFIX + bad, {"sdUUID": bad, "valid": False, "code": 753,
                                            "message": f"{shown}, line 4: not KEY=value: 'nonsense'",
                                            "delay": events[0][1]["delay"]})]
    row = {r["uuid"]: r for r in storage.listing()}[bad]
    assert row["valid"] is False and "line 4" in row["error"]["message"]
    assert storage.domain_info(good)["uuid"] == good
    storage.stop_monitoring(bad)
    storage.monitor.check_all()
    assert set(storage.repo_stats()) == {good}


def test_the_monitor_thread_checks_and_stops(storage: Storage, tmp_path: Path,
                                             events: list[tuple[str, dict[str, Any]]]) -> None:
    sd = make_domain(storage, tmp_path)
    storage.monitor.interval = 0.05
    storage.start()
    try:
        storage.start_monitoring(sd, 1)
        deadline = time.monotonic() + 5
        while not storage.repo_stats().get(sd, {}).get("actual") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert storage.repo_stats()[sd]["valid"]
        assert [name for name, _ in events] == [EVENT_PREFIX + sd]
    finally:
        storage.stop()
    assert not storage.monitor.alive


def test_the_monitor_starts_again_after_a_stop(storage: Storage, tmp_path: Path) -> None:
    sd = make_domain(storage, tmp_path)
    storage.start_monitoring(sd, 1)
    for _ in range(2):
        storage.monitor.interval = 0.05
        storage.start()
        assert storage.monitor.alive
        storage.stop()
        assert not storage.monitor.alive
    assert [t.name for t in threading.enumerate() if t.name == "storage-monitor"] == []


def test_host_stats_carry_the_watched_domains_vitals(storage: Storage, tmp_path: Path) -> None:
    from pier.host.storage.host import HostWithStorage
    from tests.fakes import FakeHost, FakeVms, as_services

    sd = make_domain(storage, tmp_path)
    storage.start_monitoring(sd, 1)
    storage.monitor.check_all()
    host, _ = as_services(FakeHost(FakeVms(lambda name, params: None)), FakeVms(lambda name, params: None))
    stats = HostWithStorage(host, storage).stats()
    assert stats["storageDomains"][sd]["valid"] is True and "cpuIdle" in stats

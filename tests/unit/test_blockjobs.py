"""libvirt's block job events over fakes: the dispatcher refreshes the VM and publishes
`|pier|VM_block_job|<vmId>`; DiskReplications tells its listeners of a copy that ended without
`finish` (failed, or pivoted/aborted outside Pier), and not of one `finish` ended or a late event."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any, cast

import libvirt
import pytest

from pier.host.connection import Connection
from pier.host.domain import Domain
from pier.host.events import EventDispatcher
from pier.host.news import BlockJob
from pier.host.replicate import CopyEnded, DiskReplications
from pier.host.vmstate import UP, VmCache, VmRecord

VM = str(uuid.uuid4())
COPY, COMMIT = libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY, libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT
FAILED, CANCELED = libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED, libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED
COMPLETED, READY = libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED, libvirt.VIR_DOMAIN_BLOCK_JOB_READY


def disk_xml(leaf: str, mirror: str | None = None) -> str:
    copy = f"<mirror type='file' job='copy'><format type='qcow2'/><source file='{mirror}'/></mirror>" if mirror else ""
    return (f"<domain><devices><disk type='file' device='disk'><source file='{leaf}'/><target dev='vda'/>"
            f"<backingStore type='file'><source file='/sd1/base'/><backingStore/></backingStore>{copy}</disk>"
            "</devices></domain>")


class FakeDomain:
    """A running libvirt domain with one drive (vda) on /sd1/top; copies as libvirt runs them."""

    def __init__(self) -> None:
        self.leaf, self.mirror = "/sd1/top", cast(str | None, None)

    def UUIDString(self) -> str:  # noqa: N802 - libvirt's name
        return VM

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
        return disk_xml(self.leaf, self.mirror)

    def blockJobInfo(self, drive: str, flags: int) -> dict[str, int]:  # noqa: N802
        return {"type": COPY, "cur": 1, "end": 1} if self.mirror else {}

    def blockCopy(self, drive: str, xml: str, params: Any, flags: int) -> None:  # noqa: N802
        self.mirror = xml.split("file=\"")[1].split("\"")[0]

    def blockJobAbort(self, drive: str, flags: int) -> None:  # noqa: N802
        if flags & libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT:
            self.leaf = str(self.mirror)
        self.mirror = None


class FakeConnection:
    def __init__(self, dom: FakeDomain) -> None:
        self.dom = dom

    def get(self) -> FakeConnection:
        return self

    def lookupByUUIDString(self, vm_id: str) -> FakeDomain:  # noqa: N802
        if vm_id != VM:
            raise libvirt.libvirtError("no domain")
        return self.dom

    def listAllDomains(self, flags: int) -> list[FakeDomain]:  # noqa: N802
        return [self.dom]

    def check(self, exc: Exception, conn: Any = None) -> None:
        pass


@pytest.fixture
def copies() -> tuple[DiskReplications, FakeDomain, list[CopyEnded], list[str]]:
    dom = FakeDomain()
    ended: list[CopyEnded] = []
    refreshed: list[str] = []
    service = DiskReplications(cast(Connection, FakeConnection(dom)), lambda d: refreshed.append(cast(Domain, d).vm_id))
    service.on_copy_ended(ended.append)
    return service, dom, ended, refreshed


def test_a_copy_libvirt_failed_is_told_with_where_it_went(copies: Any) -> None:
    service, dom, ended, refreshed = copies
    service.start(VM, "/sd1/top", "/sd2/top", "qcow2")
    dom.mirror = None  # QEMU's mirror failed (ENOSPC): libvirt dropped it
    service.block_job(VM, "vda", COPY, FAILED)
    assert [(e.status, e.pivoted, e.replica.source, e.replica.dest) for e in ended] == [
        ("failed", False, "/sd1/top", "/sd2/top")]
    assert refreshed[-1] == VM and service.vm_jobs(VM) == {}
    service.block_job(VM, "vda", COPY, FAILED)  # told once
    assert len(ended) == 1


def test_a_pivot_done_outside_pier_is_told_as_pivoted(copies: Any) -> None:
    service, dom, ended, _ = copies
    service.start(VM, "/sd1/top", "/sd2/top", "qcow2")
    dom.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)  # virsh blockjob --pivot
    service.block_job(VM, "vda", COPY, COMPLETED)
    assert [(e.status, e.pivoted) for e in ended] == [("completed", True)]


def test_a_copy_found_again_after_a_restart_is_followed_too(copies: Any) -> None:
    service, dom, ended, _ = copies
    dom.mirror = "/sd2/top"  # running before this pierd started
    assert len(service.vm_jobs(VM)) == 1
    dom.mirror = None
    service.block_job(VM, "vda", COPY, CANCELED)
    assert [(e.status, e.replica.dest) for e in ended] == [("canceled", "/sd2/top")]


def test_copies_finish_ended_ready_copies_commits_and_late_events_are_no_news(copies: Any) -> None:
    service, dom, ended, refreshed = copies
    service.start(VM, "/sd1/top", "/sd2/top", "qcow2")
    service.block_job(VM, "vda", COPY, READY)
    service.block_job(VM, "vda", COMMIT, COMPLETED)
    service.finish(VM, "/sd1/top", pivot=False)
    service.block_job(VM, "vda", COPY, CANCELED)  # the event of finish's own abort
    service.start(VM, "/sd1/top", "/sd2/top", "qcow2")
    service.block_job(VM, "vda", COPY, CANCELED)  # a late event while a new copy runs: that copy stays
    assert ended == [] and len(refreshed) >= 4
    dom.mirror = None
    service.block_job(VM, "vda", COPY, FAILED)  # the new copy is still followed
    assert [e.status for e in ended] == ["failed"]
    service.block_job(str(uuid.uuid4()), "vda", COPY, FAILED)  # a VM that went: nothing to do


@pytest.fixture
def dispatcher() -> Iterator[tuple[EventDispatcher, VmCache, list[tuple[str, dict[str, Any]]], list[str]]]:
    cache = VmCache()
    emitted: list[tuple[str, dict[str, Any]]] = []
    order: list[str] = []

    def hook(news: BlockJob) -> None:
        order.append(f"hook {threading.current_thread().name} {news.drive}")

    def emit(name: str, params: dict[str, Any]) -> None:
        order.append(f"emit {name}")
        emitted.append((name, params))

    disp = EventDispatcher(cache, emit, dict, lambda: None, dict, on_block_job=hook)
    disp.start()
    yield disp, cache, emitted, order
    disp.stop()


def test_the_dispatcher_refreshes_the_vm_then_publishes_the_block_job(dispatcher: Any) -> None:
    disp, cache, emitted, order = dispatcher
    rec = cache.add(VmRecord(VM, "vm", status=UP, emitted=UP))
    rec.definition = {"devices": ["stale"]}
    disp.put(BlockJob(VM, "vm", "vda", COPY, FAILED))
    disp.put(BlockJob(VM, "vm", "vdb", libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT, READY))
    assert disp.flush()
    assert rec.definition is None  # read again from libvirt at the next look
    assert order == ["hook libvirt-events vda", f"emit |pier|VM_block_job|{VM}",
                     "hook libvirt-events vdb", f"emit |pier|VM_block_job|{VM}"]
    assert [p[VM] for _, p in emitted] == [{"drive": "vda", "jobType": "copy", "status": "failed"},
                                          {"drive": "vdb", "jobType": "commit", "status": "ready"}]
    assert all(p["notify_time"] > 2**31 - 1 for _, p in emitted)


def test_a_hook_that_fails_does_not_lose_the_event() -> None:
    cache = VmCache()
    emitted: list[str] = []

    def hook(news: BlockJob) -> None:
        raise RuntimeError("libvirtd went away")

    disp = EventDispatcher(cache, lambda name, params: emitted.append(name), dict, lambda: None, dict,
                           on_block_job=hook)
    disp.start()
    try:
        disp.put(BlockJob(VM, "vm", "vda", COPY, CANCELED))
        assert disp.flush()
    finally:
        disp.stop()
    assert emitted == [f"|pier|VM_block_job|{VM}"]

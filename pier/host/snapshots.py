"""Live snapshots and block commits of a running VM's disks (`pier.host.services.SnapshotService`).

A snapshot is external, onto files the caller made beforehand (a qcow2 layer over each drive's
current leaf, as VDSM's engine makes them with Volume.create): one `snapshotCreateXML` with
REUSE_EXT|DISK_ONLY|NO_METADATA, so QEMU switches every drive in one transaction: all of them or
none. A memory snapshot saves the guest's memory too, into a file the caller prepared
(<memory snapshot='external'>, without DISK_ONLY), in the same call. The guest's filesystems are
quiesced through its agent when asked and an agent answers; without one the snapshot is taken
unquiesced, and says so.

A merge is libvirt's block commit of a subchain (base..top) of one disk, relative so the chain's
backing names stay VDSM's; when top is the active layer, the job is pivoted once QEMU has mirrored
it (active commit). The job is followed by polling libvirt's block job info, its progress kept for
the VM's `vmJobs`. After a restart, `where` tells how far a merge got from libvirt's own state and
`follow` resumes following a job libvirt still runs (a thread this object owns; `stop` ends it).
"""

from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import libvirt

from pier.host.connection import Connection
from pier.host.devices import Disk
from pier.host.domain import Domain
from pier.host.vmstate import error_text
from pier.rpc.errors import ImageError, MergeError, PierError, ResizeError, SnapshotError

log = logging.getLogger(__name__)

_SNAPSHOT_FLAGS = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                   | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class SnapshotTarget:
    """One drive's snapshot: the drive whose leaf is `base_path` moves onto `path` (a `format`
    file made over that leaf)."""

    base_path: str
    path: str
    format: str = "qcow2"


@dataclass
class BlockJob:
    """A block commit Pier runs or follows, as the VM's stats report it (VDSM's vmJobs entry)."""

    id: str
    vm_id: str
    drive: str
    image: str
    base: str
    top: str
    active: bool
    bandwidth: int = 0
    cur: int = 0
    end: int = 0

    def vdsm(self) -> dict[str, Any]:
        return {"id": self.id, "jobType": "block", "blockJobType": "commit", "bandwidth": self.bandwidth,
                "cur": str(self.cur), "end": str(self.end), "imgUUID": self.image, "drive": self.drive}


@dataclass(frozen=True)
class MergeState:
    """How far a merge got, from libvirt's view of the disk: `state` is running (the job is there,
    at cur of end), merged (top has left the disk's chain) or not-merged (no job, top still there)."""

    state: str
    cur: int = 0
    end: int = 0
    chain: list[str] = field(default_factory=list)


def disk_chains(xml_text: str) -> Iterator[tuple[str, list[str]]]:
    """Each disk's target name and its chain of file paths, leaf first, from a domain XML."""
    root = ET.fromstring(xml_text)
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        if target is None or not target.get("dev"):
            continue
        yield str(target.get("dev")), Disk(disk).chain_paths()


def snapshot_xml(chains: dict[str, list[str]], targets: list[SnapshotTarget], memory_path: str | None = None) -> str:
    """The <domainsnapshot> moving each target's drive onto its file; every other disk stays as it
    is; with `memory_path`, the guest's memory saved into that file too (an external memory snapshot)."""
    by_leaf = {t.base_path: t for t in targets}
    root = ET.Element("domainsnapshot")
    if memory_path is not None:
        ET.SubElement(root, "memory", snapshot="external", file=memory_path)
    disks = ET.SubElement(root, "disks")
    for name, chain in chains.items():
        target = by_leaf.get(chain[0]) if chain else None
        if target is None:
            ET.SubElement(disks, "disk", name=name, snapshot="no")
            continue
        disk = ET.SubElement(disks, "disk", name=name, snapshot="external", type="file")
        ET.SubElement(disk, "source", file=target.path)
        ET.SubElement(disk, "driver", type=target.format)
    return ET.tostring(root, encoding="unicode")


class VmSnapshots:
    """Snapshots, merges and size changes of running VMs' disks over libvirt. `changed(domain)` is
    called after a change of a VM's disks (it refreshes the cached definition and tells the events)."""

    def __init__(self, connection: Connection, changed: Callable[[Domain], Any],
                 poll_seconds: float = POLL_SECONDS) -> None:
        self._connection = connection
        self._changed = changed
        self._poll = poll_seconds
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, BlockJob]] = {}
        self._stopping = threading.Event()
        self._followers: list[threading.Thread] = []

    # -- reading ------------------------------------------------------------------------------------

    def chains(self, vm_id: str) -> dict[str, list[str]]:
        """Each disk of the running VM by target name, with its chain of paths (leaf first)."""
        dom = Domain.lookup(self._connection, vm_id)
        with dom.errors("read the XML of"):
            text = dom.virdomain.XMLDesc(0)
        return dict(disk_chains(text))

    def vm_jobs(self, vm_id: str) -> dict[str, dict[str, Any]]:
        """VDSM's vmJobs of the VM: the block jobs Pier runs or follows on it, as last polled."""
        with self._lock:
            return {job.id: job.vdsm() for job in self._jobs.get(vm_id, {}).values()}

    def all_jobs(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self._lock:
            return {vm: {job.id: job.vdsm() for job in jobs.values()} for vm, jobs in self._jobs.items() if jobs}

    # -- snapshot -----------------------------------------------------------------------------------

    def snapshot(self, vm_id: str, targets: list[SnapshotTarget], quiesce: bool,
                 memory_path: str | None = None) -> dict[str, Any]:
        """Move each target's drive onto its new file in one transaction; `quiesce`: through the
        guest agent when one answers. With `memory_path`, the guest's memory is saved there in the
        same transaction (libvirt pauses the guest meanwhile, so it is not quiesced: it is
        consistent with its memory). Returns {"quiesce": whether the guest was quiesced,
        "heldSeconds": how long libvirt's snapshot calls took, the most the guest was frozen or held}."""
        dom = Domain.lookup(self._connection, vm_id)
        chains = self.chains(vm_id)
        leaves = {chain[0] for chain in chains.values() if chain}
        for target in targets:
            if target.base_path not in leaves:
                raise SnapshotError(f"VM {vm_id} has no drive whose leaf is {target.base_path}",
                                    data={"vmId": vm_id, "path": target.base_path})
        xml = snapshot_xml(chains, targets, memory_path)
        flags = _SNAPSHOT_FLAGS if memory_path is None else _SNAPSHOT_FLAGS & ~libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        quiesced = False
        started = time.monotonic()  # the guest can be frozen (quiesce) or held only inside these calls
        if quiesce and memory_path is None:
            try:
                dom.virdomain.snapshotCreateXML(xml, flags | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)
                quiesced = True
            except libvirt.libvirtError as exc:
                self._connection.check(exc)
                log.info("VM %s: snapshot not quiesced (%s); taking it without the guest agent", vm_id,
                         error_text(exc))
        if not quiesced:
            with dom.errors("take a snapshot of", SnapshotError):
                dom.virdomain.snapshotCreateXML(xml, flags)
        held = time.monotonic() - started
        self._changed(dom)
        return {"quiesce": quiesced, "heldSeconds": round(held, 6)}

    # -- merge --------------------------------------------------------------------------------------

    def drive_of(self, vm_id: str, path: str) -> tuple[str, list[str]]:
        """The target name and chain (leaf first) of the VM's disk whose chain holds `path`."""
        for name, chain in self.chains(vm_id).items():
            if path in chain:
                return name, chain
        raise ImageError(f"VM {vm_id} has no disk whose chain holds {path}", data={"vmId": vm_id, "path": path})

    def commit(self, vm_id: str, job_id: str, image: str, base_path: str, top_path: str, bandwidth: int,
               progress: Callable[[int, str], None], cancelled: threading.Event,
               leave: Callable[[], bool] = lambda: False) -> bool | None:
        """Commit top into base on the VM's disk holding them and follow the job to its end (active
        commit pivots onto base). True when merged, False when cancelled (the job aborted, the
        chain as it was), None when cancelled while `leave()` says to leave the job to libvirt
        (the agent stops; the next start follows it)."""
        drive, chain = self.drive_of(vm_id, top_path)
        if base_path not in chain or chain.index(base_path) <= chain.index(top_path):
            raise MergeError(f"volume {base_path} is not below {top_path} in drive {drive}'s chain",
                             data={"vmId": vm_id, "drive": drive, "base": base_path})
        active = chain[0] == top_path
        flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_RELATIVE | (libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if active else 0)
        dom = Domain.lookup(self._connection, vm_id)
        job = BlockJob(job_id, vm_id, drive, image, base_path, top_path, active, bandwidth)
        with self._lock:
            self._jobs.setdefault(vm_id, {})[job_id] = job
        try:
            with dom.errors(f"commit {top_path} into {base_path} on", MergeError):
                dom.virdomain.blockCommit(drive, base_path, top_path, bandwidth, flags)
            return self._follow(dom, job, progress, cancelled, leave)
        finally:
            self._forget(job)

    def where(self, vm_id: str, top_path: str, base_path: str) -> MergeState:
        """How far a merge of top into base got on the running VM (after a restart)."""
        try:
            drive, chain = self.drive_of(vm_id, base_path)
        except ImageError:
            return MergeState("not-merged")
        dom = Domain.lookup(self._connection, vm_id)
        with dom.errors("read the block jobs of", MergeError):
            info = dom.virdomain.blockJobInfo(drive, 0)
        if info and info.get("type") in (libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT,
                                         libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT):
            return MergeState("running", int(info.get("cur", 0)), int(info.get("end", 0)), chain)
        return MergeState("not-merged" if top_path in chain else "merged", chain=chain)

    def follow(self, vm_id: str, job_id: str, image: str, base_path: str, top_path: str,
               done: Callable[[bool], None]) -> None:
        """Follow a commit libvirt still runs (after a restart) in a thread of this object: pivot an
        active one when ready; then done(merged)."""
        drive, chain = self.drive_of(vm_id, top_path)
        job = BlockJob(job_id, vm_id, drive, image, base_path, top_path, chain[0] == top_path)
        dom = Domain.lookup(self._connection, vm_id)
        with self._lock:
            self._jobs.setdefault(vm_id, {})[job_id] = job

        def run() -> None:
            merged: bool | None = False
            try:
                merged = self._follow(dom, job, lambda percent, message: None, self._stopping)
            except PierError as exc:
                log.warning("VM %s: merge %s followed after a restart failed: %s", vm_id, job_id, exc)
            finally:
                self._forget(job)
            if merged:
                done(True)

        thread = threading.Thread(target=run, name=f"merge-follow-{job_id[:8]}", daemon=True)
        self._followers.append(thread)
        thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following jobs (libvirt goes on with them; the next start finds them again)."""
        self._stopping.set()
        for thread in self._followers:
            thread.join(timeout)
        self._followers.clear()

    def _follow(self, dom: Domain, job: BlockJob, progress: Callable[[int, str], None],
                cancelled: threading.Event, leave: Callable[[], bool] = lambda: True) -> bool | None:
        pivoting = False
        while True:
            with dom.errors("read the block jobs of", MergeError):
                info = dom.virdomain.blockJobInfo(job.drive, 0)
            if not info:
                break
            job.cur, job.end = int(info.get("cur", 0)), int(info.get("end", 0))
            progress(job.cur * 99 // job.end if job.end else 0, f"committing {job.top} into {job.base}")
            if cancelled.is_set() and (cancelled is self._stopping or leave()):
                return None  # the agent stops: libvirt keeps the job, the next start follows it
            if cancelled.is_set():
                with dom.errors("abort the block commit on", MergeError):
                    dom.virdomain.blockJobAbort(job.drive, 0)
                self._wait_gone(dom, job.drive)
                return False
            if job.active and job.end and job.cur == job.end and not pivoting:
                try:
                    dom.virdomain.blockJobAbort(job.drive, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    pivoting = True
                except libvirt.libvirtError as exc:  # not ready yet: QEMU is still mirroring
                    self._connection.check(exc)
            time.sleep(self._poll)
        _, chain = self.drive_of(dom.vm_id, job.base)
        self._changed(dom)
        if job.top in chain:
            raise MergeError(f"the block commit of {job.top} on drive {job.drive} ended without merging it",
                             data={"vmId": dom.vm_id, "drive": job.drive})
        progress(100, f"{job.top} merged into {job.base}")
        return True

    def _wait_gone(self, dom: Domain, drive: str) -> None:
        for _ in range(int(30 / self._poll)):
            with dom.errors("read the block jobs of", MergeError):
                if not dom.virdomain.blockJobInfo(drive, 0):
                    return
            time.sleep(self._poll)

    def _forget(self, job: BlockJob) -> None:
        with self._lock:
            jobs = self._jobs.get(job.vm_id, {})
            jobs.pop(job.id, None)
            if not jobs:
                self._jobs.pop(job.vm_id, None)

    # -- size ---------------------------------------------------------------------------------------

    def resize(self, vm_id: str, path: str, size: int) -> None:
        """Tell QEMU the disk whose leaf is `path` now has `size` bytes (blockResize)."""
        drive, chain = self.drive_of(vm_id, path)
        if chain[0] != path:
            raise ResizeError(f"{path} is not the leaf of drive {drive}", data={"vmId": vm_id, "drive": drive})
        dom = Domain.lookup(self._connection, vm_id)
        with dom.errors(f"resize drive {drive} of", ResizeError):
            dom.virdomain.blockResize(drive, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        self._changed(dom)

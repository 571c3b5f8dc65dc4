"""Live storage moves of a running VM's disk (`pier.host.services.ReplicationService`).

A move is libvirt's block copy of a drive's active layer onto a volume made beforehand in the
destination domain, with REUSE_EXT|SHALLOW: the destination's own backing chain holds the rest (the
engine copies the parents itself, before or during the copy; libvirt opens the destination's
backing chain only when it pivots). QEMU then mirrors every write to both; once the copy is ready,
`finish(pivot=True)` switches the drive onto the destination (blockJobAbort with PIVOT), and
`finish(pivot=False)` ends the copy and leaves the drive where it was.

Nothing here is kept that libvirt does not keep: a copy in progress is the `<mirror>` of a disk in
the live domain XML, so after a restart of the agent `replicas` finds it again and `finish` works
as before. Only the list of VMs to ask about (for their stats' vmJobs) is held in memory; it is
rebuilt from every running domain's XML the first time it is needed.

libvirt's block job events come to `block_job` (on the event dispatcher's thread): the VM's cached
definition is read again (a pivot or an abort done outside Pier shows in its devices at once), and a
copy that ended other than by `finish` (libvirt failed it, e.g. its destination's filesystem is full,
or `virsh blockjob --abort/--pivot`) is told to the `on_copy_ended` listeners as a `CopyEnded`, for
the copy's last state seen (kept for that: the mirror is gone from the XML once the copy ended).
"""

from __future__ import annotations

import logging
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import libvirt

from pier.host.connection import Connection
from pier.host.domain import Domain
from pier.host.snapshots import disk_chains
from pier.rpc.errors import ImageError, PierError, ReplicaError, ReplicationNotInProgress, Unavailable

log = logging.getLogger(__name__)

_COPY_FLAGS = (libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW | libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
               | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
_ENDED = {libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED: "completed", libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED: "failed",
          libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED: "canceled"}
_JOB_IDS = uuid.UUID("6f1d3c58-2a57-4c1e-9a43-0c8e6f1b7d21")  # namespace of the copies' job ids


@dataclass(frozen=True)
class Replica:
    """A drive being copied: `source` is the drive's leaf, `dest` the file QEMU mirrors it to;
    `ready` once every block is copied and writes go to both (then it can pivot)."""

    drive: str
    source: str
    dest: str
    format: str
    ready: bool
    cur: int = 0
    end: int = 0

    def job_id(self, vm_id: str) -> str:
        """A stable id for this copy (the same after a restart), as VDSM's vmJobs key jobs."""
        return str(uuid.uuid5(_JOB_IDS, f"{vm_id}/{self.drive}/{self.dest}"))

    def vdsm(self, vm_id: str) -> dict[str, Any]:
        """The copy as an entry of the VM's vmJobs."""
        return {"id": self.job_id(vm_id), "jobType": "block", "blockJobType": "copy", "bandwidth": 0,
                "cur": str(self.cur), "end": str(self.end), "drive": self.drive, "ready": self.ready,
                "source": self.source, "destination": self.dest}


@dataclass(frozen=True)
class CopyEnded:
    """A copy that ended without `finish`: `status` is libvirt's (completed, failed, canceled);
    `pivoted` when the drive now stands on the copy's destination."""

    vm_id: str
    replica: Replica
    status: str
    pivoted: bool


def replicas_in(xml_text: str) -> dict[str, Replica]:
    """Each disk of a live domain XML that libvirt copies (a `<mirror job='copy'>`), by target name."""
    chains = dict(disk_chains(xml_text))
    found: dict[str, Replica] = {}
    for disk in ET.fromstring(xml_text).iterfind("devices/disk"):
        mirror, target = disk.find("mirror"), disk.find("target")
        if mirror is None or target is None or mirror.get("job", "copy") != "copy":
            continue
        name = str(target.get("dev"))
        source = mirror.find("source")
        dest = (source.get("file") or source.get("dev") or "") if source is not None else ""
        fmt_el = mirror.find("format")
        fmt = (fmt_el.get("type") if fmt_el is not None else None) or mirror.get("format") or "raw"
        chain = chains.get(name) or [""]
        found[name] = Replica(name, chain[0], dest or str(mirror.get("file", "")), fmt, mirror.get("ready") == "yes")
    return found


def mirror_xml(path: str, fmt: str) -> str:
    """The `<disk>` a block copy writes to: an existing file of format `fmt`."""
    disk = ET.Element("disk", type="file")
    ET.SubElement(disk, "source", file=path)
    ET.SubElement(disk, "driver", type=fmt)
    return ET.tostring(disk, encoding="unicode")


class DiskReplications:
    """Block copies of running VMs' drives over libvirt. `changed(domain)` is called after a
    change of a VM's disks (it refreshes the cached definition and tells the events)."""

    def __init__(self, connection: Connection, changed: Callable[[Domain], Any]) -> None:
        self._connection = connection
        self._changed = changed
        self._lock = threading.Lock()
        self._copying: set[str] | None = None  # VMs with a copy; None until the first scan
        self._seen: dict[tuple[str, str], Replica] = {}  # (vm, drive): each copy's last state seen running
        self._listeners: list[Callable[[CopyEnded], None]] = []

    def on_copy_ended(self, listener: Callable[[CopyEnded], None]) -> None:
        """Call `listener` (on the event dispatcher's thread) for each copy that ends without `finish`."""
        self._listeners.append(listener)

    # -- reading ------------------------------------------------------------------------------------

    def chains(self, vm_id: str) -> dict[str, list[str]]:
        """Each disk of the running VM by target name, with its chain of paths (leaf first)."""
        return dict(disk_chains(self._xml(Domain.lookup(self._connection, vm_id))))

    def replicas(self, vm_id: str) -> dict[str, Replica]:
        """The VM's drives being copied, by target name, with libvirt's progress (cur of end)."""
        dom = Domain.lookup(self._connection, vm_id)
        found = replicas_in(self._xml(dom))
        for name, replica in found.items():
            with dom.errors("read the block jobs of", ReplicaError):
                info = dom.virdomain.blockJobInfo(name, 0)
            if info:
                found[name] = replace(replica, cur=int(info.get("cur", 0)), end=int(info.get("end", 0)))
        self._remember(dom.vm_id, found)
        return found

    def vm_jobs(self, vm_id: str) -> dict[str, dict[str, Any]]:
        """The VM's copies as VDSM's vmJobs entries; libvirt is asked only about VMs known to copy."""
        if vm_id not in self._known():
            return {}
        try:
            found = self.replicas(vm_id)
        except PierError:  # the VM went, or libvirtd is away: nothing to tell now
            found = {}
        if not found:
            self._forget(vm_id)
        return {r.job_id(vm_id): r.vdsm(vm_id) for r in found.values()}

    # -- changing -----------------------------------------------------------------------------------

    def start(self, vm_id: str, source: str, dest: str, fmt: str) -> Replica:
        """Copy the drive whose leaf is `source` onto the existing file `dest` (of format `fmt`,
        whose backing chain holds the rest of the drive's). ReplicaError when the drive runs a
        block job already, or libvirt refuses; ImageError when no drive has that leaf."""
        dom = Domain.lookup(self._connection, vm_id)
        drive = self._drive_with_leaf(dom, source)
        copying = replicas_in(self._xml(dom)).get(drive)
        if copying is not None:
            raise ReplicaError(f"drive {drive} of VM {vm_id} is already being copied to {copying.dest}; "
                               "finish that copy first (VM.diskReplicateFinish)",
                               data={"vmId": vm_id, "drive": drive, "destination": copying.dest})
        with dom.errors("read the block jobs of", ReplicaError):
            busy = dom.virdomain.blockJobInfo(drive, 0)
        if busy:
            raise ReplicaError(f"drive {drive} of VM {vm_id} runs another block job (type {busy.get('type')}); "
                               "wait for it to end", data={"vmId": vm_id, "drive": drive})
        with dom.errors(f"copy drive {drive} to {dest} on", ReplicaError):
            dom.virdomain.blockCopy(drive, mirror_xml(dest, fmt), None, _COPY_FLAGS)
        with self._lock:
            if self._copying is not None:
                self._copying.add(dom.vm_id)
            self._seen[(dom.vm_id, drive)] = Replica(drive, source, dest, fmt, False)
        self._changed(dom)
        return replicas_in(self._xml(dom)).get(drive) or Replica(drive, source, dest, fmt, False)

    def finish(self, vm_id: str, source: str, pivot: bool) -> Replica:
        """End the copy of the drive whose leaf is `source`: pivot onto the copy (Unavailable
        while it is not ready yet), or, unless `pivot`, stop it and stay on the source.
        ReplicationNotInProgress when the drive is not being copied. Returns the copy as it was."""
        dom = Domain.lookup(self._connection, vm_id)
        drive = self._drive_with_leaf(dom, source)
        replica = self.replicas(vm_id).get(drive)
        if replica is None:
            raise ReplicationNotInProgress(f"drive {drive} of VM {vm_id} is not being copied",
                                           data={"vmId": vm_id, "drive": drive})
        if pivot and not replica.ready:
            percent = replica.cur * 100 // replica.end if replica.end else 0
            raise Unavailable(f"the copy of drive {drive} is not ready yet ({percent} %, {replica.cur} of "
                              f"{replica.end}); finish it again later", data={"vmId": vm_id, "drive": drive,
                                                                             "cur": replica.cur, "end": replica.end})
        flags = libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT if pivot else 0
        with self._lock:  # ended here: its event is no news for the listeners
            self._seen.pop((dom.vm_id, drive), None)
        try:
            with dom.errors(f"{'pivot' if pivot else 'stop'} the copy of drive {drive} on", ReplicaError):
                dom.virdomain.blockJobAbort(drive, flags)
        except PierError:
            with self._lock:
                self._seen[(dom.vm_id, drive)] = replica
            raise
        self._changed(dom)
        now = self._xml(dom)
        leaf = (dict(disk_chains(now)).get(drive) or [""])[0]
        wanted = replica.dest if pivot else replica.source
        if leaf != wanted:
            raise ReplicaError(f"drive {drive} of VM {vm_id} is on {leaf} after the copy ended, not on {wanted}",
                               data={"vmId": vm_id, "drive": drive, "path": leaf})
        if not replicas_in(now):
            self._forget(dom.vm_id)
        return replica

    # -- libvirt's block job events -----------------------------------------------------------------

    def block_job(self, vm_id: str, drive: str, job_type: int, status: int) -> None:
        """A block job of the VM became ready or ended (thread: libvirt-events): read its definition
        again, and tell the listeners of a copy that ended without `finish`."""
        try:
            dom = Domain.lookup(self._connection, vm_id)
            self._changed(dom)
            if job_type != libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY or status not in _ENDED:
                return
            with self._lock:
                replica = self._seen.pop((vm_id, drive), None)
            if replica is None:  # ended by `finish`, or a copy Pier never saw
                return
            now = self._xml(dom)
        except PierError as exc:  # the VM went meanwhile (its images go with it), or libvirtd is away
            log.info("VM %s: cannot follow the block job event of drive %s: %s", vm_id, drive, exc)
            return
        running = replicas_in(now)
        if drive in running:  # a late event: a new copy of the drive runs already
            self._remember(vm_id, {drive: running[drive]})
            return
        if not running:
            self._forget(vm_id)
        leaf = (dict(disk_chains(now)).get(drive) or [""])[0]
        ended = CopyEnded(vm_id, replica, _ENDED[status], pivoted=leaf == replica.dest)
        log.warning("VM %s: the copy of drive %s to %s ended without Pier (%s); the drive is on %s",
                    vm_id, drive, replica.dest, ended.status, leaf)
        for listener in list(self._listeners):
            try:
                listener(ended)
            except Exception:
                log.exception("VM %s: cleaning up after the copy of drive %s failed", vm_id, drive)

    # -- helpers ------------------------------------------------------------------------------------

    def _remember(self, vm_id: str, found: dict[str, Replica]) -> None:
        with self._lock:
            for name, replica in found.items():
                self._seen[(vm_id, name)] = replica

    def _xml(self, dom: Domain) -> str:
        with dom.errors("read the XML of"):
            return str(dom.virdomain.XMLDesc(0))

    def _drive_with_leaf(self, dom: Domain, path: str) -> str:
        for name, chain in disk_chains(self._xml(dom)):
            if chain and chain[0] == path:
                return name
        raise ImageError(f"VM {dom.vm_id} has no drive whose leaf is {path}", data={"vmId": dom.vm_id, "path": path})

    def _known(self) -> set[str]:
        """The VMs with a copy: after a start, every running domain whose XML shows one."""
        with self._lock:
            if self._copying is not None:
                return set(self._copying)
        try:
            conn = self._connection.get()
            found: set[str] = set()
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                copies = replicas_in(dom.XMLDesc(0))
                if copies:
                    found.add(dom.UUIDString())
                    self._remember(dom.UUIDString(), copies)
        except (libvirt.libvirtError, PierError) as exc:  # libvirtd away: ask again next time
            log.debug("cannot look for block copies yet: %s", exc)
            return set()
        with self._lock:
            if self._copying is None:
                self._copying = found
            return set(self._copying)

    def _forget(self, vm_id: str) -> None:
        with self._lock:
            if self._copying is not None:
                self._copying.discard(vm_id)

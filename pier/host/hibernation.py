"""A running VM's memory state in a file (`pier.host.services.MemoryStateService`): hibernation
and its restore.

Hibernation is libvirt's `virDomainSaveFlags` into the file the caller prepared (VDSM does the
same): the state lands in the caller's memory volume, where `managedsave` would hide it in
libvirt's own directory, tied to this host's definition. While it runs the VM is "Saving State"
(libvirt pauses the guest to save it); the VM ends Down with VDSM's exit reason "SaveState
succeeded" and stays defined, as VDSM keeps it until it is destroyed. A failed or cancelled save
leaves the guest running as it was (libvirt resumes it).

A restore is `virDomainRestoreFlags` from such a file (or a memory snapshot's, which has the same
format), with the domain XML the state was taken from, its disks pointed where they are now.

The memory-config volume holds what VDSM keeps there (the domain XML and the time the VM had
run), as JSON: VDSM pickles it, but unpickling what a volume holds would run whatever code it
carries. A config that does not parse as Pier's is ignored, as VDSM ignores one it cannot load.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from pier.host.connection import Connection
from pier.host.devices import Disk
from pier.host.domain import Domain, libvirt_errors
from pier.host.news import News, StatusNews
from pier.host.vms import Vms
from pier.host.vmstate import DOWN, SAVING_STATE, UP, error_text
from pier.rpc.errors import CreateError, InvalidParams, MigrateError, TaskCancelled, VMDown

log = logging.getLogger(__name__)

CONF_VERSION = 1
MiB = 1 << 20
DEVICE_STATE_ALLOWANCE = 200 * MiB  # beside the guest's RAM, as oVirt's engine sizes a memory volume
_UNITS = {"b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": MiB, "mib": MiB, "mb": 1000**2,
          "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3, "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4}
_ALIGN = 4096  # the config is padded to whole 4 KiB blocks, as VDSM pads it (qemu-img and block volumes)
_POLL_SECONDS = 0.5


def write_conf(path: str, conf: dict[str, Any]) -> int:
    """Write the memory config (JSON, zero-padded to 4 KiB blocks) at the start of `path` without
    truncating it (a volume keeps its size); the bytes written, synced."""
    data = json.dumps({"pierMemoryConf": CONF_VERSION, **conf}).encode()
    data = data.ljust(-(-len(data) // _ALIGN) * _ALIGN, b"\0")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data)


def read_conf(path: str) -> dict[str, Any] | None:
    """The memory config written by `write_conf`, or None when `path` holds something else."""
    try:
        with open(path, "rb") as f:
            head = f.read(16 << 20)
    except OSError as exc:
        log.warning("cannot read the memory config %s: %s", path, exc)
        return None
    try:
        conf = json.loads(head.rstrip(b"\0"))
    except ValueError:
        return None
    if not isinstance(conf, dict) or conf.get("pierMemoryConf") != CONF_VERSION:
        return None
    return conf


def repoint_disks(xml: str, disks: list[dict[str, Any]]) -> str:
    """The domain XML with each file disk whose image (the directory of its source) is the
    imageID of one of `disks` (prepared drive specs: path, format, volumeChain) put on that
    drive's volume and chain. Only the files change, so the guest's devices stay as they were
    saved (libvirt refuses a restore whose devices differ)."""
    root = ET.fromstring(xml)
    by_image = {str(d["imageID"]): d for d in disks if d.get("imageID") and d.get("path")}
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        if source is None or not source.get("file"):
            continue
        drive = by_image.get(Path(str(source.get("file"))).parent.name)
        if drive is None:
            continue
        source.attrib = {"file": str(drive["path"])}
        for child in list(source):
            source.remove(child)
        driver = disk.find("driver")
        if driver is not None and drive.get("format"):
            driver.set("type", Disk.FORMATS.get(str(drive["format"]), str(drive["format"])))
        for old in disk.findall("backingStore"):
            disk.remove(old)
        Disk._add_chain(disk, drive.get("volumeChain") or [])  # noqa: SLF001 (the one way Pier writes a chain)
        backing = disk.find("backingStore")
        if backing is not None:  # after <source>, where libvirt puts it
            disk.remove(backing)
            disk.insert(list(disk).index(source) + 1, backing)
    return ET.tostring(root, encoding="unicode")


def state_size_estimate(xml: str) -> int:
    """The bytes a saved state of the domain may take, as oVirt's engine sizes a memory volume
    (VmOverheadCalculator.getSnapshotMemorySizeInBytes): the guest's memory (libvirt's <memory>,
    hot-plugged DIMMs included), 200 MiB for the device state, and the video devices' RAM."""
    root = ET.fromstring(xml)
    total = _bytes(root.find("memory")) + DEVICE_STATE_ALLOWANCE
    for model in root.iterfind("devices/video/model"):  # ram, vram, vram64 and vgamem are in KiB
        total += sum(int(model.get(attr) or 0) for attr in ("ram", "vram", "vram64", "vgamem")) << 10
    return total


def _bytes(element: ET.Element | None) -> int:
    if element is None or not (element.text or "").strip():
        return 0
    return int(element.text or 0) * _UNITS.get((element.get("unit") or "KiB").lower(), 1 << 10)


def file_disks(xml: str) -> dict[str, str]:
    """Each file disk of a domain XML: its target name and source path."""
    out = {}
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if source is not None and source.get("file") and target is not None:
            out[str(target.get("dev"))] = str(source.get("file"))
    return out


class MemoryStates:
    """Save a running VM's memory state to a file, and bring a VM back from one. `notify` hands
    status news (Saving State, and Up when a save fails) to the event dispatcher."""

    def __init__(self, connection: Connection, vms: Vms, notify: Callable[[News], None],
                 poll_seconds: float = _POLL_SECONDS) -> None:
        self._connection = connection
        self._vms = vms
        self._notify = notify
        self._poll = poll_seconds

    def domain_xml(self, vm_id: str) -> str:
        """The running VM's domain XML as a restore needs it (libvirt's migratable form)."""
        dom = Domain.lookup(self._connection, vm_id)
        if not dom.is_active():
            raise VMDown(f"Virtual machine {vm_id} is down", data={"vmId": vm_id})
        with dom.errors("read the XML of"):
            return str(dom.virdomain.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE))

    def save(self, vm_id: str, path: str, progress: Callable[[int, str], None],
             cancelled: threading.Event, down_timeout: float = 30.0) -> dict[str, Any]:
        """Save the running VM's state into `path` and stop it (Saving State, then Down); on
        failure or cancel the guest runs on. {"vmId", "stateBytes": the size of the saved state}."""
        dom = Domain.lookup(self._connection, vm_id)
        if not dom.is_active():
            raise VMDown(f"Virtual machine {vm_id} is down", data={"vmId": vm_id})
        self._notify(StatusNews(vm_id, SAVING_STATE))
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(dom, progress, cancelled, done),
                                   name=f"save-{vm_id[:8]}", daemon=True)
        watcher.start()
        try:
            try:
                dom.virdomain.saveFlags(path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
            except libvirt.libvirtError as exc:
                self._connection.check(exc)
                if cancelled.is_set():
                    raise TaskCancelled(f"the hibernation of VM {vm_id} was cancelled; the VM runs on",
                                        data={"vmId": vm_id}) from None
                raise MigrateError(f"cannot save the state of VM {vm_id} into {path}: {error_text(exc)}",
                                   data={"vmId": vm_id, "path": path, "libvirtCode": exc.get_error_code()}) from None
        except BaseException:
            self._notify(StatusNews(vm_id, UP))
            raise
        finally:
            done.set()
            watcher.join(5)
        progress(99, "state saved; waiting for the VM to be reported Down")
        self._vms.wait_status(vm_id, {DOWN}, down_timeout)
        return {"vmId": vm_id, "stateBytes": os.path.getsize(path)}

    def _watch(self, dom: Domain, progress: Callable[[int, str], None], cancelled: threading.Event,
               done: threading.Event) -> None:
        """Report the save's progress from libvirt's job; abort the job when the task is cancelled."""
        while not done.wait(self._poll):
            try:
                if cancelled.is_set():
                    dom.virdomain.abortJob()
                    return
                stats = dom.virdomain.jobStats(0)
            except libvirt.libvirtError as exc:  # the job ended meanwhile, or never started
                log.debug("VM %s: no save job to read: %s", dom.vm_id, error_text(exc))
                continue
            total = int(stats.get("memory_total") or stats.get("data_total") or 0)
            processed = int(stats.get("memory_processed") or stats.get("data_processed") or 0)
            if total:
                progress(min(98, 5 + processed * 93 // total), f"saved {processed} of {total} bytes of memory")

    def save_ended(self, vm_id: str, timeout: float) -> bool:
        """Whether libvirt's job on the VM (after a restart: a save begun for a pierd that died) has
        ended and the VM is reported Up or Down again, waiting up to `timeout` s."""
        dom = Domain.lookup(self._connection, vm_id)
        deadline = time.monotonic() + timeout
        while True:
            try:
                running = dom.is_active() and dom.virdomain.jobStats(0).get("type", libvirt.VIR_DOMAIN_JOB_NONE) \
                    not in (libvirt.VIR_DOMAIN_JOB_NONE, libvirt.VIR_DOMAIN_JOB_COMPLETED)
            except libvirt.libvirtError as exc:  # the domain stopped meanwhile
                log.debug("VM %s: no job to read: %s", vm_id, error_text(exc))
                running = False
            if not running:
                return self._vms.wait_status(vm_id, {UP, DOWN}, max(0.0, deadline - time.monotonic())) is not None
            if time.monotonic() >= deadline:
                return False
            time.sleep(self._poll)

    def saved_xml(self, path: str) -> str:
        """The domain XML libvirt wrote into a save image (or a memory snapshot)."""
        conn = self._connection.get()
        with libvirt_errors(self._connection, conn, action=f"read the saved state in {path}", error=CreateError):
            return str(conn.saveImageGetXMLDesc(path, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE))

    def restore(self, vm_id: str, xml: str, path: str) -> dict[str, Any]:
        """Define the VM from `xml` and bring it back running from the state in `path`: Restoring
        state, then Up. Its VmDefinition."""
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise InvalidParams(f"restoreState: {path} holds no saved state", data={"field": "restoreState"})
        return self._vms.restore(vm_id, xml, path)

"""Pull-mode backups of running VMs through libvirt's backup API (VDSM's VM.start_backup,
VM.stop_backup, VM.backup_info).

A backup is libvirt's: `virDomainBackupBegin` with `<domainbackup mode='pull'>` makes QEMU serve
each chosen disk over NBD on the unix socket `<run dir>/<backup id>.sock` (export `vda`, and for
an incremental backup the dirty bitmap `backup-vda` beside it), while writes of the guest go on
and the old data is kept in a scratch file libvirt creates in `<domain>/backup-scratch/<backup
id>/` on the disk's own storage domain and removes when the job ends; or, when the caller names
one (VDSM's scratch_disk: a qcow2 volume the engine made and prepared), in that volume, which
libvirt reuses and leaves in place (Pier then makes its own scratch files of the other disks). Pier keeps no state of its
own: the backup id is the socket's name, so the running backup (and its NBD URLs) is read back
from the domain's backup XML at any time, after a pierd restart too; `reconcile` then removes
scratch directories and sockets of backups that no longer run.

A disk is named as VDSM names it (domainID, imageID, volumeID: the volume the VM's disk has as
its top); the answer maps each imageID to `nbd:unix:<socket>:exportname=<disk>`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from pier.host.checkpoints import BackupDisk, CheckpointVerbs, checkpoint_xml_for
from pier.host.connection import Connection
from pier.host.domain import Domain
from pier.host.domxml import parse_xml
from pier.host.storage import layout
from pier.host.storage.volumes import Volume, Volumes
from pier.host.vmstate import error_text
from pier.rpc.errors import (
    BackupError,
    CheckpointError,
    InconsistentCheckpointError,
    NoSuchBackupError,
    NoSuchCheckpointError,
    VMDown,
)

log = logging.getLogger("pier.backup")

SCRATCH_DIR = "backup-scratch"
SOCKET_SUFFIX = ".sock"
SOCKET_PATH_MAX = 107
STOP_TIMEOUT = 30.0


def backup_run_dir(state_dir: str) -> Path:
    """Where backup sockets go: /run/pier/backup for root, else `<state dir>/backup`."""
    return Path("/run/pier/backup") if os.geteuid() == 0 else Path(state_dir) / "backup"


def nbd_url(socket_path: str, export: str) -> str:
    return f"nbd:unix:{socket_path}:exportname={export}"


class Backups(CheckpointVerbs):
    """Backups and checkpoints of the VMs on one libvirt connection (see the module docstring)."""

    def __init__(self, connection: Connection, data_center: Path, run_dir: Path) -> None:
        self._connection = connection
        self._volumes = Volumes(Path(data_center))
        self.run_dir = Path(run_dir)

    # -- backups ---------------------------------------------------------------------------------

    def start_backup(self, vm_id: str, config: dict[str, Any]) -> dict[str, Any]:
        """Begin a pull-mode backup (BackupConfig); its BackupInfo. Refused, with nothing changed,
        for a VM that is not running, one with a backup running, an unknown from_checkpoint_id or
        an existing to_checkpoint_id, and disks the VM does not have."""
        dom = Domain.lookup(self._connection, vm_id)
        backup_id = str(config["backup_id"]).lower()
        if not dom.is_active():
            raise VMDown(f"Virtual machine {dom.vm_id} is down: only a running VM is backed up",
                         data={"vmId": dom.vm_id})
        running = self._running_xml(dom)
        if running is not None:
            raise BackupError(f"VM {dom.vm_id} already runs backup {_backup_id_of(running)}; stop it first",
                              data={"vmId": dom.vm_id, "backup_id": _backup_id_of(running)})
        source, target = config.get("from_checkpoint_id"), config.get("to_checkpoint_id")
        if source and not self._has_checkpoint(dom, source):
            raise NoSuchCheckpointError(f"config.from_checkpoint_id: VM {dom.vm_id} has no checkpoint {source}",
                                        data={"field": "config.from_checkpoint_id", "checkpoint_id": source})
        if target and self._has_checkpoint(dom, target):
            raise CheckpointError(f"config.to_checkpoint_id: VM {dom.vm_id} already has checkpoint {target}",
                                  data={"field": "config.to_checkpoint_id", "checkpoint_id": target})
        disks = self.backup_disks(dom, backup_id, config)
        for disk in disks:
            if disk.backup_mode == "incremental" and not source:
                raise BackupError(f"config.disks: disk {disk.img} asks for an incremental backup of a full one "
                                  "(no from_checkpoint_id)", data={"field": "config.disks"})
        socket_path = self._socket(dom, backup_id)
        backup_xml = _backup_xml(socket_path, disks, source)
        checkpoint_xml = checkpoint_xml_for(config, disks) if target else None
        reuse = any(disk.scratch_given for disk in disks)  # libvirt then makes no scratch file: Pier makes its own
        try:
            for disk in disks:
                if not disk.scratch_given:
                    disk.scratch.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    if reuse:
                        _make_scratch(dom, disk)
            frozen = self._freeze(dom, bool(config.get("require_consistency")))
            try:
                log.info("VM %s: starting backup %s of %s%s", dom.vm_id, backup_id, ", ".join(d.name for d in disks),
                         f" from checkpoint {source}" if source else "")
                self._begin(dom, backup_xml, checkpoint_xml,
                            libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL if reuse else 0)
            finally:
                if frozen:
                    self._thaw(dom)
        except BaseException:
            self._remove_scratch(backup_id)
            raise
        return self.backup_info(dom.vm_id, backup_id, target)

    def stop_backup(self, vm_id: str, backup_id: str) -> None:
        """End backup `backup_id` and remove its scratch files and socket. A backup that no longer
        runs (or a VM that is down) is fine: only what it left is removed; another backup running
        on the VM is not touched (NoSuchBackupError)."""
        dom = Domain.lookup(self._connection, vm_id)
        backup_id = backup_id.lower()
        running = self._running_xml(dom) if dom.is_active() else None
        if running is not None:
            found = _backup_id_of(running)
            if found != backup_id:
                raise NoSuchBackupError(f"VM {dom.vm_id} runs backup {found}, not {backup_id}",
                                        data={"vmId": dom.vm_id, "backup_id": backup_id})
            with dom.errors("stop the backup of", BackupError, by_state=False):
                try:
                    dom.virdomain.abortJob()
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                        raise
            self._wait_ended(dom, backup_id)
            log.info("VM %s: backup %s stopped", dom.vm_id, backup_id)
        self._remove_scratch(backup_id)

    def _wait_ended(self, dom: Domain, backup_id: str) -> None:
        """Wait until libvirt no longer lists the aborted backup (its job ends a moment after)."""
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._running_xml(dom) is not None:
            if time.monotonic() > deadline:
                raise BackupError(f"backup {backup_id} of VM {dom.vm_id} did not end within {STOP_TIMEOUT:.0f} s",
                                  data={"vmId": dom.vm_id, "backup_id": backup_id})
            time.sleep(0.05)

    def backup_info(self, vm_id: str, backup_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
        """BackupInfo of the running backup `backup_id`: each imageID's NBD URL, and the XML of
        checkpoint `checkpoint_id` when it is given and exists."""
        dom = Domain.lookup(self._connection, vm_id)
        backup_id = backup_id.lower()
        running = self._running_xml(dom) if dom.is_active() else None
        if running is None or _backup_id_of(running) != backup_id:
            raise NoSuchBackupError(f"VM {dom.vm_id} runs no backup {backup_id}",
                                    data={"vmId": dom.vm_id, "backup_id": backup_id})
        server = running.find("server")
        socket_path = server.get("socket", "") if server is not None else ""
        images = self._disk_images(dom)
        disks: dict[str, str] = {}
        for disk in running.findall("disks/disk[@backup='yes']"):
            name = disk.get("name", "")
            disks[images.get(name, name)] = nbd_url(socket_path, disk.get("exportname") or name)
        info: dict[str, Any] = {"disks": disks}
        if checkpoint_id:
            with contextlib.suppress(libvirt.libvirtError):
                info["checkpoint"] = dom.virdomain.checkpointLookupByName(checkpoint_id).getXMLDesc()
        return info

    def running_backup(self, vm_id: str) -> str | None:
        """The id of the backup running on the VM, or None."""
        dom = Domain.lookup(self._connection, vm_id)
        running = self._running_xml(dom) if dom.is_active() else None
        return None if running is None else _backup_id_of(running)

    # -- after a restart -------------------------------------------------------------------------

    def reconcile(self) -> list[tuple[str, str]]:
        """Find the backups libvirt runs (they go on; backup_info and stop_backup serve them) and
        remove the scratch directories and sockets of those that ended while pierd was away; the
        (vm id, backup id) pairs found. Nothing is removed while libvirtd is away."""
        conn = self._connection.current()
        if conn is None:
            log.info("libvirtd is away: backup scratch files are left until it answers")
            return []
        found: list[tuple[str, str]] = []
        try:
            if conn.getType() != "QEMU":  # libvirt's test driver runs no backups: nothing to judge by
                return []
            domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as exc:
            log.warning("cannot list VMs to find their backups: %s", error_text(exc))
            return []
        for virdom in domains:
            try:
                text = virdom.backupGetXMLDesc(0)
            except libvirt.libvirtError:
                continue
            backup_id = _backup_id_of(parse_xml(text, "libvirt's backup XML"))
            if backup_id:
                found.append((virdom.UUIDString(), backup_id))
                log.info("VM %s: backup %s runs on (found after a restart)", virdom.UUIDString(), backup_id)
        running = {backup_id for _, backup_id in found}
        for _, domain_dir in layout.iter_domains(self._volumes.data_center):
            scratch_root = domain_dir / SCRATCH_DIR
            for entry in _listdir(scratch_root):
                if entry not in running:
                    log.info("removing scratch files of ended backup %s from %s", entry, scratch_root)
                    shutil.rmtree(scratch_root / entry, ignore_errors=True)
        for entry in _listdir(self.run_dir):
            path = self.run_dir / entry
            if entry.endswith(SOCKET_SUFFIX) and entry[:-len(SOCKET_SUFFIX)] not in running and not _serving(path):
                with contextlib.suppress(OSError):
                    path.unlink()
        return found

    # -- helpers ---------------------------------------------------------------------------------

    def backup_disks(self, dom: Domain, backup_id: str, config: dict[str, Any]) -> list[BackupDisk]:
        """The VM's disks that config.disks name, each with its scratch file; InvalidParams or
        BackupError naming the field for a disk the VM does not have."""
        by_path = {os.path.realpath(path): name for name, path in self._disk_paths(dom).items()}
        disks: list[BackupDisk] = []
        seen: set[str] = set()
        for index, wanted in enumerate(config.get("disks") or []):
            where = f"config.disks.{index}"
            sd, img, vol = (str(wanted[key]).lower() for key in ("domainID", "imageID", "volumeID"))
            if img in seen:
                raise BackupError(f"{where}: image {img} is named twice", data={"field": where})
            seen.add(img)
            volume = self._volumes.volume(sd, img, vol)
            name = by_path.get(os.path.realpath(volume.path))
            if name is None:
                raise BackupError(f"{where}: VM {dom.vm_id} has no disk on volume {vol} (image {img})",
                                  data={"field": where, "vmId": dom.vm_id})
            mode, checkpoint = wanted.get("backup_mode"), bool(wanted.get("checkpoint", True))
            if wanted.get("scratch_disk"):
                scratch, kind = self._given_scratch(f"{where}.scratch_disk", wanted["scratch_disk"], by_path)
                if any(d.scratch == scratch for d in disks):
                    raise BackupError(f"{where}.scratch_disk: scratch volume {scratch} is named twice",
                                      data={"field": f"{where}.scratch_disk"})
                disks.append(BackupDisk(name, img, scratch, mode, checkpoint, scratch_given=True, scratch_type=kind))
            else:
                disks.append(BackupDisk(name, img, volume.domain / SCRATCH_DIR / backup_id / f"{name}.qcow2", mode,
                                        checkpoint))
        if not disks:
            raise BackupError("config.disks: a backup needs at least one disk", data={"field": "config.disks"})
        return disks

    def _given_scratch(self, where: str, given: dict[str, Any], vm_disks: dict[str, str]) -> tuple[Path, str]:
        """The path and type of a caller's scratch volume (VDSM's scratch_disk), named by its ids
        (domainID, imageID, volumeID) or by the path it was prepared at; it must be a volume of
        this data center's domains (where QEMU may write) and none of the VM's disks."""
        kind = str(given.get("type") or "file")
        if kind not in ("file", "block"):
            raise BackupError(f"{where}.type: {kind!r} is neither file nor block", data={"field": f"{where}.type"})
        ids = [given.get(key) for key in ("domainID", "imageID", "volumeID")]
        if all(ids):
            sd, img, vol = (str(part).lower() for part in ids)
            volume = self._volumes.volume(sd, img, vol)
        elif given.get("path"):
            volume = self._volume_at(where, Path(str(given["path"])))
        else:
            raise BackupError(f"{where}: a scratch disk is named by domainID, imageID and volumeID, or by its path",
                              data={"field": where})
        if os.path.realpath(volume.path) in vm_disks:
            raise BackupError(f"{where}: {volume.path} is a disk of the VM, not a scratch volume",
                              data={"field": where})
        if volume.meta().format != "COW":
            raise BackupError(f"{where}: scratch volume {volume.path} is {volume.meta().format}; a scratch volume "
                              "is COW (qcow2)", data={"field": where})
        return volume.path, kind

    def _volume_at(self, where: str, path: Path) -> Volume:
        """The volume of this data center's domains at `path` (BackupError for any other path)."""
        real = Path(os.path.realpath(path))
        for sd, domain_dir in layout.iter_domains(self._volumes.data_center):
            if real.parent.parent == Path(os.path.realpath(domain_dir / "images")):
                return self._volumes.volume(sd, real.parent.name, real.name)
        raise BackupError(f"{where}.path: {path} is no volume of this host's storage domains",
                          data={"field": f"{where}.path"})

    def _disk_paths(self, dom: Domain) -> dict[str, str]:
        """Target name -> source file of each file disk of the running VM."""
        out: dict[str, str] = {}
        for disk in dom.xml().root.findall("devices/disk[@device='disk']"):
            target, source = disk.find("target"), disk.find("source")
            if target is not None and source is not None and source.get("file"):
                out[target.get("dev", "")] = source.get("file", "")
        return out

    def _disk_images(self, dom: Domain) -> dict[str, str]:
        """Target name -> imageID (the directory of the disk's top volume)."""
        return {name: Path(path).parent.name for name, path in self._disk_paths(dom).items()}

    def _socket(self, dom: Domain, backup_id: str) -> str:
        """The socket path for the backup, in a directory QEMU (the VM's DAC user) may write."""
        path = self.run_dir / f"{backup_id}{SOCKET_SUFFIX}"
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise BackupError(f"backup socket path {path} is longer than a unix socket allows")
        self.run_dir.mkdir(mode=0o770, parents=True, exist_ok=True)
        gid = _qemu_gid(dom.xml().root)
        if gid is not None and os.geteuid() == 0:
            os.chown(self.run_dir, 0, gid)
            os.chmod(self.run_dir, 0o770)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return str(path)

    def _running_xml(self, dom: Domain) -> ET.Element | None:
        try:
            with dom.errors("read the backup of", BackupError, by_state=False):
                try:
                    text = dom.virdomain.backupGetXMLDesc(0)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_BACKUP, libvirt.VIR_ERR_OPERATION_INVALID):
                        return None
                    raise
        except VMDown:
            return None
        return parse_xml(text, "libvirt's backup XML")

    @staticmethod
    def _has_checkpoint(dom: Domain, name: str) -> bool:
        try:
            dom.virdomain.checkpointLookupByName(name)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                return False
            with dom.errors("look up a checkpoint of", CheckpointError):
                raise

    @staticmethod
    def _begin(dom: Domain, backup_xml: str, checkpoint_xml: str | None, flags: int) -> None:
        try:
            dom.virdomain.backupBegin(backup_xml, checkpoint_xml, flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_CHECKPOINT_INCONSISTENT:
                raise InconsistentCheckpointError(f"checkpoint cannot be used: {error_text(exc)}",
                                                  data={"vmId": dom.vm_id}) from None
            with dom.errors("start a backup of", BackupError):
                raise

    @staticmethod
    def _freeze(dom: Domain, required: bool) -> bool:
        """Freeze the guest's filesystems through its agent; whether they were. A guest that cannot
        be frozen is backed up as it is unless `required` (BackupError then)."""
        try:
            dom.virdomain.fsFreeze(None, 0)
            return True
        except libvirt.libvirtError as exc:
            if required:
                raise BackupError(f"cannot freeze the guest of VM {dom.vm_id} for a consistent backup: "
                                  f"{error_text(exc)}", data={"vmId": dom.vm_id}) from None
            log.info("VM %s: backing up without freezing the guest (%s)", dom.vm_id, error_text(exc))
            return False

    @staticmethod
    def _thaw(dom: Domain) -> None:
        try:
            dom.virdomain.fsThaw(None, 0)
        except libvirt.libvirtError as exc:
            log.warning("VM %s: cannot thaw the guest after starting a backup: %s", dom.vm_id, error_text(exc))

    def _remove_scratch(self, backup_id: str) -> None:
        for _, domain_dir in layout.iter_domains(self._volumes.data_center):
            shutil.rmtree(domain_dir / SCRATCH_DIR / backup_id, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.run_dir / f"{backup_id}{SOCKET_SUFFIX}").unlink()


def _backup_id_of(backup: ET.Element) -> str:
    """The backup id a running backup's XML carries: its socket's name (empty for a backup Pier
    did not start)."""
    server = backup.find("server")
    name = Path(server.get("socket", "")).name if server is not None else ""
    return name[:-len(SOCKET_SUFFIX)] if name.endswith(SOCKET_SUFFIX) else ""


def _backup_xml(socket_path: str, disks: list[BackupDisk], source: str | None) -> str:
    root = ET.Element("domainbackup", mode="pull")
    if source:
        ET.SubElement(root, "incremental").text = source
    ET.SubElement(root, "server", transport="unix", socket=socket_path)
    listed = ET.SubElement(root, "disks")
    for disk in disks:
        element = ET.SubElement(listed, "disk", name=disk.name, backup="yes", type=disk.scratch_type)
        if disk.backup_mode:
            element.set("backupmode", disk.backup_mode)
            if disk.backup_mode == "incremental" and source:
                element.set("incremental", source)
        ET.SubElement(element, "scratch", {"dev" if disk.scratch_type == "block" else "file": str(disk.scratch)})
    return ET.tostring(root, encoding="unicode")


def _make_scratch(dom: Domain, disk: BackupDisk) -> None:
    """Pier's own scratch file for a disk, made here (as a qcow2 of the disk's size) when libvirt
    reuses the scratch files of a backup rather than making them."""
    with dom.errors(f"read the size of disk {disk.name} of", BackupError):
        capacity = dom.virdomain.blockInfo(disk.name)[0]
    made = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk.scratch), str(capacity)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        raise BackupError(f"cannot make the scratch file {disk.scratch}: {made.stderr.strip()}",
                          data={"vmId": dom.vm_id})


def _qemu_gid(domain: ET.Element) -> int | None:
    """The group QEMU runs as for this VM (its DAC label, "+uid:+gid"), or None."""
    for label in domain.findall("seclabel[@model='dac']/label"):
        _, _, group = (label.text or "").partition(":")
        with contextlib.suppress(ValueError):
            return int(group.lstrip("+"))
    return None


def _serving(path: Path) -> bool:
    """Whether something listens on the unix socket (a backup of another libvirtd sharing /run)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []

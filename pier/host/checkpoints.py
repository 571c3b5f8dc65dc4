"""A VM's checkpoints, through libvirt's checkpoint API (VDSM's VM.list_checkpoints,
VM.redefine_checkpoints, VM.delete_checkpoints, VM.dump_checkpoint).

A checkpoint is made with a backup (its to_checkpoint_id): a dirty bitmap named after it in each
of the VM's qcow2 disks, which libvirt knows by its checkpoint XML. The bitmaps live in the
images; libvirt's metadata of them can be lost (a VM defined again, a host restart in VDSM's
world), so the engine keeps each checkpoint's XML and redefines the list, oldest first, from
that XML or from the backup's config. Redefining and deleting go on until the first failure and
answer the ids done and that failure, as VDSM does.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, NamedTuple

import libvirt

from pier.host.connection import Connection
from pier.host.domain import Domain
from pier.host.domxml import parse_xml
from pier.host.vmstate import error_text
from pier.rpc.errors import CheckpointError, InvalidParams, NoSuchCheckpointError

log = logging.getLogger("pier.backup")


class BackupDisk(NamedTuple):
    """One disk of a backup: the VM's disk (target name) on a volume, and its scratch file: Pier's
    own, or a scratch volume the caller made and names (then it is reused and left in place)."""

    name: str
    img: str
    scratch: Path
    backup_mode: str | None
    checkpoint: bool
    scratch_given: bool = False  # the caller's scratch volume (VDSM's scratch_disk), not Pier's own file
    scratch_type: str = "file"  # "block" for a caller's scratch on a block device


class CheckpointVerbs:
    """The checkpoint verbs, mixed into `pier.host.backup.Backups`."""

    _connection: Connection

    def backup_disks(self, dom: Domain, backup_id: str, config: dict[str, Any]) -> list[BackupDisk]:
        raise NotImplementedError  # the class this is mixed into finds a backup's disks

    def list_checkpoints(self, vm_id: str) -> list[str]:
        """The VM's checkpoint ids, oldest first (parents before children)."""
        dom = Domain.lookup(self._connection, vm_id)
        with dom.errors("list the checkpoints of", CheckpointError, by_state=False):
            found = dom.virdomain.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL)
        return [str(checkpoint.getName()) for checkpoint in found]

    def dump_checkpoint(self, vm_id: str, checkpoint_id: str) -> dict[str, Any]:
        """CheckpointInfo: the checkpoint's XML, as redefine_checkpoints takes it back."""
        dom = Domain.lookup(self._connection, vm_id)
        try:
            return {"checkpoint": dom.virdomain.checkpointLookupByName(checkpoint_id).getXMLDesc(0)}
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise NoSuchCheckpointError(f"VM {dom.vm_id} has no checkpoint {checkpoint_id}",
                                            data={"vmId": dom.vm_id, "checkpoint_id": checkpoint_id}) from None
            with dom.errors("read a checkpoint of", CheckpointError, by_state=False):
                raise

    def _checkpoint_xml(self, dom: Domain, checkpoint: dict[str, Any], where: str) -> str:
        """The XML to redefine one checkpoint from: its own, or made from its backup's config."""
        checkpoint_id = str(checkpoint["id"])
        if checkpoint.get("xml"):
            xml = str(checkpoint["xml"])
            try:
                name = parse_xml(xml, f"{where}.xml").findtext("name")
            except InvalidParams as exc:
                raise CheckpointError(exc.message, data={"field": f"{where}.xml"}) from None
            if name != checkpoint_id:
                raise CheckpointError(f"{where}.xml: names checkpoint {name}, not {checkpoint_id}",
                                      data={"field": f"{where}.xml"})
            return xml
        if checkpoint.get("config") is None:
            raise CheckpointError(f"{where}: a checkpoint is redefined from its xml or its config",
                                  data={"field": where})
        config = dict(checkpoint["config"], to_checkpoint_id=checkpoint_id)
        config.setdefault("backup_id", checkpoint_id)
        disks = self.backup_disks(dom, str(config["backup_id"]), config) if config.get("disks") else []
        return checkpoint_xml_for(config, disks)

    def delete_checkpoints(self, vm_id: str, checkpoint_ids: list[str]) -> dict[str, Any]:
        """Delete checkpoints (and their bitmaps), oldest first; one the VM does not have counts
        as deleted. CheckpointsResponse: the ids deleted, and the error that stopped it, if one did."""
        dom = Domain.lookup(self._connection, vm_id)
        done: list[str] = []
        for checkpoint_id in checkpoint_ids:
            try:
                dom.virdomain.checkpointLookupByName(checkpoint_id).delete(0)
                log.info("VM %s: checkpoint %s deleted", dom.vm_id, checkpoint_id)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                    self._connection.check(exc)
                    log.warning("VM %s: cannot delete checkpoint %s: %s", dom.vm_id, checkpoint_id, error_text(exc))
                    return {"checkpoint_ids": done, "error": {"code": exc.get_error_code(),
                                                              "message": error_text(exc)}}
            done.append(checkpoint_id)
        return {"checkpoint_ids": done}

    def redefine_checkpoints(self, vm_id: str, checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
        """Give libvirt back the metadata of checkpoints whose bitmaps the disks hold, oldest first,
        each from its XML or from the config of the backup that made it. CheckpointsResponse."""
        dom = Domain.lookup(self._connection, vm_id)
        flags = libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
        if dom.is_active():
            flags |= libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE
        made = [(str(checkpoint["id"]), self._checkpoint_xml(dom, checkpoint, f"checkpoints.{index}"))
                for index, checkpoint in enumerate(checkpoints)]  # every one checked before any is made
        done: list[str] = []
        for checkpoint_id, xml in made:
            try:
                dom.virdomain.checkpointCreateXML(xml, flags)
                log.info("VM %s: checkpoint %s redefined", dom.vm_id, checkpoint_id)
            except libvirt.libvirtError as exc:
                self._connection.check(exc)
                log.warning("VM %s: cannot redefine checkpoint %s: %s", dom.vm_id, checkpoint_id, error_text(exc))
                return {"checkpoint_ids": done, "error": {"code": exc.get_error_code(), "message": error_text(exc)}}
            done.append(checkpoint_id)
        return {"checkpoint_ids": done}


def checkpoint_xml_for(config: dict[str, Any], disks: list[BackupDisk]) -> str:
    """The checkpoint XML VDSM makes for a backup's to_checkpoint_id: a bitmap on each disk whose
    `checkpoint` is true."""
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = str(config["to_checkpoint_id"])
    ET.SubElement(root, "description").text = f"checkpoint for backup '{config['backup_id']}'"
    if config.get("creation_time"):
        ET.SubElement(root, "creationTime").text = str(config["creation_time"])
    if disks:
        listed = ET.SubElement(root, "disks")
        for disk in disks:
            if disk.checkpoint:
                ET.SubElement(listed, "disk", name=disk.name, checkpoint="bitmap",
                              bitmap=str(config["to_checkpoint_id"]))
    return ET.tostring(root, encoding="unicode")

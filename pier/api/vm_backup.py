"""Handlers of a VM's backups and checkpoints (VDSM's VM.start_backup, VM.stop_backup,
VM.backup_info and the checkpoint verbs): pull-mode backups served over NBD by libvirt."""

from __future__ import annotations

from typing import Any

from pier.host.services import BackupService
from pier.rpc.registry import CallContext, verb


class VmBackupApi:
    def __init__(self, backups: BackupService) -> None:
        self._backups = backups

    @verb("VM.start_backup")
    def start_backup(self, ctx: CallContext, vmID: str, config: dict[str, Any]) -> dict[str, Any]:
        return self._backups.start_backup(vmID, config)

    @verb("VM.stop_backup")
    def stop_backup(self, ctx: CallContext, vmID: str, backup_id: str) -> None:
        self._backups.stop_backup(vmID, backup_id)

    @verb("VM.backup_info")
    def backup_info(self, ctx: CallContext, vmID: str, backup_id: str,
                    checkpoint_id: str | None = None) -> dict[str, Any]:
        return self._backups.backup_info(vmID, backup_id, checkpoint_id)

    @verb("VM.list_checkpoints")
    def list_checkpoints(self, ctx: CallContext, vmID: str) -> list[str]:
        return self._backups.list_checkpoints(vmID)

    @verb("VM.dump_checkpoint")
    def dump_checkpoint(self, ctx: CallContext, vmID: str, checkpoint_id: str) -> dict[str, Any]:
        return self._backups.dump_checkpoint(vmID, checkpoint_id)

    @verb("VM.delete_checkpoints")
    def delete_checkpoints(self, ctx: CallContext, vmID: str, checkpoint_ids: list[str]) -> dict[str, Any]:
        return self._backups.delete_checkpoints(vmID, checkpoint_ids)

    @verb("VM.redefine_checkpoints")
    def redefine_checkpoints(self, ctx: CallContext, vmID: str, checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
        return self._backups.redefine_checkpoints(vmID, checkpoints)

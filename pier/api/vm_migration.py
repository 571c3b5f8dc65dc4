"""Handlers of live migration: VM.migrate (a task), its status, cancel and changes, and VM.migrationCreate
(the destination's side). The work is `pier.host.migration.Migrations`."""

from __future__ import annotations

from typing import Any

from pier.host.convergence import allows_postcopy, parse
from pier.host.services import MigrationService, VmService
from pier.rpc.errors import NoVM, Recovering, UnsupportedOperation
from pier.rpc.registry import CallContext, precheck, reconciler, verb


class VmMigrationApi:
    def __init__(self, migrations: MigrationService | None, vms: VmService) -> None:
        self._migrations = migrations
        self._vms = vms

    def _service(self) -> MigrationService:
        if self._migrations is None:
            raise UnsupportedOperation("live migration is not served by this agent")
        return self._migrations

    @precheck("VM.migrate")
    def migrate_allowed(self, ctx: CallContext, vmID: str, params: dict[str, Any]) -> None:
        parse(params.get("convergenceSchedule"))  # an unknown action is refused before the task starts
        self._service().check_outgoing(vmID, params["dst"])

    @verb("VM.migrate")
    def migrate(self, ctx: CallContext, vmID: str, params: dict[str, Any]) -> dict[str, Any]:
        task = ctx.task
        definition = self._vms.definition(vmID)
        return self._service().migrate(vmID, definition, params, task.progress, task.cancelled)

    @reconciler("VM.migrate")
    def migrate_done(self, params: dict[str, Any], step: str | None) -> bool:
        """After a restart: libvirt drove the migration peer to peer, so it went on without pierd.
        It succeeded when the VM is no longer here; when libvirt still migrates it, pierd follows
        it again (VM.getMigrationStatus, VM.migrateCancel serve it) and says so; else it failed
        and the VM is here as before."""
        vm_id = params["vmID"]
        try:
            status = self._vms.status(vm_id)
        except NoVM:
            return True
        wanted = params["params"]
        dst = str(wanted["dst"])
        postcopy = bool(wanted.get("postcopy")) or allows_postcopy(wanted.get("convergenceSchedule"))
        following = self._migrations.adopt(vm_id, dst, postcopy) if self._migrations is not None else None
        if following is not None:
            raise Recovering(f"the agent restarted during the migration of VM {vm_id}; libvirt goes on with it to "
                             f"{dst} ({following['progress']} %) and pierd follows it: see VM.getMigrationStatus, "
                             "VM.migrateCancel stops it", data={"vmId": vm_id, "dst": dst, "following": True})
        raise Recovering(f"the agent restarted during the migration of VM {vm_id}; the VM is here, {status}",
                         data={"vmId": vm_id, "status": status})

    @verb("VM.migrateCancel")
    def cancel(self, ctx: CallContext, vmID: str) -> None:
        self._service().cancel(vmID)

    @verb("VM.getMigrationStatus")
    def status(self, ctx: CallContext, vmID: str) -> dict[str, Any]:
        return self._service().status(vmID)

    @verb("VM.migrateChangeParams")
    def change(self, ctx: CallContext, vmID: str, params: dict[str, Any]) -> None:
        self._service().change_params(vmID, params)

    @verb("VM.migrationCreate")
    def incoming(self, ctx: CallContext, vmID: str, params: dict[str, Any], incomingLimit: int = 2) -> dict[str, Any]:
        return self._service().expect_incoming(vmID, params, incomingLimit)

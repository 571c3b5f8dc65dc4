"""Handlers of the VM namespace: create, power operations, info and statistics."""

from __future__ import annotations

import time
from typing import Any

from pier.api.drives import Drives
from pier.api.vm_hibernation import MemoryRestore
from pier.host.services import GuestService, VmService
from pier.rpc.errors import GuestTimeout, InvalidParams, LibvirtUnavailable, NoVM, Recovering, TaskCancelled
from pier.rpc.registry import CallContext, reconciler, verb

# VM.shutdown's step markers, each saved before the action it names (see shutdown_done).
ASKING_REBOOT = "reboot"
ASKING_POWER_OFF = "shutdown"
POWERING_OFF = "poweroff"


class VmApi:
    def __init__(self, vms: VmService, guest: GuestService | None = None, drives: Drives | None = None,
                 restore: MemoryRestore | None = None) -> None:
        self._vms = vms
        self._guest = guest
        self._drives = drives
        self._restore = restore

    @verb("VM.create")
    def create(self, ctx: CallContext, vmParams: dict[str, Any], vmID: str | None = None) -> dict[str, Any]:
        given = vmParams.get("vmId")
        if vmID and given and vmID.lower() != given.lower():
            raise InvalidParams(f"vmID {vmID} differs from vmParams.vmId {given}", data={"field": "params.vmID"})
        if self._restore is not None and self._restore.wanted(vmParams):
            return self._restore.create(vmID or given, vmParams, self._drives)
        if self._drives is None:
            return self._vms.create(vmID or given, vmParams)
        params = self._drives.prepare(vmParams)
        try:
            made = self._vms.create(vmID or given, params)
        except BaseException:
            self._drives.discard(params)
            raise
        self._drives.remember(made["vmId"], params)
        return made

    @verb("VM.destroy")
    def destroy(self, ctx: CallContext, vmID: str, gracefulAttempts: int = 1) -> None:
        self._vms.destroy(vmID)
        if self._drives is not None:
            self._drives.release(vmID)

    @verb("VM.shutdown")
    def shutdown(self, ctx: CallContext, vmID: str, delay: int = 0, message: str = "", reboot: bool = False,
                 timeout: int = 120, force: bool = False) -> dict[str, Any]:
        task = ctx.task
        self._vms.status(vmID)  # NoVM now rather than after the delay
        if delay:
            task.progress(0, f"waiting {delay} s before asking the guest")
            if task.cancelled.wait(delay):
                raise TaskCancelled()
        if message and self._guest is not None:
            task.progress(5, self._guest.tell_users(vmID, message))
        if reboot:
            task.step(ASKING_REBOOT, 50, "asking the guest to reboot")
            self._vms.reboot(vmID)
            return {"vmId": vmID, "status": self._vms.status(vmID)}
        task.step(ASKING_POWER_OFF, 10, "asking the guest to power off")
        self._vms.shutdown(vmID)
        started = time.monotonic()
        status = self._vms.wait_status(vmID, {"Down"}, timeout, task.cancelled)
        if status is None and (not force or task.cancelled.is_set()):
            self._vms.end_power_down(vmID)
        task.check_cancelled()
        if status is None:
            if not force:
                raise GuestTimeout(f"the guest of VM {vmID} did not power off within {timeout} s; "
                                   "call again with force=true to power it off", data={"vmId": vmID})
            task.step(POWERING_OFF, 90,
                      f"the guest did not power off in {time.monotonic() - started:.0f} s; powering off")
            self._vms.poweroff(vmID)
        return {"vmId": vmID, "status": "Down"}

    @reconciler("VM.shutdown")
    def shutdown_done(self, params: dict[str, Any], step: str | None) -> bool:
        """After a restart: a power-off took effect when the VM is Down (or gone). A reboot leaves
        no trace to check, so an unfinished reboot task fails; the reason says how far it got."""
        vm_id = params["vmID"]
        reboot = bool(params.get("reboot"))
        if not self._vms.connected:
            raise LibvirtUnavailable(f"libvirtd was not reachable when the agent restarted; whether VM {vm_id} "
                                     f"{'rebooted' if reboot else 'powered off'} is not known",
                                     data={"vmId": vm_id})
        try:
            status = self._vms.status(vm_id)
        except NoVM:
            if not reboot:
                return True
            raise NoVM(f"VM {vm_id} no longer exists; the agent restarted before its reboot ended",
                       data={"vmId": vm_id}) from None
        if status == "Down" and not reboot:
            return True
        what = {
            None: "before the reboot was asked for" if reboot else "before the guest was asked to power off",
            ASKING_REBOOT: "while asking for the reboot, which may or may not have reached the guest",
            ASKING_POWER_OFF: "while waiting for the guest to power off",
            POWERING_OFF: "while powering the VM off",
        }.get(step, f"at step {step!r}")
        raise Recovering(f"the agent restarted {what}; the VM is still {status}",
                         data={"vmId": vm_id, "status": status, "step": step})

    @verb("VM.reboot")
    def reboot(self, ctx: CallContext, vmID: str) -> None:
        self._vms.reboot(vmID)

    @verb("VM.reset")
    def reset(self, ctx: CallContext, vmID: str) -> None:
        self._vms.reset(vmID)

    @verb("VM.pause")
    def pause(self, ctx: CallContext, vmID: str) -> dict[str, Any]:
        return self._vms.pause(vmID)

    @verb("VM.cont")
    def cont(self, ctx: CallContext, vmID: str) -> dict[str, Any]:
        return self._vms.cont(vmID)

    @verb("VM.getInfo")
    def info(self, ctx: CallContext, vmID: str) -> dict[str, Any]:
        return self._vms.definition(vmID)

    @verb("VM.getStats")
    def stats(self, ctx: CallContext, vmID: str) -> list[dict[str, Any]]:
        return [self._vms.stats(vmID)]

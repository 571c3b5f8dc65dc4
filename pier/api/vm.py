"""Handlers of the VM namespace: create, power operations, info and statistics."""

from __future__ import annotations

import time
from typing import Any

from pier.rpc.errors import GuestTimeout, InvalidParams, NoVM, TaskCancelled
from pier.rpc.registry import CallContext, reconciler, verb


class VmApi:
    def __init__(self, node: Any) -> None:
        self._node = node

    @verb("VM.create")
    def create(self, ctx: CallContext, vmParams: dict[str, Any], vmID: str | None = None) -> dict[str, Any]:
        given = vmParams.get("vmId")
        if vmID and given and vmID.lower() != given.lower():
            raise InvalidParams(f"vmID {vmID} differs from vmParams.vmId {given}", data={"field": "params.vmID"})
        return self._node.create_vm(vmID or given, vmParams)

    @verb("VM.destroy")
    def destroy(self, ctx: CallContext, vmID: str, gracefulAttempts: int = 1) -> None:
        self._node.destroy_vm(vmID)

    @verb("VM.shutdown")
    def shutdown(self, ctx: CallContext, vmID: str, delay: int = 0, message: str = "", reboot: bool = False,
                 timeout: int = 120, force: bool = False) -> dict[str, Any]:
        task = ctx.task
        self._node.vm_status(vmID)  # NoVM now rather than after the delay
        if delay:
            task.progress(0, f"waiting {delay} s before asking the guest")
            if task.cancelled.wait(delay):
                raise TaskCancelled()
        if reboot:
            self._node.reboot_vm(vmID)
            return {"vmId": vmID, "status": self._node.vm_status(vmID)}
        task.progress(10, "asked the guest to power off")
        self._node.shutdown_vm(vmID)
        started = time.monotonic()
        status = self._node.wait_vm_status(vmID, {"Down"}, timeout, task.cancelled)
        task.check_cancelled()
        if status is None:
            if not force:
                raise GuestTimeout(f"the guest of VM {vmID} did not power off within {timeout} s; "
                                   "call again with force=true to power it off", data={"vmId": vmID})
            task.progress(90, f"the guest did not power off in {time.monotonic() - started:.0f} s; powering off")
            self._node.poweroff_vm(vmID)
        return {"vmId": vmID, "status": "Down"}

    @reconciler("VM.shutdown")
    def shutdown_done(self, params: dict[str, Any]) -> bool:
        try:
            return params.get("reboot") or self._node.vm_status(params["vmID"]) == "Down"
        except NoVM:
            return True

    @verb("VM.reboot")
    def reboot(self, ctx: CallContext, vmID: str) -> None:
        self._node.reboot_vm(vmID)

    @verb("VM.reset")
    def reset(self, ctx: CallContext, vmID: str) -> None:
        self._node.reset_vm(vmID)

    @verb("VM.pause")
    def pause(self, ctx: CallContext, vmID: str) -> dict[str, Any]:
        return self._node.pause_vm(vmID)

    @verb("VM.cont")
    def cont(self, ctx: CallContext, vmID: str) -> dict[str, Any]:
        return self._node.cont_vm(vmID)

    @verb("VM.getInfo")
    def info(self, ctx: CallContext, vmID: str) -> dict[str, Any]:
        return self._node.vm_info(vmID)

    @verb("VM.getStats")
    def stats(self, ctx: CallContext, vmID: str) -> list[dict[str, Any]]:
        return [self._node.vm_stats(vmID)]

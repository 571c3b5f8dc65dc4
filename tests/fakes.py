"""Hand-written fakes of Pier's own interfaces, for unit tests (never an imitation of libvirt)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from pier.rpc.errors import NoVM, UnsupportedOperation, VMDown, VMExists


class FakeNode:
    """Implements the `pier.host.node.Node` surface the verb handlers use, in memory."""

    uri = "fake:///"
    connected = True

    def __init__(self, emit: Callable[[str, dict[str, Any]], Any] | None = None) -> None:
        self.emit = emit or (lambda name, params: None)
        self.vms: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self.guest_obeys_shutdown = False

    def host_uuid(self) -> str:
        return "00000000-0000-4000-8000-000000000001"

    def capabilities(self) -> dict[str, Any]:
        return {"uuid": self.host_uuid(), "cpuCores": "2", "memSize": "1024", "kvmEnabled": "true"}

    def hardware_info(self) -> dict[str, Any]:
        return {"systemManufacturer": "Fake"}

    def host_stats(self) -> dict[str, Any]:
        return {"cpuIdle": "99.0", "vmCount": len(self.vms)}

    def _set(self, vm_id: str, status: str) -> None:
        with self.changed:
            self.vms[vm_id]["status"] = status
            self.changed.notify_all()
        self.emit(f"|virt|VM_status|{vm_id}", {vm_id: {"status": status}})

    def _get(self, vm_id: str) -> dict[str, Any]:
        if vm_id not in self.vms:
            raise NoVM(f"Virtual machine does not exist: {vm_id}", data={"vmId": vm_id})
        return self.vms[vm_id]

    def list_vms(self, vm_ids: list[str] | None = None, full: bool = False) -> list[dict[str, Any]]:
        return [dict(vm) if full else {"vmId": vm["vmId"], "status": vm["status"]}
                for vm in self.vms.values() if vm_ids is None or vm["vmId"] in vm_ids]

    def vm_info(self, vm_id: str) -> dict[str, Any]:
        return dict(self._get(vm_id))

    def vm_status(self, vm_id: str) -> str:
        return self._get(vm_id)["status"]

    def vm_stats(self, vm_id: str) -> dict[str, Any]:
        vm = self._get(vm_id)
        return {"vmId": vm_id, "status": vm["status"], "statsAge": "0.1"}

    def all_vm_stats(self) -> list[dict[str, Any]]:
        return [self.vm_stats(vm_id) for vm_id in self.vms]

    def create_vm(self, vm_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
        vm_id = vm_id or str(uuid.uuid4())
        if vm_id in self.vms:
            raise VMExists(data={"vmId": vm_id})
        self.vms[vm_id] = {"vmId": vm_id, "vmName": params.get("vmName", vm_id), "status": "WaitForLaunch"}
        self._set(vm_id, "Up")
        return dict(self.vms[vm_id])

    def destroy_vm(self, vm_id: str) -> None:
        self._get(vm_id)
        self._set(vm_id, "Down")
        del self.vms[vm_id]

    def poweroff_vm(self, vm_id: str) -> None:
        self._set(vm_id, "Down")

    def _running(self, vm_id: str) -> None:
        if self._get(vm_id)["status"] == "Down":
            raise VMDown(data={"vmId": vm_id})

    def shutdown_vm(self, vm_id: str) -> None:
        self._running(vm_id)
        self._set(vm_id, "Down" if self.guest_obeys_shutdown else "Powering down")

    def end_power_down(self, vm_id: str) -> None:
        if self.vms.get(vm_id, {}).get("status") == "Powering down":
            self._set(vm_id, "Up")

    def reboot_vm(self, vm_id: str) -> None:
        self._running(vm_id)

    def reset_vm(self, vm_id: str) -> None:
        self._running(vm_id)

    def pause_vm(self, vm_id: str) -> dict[str, Any]:
        self._running(vm_id)
        self._set(vm_id, "Paused")
        return self.vm_info(vm_id)

    def cont_vm(self, vm_id: str) -> dict[str, Any]:
        self._running(vm_id)
        if self._get(vm_id)["status"] != "Paused":
            raise UnsupportedOperation(f"cannot cont VM {vm_id} while it is {self._get(vm_id)['status']}",
                                       data={"vmId": vm_id, "status": self._get(vm_id)["status"]})
        self._set(vm_id, "Up")
        return self.vm_info(vm_id)

    def wait_vm_status(self, vm_id: str, statuses: set[str], timeout: float,
                       cancelled: threading.Event | None = None) -> str | None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                status = self.vms.get(vm_id, {}).get("status")
                remaining = deadline - time.monotonic()
                if status in statuses or remaining <= 0 or (cancelled is not None and cancelled.is_set()):
                    return status if status in statuses else None
                self.changed.wait(min(remaining, 0.05))


class FixedAuthenticator:
    """Stands in for `pier.rpc.auth.Authenticator`: everyone is `identity`."""

    def __init__(self, identity: Any) -> None:
        self.identity = identity

    def identify(self, **credentials: Any) -> Any:
        return self.identity

    def watch(self, identity: Any, revoked: Any) -> Any:
        return lambda: False  # nothing it stands for is ever revoked

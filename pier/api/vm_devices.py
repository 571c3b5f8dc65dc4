"""Handlers of a running VM's devices, memory, CPUs and tuning (pier/rpc/schema/vmdevices.yml)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pier.api.drives import Drives, names_volume
from pier.host.services import VmDeviceService
from pier.rpc.errors import InvalidParams, MissingParam
from pier.rpc.registry import CallContext, verb


def vm_of(vmID: str | None, params: dict[str, Any]) -> str:
    """The VM a verb acts on: vmID, or params.vmId (VDSM's XML-RPC put it there); both must agree."""
    given = params.get("vmId")
    if vmID and given and vmID.lower() != str(given).lower():
        raise InvalidParams(f"vmID {vmID} differs from params.vmId {given}", data={"field": "params.vmID"})
    if not (vmID or given):
        raise MissingParam("vmID: missing (nor is params.vmId given)", data={"field": "params.vmID"})
    return str(vmID or given)


class VmDevicesApi:
    def __init__(self, devices: VmDeviceService, drives: Drives | None = None) -> None:
        self._devices = devices
        self._drives = drives

    @verb("VM.getDevices")
    def get_devices(self, ctx: CallContext, vmID: str) -> list[dict[str, Any]]:
        return self._devices.devices(vmID)

    @verb("VM.addDevice")
    def add_device(self, ctx: CallContext, vmID: str, device: dict[str, Any]) -> dict[str, Any]:
        return self._plugging_volume(vmID, device, "params.device",
                                     lambda prepared: self._devices.add_device(vmID, prepared))

    @verb("VM.removeDevice")
    def remove_device(self, ctx: CallContext, vmID: str, alias: str) -> dict[str, Any]:
        changed = self._devices.remove_device(vmID, alias)
        if self._drives is not None:
            self._drives.release(vmID, keep_paths=self._disk_paths(vmID, changed))
        return changed

    @verb("VM.hotplugDisk")
    def hotplug_disk(self, ctx: CallContext, params: dict[str, Any], vmID: str | None = None) -> dict[str, Any]:
        vm_id = vm_of(vmID, params)
        return self._plugging_volume(vm_id, params.get("drive"), "params.drive",
                                     lambda prepared: self._devices.hotplug_disk(vm_id, {**params, "drive": prepared}))

    @verb("VM.hotunplugDisk")
    def hotunplug_disk(self, ctx: CallContext, params: dict[str, Any], vmID: str | None = None) -> dict[str, Any]:
        vm_id = vm_of(vmID, params)
        changed = self._devices.hotunplug_disk(vm_id, params)
        if self._drives is not None:
            self._drives.release(vm_id, keep_paths=self._disk_paths(vm_id, changed))
        return changed

    def _plugging_volume(self, vm_id: str, drive: Any, where: str,
                         plug: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        """plug(drive), with the image of a drive naming a volume prepared first (torn down again
        when the plug fails)."""
        if self._drives is None or not isinstance(drive, dict) or not names_volume(drive):
            return plug(drive)
        self._devices.devices(vm_id)  # noVM before an image is prepared
        prepared = self._drives.prepare_drive(vm_id, drive, where)
        try:
            return plug(prepared)
        except BaseException:
            self._drives.release(vm_id, keep_paths=self._disk_paths(vm_id))
            raise

    def _disk_paths(self, vm_id: str, definition: dict[str, Any] | None = None) -> set[str]:
        """The paths of the VM's disks now (of `definition` when given)."""
        try:
            devices = definition.get("devices") if definition is not None else self._devices.devices(vm_id)
        except Exception:  # the VM went away meanwhile: it keeps no disk
            return set()
        return {str(d.get("path")) for d in devices or [] if d.get("deviceType", d.get("type")) == "disk"}

    @verb("VM.changeCD")
    def change_cd(self, ctx: CallContext, vmID: str, driveSpec: Any) -> dict[str, Any]:
        return self._devices.change_cd(vmID, driveSpec)

    @verb("VM.changeFloppy")
    def change_floppy(self, ctx: CallContext, vmID: str, driveSpec: Any) -> dict[str, Any]:
        return self._devices.change_cd(vmID, driveSpec, floppy=True)

    @verb("VM.hotplugNic")
    def hotplug_nic(self, ctx: CallContext, params: dict[str, Any], vmID: str | None = None) -> dict[str, Any]:
        return self._devices.hotplug_nic(vm_of(vmID, params), params)

    @verb("VM.hotunplugNic")
    def hotunplug_nic(self, ctx: CallContext, params: dict[str, Any], vmID: str | None = None) -> dict[str, Any]:
        return self._devices.hotunplug_nic(vm_of(vmID, params), params)

    @verb("VM.updateDevice")
    def update_device(self, ctx: CallContext, params: dict[str, Any], vmID: str | None = None,
                      alias: str | None = None) -> dict[str, Any]:
        return self._devices.update_device(vm_of(vmID, params), {**params, "alias": alias} if alias else params)

    @verb("VM.hotplugMemory")
    def hotplug_memory(self, ctx: CallContext, params: dict[str, Any], vmID: str | None = None) -> dict[str, Any]:
        return self._devices.hotplug_memory(vm_of(vmID, params), params)

    @verb("VM.hotunplugMemory")
    def hotunplug_memory(self, ctx: CallContext, params: dict[str, Any], vmID: str | None = None) -> dict[str, Any]:
        return self._devices.hotunplug_memory(vm_of(vmID, params), params)

    @verb("VM.setNumberOfCpus")
    def set_number_of_cpus(self, ctx: CallContext, vmID: str, numberOfCpus: int,
                           cpusets: list[str] | None = None) -> dict[str, Any]:
        return self._devices.set_cpus(vmID, int(numberOfCpus))

    @verb("VM.setBalloonTarget")
    def set_balloon_target(self, ctx: CallContext, vmID: str, target: int) -> None:
        self._devices.set_balloon(vmID, target)

    @verb("VM.setIoTune")
    def set_io_tune(self, ctx: CallContext, vmID: str, tunables: list[dict[str, Any]]) -> None:
        self._devices.set_io_tune(vmID, tunables)

    @verb("VM.getIoTune")
    def get_io_tune(self, ctx: CallContext, vmID: str) -> list[dict[str, Any]]:
        return self._devices.io_tune(vmID)

    @verb("VM.getIoTunePolicy")
    def get_io_tune_policy(self, ctx: CallContext, vmID: str) -> list[dict[str, Any]]:
        return self._devices.io_tune_policy(vmID)

    @verb("Host.getAllVmIoTunePolicies")
    def all_io_tune_policies(self, ctx: CallContext) -> dict[str, dict[str, Any]]:
        return self._devices.all_io_tune_policies()

    @verb("VM.setCpuTunePeriod")
    def set_cpu_tune_period(self, ctx: CallContext, vmID: str, period: int) -> None:
        self._devices.set_cpu_tune(vmID, period=period)

    @verb("VM.setCpuTuneQuota")
    def set_cpu_tune_quota(self, ctx: CallContext, vmID: str, quota: int) -> None:
        self._devices.set_cpu_tune(vmID, quota=quota)

    @verb("VM.updateVmPolicy")
    def update_vm_policy(self, ctx: CallContext, params: dict[str, Any], vmID: str | None = None) -> None:
        self._devices.update_policy(vm_of(vmID, params), params)

    @verb("VM.setDestroyOnReboot")
    def set_destroy_on_reboot(self, ctx: CallContext, vmID: str) -> None:
        self._devices.set_destroy_on_reboot(vmID)

    @verb("VM.getExternalData")
    def get_external_data(self, ctx: CallContext, vmID: str, kind: str, lastHash: str = "",
                          forceUpdate: bool = False) -> dict[str, Any]:
        return self._devices.external_data(vmID, kind, lastHash, forceUpdate)

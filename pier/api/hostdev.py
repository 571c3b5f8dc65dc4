"""Handlers of the host device verbs: listing, SR-IOV, giving devices back, and assigning them to VMs."""

from __future__ import annotations

from typing import Any

from pier.host.services import HostDeviceService
from pier.rpc.registry import CallContext, verb


class HostDevApi:
    def __init__(self, hostdevs: HostDeviceService) -> None:
        self._hostdevs = hostdevs

    @verb("Host.hostdevListByCaps")
    def list_by_caps(self, ctx: CallContext, caps: list[str] | None = None) -> dict[str, Any]:
        return self._hostdevs.list_by_caps(caps)

    @verb("Host.hostdevChangeNumvfs")
    def change_numvfs(self, ctx: CallContext, deviceName: str, numvfs: int) -> None:
        self._hostdevs.change_numvfs(deviceName, numvfs)

    @verb("Host.hostdevReattach")
    def reattach(self, ctx: CallContext, deviceName: str) -> None:
        self._hostdevs.reattach(deviceName)

    @verb("VM.hotplugHostdev")
    def hotplug(self, ctx: CallContext, vmID: str, devices: list[str]) -> list[str]:
        return self._hostdevs.hotplug(vmID, devices)

    @verb("VM.hotunplugHostdev")
    def hotunplug(self, ctx: CallContext, vmID: str, devices: list[str]) -> list[str]:
        return self._hostdevs.hotunplug(vmID, devices)

"""Handlers of the block device and block domain verbs.

Host.getDeviceList, Host.getDevicesVisibility, Host.getLVMVolumeGroups and LVMVolumeGroup.getInfo
read this host's devices and LVM. The verbs that would make or grow a block (LVM: iSCSI, FCP)
storage domain answer VDSM's error for the verb, saying what is missing: kernel device-mapper targets.
"""

from __future__ import annotations

from typing import Any, NoReturn

from pier.host.blockdev import DEVICE_MAPPER_MISSING
from pier.host.services import BlockDeviceService, StorageService
from pier.rpc.errors import StorageDomainTypeError, VolumeGroupCreateError, VolumeGroupRemoveError, iSCSIDiscoveryError
from pier.rpc.registry import CallContext, verb

# VDSM's devtypes each storage type filter keeps (multipath.devIsiSCSI / devIsFCP)
_DEVTYPES = {"ISCSI": {"iSCSI", "MIXED"}, "FCP": {"FCP", "MIXED"}}
_TYPE_NAMES = {2: "FCP", 3: "ISCSI"}


def _type_name(storage_type: int | str) -> str:
    return _TYPE_NAMES[storage_type] if isinstance(storage_type, int) else storage_type.upper()


class BlockDevicesApi:
    def __init__(self, block_devices: BlockDeviceService, storage: StorageService) -> None:
        self._devices = block_devices
        self._storage = storage

    @verb("Host.getDeviceList")
    def device_list(self, ctx: CallContext, storageType: int | str | None = None, guids: list[str] | None = None,
                    checkStatus: bool = True, refresh: bool = True) -> list[dict[str, Any]]:
        found = self._devices.devices(guids or None, check_status=checkStatus)
        if storageType is not None:
            kept = _DEVTYPES[_type_name(storageType)]
            found = [dev for dev in found if dev.get("devtype") in kept]
        return found

    @verb("Host.getDevicesVisibility")
    def visibility(self, ctx: CallContext, guidList: list[str]) -> dict[str, bool]:
        return self._devices.visibility(guidList) if guidList else {}

    @verb("Host.getLVMVolumeGroups")
    def volume_groups(self, ctx: CallContext, storageType: int | str | None = None) -> list[dict[str, Any]]:
        if storageType is not None:
            return []  # every device of this host is local: no volume group is on iSCSI or FCP
        return self._devices.volume_groups()

    @verb("LVMVolumeGroup.getInfo")
    def volume_group(self, ctx: CallContext, lvmvolumegroupID: str) -> dict[str, Any]:
        return self._devices.volume_group(lvmvolumegroupID)

    @verb("LVMVolumeGroup.create")
    def create_volume_group(self, ctx: CallContext, name: str, devlist: list[str],
                            lvmvolumegroupID: str | None = None, force: bool = False) -> str:
        raise VolumeGroupCreateError(f"Cannot create Volume Group {name}: {DEVICE_MAPPER_MISSING}",
                                     data={"missing": "device-mapper"})

    @verb("LVMVolumeGroup.remove")
    def remove_volume_group(self, ctx: CallContext, lvmvolumegroupID: str) -> None:
        group = self._devices.volume_group(lvmvolumegroupID)
        raise VolumeGroupRemoveError(f"Volume Group remove error: {group['name']} is not a block domain's volume "
                                     f"group Pier made, and Pier makes none: {DEVICE_MAPPER_MISSING}",
                                     data={"missing": "device-mapper"})

    @verb("StorageDomain.extend")
    def extend_domain(self, ctx: CallContext, storagedomainID: str, storagepoolID: str, devlist: list[str],
                      force: bool = False) -> None:
        self._refuse_block_only("extended onto block devices", storagedomainID)

    @verb("StorageDomain.resizePV")
    def resize_pv(self, ctx: CallContext, storagedomainID: str, storagepoolID: str, guid: str) -> int:
        self._refuse_block_only("given a resized PV", storagedomainID)

    @verb("SDM.move_domain_device")
    def move_domain_device(self, ctx: CallContext, job_id: str, move_params: dict[str, Any]) -> None:
        self._refuse_block_only("have its data moved off a device", str(move_params["sd_id"]))

    @verb("SDM.reduce_domain")
    def reduce_domain(self, ctx: CallContext, job_id: str, reduce_params: dict[str, Any]) -> None:
        self._refuse_block_only("reduced by a device", str(reduce_params["sd_id"]))

    @verb("ISCSIConnection.discoverSendTargets")
    def discover_send_targets(self, ctx: CallContext, host: str, port: int, user: str = "", password: str = "",
                              ipv6_enabled: bool = False) -> list[str]:
        raise iSCSIDiscoveryError(f"Failed discovery of iSCSI targets at {host}:{port}: Pier runs no iSCSI "
                                  f"initiator, since iSCSI domains are block domains: {DEVICE_MAPPER_MISSING}",
                                  data={"missing": "device-mapper"})

    def _refuse_block_only(self, what: str, sd_uuid: str) -> NoReturn:
        info = self._storage.domain_info(sd_uuid)  # StorageDomainDoesNotExist when there is none
        raise StorageDomainTypeError(f"Storage domain {sd_uuid} is a {info.get('type', 'file')} domain and cannot be "
                                     f"{what}: only block (LVM) domains can, and {DEVICE_MAPPER_MISSING}",
                                     data={"missing": "device-mapper"})

"""Handlers of the storage verbs: connections, storage domains, storage pools, the domain monitor.

Image and volume verbs (and the pool verbs that work on them) are in pier/api/volume.py.
"""

from __future__ import annotations

import logging
from typing import Any

from pier.host.services import StorageService, VolumeService
from pier.rpc.errors import InvalidParams, TargetBusy
from pier.rpc.registry import CallContext, precheck, verb


def _int(name: str, value: int | str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidParams(f"params.{name}: {value!r} is not a number", data={"field": name}) from None


log = logging.getLogger(__name__)

_TYPE_NUMBERS = {"NFS": 1, "FCP": 2, "ISCSI": 3, "LOCALFS": 4, "CIFS": 5, "POSIXFS": 6, "GLUSTERFS": 7}


def _type_number(value: int | str) -> int:
    """A domain type as VDSM's number (the schema allows the number or the name)."""
    return _TYPE_NUMBERS[value] if isinstance(value, str) and value in _TYPE_NUMBERS else _int("domainType", value)


def _remote_path(type_args: str | dict[str, Any]) -> str:
    return str(type_args["remotePath"]) if isinstance(type_args, dict) else str(type_args)


class StorageApi:
    def __init__(self, storage: StorageService, volumes: VolumeService | None = None) -> None:
        self._storage = storage
        self._volumes = volumes

    # -- Host ----------------------------------------------------------------------------------

    @verb("Host.getStorageDomains")
    def domain_ids(self, ctx: CallContext, storagepoolID: str | None = None, domainClass: int | str | None = None,
                   storageType: int | str | None = None, remotePath: str | None = None) -> list[str]:
        klass = str(domainClass) if domainClass not in (None, "") else None
        return self._storage.domain_ids(storagepoolID, klass, storageType, remotePath)

    @verb("Host.listStorageDomains")
    def listing(self, ctx: CallContext) -> list[dict[str, Any]]:
        return self._storage.listing()

    @verb("Host.getConnectedStoragePools")
    def connected_pools(self, ctx: CallContext) -> list[str]:
        return self._storage.connected_pools()

    @verb("Host.getStorageRepoStats")
    def repo_stats(self, ctx: CallContext, domains: list[str] | None = None) -> dict[str, Any]:
        return self._storage.repo_stats(domains)

    @verb("Host.startMonitoringDomain")
    def start_monitoring(self, ctx: CallContext, sdUUID: str, hostID: int) -> None:
        self._storage.start_monitoring(sdUUID, hostID)

    @verb("Host.stopMonitoringDomain")
    def stop_monitoring(self, ctx: CallContext, sdUUID: str) -> None:
        self._storage.stop_monitoring(sdUUID)

    # -- connections ---------------------------------------------------------------------------

    @verb("StoragePool.connectStorageServer")
    def connect_server(self, ctx: CallContext, storagepoolID: str, domainType: int | str,
                       connectionParams: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._storage.connect_storage_server(_type_number(domainType), connectionParams)

    @verb("StoragePool.disconnectStorageServer")
    def disconnect_server(self, ctx: CallContext, storagepoolID: str, domainType: int | str,
                          connectionParams: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._storage.disconnect_storage_server(_type_number(domainType), connectionParams)

    # -- StorageDomain -------------------------------------------------------------------------

    @verb("StorageDomain.create")
    def create_domain(self, ctx: CallContext, storagedomainID: str, domainType: int | str,
                      typeArgs: str | dict[str, Any], name: str, domainClass: int | str, version: int | str = 5,
                      blockSize: int = 512, maxHosts: int = 2000) -> dict[str, Any]:
        self._storage.create_domain(storagedomainID, domainType, _remote_path(typeArgs), name, domainClass,
                                    _int("version", version), blockSize, maxHosts)
        return self._storage.domain_info(storagedomainID)

    @precheck("StorageDomain.create")
    def create_domain_allowed(self, ctx: CallContext, storagedomainID: str, domainType: int | str,
                              typeArgs: str | dict[str, Any], name: str, domainClass: int | str,
                              version: int | str = 5, blockSize: int = 512, maxHosts: int = 2000) -> None:
        """What the task would refuse is refused at the call (an unknown type, a path not connected or
        already holding a domain, ...); nothing is created."""
        self._storage.check_create_domain(storagedomainID, domainType, _remote_path(typeArgs), name, domainClass,
                                          _int("version", version), blockSize, maxHosts)

    @verb("StorageDomain.getInfo")
    def domain_info(self, ctx: CallContext, storagedomainID: str) -> dict[str, Any]:
        return self._storage.domain_info(storagedomainID)

    @verb("StorageDomain.getStats")
    def domain_stats(self, ctx: CallContext, storagedomainID: str) -> dict[str, Any]:
        return self._storage.domain_stats(storagedomainID)

    @verb("StorageDomain.getImages")
    def domain_images(self, ctx: CallContext, storagedomainID: str) -> list[str]:
        return self._storage.domain_images(storagedomainID)

    @verb("StorageDomain.validate")
    def validate_domain(self, ctx: CallContext, storagedomainID: str) -> None:
        self._storage.validate_domain(storagedomainID)
        if self._volumes is None:
            return
        for img in self._volumes.leftover_images(storagedomainID):
            try:
                with ctx.try_hold(img, "StorageDomain.validate"):  # a task at work on it is left alone
                    removed = self._volumes.remove_leftovers(storagedomainID, img)
            except TargetBusy:
                continue
            if removed:
                log.info("domain %s: removed what an interrupted operation left: %s", storagedomainID,
                         ", ".join(removed))

    @verb("StorageDomain.setDescription")
    def set_domain_description(self, ctx: CallContext, storagedomainID: str, description: str) -> None:
        self._storage.set_domain_description(storagedomainID, description)

    @verb("StorageDomain.format")
    def format_domain(self, ctx: CallContext, storagedomainID: str, autoDetach: bool = False) -> None:
        self._storage.format_domain(storagedomainID, autoDetach)

    @precheck("StorageDomain.format")
    def format_allowed(self, ctx: CallContext, storagedomainID: str, autoDetach: bool = False) -> None:
        """An unknown domain is refused at the call."""
        self._storage.domain_images(storagedomainID)

    @verb("StorageDomain.attach")
    def attach(self, ctx: CallContext, storagedomainID: str, storagepoolID: str) -> None:
        self._storage.attach_domain(storagedomainID, storagepoolID)

    @verb("StorageDomain.detach")
    def detach(self, ctx: CallContext, storagedomainID: str, storagepoolID: str, masterSdUUID: str | None = None,
               masterVersion: int | None = None, force: bool = False) -> None:
        self._storage.detach_domain(storagedomainID, storagepoolID, force)

    @verb("StorageDomain.activate")
    def activate(self, ctx: CallContext, storagedomainID: str, storagepoolID: str) -> None:
        self._storage.activate_domain(storagedomainID, storagepoolID)

    @verb("StorageDomain.deactivate")
    def deactivate(self, ctx: CallContext, storagedomainID: str, storagepoolID: str,
                   masterSdUUID: str | None = None, masterVersion: int | None = None) -> None:
        self._storage.deactivate_domain(storagedomainID, storagepoolID)

    @verb("StorageDomain.dump")
    def dump(self, ctx: CallContext, sd_id: str, full: bool = False) -> dict[str, Any]:
        return self._storage.dump_domain(sd_id, full)

    @verb("StorageDomain.getFileStats")
    def file_stats(self, ctx: CallContext, storagedomainID: str, pattern: str = "*",
                   caseSensitive: bool = False) -> dict[str, Any]:
        return self._storage.file_stats(storagedomainID, pattern, caseSensitive)

    # -- StoragePool ---------------------------------------------------------------------------

    @verb("StoragePool.create")
    def create_pool(self, ctx: CallContext, storagepoolID: str, name: str, masterSdUUID: str, masterVersion: int,
                    domainList: list[str], lockRenewalIntervalSec: int = 5, leaseTimeSec: int = 60,
                    ioOpTimeoutSec: int = 10, leaseRetries: int = 3) -> None:
        self._storage.create_pool(storagepoolID, name, masterSdUUID, masterVersion, domainList, {
            "lockRenewalIntervalSec": lockRenewalIntervalSec, "leaseTimeSec": leaseTimeSec,
            "ioOpTimeoutSec": ioOpTimeoutSec, "leaseRetries": leaseRetries})

    @verb("StoragePool.connect")
    def connect_pool(self, ctx: CallContext, storagepoolID: str, hostID: int, scsiKey: str, masterSdUUID: str,
                     masterVersion: int, domainDict: dict[str, str] | None = None) -> None:
        self._storage.connect_pool(storagepoolID, hostID, masterSdUUID, masterVersion, domainDict)

    @verb("StoragePool.disconnect")
    def disconnect_pool(self, ctx: CallContext, storagepoolID: str, hostID: int, scsiKey: str,
                        remove: bool = False) -> None:
        self._storage.disconnect_pool(storagepoolID, hostID, remove)

    @verb("StoragePool.destroy")
    def destroy_pool(self, ctx: CallContext, storagepoolID: str, hostID: int, scsiKey: str) -> None:
        self._storage.destroy_pool(storagepoolID, hostID)

    @verb("StoragePool.getInfo")
    def pool_info(self, ctx: CallContext, storagepoolID: str) -> dict[str, Any]:
        return self._storage.pool_info(storagepoolID)

    @verb("StoragePool.refresh")
    def refresh_pool(self, ctx: CallContext, storagepoolID: str, masterSdUUID: str, masterVersion: int) -> None:
        self._storage.refresh_pool(storagepoolID, masterSdUUID, masterVersion)

    @verb("StoragePool.setDescription")
    def set_pool_description(self, ctx: CallContext, storagepoolID: str, description: str) -> None:
        self._storage.set_pool_description(storagepoolID, description)

    @verb("StoragePool.spmStart")
    def spm_start(self, ctx: CallContext, storagepoolID: str, prevID: int = -1, prevLver: int = -1,
                  enableScsiFencing: str | bool = "false", maxHostID: int | None = None,
                  domVersion: str | int | None = None) -> dict[str, Any]:
        self._storage.spm_start(storagepoolID, prevID, prevLver)
        return self._storage.spm_status(storagepoolID)

    @precheck("StoragePool.spmStart")
    def spm_start_allowed(self, ctx: CallContext, storagepoolID: str, prevID: int = -1, prevLver: int = -1,
                          enableScsiFencing: str | bool = "false", maxHostID: int | None = None,
                          domVersion: str | int | None = None) -> None:
        """A pool this host is not connected to is refused at the call."""
        self._storage.spm_status(storagepoolID)

    @verb("StoragePool.spmStop")
    def spm_stop(self, ctx: CallContext, storagepoolID: str) -> None:
        self._storage.spm_stop(storagepoolID)

    @verb("StoragePool.getSpmStatus")
    def spm_status(self, ctx: CallContext, storagepoolID: str) -> dict[str, Any]:
        return self._storage.spm_status(storagepoolID)

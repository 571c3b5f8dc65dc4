"""Handlers of the Host namespace: facts, statistics, VM lists and the task views."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pier.host.services import HostService, VmService
from pier.rpc.registry import CallContext, verb
from pier.rpc.tasks import TaskManager

# The engine versions and cluster levels VDSM's engines speak.
ENGINE_VERSIONS = ["4.2", "4.3", "4.4", "4.5", "4.6", "4.7"]

# What an engine calls on a host of any cluster level: activation and monitoring, the VM
# lifecycle and devices, and local storage (vdsm-compat.md, tiers T0 to T2). Capabilities offer
# cluster levels and engine versions only once Pier serves all of them, so that an engine is
# never invited to call a verb Pier does not have.
ENGINE_NEEDS = frozenset({
    "Host.ping2", "Host.confirmConnectivity", "Host.getCapabilities", "Host.getHardwareInfo", "Host.getStats",
    "Host.getAllVmStats", "Host.getVMList", "Host.getVMFullList", "Host.getJobs", "Host.getAllTasksStatuses",
    "Host.getAllTasksInfo", "Host.setMOMPolicy", "Host.setKsmTune", "Host.setLogLevel",
    "Host.getNetworkCapabilities", "Host.getNetworkStatistics", "Host.setupNetworks", "Host.setSafeNetworkConfig",
    "VM.create", "VM.destroy", "VM.shutdown", "VM.reset", "VM.pause", "VM.cont", "VM.getStats", "VM.getInfo",
    "VM.setTicket", "VM.changeCD", "VM.hotplugDisk", "VM.hotunplugDisk", "VM.hotplugNic", "VM.hotunplugNic",
    "VM.updateDevice", "VM.hotplugMemory", "VM.setNumberOfCpus", "VM.setBalloonTarget", "VM.snapshot", "VM.merge",
    "VM.migrate", "VM.migrateCancel", "VM.getMigrationStatus", "VM.migrationCreate", "VM.freeze", "VM.thaw",
    "Task.getStatus", "Task.getInfo", "Task.stop", "Task.clear",
    "StoragePool.connectStorageServer", "StoragePool.create", "StoragePool.connect", "StoragePool.spmStart",
    "StoragePool.getInfo", "StorageDomain.create", "StorageDomain.getInfo", "StorageDomain.getStats",
    "StorageDomain.getImages", "StorageDomain.getVolumes", "Volume.create", "Volume.copy", "Volume.getInfo",
    "Volume.getSize", "Volume.extendSize", "Volume.delete", "Image.prepare", "Image.teardown", "Image.delete",
    "Host.getStorageDomains", "Host.getStorageRepoStats", "Host.getDeviceList",
})


def served_features(served: Iterable[str]) -> dict[str, Any]:
    """The capabilities that promise verbs, from the verbs actually served."""
    verbs = set(served)
    levels = list(ENGINE_VERSIONS) if ENGINE_NEEDS <= verbs else []
    return {"supportedENGINEs": levels, "clusterLevels": list(levels),
            "liveSnapshot": str("VM.snapshot" in verbs).lower(), "liveMerge": str("VM.merge" in verbs).lower(),
            "backupEnabled": "VM.start_backup" in verbs}


class HostApi:
    def __init__(self, host: HostService, vms: VmService, tasks: TaskManager, about: Callable[[], dict[str, Any]],
                 served: Iterable[str]) -> None:
        self._host = host
        self._vms = vms
        self._tasks = tasks
        self._about = about
        self._features = served_features(served)

    @verb("Host.getAgentInfo")
    def agent_info(self, ctx: CallContext) -> dict[str, Any]:
        return self._about()

    @verb("Host.ping2")
    def ping2(self, ctx: CallContext) -> None:
        return None

    @verb("Host.ping")
    def ping(self, ctx: CallContext) -> None:
        return None

    @verb("Host.getCapabilities")
    def capabilities(self, ctx: CallContext) -> dict[str, Any]:
        return {**self._host.capabilities(), **self._features}

    @verb("Host.getHardwareInfo")
    def hardware_info(self, ctx: CallContext) -> dict[str, Any]:
        return self._host.hardware_info()

    @verb("Host.getStats")
    def stats(self, ctx: CallContext) -> dict[str, Any]:
        return self._host.stats()

    @verb("Host.getVMList")
    def vm_list(self, ctx: CallContext, fullStatus: bool = False, vmList: list[str] | None = None,
                onlyUUID: bool = False) -> list[Any]:
        vms = self._vms.listing(vmList, full=fullStatus and not onlyUUID)
        return [vm["vmId"] for vm in vms] if onlyUUID else vms

    @verb("Host.getVMFullList")
    def vm_full_list(self, ctx: CallContext, vmList: list[str] | None = None) -> list[dict[str, Any]]:
        return self._vms.listing(vmList, full=True)

    @verb("Host.getAllVmStats")
    def all_vm_stats(self, ctx: CallContext) -> list[dict[str, Any]]:
        return self._vms.all_stats()

    @verb("Host.getJobs")
    def jobs(self, ctx: CallContext, job_type: str | None = None,
             job_ids: list[str] | None = None) -> dict[str, Any]:
        return self._tasks.vdsm_jobs(job_type, job_ids)

    @verb("Host.getAllTasks")
    def all_tasks(self, ctx: CallContext) -> dict[str, Any]:
        return self._tasks.all()

    @verb("Host.getAllTasksStatuses")
    def all_tasks_statuses(self, ctx: CallContext) -> dict[str, Any]:
        return self._tasks.vdsm_statuses()

    @verb("Host.getAllTasksInfo")
    def all_tasks_info(self, ctx: CallContext) -> dict[str, Any]:
        return {task_id: {"id": task_id, "verb": task["verb"]} for task_id, task in self._tasks.all().items()}

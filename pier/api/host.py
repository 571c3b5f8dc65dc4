"""Handlers of the Host namespace: facts, statistics, VM lists and the task views."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pier.rpc.registry import CallContext, verb


class HostApi:
    def __init__(self, node: Any, tasks: Any, about: Callable[[], dict[str, Any]]) -> None:
        self._node = node
        self._tasks = tasks
        self._about = about

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
        return self._node.capabilities()

    @verb("Host.getHardwareInfo")
    def hardware_info(self, ctx: CallContext) -> dict[str, Any]:
        return self._node.hardware_info()

    @verb("Host.getStats")
    def stats(self, ctx: CallContext) -> dict[str, Any]:
        return self._node.host_stats()

    @verb("Host.getVMList")
    def vm_list(self, ctx: CallContext, fullStatus: bool = False, vmList: list[str] | None = None,
                onlyUUID: bool = False) -> list[Any]:
        vms = self._node.list_vms(vmList, full=fullStatus and not onlyUUID)
        return [vm["vmId"] for vm in vms] if onlyUUID else vms

    @verb("Host.getVMFullList")
    def vm_full_list(self, ctx: CallContext, vmList: list[str] | None = None) -> list[dict[str, Any]]:
        return self._node.list_vms(vmList, full=True)

    @verb("Host.getAllVmStats")
    def all_vm_stats(self, ctx: CallContext) -> list[dict[str, Any]]:
        return self._node.all_vm_stats()

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

"""Handlers of the Task namespace: read, wait for, cancel and forget tasks."""

from __future__ import annotations

from typing import Any

from pier.rpc.registry import CallContext, verb
from pier.rpc.tasks import TaskManager


class TaskApi:
    def __init__(self, tasks: TaskManager) -> None:
        self._tasks = tasks

    @verb("Task.getInfo")
    def info(self, ctx: CallContext, taskID: str, wait: float = 0) -> dict[str, Any]:
        return self._tasks.wait(taskID, wait) if wait else self._tasks.get(taskID)

    @verb("Task.getStatus")
    def status(self, ctx: CallContext, taskID: str) -> dict[str, Any]:
        return self._tasks.vdsm_status(taskID)

    @verb("Task.stop")
    def stop(self, ctx: CallContext, taskID: str) -> dict[str, Any]:
        return self._tasks.stop_task(taskID)

    @verb("Task.clear")
    def clear(self, ctx: CallContext, taskID: str) -> None:
        self._tasks.clear(taskID)

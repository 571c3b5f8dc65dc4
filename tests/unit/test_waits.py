"""A `waits` task verb answers an RPC caller once its task has ended, and REST's caller at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pier.rpc.errors import NoSuchDevice, TaskCancelled
from pier.rpc.registry import CallContext, Registry, verb
from pier.rpc.schema import Schema
from pier.rpc.tasks import TaskManager
from tests.unit.conftest import ADMIN
from tests.unit.test_locks import declare

SCHEMA = declare(Host_change={"task": True, "waits": True, "params": {"how": {"type": "string"}}})


class Handlers:
    def __init__(self) -> None:
        self.release = threading.Event()

    @verb("Host.change")
    def change(self, ctx: CallContext, how: str) -> dict[str, Any]:
        if how == "slow":
            assert self.release.wait(10)
        if how == "fail":
            raise NoSuchDevice("nic0 is gone", data={"device": "nic0"})
        if how == "cancel":
            raise TaskCancelled("cancelled by the test")
        return {"made": how}


@pytest.fixture
def tasks(tmp_path: Path) -> Iterator[TaskManager]:
    manager = TaskManager(str(tmp_path / "t.db"), lambda name, params: None, workers=2)
    manager.start({})
    yield manager
    manager.stop()


def call(registry: Registry, how: str, prompt: bool = False) -> Any:
    return registry.call("Host.change", {"how": how}, CallContext("test", identity=ADMIN, prompt_tasks=prompt))


def test_an_rpc_caller_gets_the_ended_task(tasks: TaskManager) -> None:
    registry = Registry(SCHEMA, [Handlers()], tasks)
    answer = call(registry, "fast")
    assert answer["state"] == "succeeded" and answer["result"] == {"made": "fast"}
    assert tasks.get(answer["taskID"])["state"] == "succeeded"  # still a task, listed as one


def test_a_failed_task_is_the_calls_error(tasks: TaskManager) -> None:
    registry = Registry(SCHEMA, [Handlers()], tasks)
    with pytest.raises(NoSuchDevice) as raised:
        call(registry, "fail")
    assert (raised.value.code, raised.value.message, raised.value.data) == (
        NoSuchDevice.code, "nic0 is gone", {"device": "nic0"})
    with pytest.raises(TaskCancelled):
        call(registry, "cancel")


def test_a_prompt_wire_gets_the_task_at_once(tasks: TaskManager) -> None:
    handlers = Handlers()
    registry = Registry(SCHEMA, [handlers], tasks)
    answer = call(registry, "slow", prompt=True)
    assert answer["state"] in ("pending", "running")
    handlers.release.set()
    assert tasks.wait(answer["taskID"], 10)["state"] == "succeeded"


def test_waits_is_only_for_a_task_verb() -> None:
    with pytest.raises(ValueError, match="waits is for a task verb"):
        declare(Host_poke={"waits": True, "params": {}})
    assert isinstance(SCHEMA, Schema) and SCHEMA.verbs["Host.change"].waits

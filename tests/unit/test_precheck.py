"""A task verb's @precheck refuses a call before its task starts; it is bound only to task verbs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pier.rpc.errors import InvalidParams
from pier.rpc.registry import CallContext, Registry, precheck, verb
from pier.rpc.tasks import TaskManager
from tests.unit.conftest import ADMIN
from tests.unit.test_locks import declare

SCHEMA = declare(
    VM_move={"task": True, "target": "vmID", "params": {"vmID": {"type": "string"}}},
    VM_poke={"target": "vmID", "params": {"vmID": {"type": "string"}}},
)


class Handlers:
    def __init__(self) -> None:
        self.ran: list[str] = []

    @verb("VM.move")
    def move(self, ctx: CallContext, vmID: str) -> None:
        self.ran.append(vmID)

    @precheck("VM.move")
    def move_allowed(self, ctx: CallContext, vmID: str) -> None:
        if vmID == "stuck":
            raise InvalidParams("vmID: VM stuck cannot move", data={"field": "vmID"})

    @verb("VM.poke")
    def poke(self, ctx: CallContext, vmID: str) -> None:
        pass


@pytest.fixture
def tasks(tmp_path: Path) -> Iterator[TaskManager]:
    manager = TaskManager(str(tmp_path / "t.db"), lambda name, params: None, workers=2)
    manager.start({})
    yield manager
    manager.stop()


def call(registry: Registry, name: str, **params: Any) -> Any:
    return registry.call(name, params, CallContext("test", identity=ADMIN))


def test_a_refused_call_starts_no_task(tasks: TaskManager) -> None:
    handlers = Handlers()
    registry = Registry(SCHEMA, [handlers], tasks)
    with pytest.raises(InvalidParams, match="VM stuck cannot move"):
        call(registry, "VM.move", vmID="stuck")
    assert tasks.all() == {}
    task = call(registry, "VM.move", vmID="free")
    assert tasks.wait(task["taskID"], 10)["state"] == "succeeded" and handlers.ran == ["free"]


def test_a_precheck_is_for_a_task_verb(tasks: TaskManager) -> None:
    class Misplaced(Handlers):
        @precheck("VM.poke")
        def poke_allowed(self, ctx: CallContext, vmID: str) -> None:
            pass

    with pytest.raises(RuntimeError, match="VM.poke, which is not a task verb"):
        Registry(SCHEMA, [Misplaced()], tasks)

"""Locks on more than one key: the schema's `locks`, TargetLocks and the registry, calls and tasks."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pier.rpc.errors import TargetBusy
from pier.rpc.registry import CallContext, Registry, TargetLocks, verb
from pier.rpc.schema import Schema, SchemaError
from pier.rpc.tasks import TaskManager
from tests.unit.conftest import ADMIN

VM_A, VM_B = "vm-a", "vm-b"
HOST_H, HOST_G = "x-host-h", "x-host-g"  # after the VMs in sorted order
WAIT = 10.0  # how long a test waits for something that must happen; it happens in milliseconds


def declare(**verbs: dict[str, Any]) -> Schema:
    common = {"role": "operator", "returns": {"const": True}}
    return Schema({"verbs": {name.replace("_", "."): {**common, **spec} for name, spec in verbs.items()}})


SCHEMA = declare(
    VM_migrate={"locks": ["vmID", "dst"], "params": {"vmID": {"type": "string"}, "dst": {"type": "string"}}},
    VM_migrateBack={"locks": ["dst", "vmID"], "params": {"vmID": {"type": "string"}, "dst": {"type": "string"}}},
    VM_poke={"target": "vmID", "params": {"vmID": {"type": "string"}}},
    Host_prepare={"target": "host", "params": {"host": {"type": "string"}}},
    VM_move={"task": True, "locks": ["vmID", "dst"],
             "params": {"vmID": {"type": "string"}, "dst": {"type": "string"}}},
)


class Gates:
    """Handlers that, when told to, stay inside until released; they record who is inside."""

    def __init__(self) -> None:
        self.inside: dict[str, threading.Event] = {}
        self.release: dict[str, threading.Event] = {}
        self.overlaps: list[tuple[str, str]] = []
        self._now: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, name: str) -> None:
        """The next call whose keys include `name` stays inside until `let_go(name)`."""
        self.inside[name], self.release[name] = threading.Event(), threading.Event()

    def let_go(self, name: str) -> None:
        self.release[name].set()

    def _run(self, *keys: str) -> None:
        gated = [key for key in keys if key in self.release and not self.release[key].is_set()]
        with self._lock:
            self.overlaps += [(key, key) for key in keys if key in self._now]
            self._now.update(keys)
        try:
            for key in gated:
                self.inside[key].set()
            for key in gated:
                assert self.release[key].wait(WAIT)
        finally:
            with self._lock:
                self._now.difference_update(keys)

    @verb("VM.migrate")
    def migrate(self, context: CallContext, vmID: str, dst: str) -> None:
        self._run(vmID, dst)

    @verb("VM.migrateBack")
    def migrate_back(self, context: CallContext, vmID: str, dst: str) -> None:
        self._run(vmID, dst)

    @verb("VM.poke")
    def poke(self, context: CallContext, vmID: str) -> None:
        self._run(vmID)

    @verb("Host.prepare")
    def prepare(self, context: CallContext, host: str) -> None:
        self._run(host)

    @verb("VM.move")
    def move(self, context: CallContext, vmID: str, dst: str) -> None:
        self._run(vmID, dst)


@pytest.fixture
def tasks(tmp_path: Path) -> Iterator[TaskManager]:
    manager = TaskManager(str(tmp_path / "state.db"), lambda name, params=None: None, workers=4)
    manager.start({})
    yield manager
    manager.stop()


@pytest.fixture
def gates() -> Gates:
    return Gates()


@pytest.fixture
def registry(gates: Gates, tasks: TaskManager) -> Registry:
    built = Registry(SCHEMA, [gates], tasks)
    built.locks.wait = WAIT
    return built


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def call(registry: Registry, name: str, **params: str) -> Any:
    return registry.call(name, params, CallContext("test", identity=ADMIN))


def in_background(pool: ThreadPoolExecutor, registry: Registry, name: str, **params: str) -> Future[Any]:
    return pool.submit(call, registry, name, **params)


def busy(registry: Registry, name: str, **params: str) -> TargetBusy:
    registry.locks.wait = 0.05
    try:
        with pytest.raises(TargetBusy) as refused:
            call(registry, name, **params)
    finally:
        registry.locks.wait = WAIT
    return refused.value


# -- the schema ----------------------------------------------------------------------------------


def test_locks_are_read_from_the_schema() -> None:
    migrate, poke = SCHEMA.verbs["VM.migrate"], SCHEMA.verbs["VM.poke"]
    assert migrate.target == "vmID" and migrate.locks == ("vmID", "dst")  # the first lock is the target
    assert migrate.lock_keys({"vmID": VM_A, "dst": HOST_H}) == [VM_A, HOST_H]
    assert migrate.lock_keys({"vmID": VM_A, "dst": VM_A}) == [VM_A]
    assert poke.locks == ("vmID",) and poke.lock_keys({"vmID": VM_A}) == [VM_A]  # the simple form
    create = Schema.load().verbs["VM.create"]
    assert create.lock_keys({"vmParams": {"vmId": VM_A}}) == [VM_A]
    assert create.lock_keys({"vmID": VM_B, "vmParams": {"vmId": VM_A}}) == [VM_B]


@pytest.mark.parametrize("locks", [["vmID", "host"], "vmID", [""]])
def test_a_lock_that_is_no_param_fails_the_load(locks: Any) -> None:
    with pytest.raises(SchemaError, match="VM.migrate: .*(is not a param|must be a list)"):
        declare(VM_migrate={"locks": locks, "params": {"vmID": {"type": "string"}}})


# -- calls -----------------------------------------------------------------------------------------


def test_a_call_sharing_one_of_two_keys_is_refused_naming_the_key_and_its_holder(
        registry: Registry, gates: Gates, pool: ThreadPoolExecutor) -> None:
    gates.hold(HOST_H)
    migrating = in_background(pool, registry, "VM.migrate", vmID=VM_A, dst=HOST_H)
    assert gates.inside[HOST_H].wait(WAIT)
    refused = busy(registry, "Host.prepare", host=HOST_H)
    assert refused.data == {"target": HOST_H, "busyWith": "VM.migrate"} and "VM.migrate" in refused.message
    assert busy(registry, "VM.poke", vmID=VM_A).data == {"target": VM_A, "busyWith": "VM.migrate"}
    gates.let_go(HOST_H)
    assert migrating.result(WAIT) is True
    assert call(registry, "Host.prepare", host=HOST_H) is True


def test_a_refused_call_holds_none_of_its_keys(registry: Registry, gates: Gates, pool: ThreadPoolExecutor) -> None:
    gates.hold(HOST_H)
    preparing = in_background(pool, registry, "Host.prepare", host=HOST_H)
    assert gates.inside[HOST_H].wait(WAIT)
    assert busy(registry, "VM.migrate", vmID=VM_A, dst=HOST_H).data == {"target": HOST_H, "busyWith": "Host.prepare"}
    registry.locks.wait = 0  # VM_A, taken before HOST_H (sorted), was given back with the refusal
    assert call(registry, "VM.poke", vmID=VM_A) is True
    gates.let_go(HOST_H)
    assert preparing.result(WAIT) is True


def test_calls_sharing_a_key_run_one_after_the_other(registry: Registry, gates: Gates,
                                                     pool: ThreadPoolExecutor) -> None:
    gates.hold(VM_A)
    first = in_background(pool, registry, "VM.migrate", vmID=VM_A, dst=HOST_H)
    assert gates.inside[VM_A].wait(WAIT)
    second = in_background(pool, registry, "VM.migrateBack", vmID=VM_B, dst=HOST_H)
    third = in_background(pool, registry, "VM.poke", vmID=VM_A)
    gates.let_go(VM_A)
    assert [future.result(WAIT) for future in (first, second, third)] == [True, True, True]
    assert gates.overlaps == []


def test_calls_on_disjoint_keys_run_in_parallel(registry: Registry, gates: Gates, pool: ThreadPoolExecutor) -> None:
    gates.hold(VM_A)
    gates.hold(VM_B)
    first = in_background(pool, registry, "VM.migrate", vmID=VM_A, dst=HOST_H)
    second = in_background(pool, registry, "VM.migrate", vmID=VM_B, dst=HOST_G)
    assert gates.inside[VM_A].wait(WAIT) and gates.inside[VM_B].wait(WAIT)  # both inside at once
    gates.let_go(VM_A)
    gates.let_go(VM_B)
    assert first.result(WAIT) is True and second.result(WAIT) is True


@pytest.fixture
def eager_switching() -> Iterator[None]:
    """Threads switched every few microseconds, so that one is often stopped between two of its keys."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def run_together(work: Callable[[Any], None], args: list[Any], timeout: float = 30.0) -> list[Any]:
    """Run `work(arg)` for each of `args` in threads at once; the args of those that finished in time."""
    done: list[Any] = []
    threads = [threading.Thread(target=lambda arg=arg: (work(arg), done.append(arg)), daemon=True) for arg in args]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return done


def test_calls_taking_two_keys_in_opposite_orders_never_deadlock(registry: Registry, gates: Gates,
                                                                 eager_switching: None) -> None:
    def loop(name: str) -> None:
        for _ in range(500):
            call(registry, name, vmID=VM_A, dst=HOST_H)

    registry.locks.wait = None  # type: ignore[assignment]  # a deadlock hangs rather than answering busy
    names = ["VM.migrate", "VM.migrateBack"] * 2
    assert len(run_together(loop, names)) == len(names), "the calls deadlocked"
    assert gates.overlaps == []


def test_locks_taken_in_opposite_orders_never_deadlock(eager_switching: None) -> None:
    locks = TargetLocks()

    def loop(keys: list[str]) -> None:
        for _ in range(2000):
            with locks.hold(keys, "test"):
                pass

    orders = [["a", "b", "c"], ["c", "b", "a"], ["b", "c", "a"], ["b", "a"]]
    assert len(run_together(loop, orders)) == len(orders), "the locks deadlocked"
    assert locks._keys == {}  # nothing is left behind


# -- tasks -----------------------------------------------------------------------------------------


def test_a_task_holds_all_its_keys_while_it_runs(registry: Registry, gates: Gates, tasks: TaskManager) -> None:
    gates.hold(HOST_H)
    task = call(registry, "VM.move", vmID=VM_A, dst=HOST_H)
    assert task["target"] == VM_A
    assert gates.inside[HOST_H].wait(WAIT)
    assert busy(registry, "Host.prepare", host=HOST_H).data == {"target": HOST_H, "busyWith": "VM.move (a task)"}
    assert busy(registry, "VM.poke", vmID=VM_A).data == {"target": VM_A, "busyWith": "VM.move (a task)"}
    gates.let_go(HOST_H)
    assert tasks.wait(task["taskID"], WAIT)["state"] == "succeeded"
    assert call(registry, "Host.prepare", host=HOST_H) is True

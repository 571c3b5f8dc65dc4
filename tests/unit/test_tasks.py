"""Tasks: run, progress, wait, cancel, clear, VDSM views, and reconciliation after a restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pier.rpc.errors import JobExists, JobNotDone, TargetBusy, TaskCancelled, Unavailable, UnknownTask
from pier.rpc.events import EventLog
from pier.rpc.tasks import TaskManager
from tests.unit.conftest import VM_ID, Stack, build_stack


def wait_until(events: EventLog, reached: Callable[[], bool], timeout: float = 5.0) -> None:
    """Return once `reached()` holds, checking again at each event published (every task state
    and VM status change is one); fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    after = 0
    while not reached():
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"not reached within {timeout} s"
        _, after = events.wait(after, None, 1000, remaining)


def running(tasks: TaskManager, task_id: str) -> Callable[[], bool]:
    return lambda: tasks.get(task_id)["state"] == "running"


def asked_to_power_off(stack: Stack) -> Callable[[], bool]:
    return lambda: stack.vms.records[VM_ID]["status"] == "Powering down"


@pytest.fixture
def manager(tmp_path: Path):
    events = EventLog(str(tmp_path / "s.db"))
    tasks = TaskManager(str(tmp_path / "s.db"), events.publish, workers=2)
    tasks.start({})
    yield tasks, events
    tasks.stop()
    events.close()


def test_task_runs_reports_progress_and_succeeds(manager) -> None:
    tasks, events = manager

    def work(task):
        task.progress(50, "half way")
        return {"answer": 42}

    info = tasks.submit("VM.shutdown", VM_ID, {}, work)
    done = tasks.wait(info["taskID"], 5)
    assert done["state"] == "succeeded" and done["result"] == {"answer": 42} and done["progress"] == 100
    states = [e.params[info["taskID"]]["state"] for e, in zip(events.read(0)[0])]
    assert states[0] == "pending" and states[-1] == "succeeded"
    assert any(e.params[info["taskID"]]["message"] == "half way" for e in events.read(0)[0])
    assert tasks.vdsm_status(info["taskID"])["taskState"] == "finished"
    assert tasks.vdsm_status(info["taskID"])["taskResult"] == "success"
    assert tasks.vdsm_jobs()[info["taskID"]]["status"] == "done"


def test_wait_returns_early_when_the_wait_runs_out(manager) -> None:
    tasks, _ = manager
    release = threading.Event()
    info = tasks.submit("VM.shutdown", None, {}, lambda task: release.wait(10))
    started = time.monotonic()
    assert tasks.wait(info["taskID"], 0.2)["state"] in ("pending", "running")
    assert time.monotonic() - started < 2
    release.set()
    assert tasks.wait(info["taskID"], 5)["state"] == "succeeded"


def test_stop_cancels_a_running_task(manager) -> None:
    tasks, _ = manager

    started = threading.Event()

    def work(task):
        started.set()
        task.cancelled.wait(10)
        task.check_cancelled()

    info = tasks.submit("VM.shutdown", None, {}, work)
    assert started.wait(5)
    assert tasks.get(info["taskID"])["state"] == "running"  # stopped while it runs, not before it starts
    tasks.stop_task(info["taskID"])
    done = tasks.wait(info["taskID"], 5)
    assert done["state"] == "cancelled"
    assert tasks.vdsm_jobs()[info["taskID"]]["status"] == "aborted"


def test_failure_is_recorded_with_its_vdsm_error(manager) -> None:
    tasks, _ = manager
    from pier.rpc.errors import NoVM

    def work(task):
        raise NoVM("no such VM")

    info = tasks.submit("VM.shutdown", None, {}, work)
    done = tasks.wait(info["taskID"], 5)
    assert done["state"] == "failed" and done["error"]["code"] == 1
    assert tasks.vdsm_status(info["taskID"])["code"] == 1


def test_clear_only_ended_tasks(manager) -> None:
    tasks, _ = manager
    release = threading.Event()
    info = tasks.submit("VM.shutdown", None, {}, lambda task: release.wait(10))
    with pytest.raises(JobNotDone):
        tasks.clear(info["taskID"])
    release.set()
    tasks.wait(info["taskID"], 5)
    tasks.clear(info["taskID"])
    with pytest.raises(UnknownTask):
        tasks.get(info["taskID"])


def test_tasks_on_one_target_run_one_at_a_time(stack: Stack) -> None:
    stack.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 64})
    first = stack.call("VM.shutdown", vmID=VM_ID, timeout=1)
    second = stack.call("VM.shutdown", vmID=VM_ID, timeout=1)
    a = stack.tasks.wait(first["taskID"], 10)
    b = stack.tasks.wait(second["taskID"], 10)
    assert a["ended"] <= b["started"]


def test_a_call_waits_a_bounded_time_for_a_task_on_its_vm(stack: Stack) -> None:
    stack.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 64})
    stack.registry.locks.wait = 0.2
    waiting = stack.call("VM.shutdown", vmID=VM_ID, delay=3600)
    wait_until(stack.events, running(stack.tasks, waiting["taskID"]))  # it holds the VM
    with pytest.raises(TargetBusy, match="VM.shutdown") as busy:
        stack.call("VM.pause", vmID=VM_ID)
    assert busy.value.http_status == 409 and busy.value.data["target"] == VM_ID
    stack.tasks.stop_task(waiting["taskID"])
    assert stack.tasks.wait(waiting["taskID"], 5)["state"] == "cancelled"
    stack.call("VM.pause", vmID=VM_ID)


def test_destroy_stops_the_tasks_on_its_vm_first(stack: Stack) -> None:
    stack.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 64})
    waiting = stack.call("VM.shutdown", vmID=VM_ID, delay=3600)
    stack.registry.locks.wait = 1.0  # without stopping the shutdown first, the destroy would be refused as busy
    wait_until(stack.events, running(stack.tasks, waiting["taskID"]))
    assert stack.call("VM.destroy", vmID=VM_ID) is True
    assert stack.tasks.wait(waiting["taskID"], 5)["state"] == "cancelled"


def test_shutdown_task_through_the_registry(stack: Stack) -> None:
    stack.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 64})
    stubborn = stack.tasks.wait(stack.call("VM.shutdown", vmID=VM_ID, timeout=0)["taskID"], 5)
    assert stubborn["state"] == "failed" and stubborn["error"]["name"] == "nonresp"
    assert stack.call("VM.getInfo", vmID=VM_ID)["status"] == "Up", "no longer powering down"
    forced = stack.tasks.wait(stack.call("VM.shutdown", vmID=VM_ID, timeout=0, force=True)["taskID"], 5)
    assert forced["state"] == "succeeded"
    assert stack.call("VM.getInfo", vmID=VM_ID)["status"] == "Down"


def test_reconcile_after_restart(schema, tmp_path: Path) -> None:
    first = build_stack(schema, tmp_path / "s.db")
    first.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 64})
    asked = first.call("VM.shutdown", vmID=VM_ID, timeout=60)
    wait_until(first.events, asked_to_power_off(first))
    first.tasks.stop()  # the agent stops while the guest is still shutting down
    first.events.close()

    second = build_stack(schema, tmp_path / "s.db", vms={VM_ID: {"vmId": VM_ID, "status": "Up"}})
    try:
        info = second.tasks.get(asked["taskID"])
        assert info["state"] == "failed" and "while waiting for the guest to power off" in info["error"]["message"]
    finally:
        second.tasks.stop()
        second.events.close()

    third_db = tmp_path / "t.db"
    third = build_stack(schema, third_db)
    third.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 64})
    powering_down = third.call("VM.shutdown", vmID=VM_ID, timeout=60)
    wait_until(third.events, asked_to_power_off(third))
    third.tasks.stop()  # the guest powers off while the agent is away
    third.events.close()
    fourth = build_stack(schema, third_db, vms={VM_ID: {"vmId": VM_ID, "status": "Down"}})
    try:
        assert fourth.tasks.get(powering_down["taskID"])["state"] == "succeeded"
    finally:
        fourth.tasks.stop()
        fourth.events.close()


def _restart_during(schema, db: Path, status_after: str | None, *, asked: bool = False, **shutdown: object) -> dict:
    """Start a VM.shutdown, stop the agent while it runs (once the guest was asked to power off
    when `asked`), start again with the VM in `status_after` (None: gone); the task's info after
    the restart."""
    first = build_stack(schema, db)
    first.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 64})
    task = first.call("VM.shutdown", vmID=VM_ID, **shutdown)
    wait_until(first.events, asked_to_power_off(first) if asked else running(first.tasks, task["taskID"]))
    first.tasks.stop()
    first.events.close()
    vms = {} if status_after is None else {VM_ID: {"vmId": VM_ID, "status": status_after}}
    second = build_stack(schema, db, vms=vms)
    try:
        return second.tasks.get(task["taskID"])
    finally:
        second.tasks.stop()
        second.events.close()


def test_a_reboot_never_asked_for_is_not_reconciled_as_done(schema, tmp_path: Path) -> None:
    info = _restart_during(schema, tmp_path / "s.db", "Up", reboot=True, delay=3600)
    assert info["state"] == "failed", info
    assert "before the reboot was asked for" in info["error"]["message"]
    assert "Up" in info["error"]["message"]


def test_a_power_off_never_asked_for_fails_unless_the_vm_is_down(schema, tmp_path: Path) -> None:
    info = _restart_during(schema, tmp_path / "a.db", "Up", delay=3600)
    assert info["state"] == "failed" and "before the guest was asked to power off" in info["error"]["message"]
    assert _restart_during(schema, tmp_path / "b.db", "Down", delay=3600)["state"] == "succeeded"
    asked = _restart_during(schema, tmp_path / "c.db", "Up", asked=True, timeout=3600)
    assert asked["state"] == "failed" and "still Up" in asked["error"]["message"]
    assert "while waiting for the guest to power off" in asked["error"]["message"]


def test_a_reboot_of_a_vm_that_is_gone_fails(schema, tmp_path: Path) -> None:
    info = _restart_during(schema, tmp_path / "s.db", None, reboot=True, delay=3600)
    assert info["state"] == "failed" and info["error"]["name"] == "noVM"


def test_a_reboot_interrupted_while_it_was_asked_for_says_so(stack: Stack) -> None:
    """Between the step marker and libvirt's answer, nothing tells whether the guest was asked."""
    from pier.api.vm import VmApi
    from pier.rpc.errors import PierError

    stack.vms.records = {VM_ID: {"vmId": VM_ID, "status": "Up"}}
    with pytest.raises(PierError) as unknown:
        VmApi(stack.vms).shutdown_done({"vmID": VM_ID, "reboot": True}, "reboot")
    assert "may or may not" in unknown.value.message


def test_nothing_is_reconciled_as_done_while_libvirt_is_unreachable(stack: Stack) -> None:
    from pier.api.vm import VmApi
    from pier.rpc.errors import PierError

    stack.vms.connected = False
    with pytest.raises(PierError) as unknown:
        VmApi(stack.vms).shutdown_done({"vmID": VM_ID, "reboot": False}, None)
    assert "libvirtd" in unknown.value.message


def test_a_reconciler_sees_the_last_step_saved(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    events = EventLog(db)
    first = TaskManager(db, events.publish, workers=1)
    first.start({})
    reached = threading.Event()

    def work(task):
        task.step("second", 40, "doing the second thing")
        reached.set()
        task.cancelled.wait(60)
        task.check_cancelled()  # the agent is stopping: the record stays "running"

    info = first.submit("VM.shutdown", VM_ID, {"vmID": VM_ID}, work)
    assert reached.wait(5)
    first.stop()
    seen = []
    second = TaskManager(db, events.publish, workers=1)
    second.start({"VM.shutdown": lambda params, step: seen.append((params, step)) or False})
    try:
        assert seen == [({"vmID": VM_ID}, "second")]
        assert second.get(info["taskID"])["state"] == "failed"
    finally:
        second.stop()
        events.close()


def test_a_state_database_from_before_step_markers_is_kept(tmp_path: Path) -> None:
    import sqlite3

    db = str(tmp_path / "old.db")
    old = sqlite3.connect(db)
    old.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY, verb TEXT, target TEXT, params TEXT, state TEXT,"
                " progress INTEGER, message TEXT, result TEXT, error TEXT, created REAL, started REAL, ended REAL)")
    old.execute("INSERT INTO tasks VALUES ('t1', 'VM.shutdown', ?, '{}', 'succeeded', 100, '', 'true', 'null',"
                " 1.0, 1.0, ?)", (VM_ID, time.time()))
    old.commit()
    old.close()
    tasks = TaskManager(db, lambda name, params: None, workers=1)
    tasks.start({})
    try:
        assert tasks.get("t1")["state"] == "succeeded"
    finally:
        tasks.stop()


def test_a_task_the_caller_runs_is_running_until_it_ends_it(manager) -> None:
    tasks, _ = manager
    done = tasks.begin("Volume.writeData", "vol-1", {"volumeID": "vol-1"}, task_id="t-1")
    assert tasks.get("t-1")["state"] == "running" and tasks.get("t-1")["started"] is not None
    done.progress(40, "40 of 100 bytes written")
    assert (tasks.get("t-1")["progress"], tasks.get("t-1")["message"]) == (40, "40 of 100 bytes written")
    with pytest.raises(JobExists):
        tasks.begin("Volume.writeData", "vol-1", {}, task_id="t-1")
    done.end(result={"bytes": 100})
    done.end(Unavailable("too late"))  # an ended task stays as it ended
    assert tasks.wait("t-1", 1)["state"] == "succeeded" and tasks.get("t-1")["result"] == {"bytes": 100}

    stopped = tasks.begin("Volume.readData", "vol-1", {})
    tasks.stop_task(stopped.id)
    with pytest.raises(TaskCancelled):
        stopped.check_cancelled()
    stopped.end(TaskCancelled())
    assert tasks.get(stopped.id)["state"] == "cancelled"
    failed = tasks.begin("Volume.readData", "vol-1", {})
    failed.end(Unavailable("the connection broke"))
    assert tasks.get(failed.id)["error"]["message"] == "the connection broke"

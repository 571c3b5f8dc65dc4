"""A task verb whose id is the caller's job id (schema `task_id`): VDSM's SDM jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pier.rpc.errors import JobExists, StorageDomainDoesNotExist
from pier.rpc.events import EventLog
from pier.rpc.schema import Schema
from pier.rpc.tasks import TaskManager
from tests.unit.conftest import Stack


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[TaskManager]:
    tasks = TaskManager(str(tmp_path / "s.db"), EventLog(str(tmp_path / "s.db")).publish, workers=2)
    tasks.start()
    yield tasks
    tasks.stop()


def test_a_task_takes_the_callers_id_once_and_is_a_storage_job(manager: TaskManager) -> None:
    job_id = str(uuid.uuid4())
    info = manager.submit("SDM.add_bitmap", None, {}, lambda task: None, task_id=job_id)
    assert info["taskID"] == job_id
    manager.wait(job_id, 10)
    with pytest.raises(JobExists) as caught:
        manager.submit("SDM.add_bitmap", None, {}, lambda task: None, task_id=job_id)
    assert caught.value.code == 69
    assert manager.vdsm_jobs(job_type="storage") == {job_id: {
        "id": job_id, "job_type": "storage", "status": "done", "description": "SDM.add_bitmap", "progress": 100}}


def test_every_sdm_verb_is_a_task_named_by_its_job_id(schema: Schema) -> None:
    block_only = {"SDM.move_domain_device", "SDM.reduce_domain"}  # refused at the call: no block domains here
    sdm = [verb for name, verb in schema.verbs.items() if name.startswith("SDM.") and name not in block_only]
    assert len(sdm) == 8 and all(verb.task and verb.task_id == "job_id" for verb in sdm)
    assert not any(schema.verbs[name].task for name in block_only)


def test_a_job_on_an_unknown_domain_is_refused_before_a_task_starts(stack: Stack) -> None:
    job_id = str(uuid.uuid4())
    vol_info = {"sd_id": str(uuid.uuid4()), "img_id": str(uuid.uuid4()), "vol_id": str(uuid.uuid4())}
    with pytest.raises(StorageDomainDoesNotExist):
        stack.call("SDM.add_bitmap", job_id=job_id, vol_info=vol_info, bitmap="b1")
    assert job_id not in stack.tasks.all()

"""The storage verbs through the registry and the REST facade, over the storage service on a
temporary data-center root (localfs connections to temporary directories)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from pier.facade import make_app
from pier.rpc.errors import PierError
from pier.rpc.registry import CallContext
from pier.transports.xmlrpc import XmlRpc
from tests.unit.conftest import ADMIN, Stack
from tests.unit.test_facade import request


def new_id() -> str:
    return str(uuid.uuid4())


def connect(stack: Stack, path: Path) -> None:
    path.mkdir(exist_ok=True)
    statuses = stack.call("StoragePool.connectStorageServer", storagepoolID=new_id(), domainType=4,
                          connectionParams=[{"id": "c1", "connection": str(path)}])
    assert statuses == [{"id": "c1", "status": 0}]


def create(stack: Stack, path: Path, sd: str, **extra: Any) -> dict[str, Any]:
    task: Any = stack.call("StorageDomain.create", storagedomainID=sd, domainType=4, typeArgs=str(path),
                           name="data", domainClass=1, **extra)
    return stack.tasks.wait(task["taskID"], 10)


def test_create_is_a_task_whose_result_is_the_domain(stack: Stack, tmp_path: Path) -> None:
    connect(stack, tmp_path / "d")
    sd = new_id()
    done = create(stack, tmp_path / "d", sd)
    assert done["state"] == "succeeded" and done["result"]["uuid"] == sd
    assert stack.call("Host.getStorageDomains") == [sd]
    assert stack.call("StorageDomain.getInfo", storagedomainID=sd)["class"] == "Data"
    assert stack.call("Host.listStorageDomains")[0]["valid"] is True


def test_a_refused_create_fails_at_the_call_and_makes_nothing(stack: Stack, tmp_path: Path) -> None:
    connect(stack, tmp_path / "d")
    create(stack, tmp_path / "d", new_id())
    before = sorted(p.name for p in (tmp_path / "d").iterdir())
    tasks_before = set(stack.tasks.all())
    with pytest.raises(PierError) as err:
        stack.call("StorageDomain.create", storagedomainID=new_id(), domainType=4, typeArgs=str(tmp_path / "d"),
                   name="second", domainClass=1)
    assert err.value.code == 361
    with pytest.raises(PierError) as err:
        stack.call("StorageDomain.create", storagedomainID=new_id(), domainType=4,
                   typeArgs={"remotePath": str(tmp_path / "never-connected")}, name="x", domainClass="Data")
    assert err.value.code == 360
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == before
    assert set(stack.tasks.all()) == tasks_before  # refused at the call: no task started


def test_a_pool_through_the_verbs(stack: Stack, tmp_path: Path) -> None:
    connect(stack, tmp_path / "d")
    sd, sp = new_id(), new_id()
    create(stack, tmp_path / "d", sd)
    stack.call("StoragePool.create", storagepoolID=sp, name="dc", masterSdUUID=sd, masterVersion=1,
               domainList=[sd])
    with pytest.raises(PierError) as err:
        stack.call("StoragePool.getInfo", storagepoolID=sp)
    assert err.value.code == 309
    stack.call("StoragePool.connect", storagepoolID=sp, hostID=1, scsiKey="", masterSdUUID=sd, masterVersion=1)
    assert stack.call("Host.getConnectedStoragePools") == [sp]
    task: Any = stack.call("StoragePool.spmStart", storagepoolID=sp)
    assert stack.tasks.wait(task["taskID"], 10)["result"]["spmStatus"] == "SPM"
    info: Any = stack.call("StoragePool.getInfo", storagepoolID=sp)
    assert info["info"]["spm_id"] == 1 and info["dominfo"][sd]["status"] == "Active"
    stack.call("StoragePool.disconnect", storagepoolID=sp, hostID=1, scsiKey="")
    assert stack.call("Host.getConnectedStoragePools") == []


def test_repo_stats_and_monitoring(stack: Stack, tmp_path: Path) -> None:
    connect(stack, tmp_path / "d")
    sd = new_id()
    create(stack, tmp_path / "d", sd)
    stack.call("Host.startMonitoringDomain", sdUUID=sd, hostID=1)
    stack.storage.monitor.check_all()
    stats: Any = stack.call("Host.getStorageRepoStats")
    assert stats[sd]["valid"] and stats[sd]["code"] == 0 and stats[sd]["actual"]
    events, _ = stack.events.read(0, ("|storage|domain_state|",))
    assert [e.name for e in events] == [f"|storage|domain_state|{sd}"]
    answer = XmlRpc(stack.registry).call("repoStats", [], CallContext("test", identity=ADMIN))
    assert answer["status"]["code"] == 0 and answer[sd] == stats[sd], answer  # VDSM's: domains beside status


def test_rest_lists_domains_and_answers_unknown_ones_with_vdsms_code(stack: Stack, tmp_path: Path) -> None:
    connect(stack, tmp_path / "d")
    sd = new_id()
    create(stack, tmp_path / "d", sd)
    app = make_app(stack.registry, stack.events)
    rows = request(app, "GET", "/api/v1/storage-domains").json()
    assert [(r["uuid"], r["name"], r["valid"]) for r in rows] == [(sd, "data", True)]
    missing = request(app, "GET", f"/api/v1/storage-domains/{new_id()}")
    assert missing.status == 404 and missing.json()["code"] == 358
    assert request(app, "GET", "/api/v1/pools").json() == []


def test_validate_removes_leftovers_only_from_images_no_call_is_at_work_on(stack: Stack, tmp_path: Path) -> None:
    connect(stack, tmp_path / "d")
    sd, busy, idle = new_id(), new_id(), new_id()
    create(stack, tmp_path / "d", sd)
    stack.volumes.leftovers[sd] = {busy, idle}
    with stack.registry.locks.hold(busy, "Volume.copy (a task)"):
        assert stack.call("StorageDomain.validate", storagedomainID=sd) is True
    assert stack.volumes.leftover_images(sd) == [busy]
    stack.call("StorageDomain.validate", storagedomainID=sd)
    assert stack.volumes.leftover_images(sd) == []

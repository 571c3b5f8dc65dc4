"""VM.migrate's options that shape the source side (pier.host.migration): outgoingLimit queues a
migration until a slot frees, convergenceSchedule acts on the samples, tunneled sends the memory
through libvirtd. Over a fake libvirt domain whose migration runs until the test lets it end, and a
fake destination pierd."""

from __future__ import annotations

import threading
import time
from typing import Any

import libvirt
import pytest

from pier.api.vm_migration import VmMigrationApi
from pier.host import migration as migration_module
from pier.host.migration import Migrations
from pier.host.peer import PeerClient
from pier.host.vmstate import DOWN, UP, VmCache, VmRecord
from pier.rpc.errors import InvalidParams, MigrateError, TaskCancelled

VM = "6a1b2c3d-0000-4000-8000-000000000011"
OTHER = "6a1b2c3d-0000-4000-8000-000000000012"
DST = "192.0.2.10:8042"


class FakeVirDomain:
    """The libvirt domain calls a migration makes; its migration lasts until `finish` or `abortJob`."""

    def __init__(self, cache: VmCache, vm_id: str) -> None:
        self.cache, self.vm_id = cache, vm_id
        self.calls: list[tuple[Any, ...]] = []
        self.samples: list[dict[str, Any]] = []
        self.started = threading.Event()
        self.finish = threading.Event()
        self.aborted = threading.Event()

    def migrateToURI3(self, dconnuri: str, params: dict[str, Any], flags: int) -> int:  # noqa: N802
        self.calls.append(("migrate", dconnuri, params, flags))
        self.started.set()
        while not (self.finish.is_set() or self.aborted.is_set()):
            time.sleep(0.005)
        if self.aborted.is_set():
            raise libvirt.libvirtError("operation aborted: migration job: canceled by client")
        self.cache.set_status(self.cache.require(self.vm_id), DOWN)  # what libvirt's events would say
        return 0

    def jobStats(self, flags: int = 0) -> dict[str, Any]:  # noqa: N802
        if self.aborted.is_set() or self.finish.is_set():
            return {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        sample = self.samples.pop(0) if self.samples else {}
        return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "data_total": 1000, "data_remaining": 500, **sample}

    def migrateSetMaxDowntime(self, downtime: int, flags: int = 0) -> int:  # noqa: N802
        self.calls.append(("downtime", downtime))
        return 0

    def migrateStartPostCopy(self, flags: int = 0) -> int:  # noqa: N802
        self.calls.append(("postcopy",))
        return 0

    def abortJob(self) -> int:  # noqa: N802
        self.calls.append(("abort",))
        self.aborted.set()
        return 0


class FakeDomain:
    def __init__(self, virdomain: FakeVirDomain) -> None:
        self.virdomain = virdomain

    def is_active(self) -> bool:
        return True

    def is_persistent(self) -> bool:
        return True


class Site:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cache = VmCache()
        self.doms = {vm_id: FakeVirDomain(self.cache, vm_id) for vm_id in (VM, OTHER)}
        self.peer_calls: list[str] = []
        for vm_id in (VM, OTHER):
            self.cache.add(VmRecord(vm_id, "guest", status=UP))
        monkeypatch.setattr(migration_module, "POLL_INTERVAL", 0.01)
        monkeypatch.setattr(migration_module.Domain, "lookup",
                            staticmethod(lambda connection, vm_id: FakeDomain(self.doms[vm_id])))
        monkeypatch.setattr(PeerClient, "call", lambda peer, name, **kw: self.peer_calls.append(name) or {})
        self.migrations = Migrations(None, self.cache, lambda news: None,  # type: ignore[arg-type]
                                     lambda name, event: None, lambda: "host-a")
        self.progress: dict[str, list[str]] = {VM: [], OTHER: []}
        self.cancelled = {VM: threading.Event(), OTHER: threading.Event()}
        self.outcome: dict[str, Any] = {}

    def migrate(self, vm_id: str, **params: Any) -> Any:
        return self.migrations.migrate(vm_id, {}, {"dst": DST, **params},
                                       lambda pct, msg: self.progress[vm_id].append(msg), self.cancelled[vm_id])

    def start(self, vm_id: str, **params: Any) -> threading.Thread:
        def run() -> None:
            try:
                self.outcome[vm_id] = self.migrate(vm_id, **params)
            except Exception as exc:
                self.outcome[vm_id] = exc
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.005)


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Site:
    return Site(monkeypatch)


def test_with_outgoing_limit_one_a_second_migration_waits_then_starts_when_the_first_ends(site: Site) -> None:
    first = site.start(VM, outgoingLimit=1)
    site.doms[VM].started.wait(20)
    second = site.start(OTHER, outgoingLimit=1)
    until(lambda: any("waiting for a free outgoing migration slot" in m for m in site.progress[OTHER]))
    status = site.migrations.status(OTHER)
    assert status["state"] == "starting" and "outgoingLimit is 1" in status["status"]["message"]
    assert not site.doms[OTHER].started.is_set()
    assert site.migrations.counts() == (0, 2)
    site.doms[VM].finish.set()
    first.join(20)
    site.doms[OTHER].started.wait(20)
    assert site.migrations.status(OTHER)["state"] == "running"
    site.doms[OTHER].finish.set()
    second.join(20)
    assert site.outcome[VM]["progress"] == 100 and site.outcome[OTHER]["progress"] == 100


@pytest.mark.parametrize("how", ["migrateCancel", "Task.stop"])
def test_a_migration_waiting_for_a_slot_can_be_cancelled(site: Site, how: str) -> None:
    first = site.start(VM, outgoingLimit=1)
    site.doms[VM].started.wait(20)
    second = site.start(OTHER, outgoingLimit=1)
    until(lambda: site.migrations.status(OTHER)["state"] == "starting" and bool(site.progress[OTHER]))
    until(lambda: any("waiting" in m for m in site.progress[OTHER]))
    if how == "migrateCancel":
        site.migrations.cancel(OTHER)
    else:
        site.cancelled[OTHER].set()
    second.join(20)
    assert isinstance(site.outcome[OTHER], TaskCancelled)
    assert site.migrations.status(OTHER)["state"] == "cancelled"
    assert not site.doms[OTHER].started.is_set()
    assert site.peer_calls.count("VM.migrationCreate") == 1  # the destination was asked for the first VM only
    site.doms[VM].finish.set()
    first.join(20)
    assert site.outcome[VM]["progress"] == 100


def test_without_a_limit_migrations_run_side_by_side(site: Site) -> None:
    threads = [site.start(VM), site.start(OTHER)]
    site.doms[VM].started.wait(20)
    site.doms[OTHER].started.wait(20)
    assert site.doms[VM].started.is_set() and site.doms[OTHER].started.is_set()
    for dom in site.doms.values():
        dom.finish.set()
    for thread in threads:
        thread.join(20)


def test_the_vdsm_schedule_sets_the_downtime_raises_it_then_aborts_and_the_vm_stays(site: Site) -> None:
    dom = site.doms[VM]
    dom.samples = [{"memory_iteration": n} for n in (1, 2, 3, 4)]
    schedule = {"init": [{"name": "setDowntime", "params": ["100"]}],
                "stalling": [{"limit": 1, "action": {"name": "setDowntime", "params": ["150"]}},
                             {"limit": -1, "action": {"name": "abort", "params": []}}]}
    with pytest.raises(MigrateError, match="convergence schedule aborted it"):
        site.migrate(VM, convergenceSchedule=schedule)
    assert [c for c in dom.calls if c[0] != "migrate"] == [("downtime", 100), ("downtime", 150), ("abort",)]
    assert site.migrations.status(VM)["state"] == "failed"
    assert site.cache.require(VM).status == UP
    assert site.peer_calls[-1] == "VM.migrateCancel"  # the destination forgets it


def test_a_postcopy_action_switches_and_is_allowed_by_the_flags(site: Site) -> None:
    dom = site.doms[VM]
    dom.samples = [{"memory_iteration": 1}, {"memory_iteration": 2}]
    thread = site.start(VM, convergenceSchedule={"stalling": [{"limit": -1, "action": {"name": "postcopy"}}]})
    until(lambda: ("postcopy",) in dom.calls)
    assert site.migrations.status(VM)["state"] == "postcopy"
    assert dom.calls[0][3] & libvirt.VIR_MIGRATE_POSTCOPY
    dom.finish.set()
    thread.join(20)
    assert site.outcome[VM]["progress"] == 100


def test_an_unknown_action_is_refused_before_the_migration_starts(site: Site) -> None:
    bad = {"stalling": [{"limit": 1, "action": {"name": "setBandwidth", "params": ["10"]}}]}
    with pytest.raises(InvalidParams, match="setBandwidth") as refused:
        site.migrate(VM, convergenceSchedule=bad)
    assert refused.value.data["field"] == "params.convergenceSchedule.stalling[0].action.name"
    assert site.peer_calls == [] and not site.doms[VM].calls
    with pytest.raises(InvalidParams):  # the verb's precheck, before any task exists
        VmMigrationApi(site.migrations, None).migrate_allowed(None, VM, {"dst": DST, "convergenceSchedule": bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("tunneled", [True, "true"])
def test_tunneled_sends_memory_through_libvirtd_so_no_qemu_uri(site: Site, tunneled: Any) -> None:
    site.doms[VM].finish.set()
    site.migrate(VM, tunneled=tunneled, dstqemu="198.51.100.7")
    _, dconnuri, params, flags = site.doms[VM].calls[0]
    assert flags & libvirt.VIR_MIGRATE_TUNNELLED and flags & libvirt.VIR_MIGRATE_PEER2PEER
    assert libvirt.VIR_MIGRATE_PARAM_URI not in params
    assert dconnuri == "qemu+tls://192.0.2.10/system"


def test_untunneled_memory_goes_to_dstqemu(site: Site) -> None:
    site.doms[VM].finish.set()
    site.migrate(VM, tunneled=False, dstqemu="198.51.100.7")
    _, _, params, flags = site.doms[VM].calls[0]
    assert not flags & libvirt.VIR_MIGRATE_TUNNELLED
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://198.51.100.7"

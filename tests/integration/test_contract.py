"""The services' contract: the same assertions on the unit tests' fakes and on the real services.

The verb handlers rely on what `pier.host.services` promises; the unit tests drive the handlers
over fakes (tests/fakes.py). Each test here runs twice, on the fakes and on `Node`'s real
services over libvirt's test driver (a private `test:///<file>`), so a fake that drifts from
the real thing fails here rather than hiding a defect in the unit tests.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pier.host.network.service import Network
from pier.host.node import Node
from pier.host.services import HostService, NetworkService, VmService
from pier.rpc.errors import InvalidParams, NoVM, UnsupportedOperation, VMDown, VMExists
from tests.fakes import FakeHost, FakeNetwork, FakeVms, as_network_service, as_services

DATA = Path(__file__).parent / "data"


@dataclass
class Services:
    host: HostService
    vms: VmService


@pytest.fixture(params=["fake", "real"])
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    if request.param == "fake":
        vms = FakeVms()
        yield Services(*as_services(FakeHost(vms), vms))
        return
    path = tmp_path / "testnode.xml"
    shutil.copy(DATA / "testnode.xml", path)
    node = Node(f"test://{path}", lambda name, params: None, stats_interval=0.1, slow_stats_interval=0.3)
    node.start()
    try:
        yield Services(node.host, node.vms)
    finally:
        node.stop()


def create(vms: VmService, name: str = "contract") -> str:
    vm_id = str(uuid.uuid4())
    created = vms.create(vm_id, {"vmName": name, "memSize": 64})
    assert created["vmId"] == vm_id and created["status"] == "Up"
    return vm_id


def test_host_facts(services: Services) -> None:
    host = services.host
    assert host.uuid() == host.uuid() and uuid.UUID(host.uuid())
    assert host.capabilities()["uuid"] == host.uuid()
    assert all(isinstance(value, str) for value in host.hardware_info().values())
    assert "cpuIdle" in host.stats() and "vmCount" in host.stats()


def test_a_created_vm_is_listed_described_and_counted(services: Services) -> None:
    vms = services.vms
    before = services.host.stats()["vmCount"]
    vm_id = create(vms, "listed")
    assert {"vmId": vm_id, "status": "Up"} in vms.listing()
    assert vms.listing([vm_id]) == [{"vmId": vm_id, "status": "Up"}]
    assert vms.listing([str(uuid.uuid4())]) == []
    full = vms.listing([vm_id], full=True)
    assert [(vm["vmId"], vm["vmName"], vm["status"]) for vm in full] == [(vm_id, "listed", "Up")]
    assert vms.definition(vm_id)["vmName"] == "listed"
    assert vms.status(vm_id) == "Up"
    assert vms.stats(vm_id)["vmId"] == vm_id and vms.stats(vm_id)["status"] == "Up"
    assert services.host.stats()["vmCount"] == before + 1


def test_an_id_is_taken_once(services: Services) -> None:
    vm_id = create(services.vms)
    with pytest.raises(VMExists):
        services.vms.create(vm_id, {"vmName": "again", "memSize": 64})


@pytest.mark.parametrize("verb", ["definition", "status", "stats", "destroy", "poweroff", "shutdown", "reboot",
                                  "reset", "pause", "cont"])
def test_an_unknown_vm_is_no_vm(services: Services, verb: str) -> None:
    with pytest.raises(NoVM):
        getattr(services.vms, verb)(str(uuid.uuid4()))


def test_pause_and_cont(services: Services) -> None:
    vms = services.vms
    vm_id = create(vms)
    assert vms.pause(vm_id)["status"] == "Paused" and vms.status(vm_id) == "Paused"
    assert vms.cont(vm_id)["status"] == "Up" and vms.status(vm_id) == "Up"
    with pytest.raises(UnsupportedOperation):
        vms.cont(vm_id)


def test_poweroff_keeps_the_vm_down_and_destroy_removes_it(services: Services) -> None:
    vms = services.vms
    vm_id = create(vms)
    vms.poweroff(vm_id)
    assert vms.wait_status(vm_id, {"Down"}, 5.0) == "Down"
    assert vms.stats(vm_id)["status"] == "Down"
    for verb in (vms.pause, vms.reboot, vms.reset, vms.shutdown):
        with pytest.raises(VMDown):
            verb(vm_id)
    vms.destroy(vm_id)
    with pytest.raises(NoVM):
        vms.status(vm_id)
    assert vm_id not in [vm["vmId"] for vm in vms.listing()]


def test_wait_status_gives_up_with_none(services: Services) -> None:
    vm_id = create(services.vms)
    assert services.vms.wait_status(vm_id, {"Paused"}, 0.2) is None
    assert services.vms.wait_status(vm_id, {"Up", "Paused"}, 0.2) == "Up"


def sampled(vms: VmService, vm_id: str, status: str) -> bool:
    """Whether the VM's entry in all_stats shows `status` within 5 s (the sampler takes its time)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if [stats["status"] for stats in vms.all_stats() if stats["vmId"] == vm_id] == [status]:
            return True
        time.sleep(0.02)
    return False


def test_all_stats_holds_each_vm(services: Services) -> None:
    vm_id = create(services.vms)
    assert sampled(services.vms, vm_id, "Up")
    services.vms.pause(vm_id)
    assert sampled(services.vms, vm_id, "Paused")


def test_what_a_reader_gets_is_its_own(services: Services) -> None:
    vm_id = create(services.vms)
    assert sampled(services.vms, vm_id, "Up")
    for stats in services.vms.all_stats():
        stats["status"] = "scribbled"
    mine = services.vms.stats(vm_id)
    mine["status"] = "scribbled"
    assert services.vms.stats(vm_id)["status"] == "Up"
    assert all(stats["status"] != "scribbled" for stats in services.vms.all_stats())


@pytest.fixture(params=["fake", "real"])
def network(request: pytest.FixtureRequest) -> Iterator[NetworkService]:
    if request.param == "fake":
        yield as_network_service(FakeNetwork())
        return
    real = Network(stats_interval=0.1)  # reads this machine's namespace; changes nothing
    real.start()
    try:
        yield real
    finally:
        real.stop()


def test_network_facts_and_figures(network: NetworkService) -> None:
    caps = network.capabilities()
    assert {"nics", "bridges", "bondings", "vlans", "networks", "nameservers", "supportsIPv6"} <= set(caps)
    assert caps["nics"] and all(isinstance(nic["speed"], int) and nic["mtu"].isdigit() for nic in caps["nics"].values())
    stats = network.statistics()
    assert set(caps["nics"]) <= set(stats["network"]) and "lo" not in stats["network"]
    for entry in stats["network"].values():
        assert entry["state"] in ("up", "down", "unknown")
        assert all(entry[key].isdigit() for key in ("rx", "tx", "rxDropped", "txDropped", "rxErrors", "speed"))
    assert stats["rxDropped"].isdigit() and stats["txDropped"].isdigit()


def test_a_refused_change_names_a_field_and_changes_nothing(network: NetworkService) -> None:
    # the fake refuses the missing NIC; the real service here only reads (it was not given manage=True)
    with pytest.raises((InvalidParams, UnsupportedOperation)) as refused:
        network.setup({"contract": {"nic": "pier-no-such-nic", "bridged": False}}, {}, {})
    assert refused.value.data["field"] in ("networks.contract.nic", "networks")
    assert "contract" not in network.capabilities()["networks"]

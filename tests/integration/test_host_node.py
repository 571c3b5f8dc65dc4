"""pier.host on libvirt's test driver (a private `test:///<file>` per test): what an orderly
stop publishes, a definition Pier cannot read, and hardware facts that cannot be read."""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pier.host import capabilities
from pier.host.domxml import DomainXml
from pier.host.node import Node
from pier.rpc.errors import HardwareInfoError

DATA = Path(__file__).parent / "data"


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, name: str, params: dict[str, Any]) -> None:
        with self._lock:
            self.items.append((name, params))

    def statuses(self, vm_id: str) -> list[str]:
        with self._lock:
            return [p[vm_id]["status"] for n, p in self.items if n == f"|virt|VM_status|{vm_id}"]


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def node(tmp_path: Path, events: Events) -> Iterator[Node]:
    path = tmp_path / "testnode.xml"
    shutil.copy(DATA / "testnode.xml", path)
    n = Node(f"test://{path}", events, stats_interval=0.1, slow_stats_interval=0.3)
    n.start()
    assert n.connected
    yield n
    n.stop()


def vm_params(name: str) -> dict[str, Any]:
    return {"vmName": name, "memSize": 64, "smp": "1", "devices": [
        {"deviceType": "graphics", "device": "vnc", "port": "-1"}]}


def test_a_vm_down_just_before_an_orderly_stop_is_reported_down(node: Node, events: Events
                                                                ) -> None:
    """The guest's shutdown is held back for the reboot grace (0.5 s): the stop publishes it."""
    vm_id = str(uuid.uuid4())
    node.vms.create(vm_id, vm_params("pier-test-stop"))
    node.vms.shutdown(vm_id)
    node.stop()
    assert events.statuses(vm_id)[-1] == "Down"


def test_a_definition_pier_cannot_make_is_a_stub_and_an_error_in_the_log(
        node: Node, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: DomainXml) -> dict[str, Any]:
        raise RuntimeError("a bug in to_definition")

    monkeypatch.setattr(DomainXml, "to_definition", broken)
    vm_id = str(uuid.uuid4())
    with caplog.at_level(logging.ERROR, logger="pier.host.vms"):
        node.vms.create(vm_id, vm_params("pier-test-stub"))
        info = node.vms.definition(vm_id)
        assert node.vms.listing(full=True)[0]["vmId"] == vm_id
    assert (info["vmId"], info["vmName"], info["status"]) == (vm_id, "pier-test-stub", "Up")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and vm_id in errors[0].getMessage() and errors[0].exc_info is not None
    assert "a bug in to_definition" in caplog.text

    assert node.flush_events()  # libvirt's news of the start is in: the XML stays as it is now
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="pier.host.vms"):
        for _ in range(3):
            assert node.vms.definition(vm_id)["vmId"] == vm_id
    assert len(caplog.records) <= 1, "logged once per version of the XML, not on every read"


def test_hardware_facts_that_cannot_be_read_are_hw_info_err(
        node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dmi = tmp_path / "dmi"
    for name in ("sys_vendor", "product_name", "product_version", "product_serial",
                 "product_uuid", "product_family"):
        (dmi / name).mkdir(parents=True)  # there, and unreadable as a file
    monkeypatch.setattr(capabilities, "DMI_DIR", f"{dmi}/")
    with pytest.raises(HardwareInfoError, match="sys_vendor") as failed:
        node.host.hardware_info()
    assert failed.value.code == 57 and failed.value.name == "hwInfoErr"

    (dmi / "sys_vendor").rmdir()
    (dmi / "sys_vendor").write_text("Pier Test Works\n")
    assert node.host.hardware_info()["systemManufacturer"] == "Pier Test Works"

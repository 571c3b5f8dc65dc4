"""pier.host.domain: the domain wrapper and the libvirt error map, on a real libvirt.

Lookup, XML and the device flags run on the test driver (a private `test:///<file>` per test);
its driver refuses device changes, so attach/update/detach run for real on qemu:///system
(marked kvm) and their flags are checked on the test driver by recording the calls.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from pier.host.connection import Connection
from pier.host.domain import Domain, libvirt_errors
from pier.host.news import Disconnected, News
from pier.rpc.errors import (
    DestroyError,
    InvalidParams,
    LibvirtUnavailable,
    NoVM,
    Unexpected,
    UnsupportedOperation,
    VMDown,
)

DATA = Path(__file__).parent / "data"
LIVE, CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
NIC = ("<interface type='network'><source network='default'/><mac address='52:54:00:aa:00:{n:02x}'/>"
       "<model type='virtio'/><alias name='ua-nic{n}'/></interface>")


def domain_xml(vm_id: str, name: str, kind: str = "test") -> str:
    real = kind != "test"  # a qemu guest needs ACPI for PCI hotplug
    extra = "<memballoon model='none'/>" if real else ""
    return (f"<domain type='{kind}'><name>{name}</name><uuid>{vm_id}</uuid>"
            "<memory unit='MiB'>32</memory><os><type>hvm</type></os>"
            + ("<features><acpi/></features>" if real else "") +
            "<metadata><keep:mine xmlns:keep='urn:pier-test'>untouched</keep:mine></metadata>"
            f"<devices>{NIC.format(n=0)}<graphics type='vnc' port='-1' listen='127.0.0.1'/>{extra}"
            "</devices></domain>")


@pytest.fixture
def news() -> list[News]:
    return []


@pytest.fixture
def connection(tmp_path: Path, news: list[News]) -> Iterator[Connection]:
    path = tmp_path / "testnode.xml"
    shutil.copy(DATA / "testnode.xml", path)
    conn = Connection(f"test://{path}", news.append)
    conn.start()
    assert conn.connected
    yield conn
    conn.stop()


def define(connection: Connection, *, start: bool = True) -> str:
    vm_id = str(uuid.uuid4())
    dom = connection.get().defineXML(domain_xml(vm_id, f"pier-test-{vm_id[:8]}"))
    if start:
        dom.create()
    return vm_id


# -- lookup and errors -----------------------------------------------------------------------


def test_lookup_finds_the_vm_or_says_no_vm(connection: Connection) -> None:
    vm_id = define(connection)
    dom = Domain.lookup(connection, vm_id.upper())
    assert (dom.vm_id, dom.name) == (vm_id, f"pier-test-{vm_id[:8]}")
    assert dom.is_active() and dom.is_persistent() and dom.status() == ("Up", {})
    with pytest.raises(NoVM):
        Domain.lookup(connection, str(uuid.uuid4()))
    with pytest.raises(InvalidParams, match="vmId"):
        Domain.lookup(connection, "not-a-uuid")


def test_a_domain_gone_behind_the_wrappers_back_is_no_vm(connection: Connection) -> None:
    vm_id = define(connection, start=False)
    dom = Domain.lookup(connection, vm_id)
    connection.get().lookupByUUIDString(vm_id).undefine()
    with pytest.raises(NoVM):
        dom.xml()


def test_without_libvirtd_lookup_fails_at_once(tmp_path: Path) -> None:
    away = Connection(f"test://{tmp_path}/testnode.xml", lambda news: None)  # never started
    with pytest.raises(LibvirtUnavailable):
        Domain.lookup(away, str(uuid.uuid4()))


def refusal(code: int, domain: int = libvirt.VIR_FROM_DOMAIN) -> libvirt.libvirtError:
    exc = libvirt.libvirtError("refused by the test")
    exc.get_error_code = lambda: code  # type: ignore[method-assign]
    exc.get_error_domain = lambda: domain  # type: ignore[method-assign]
    exc.get_error_message = lambda: "refused by the test"  # type: ignore[method-assign]
    return exc


def test_libvirt_errors_become_pier_errors(connection: Connection, news: list[News]) -> None:
    with pytest.raises(NoVM):
        with libvirt_errors(connection, action="look"):
            raise refusal(libvirt.VIR_ERR_NO_DOMAIN)
    with pytest.raises(DestroyError, match="cannot power off: refused by the test") as failed:
        with libvirt_errors(connection, action="power off", error=DestroyError):
            raise refusal(libvirt.VIR_ERR_INTERNAL_ERROR)
    assert failed.value.data == {"libvirtCode": libvirt.VIR_ERR_INTERNAL_ERROR}

    vm_id = define(connection)
    dom = connection.get().lookupByUUIDString(vm_id)
    with pytest.raises(UnsupportedOperation) as refused:  # running, and the verb acts on Paused only
        with libvirt_errors(connection, action="resume", domain=dom, acts_on={"Paused"}):
            raise refusal(libvirt.VIR_ERR_INTERNAL_ERROR)
    assert refused.value.data["status"] == "Up"
    dom.destroy()
    with pytest.raises(VMDown):
        with libvirt_errors(connection, action="reset", domain=dom):
            raise refusal(libvirt.VIR_ERR_INTERNAL_ERROR)

    assert Disconnected("error") not in news
    with pytest.raises(LibvirtUnavailable):
        with libvirt_errors(connection, connection.get(), action="look"):
            raise refusal(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC)
    assert Disconnected("error") in news, "the connection is marked lost, so it reconnects"


def test_libvirt_errors_leaves_other_exceptions_alone(connection: Connection) -> None:
    with pytest.raises(KeyError):
        with libvirt_errors(connection, action="look"):
            raise KeyError("a bug, not libvirt")


# -- XML -------------------------------------------------------------------------------------


def test_edit_defines_the_change_and_keeps_what_pier_does_not_model(connection: Connection
                                                                     ) -> None:
    vm_id = define(connection, start=False)
    dom = Domain.lookup(connection, vm_id)
    dom.edit(lambda xml: xml.set_metadata("pierTest", "42"))
    again = Domain.lookup(connection, vm_id).xml(inactive=True)
    assert again.metadata("pierTest") == "42"
    assert "urn:pier-test" in again.to_string() and "untouched" in again.to_string()

    other = again
    other.uuid = str(uuid.uuid4())
    with pytest.raises(InvalidParams, match="uuid"):
        dom.define(other)


def test_device_by_alias_in_the_guest_and_in_the_definition(connection: Connection) -> None:
    dom = Domain.lookup(connection, define(connection))
    nic = dom.device("ua-nic0")
    assert nic is not None and nic.to_vdsm()["macAddr"] == "52:54:00:aa:00:00"
    assert dom.device("ua-nic0", inactive=True) is not None
    assert dom.device("ua-nowhere") is None and dom.device("") is None


# -- device flags ----------------------------------------------------------------------------


class Recorded:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, int]] = []
        for method in ("attachDeviceFlags", "updateDeviceFlags", "detachDeviceAlias"):
            monkeypatch.setattr(libvirt.virDomain, method, self._recorder(method))

    def _recorder(self, method: str):  # type: ignore[no-untyped-def]
        def record(dom: libvirt.virDomain, xml_or_alias: str, flags: int = 0) -> int:
            self.calls.append((method, xml_or_alias, flags))
            return 0
        return record


def test_device_changes_reach_the_running_guest_and_the_definition(
        connection: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = Recorded(monkeypatch)
    running = Domain.lookup(connection, define(connection))
    defined = Domain.lookup(connection, define(connection, start=False))
    transient_id = str(uuid.uuid4())
    connection.get().createXML(domain_xml(transient_id, "pier-test-transient"), 0)
    transient = Domain.lookup(connection, transient_id)

    for dom in (running, defined, transient):
        dom.attach(NIC.format(n=1))
        dom.update(NIC.format(n=1))
        dom.detach("ua-nic1")
    flags = [(method, flags) for method, _, flags in recorded.calls]
    assert flags == [(m, f) for f in (LIVE | CONFIG, CONFIG, LIVE)
                     for m in ("attachDeviceFlags", "updateDeviceFlags", "detachDeviceAlias")]
    assert recorded.calls[0][1] == NIC.format(n=1) and recorded.calls[2][1] == "ua-nic1"


def test_a_device_change_libvirt_refuses_is_the_callers_error(connection: Connection) -> None:
    dom = Domain.lookup(connection, define(connection))
    with pytest.raises(Unexpected, match="cannot attach a device to VM") as failed:
        dom.attach(NIC.format(n=1))  # the test driver has no device hotplug
    assert failed.value.data == {"libvirtCode": libvirt.VIR_ERR_NO_SUPPORT}


# -- the real libvirtd -----------------------------------------------------------------------


@pytest.fixture
def system() -> Iterator[Connection]:
    try:
        libvirt.open("qemu:///system").close()
    except libvirt.libvirtError as exc:
        if os.environ.get("PIER_REQUIRE_KVM") == "1":
            pytest.fail(f"qemu:///system is required: {exc}")
        pytest.skip(f"qemu:///system is not reachable: {exc}")
    events: list[News] = []
    conn = Connection("qemu:///system", events.append)
    conn.start()
    yield conn
    conn.stop()


@pytest.mark.kvm
def test_devices_attach_update_and_detach_on_a_real_domain(system: Connection) -> None:
    vm_id = str(uuid.uuid4())
    kind = "kvm" if os.path.exists("/dev/kvm") else "qemu"
    raw = system.get().defineXML(domain_xml(vm_id, f"pier-test-dom-{vm_id[:8]}", kind))
    try:
        dom = Domain.lookup(system, vm_id)
        dom.attach(NIC.format(n=1))  # off: the definition only
        assert dom.device("ua-nic1") is not None
        dom.update(NIC.format(n=1).replace("<model", "<link state='down'/><model"))
        link = dom.device("ua-nic1")
        assert link is not None and link.element.find("link").get("state") == "down"  # type: ignore[union-attr]
        dom.detach("ua-nic1")
        assert dom.device("ua-nic1") is None

        raw.create()  # running: the guest and the definition
        dom.attach(NIC.format(n=2))
        assert dom.device("ua-nic2") is not None and dom.device("ua-nic2", inactive=True) is not None
        dom.update(NIC.format(n=2).replace("<model", "<link state='down'/><model"))
        for inactive in (False, True):
            nic = dom.device("ua-nic2", inactive=inactive)
            assert nic is not None and nic.element.find("link").get("state") == "down"  # type: ignore[union-attr]
    finally:
        if raw.isActive():
            raw.destroy()
        raw.undefine()

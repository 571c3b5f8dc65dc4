"""The host device, domain XML and KSM services' contract: the same assertions on the unit tests'
fakes and on the real services (libvirt's test driver with node devices of its own, a sysfs
directory of the test's own), as tests/integration/test_contract.py does for the VM services.

The secrets service's real side is the real libvirtd (qemu:///system): the test driver has no
secrets.
"""

from __future__ import annotations

import base64
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from pier.host.ksm import Ksm
from pier.host.node import Node
from pier.host.services import DomainXmlService, HostDeviceService, KsmService, SecretService, VmService
from pier.rpc.errors import (
    HostdevDetachError,
    InvalidParams,
    KsmError,
    NoSuchDevice,
    NoVM,
    SecretBadRequest,
    SecretRegisterError,
    UnsupportedOperation,
)
from tests.fakes import (
    FakeDomainXmls,
    FakeHostDevices,
    FakeKsm,
    FakeSecrets,
    FakeVms,
    as_host_extras,
    as_secret_service,
)
from tests.unit.test_hosttune import fake_sysfs

DATA = Path(__file__).parent / "data"

ASSIGNABLE = ("<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x02' slot='0x00' "
              "function='0x0'/></source></hostdev>")
NOT_ASSIGNABLE = ("<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x00' slot='0x02' "
                  "function='0x0'/></source></hostdev>")
ABSENT = ("<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x7f' slot='0x1f' "
          "function='0x7'/></source></hostdev>")


@dataclass
class Extras:
    vms: VmService
    hostdevs: HostDeviceService
    domain_xmls: DomainXmlService
    ksm: KsmService
    sysfs: Path | None


@pytest.fixture(params=["fake", "real"])
def extras(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Extras]:
    if request.param == "fake":
        vms = FakeVms()
        hostdevs, xmls, ksm = as_host_extras(FakeHostDevices(vms), FakeDomainXmls(vms), FakeKsm())
        yield Extras(vms, hostdevs, xmls, ksm, None)
        return
    path = tmp_path / "testnode.xml"
    shutil.copy(DATA / "testnode-devices.xml", path)
    sysfs = tmp_path / "sys"
    fake_sysfs(sysfs)
    (sysfs / "bus/pci/devices/0000:02:00.0").mkdir(parents=True)
    (sysfs / "bus/pci/devices/0000:02:00.0/sriov_numvfs").write_text("0\n")
    node = Node(f"test://{path}", lambda name, params: None, stats_interval=0.1, slow_stats_interval=0.3,
                sysfs_root=sysfs)
    node.start()
    try:
        yield Extras(node.vms, node.hostdevs, node.domain_xmls, node.ksm, sysfs)
    finally:
        node.stop()


def create(vms: VmService, name: str = "extras") -> str:
    vm_id = str(uuid.uuid4())
    vms.create(vm_id, {"vmName": name, "memSize": 64})
    return vm_id


def test_devices_are_listed_with_what_they_are(extras: Extras) -> None:
    devices = extras.hostdevs.list_by_caps()
    pf = devices["pci_0000_02_00_0"]["params"]
    assert (pf["capability"], pf["is_assignable"], pf["iommu_group"], pf["totalvfs"]) == ("pci", "true", "15", "7")
    assert pf["vendor_id"] == "0x8086" and pf["address"] == {"domain": "0", "bus": "2", "slot": "0", "function": "0"}
    assert devices["pci_0000_00_02_0"]["params"]["is_assignable"] == "false"
    assert set(extras.hostdevs.list_by_caps(["pci"])) == {"pci_0000_00_02_0", "pci_0000_02_00_0"}
    assert extras.hostdevs.list_by_caps(["scsi"]) == {}


def test_numvfs_within_the_device_limit(extras: Extras) -> None:
    extras.hostdevs.change_numvfs("pci_0000_02_00_0", 4)
    if extras.sysfs is not None:
        assert (extras.sysfs / "bus/pci/devices/0000:02:00.0/sriov_numvfs").read_text().strip() == "4"
    with pytest.raises(InvalidParams, match="numvfs"):
        extras.hostdevs.change_numvfs("pci_0000_02_00_0", 8)
    with pytest.raises(UnsupportedOperation, match="not an SR-IOV physical function"):
        extras.hostdevs.change_numvfs("pci_0000_00_02_0", 1)
    with pytest.raises(NoSuchDevice, match="deviceName"):
        extras.hostdevs.change_numvfs("pci_0000_7f_1f_7", 1)


def test_reattach_leaves_a_device_with_the_host_as_it_is(extras: Extras) -> None:
    extras.hostdevs.reattach("pci_0000_02_00_0")
    with pytest.raises(NoSuchDevice):
        extras.hostdevs.reattach("pci_0000_7f_1f_7")


def test_hotplug_refuses_before_touching_anything(extras: Extras) -> None:
    vm_id = create(extras.vms)
    before = extras.domain_xmls.domain_xmls([vm_id])
    with pytest.raises(HostdevDetachError, match=r"devices\[1\]: host device pci_0000_00_02_0 cannot be assigned"):
        extras.hostdevs.hotplug(vm_id, [ASSIGNABLE, NOT_ASSIGNABLE])
    with pytest.raises(NoSuchDevice, match=r"devices\[0\]"):
        extras.hostdevs.hotplug(vm_id, [ABSENT])
    with pytest.raises(NoVM):
        extras.hostdevs.hotplug(str(uuid.uuid4()), [ASSIGNABLE])
    with pytest.raises(NoSuchDevice, match=r"devices\[0\]"):
        extras.hostdevs.hotunplug(vm_id, [ASSIGNABLE])
    assert extras.domain_xmls.domain_xmls([vm_id]) == before


def test_domain_xmls_of_some_or_all_vms(extras: Extras) -> None:
    first, second = create(extras.vms, "first"), create(extras.vms, "second")
    some = extras.domain_xmls.domain_xmls([first])
    assert list(some) == [first] and f"<uuid>{first}</uuid>" in some[first] and "<name>first</name>" in some[first]
    assert {first, second} <= set(extras.domain_xmls.domain_xmls())
    with pytest.raises(NoVM):
        extras.domain_xmls.domain_xmls([str(uuid.uuid4())])


def test_ksm_refuses_an_unknown_knob_and_keeps_the_rest(extras: Extras) -> None:
    extras.ksm.tune({"sleep_millisecs": 30})
    with pytest.raises(KsmError, match="unknown KSM knob"):
        extras.ksm.tune({"npages": 1})
    if extras.sysfs is not None:
        assert Ksm(extras.sysfs).read()["sleep_millisecs"] == 30


@pytest.fixture(params=["fake", "real"])
def secret_service(request: pytest.FixtureRequest, system_libvirt: str) -> Iterator[SecretService]:
    """The fake, or the real service on qemu:///system (the test driver has no secrets); what a
    test registers there is undefined at the end."""
    if request.param == "fake":
        yield as_secret_service(FakeSecrets())
        return
    node = Node(system_libvirt, lambda name, params: None)
    node.start()
    mine: list[str] = []
    try:
        yield RecordingSecrets(node.secrets, mine)
    finally:
        node.secrets.unregister(mine)
        node.stop()


class RecordingSecrets:
    """A SecretService that notes every UUID it is given, for the clean-up."""

    def __init__(self, secrets: SecretService, seen: list[str]) -> None:
        self._secrets, self._seen = secrets, seen

    def register(self, secrets: Iterable[Mapping[str, Any]], clear: bool = False) -> None:
        secrets = list(secrets)
        self._seen.extend(str(secret["uuid"]) for secret in secrets)
        self._secrets.register(secrets, clear)

    def unregister(self, uuids: Iterable[str]) -> None:
        self._secrets.unregister(uuids)


def secret(value: bytes = b"contract", usage: str = "") -> dict[str, str]:
    return {"uuid": str(uuid.uuid4()), "usageType": "ceph", "usageID": usage or f"pier-test/{uuid.uuid4()}",
            "password": base64.b64encode(value).decode()}


def test_secrets_register_replace_and_refuse(secret_service: SecretService) -> None:
    first, second = secret(), secret()
    secret_service.register([first, second])
    secret_service.register([{**first, "password": base64.b64encode(b"new").decode()}])  # same UUID: replaced
    with pytest.raises(SecretBadRequest, match=r"secrets\[1\].password is not base64"):
        secret_service.register([secret(), {**secret(), "password": "@@"}])
    with pytest.raises(SecretRegisterError):
        secret_service.register([secret(usage=first["usageID"])])  # a usage names one secret
    secret_service.unregister([first["uuid"], second["uuid"], str(uuid.uuid4())])
    secret_service.register([first])  # its usage is free again
    secret_service.unregister([first["uuid"]])


def test_domain_xmls_leave_console_passwords_out(tmp_path: Path) -> None:
    path = tmp_path / "testnode.xml"
    shutil.copy(DATA / "testnode.xml", path)
    node = Node(f"test://{path}", lambda name, params: None, stats_interval=0.1, slow_stats_interval=0.3)
    node.start()
    try:
        vm_id = str(uuid.uuid4())
        xml = (f"<domain type='test'><name>secretive</name><uuid>{vm_id}</uuid><memory>65536</memory>"
               "<os><type>hvm</type></os><devices><graphics type='vnc' port='-1' passwd='s3cret-ticket'/>"
               "</devices></domain>")
        node.vms.create(vm_id, {"xml": xml})
        secure = node._connection.get().lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
        assert "s3cret-ticket" in secure  # libvirt holds the password, so the check below can fail
        for answer in (node.domain_xmls.domain_xmls([vm_id]), node.domain_xmls.domain_xmls()):
            assert "<graphics" in answer[vm_id] and "s3cret-ticket" not in answer[vm_id]
    finally:
        node.stop()

"""Unit-test fixtures: the real registry, event log and task manager over fake host services."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pier.api import Services, handlers
from pier.host.services import MemoryStateService
from pier.host.storage.jobs import StorageJobs
from pier.host.storage.nbd import NbdServers
from pier.rpc.audit import AuditLog
from pier.rpc.auth import Credentials, Identity
from pier.rpc.events import EventLog
from pier.rpc.jsonrpc import JsonRpc
from pier.rpc.registry import CallContext, Registry
from pier.rpc.schema import Schema
from pier.rpc.tasks import TaskManager
from tests.fakes import (
    FakeBackups,
    FakeBlockDevices,
    FakeConsoles,
    FakeDomainXmls,
    FakeGuest,
    FakeHost,
    FakeHostDevices,
    FakeImageSharing,
    FakeKsm,
    FakeLldp,
    FakeNetwork,
    FakeSecrets,
    FakeStorage,
    FakeTransfers,
    FakeVmDevices,
    FakeVms,
    FakeVolumes,
    as_backup_service,
    as_block_device_service,
    as_console_service,
    as_guest_service,
    as_host_extras,
    as_network_service,
    as_secret_service,
    as_services,
    as_sharing_service,
    as_storage_service,
    as_transfer_service,
    as_tuning,
    as_vm_device_service,
    as_volume_service,
)

VM_ID = "6f1e3e4c-1111-4222-8333-444455556666"
ADMIN = Identity("test admin", "admin", "test")


@dataclass
class Stack:
    host: FakeHost
    vms: FakeVms
    events: EventLog
    tasks: TaskManager
    registry: Registry
    jsonrpc: JsonRpc
    db: Path
    credentials: Credentials
    audit: AuditLog
    network: FakeNetwork
    ksm: FakeKsm
    lldp: FakeLldp
    hostdevs: FakeHostDevices
    secrets: FakeSecrets
    guest: FakeGuest
    consoles: FakeConsoles | None = None
    storage: FakeStorage | None = None
    volumes: FakeVolumes = field(default_factory=FakeVolumes)
    vm_devices: FakeVmDevices | None = None
    block_devices: FakeBlockDevices = field(default_factory=FakeBlockDevices)
    transfers: FakeTransfers | None = None
    sharing: FakeImageSharing | None = None
    backups: FakeBackups | None = None

    def call(self, verb: str, **params: object) -> object:
        return self.registry.call(verb, params, CallContext("test", identity=ADMIN))


@pytest.fixture(scope="session")
def schema() -> Schema:
    return Schema.load()


def build_stack(schema: Schema, db: Path, vms: dict[str, dict[str, object]] | None = None,
                memory: MemoryStateService | None = None) -> Stack:
    """The real rpc parts over fakes holding `vms` (and `memory`, for hibernation), with the task
    manager started."""
    events = EventLog(str(db))
    tasks = TaskManager(str(db), events.publish, workers=4)
    fake_vms = FakeVms(events.publish)
    host = FakeHost(fake_vms)
    fake_vms.records = vms or {}
    credentials = Credentials(str(db))
    audit = AuditLog(str(db))
    network = FakeNetwork()
    ksm, lldp = FakeKsm(), FakeLldp()
    ksm_service, lldp_service = as_tuning(ksm, lldp)
    hostdevs, secrets = FakeHostDevices(fake_vms), FakeSecrets()
    guest = FakeGuest(fake_vms)
    volumes = FakeVolumes()
    hostdev_service, xml_service, _ = as_host_extras(hostdevs, FakeDomainXmls(fake_vms), ksm)
    storage = FakeStorage(str(db.parent / "data-center"), events.publish)
    services = Services(*as_services(host, fake_vms), tasks, events, credentials, audit, lambda: {"name": "pier"},
                        as_network_service(network), ksm=ksm_service, lldp=lldp_service, hostdevs=hostdev_service,
                        secrets=as_secret_service(secrets), domain_xmls=xml_service,
                        guest=as_guest_service(guest),
                        consoles=as_console_service(consoles := FakeConsoles(fake_vms)),
                        vm_devices=as_vm_device_service(vm_devices := FakeVmDevices(fake_vms)),
                        storage=as_storage_service(storage),
                        volumes=as_volume_service(volumes),
                        block_devices=as_block_device_service(block_devices := FakeBlockDevices()),
                        jobs=StorageJobs(db.parent / "data-center"),
                        nbd=NbdServers(db.parent / "nbd", db.parent / "data-center"),
                        transfers=as_transfer_service(transfers := FakeTransfers(volumes)),
                        sharing=as_sharing_service(sharing := FakeImageSharing(volumes)),
                        backups=as_backup_service(backups := FakeBackups(fake_vms)), memory=memory)
    registry = Registry(schema, handlers(services, schema.verbs), tasks, audit=audit)
    tasks.start(registry.reconcilers)
    return Stack(host, fake_vms, events, tasks, registry, JsonRpc(registry), db, credentials, audit, network, ksm,
                 lldp, hostdevs, secrets, guest, consoles, storage, volumes, vm_devices, block_devices, transfers, sharing,
                 backups)


@pytest.fixture
def stack(schema: Schema, tmp_path: Path) -> Iterator[Stack]:
    built = build_stack(schema, tmp_path / "state.db")
    yield built
    built.tasks.stop()
    built.events.close()
    built.credentials.close()
    built.audit.close()

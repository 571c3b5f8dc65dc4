"""Verb handlers: thin bindings from declared verbs to the parts that do the work.

One module per namespace. Each handler takes a verb's validated params, calls into `pier.host`
or the task manager or the event log, and shapes VDSM's return values. `handlers()` builds the
full set the registry binds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from pier.api.blockdev import BlockDevicesApi
from pier.api.drives import Drives
from pier.api.events import EventsApi
from pier.api.guest import GuestApi
from pier.api.host import HostApi
from pier.api.hostdev import HostDevApi
from pier.api.hosttune import HostTuneApi
from pier.api.image_sharing import ImageSharingApi
from pier.api.lease import LeaseApi
from pier.api.network import NetworkApi
from pier.api.sdm import SdmApi
from pier.api.secrets import SecretsApi
from pier.api.security import SecurityApi
from pier.api.storage import StorageApi
from pier.api.task import TaskApi
from pier.api.transfer import TransferApi
from pier.api.vm import VmApi
from pier.api.vm_backup import VmBackupApi
from pier.api.vm_console import VmConsoleApi
from pier.api.vm_devices import VmDevicesApi
from pier.api.vm_hibernation import MemoryRestore, MemoryVolumes, VmHibernationApi
from pier.api.vm_migration import VmMigrationApi
from pier.api.vm_replicate import VmReplicateApi, VmsWithCopies
from pier.api.vm_snapshots import VmSnapshotsApi, VmsWithJobs
from pier.api.volume import VolumeApi
from pier.host.services import (
    BackupService,
    BlockDeviceService,
    ConsoleService,
    DomainXmlService,
    GuestService,
    HostDeviceService,
    HostService,
    ImageSharingService,
    KsmService,
    LldpService,
    MemoryStateService,
    MigrationService,
    NbdService,
    NetworkService,
    ReplicationService,
    SecretService,
    SnapshotService,
    StorageJobService,
    StorageService,
    TransferService,
    VmDeviceService,
    VmService,
    VolumeService,
)
from pier.rpc.audit import AuditLog
from pier.rpc.auth import Credentials
from pier.rpc.events import EventLog
from pier.rpc.tasks import TaskManager


@dataclass(frozen=True)
class Services:
    """What the handlers work with: this host's services and the agent's own."""

    host: HostService
    vms: VmService
    tasks: TaskManager
    events: EventLog
    credentials: Credentials
    audit: AuditLog
    about: Callable[[], dict[str, Any]]
    network: NetworkService
    ksm: KsmService
    lldp: LldpService
    hostdevs: HostDeviceService
    secrets: SecretService
    domain_xmls: DomainXmlService
    guest: GuestService
    consoles: ConsoleService
    vm_devices: VmDeviceService
    storage: StorageService
    volumes: VolumeService
    block_devices: BlockDeviceService
    jobs: StorageJobService
    nbd: NbdService
    transfers: TransferService
    sharing: ImageSharingService
    backups: BackupService
    migrations: MigrationService | None = None  # None: VM.migrate and its siblings answer that they are not served
    snapshots: SnapshotService | None = None
    replications: ReplicationService | None = None  # None: live storage moves answer that they are not served
    memory: MemoryStateService | None = None  # None: VM.hibernate and restores answer that they are not served


def handlers(services: Services, served: Iterable[str]) -> list[object]:
    """Every handler object, ready for `Registry(schema, handlers(services, schema.verbs))`;
    `served` names the verbs the registry will serve (capabilities promise no others)."""
    s = services
    drives = Drives(s.volumes)
    volume_api = VolumeApi(s.volumes, s.vms)
    # stats with each VM's block jobs (vmJobs): merges and snapshots' commits, and drive copies
    vms = cast(VmService, VmsWithCopies(cast(VmService, VmsWithJobs(s.vms, s.snapshots)), s.replications))
    memory_volumes = MemoryVolumes(s.volumes, volume_api, s.memory)
    return [HostApi(s.host, vms, s.tasks, s.about, served),
            VmApi(vms, s.guest, drives, MemoryRestore(s.memory, memory_volumes)), TaskApi(s.tasks),
            EventsApi(s.events, s.credentials), SecurityApi(s.credentials, s.audit), NetworkApi(s.network, s.vms),
            HostTuneApi(s.ksm, s.lldp, s.domain_xmls), HostDevApi(s.hostdevs), SecretsApi(s.secrets),
            GuestApi(s.guest), VmConsoleApi(s.consoles), VmDevicesApi(s.vm_devices, drives),
            StorageApi(s.storage, s.volumes), volume_api,
            SdmApi(s.jobs, s.nbd, volume_api), BlockDevicesApi(s.block_devices, s.storage), LeaseApi(),
            TransferApi(s.transfers, s.tasks), ImageSharingApi(s.sharing, volume_api),
            VmMigrationApi(s.migrations, s.vms),
            VmSnapshotsApi(s.snapshots, s.volumes, volume_api, drives, memory_volumes), VmBackupApi(s.backups),
            VmHibernationApi(s.memory, vms, memory_volumes), VmReplicateApi(s.replications, s.volumes, volume_api, drives)]

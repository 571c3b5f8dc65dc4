"""Node: this host's hypervisor, wired together; it hands the verb handlers their services.

It builds the parts of `pier.host` and owns their threads: the libvirt connection (and through
it the shared event loop and the reconnect thread), the event dispatcher, the stats sampler, and
the storage domain monitor.
The handlers get `node.vms` (a `VmService`) and `node.host` (a `HostService`) and call them
directly. `start()` does not fail when libvirtd is away; verbs that need libvirt then raise
LibvirtUnavailable at once, while lists, statuses and stats come from the cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from pier.host.backup import Backups, backup_run_dir
from pier.host.blockdev import BlockDevices
from pier.host.connection import Connection, EventLoop
from pier.host.console import Consoles
from pier.host.domain import libvirt_errors
from pier.host.dumpxmls import DomainXmls
from pier.host.events import STATUS_EVENT_PREFIX, EventDispatcher, published_statuses
from pier.host.guest import GuestAgents
from pier.host.hibernation import MemoryStates
from pier.host.hostdev import HostDevices
from pier.host.hostinfo import HostInfo
from pier.host.ksm import Ksm
from pier.host.lldp import Lldp
from pier.host.migration import DEFAULT_LIBVIRT_URI, Migrations
from pier.host.network.host import HostWithNetwork
from pier.host.network.service import Network
from pier.host.news import BlockJob
from pier.host.peer import PeerCredentials
from pier.host.replicate import DiskReplications
from pier.host.secrets import Secrets
from pier.host.services import (
    BackupService,
    BlockDeviceService,
    ConsoleService,
    DomainXmlService,
    GuestService,
    HostDeviceService,
    HostService,
    KsmService,
    LldpService,
    MemoryStateService,
    MigrationService,
    NetworkService,
    ReplicationService,
    SecretService,
    SnapshotService,
    StorageService,
    VmDeviceService,
    VmService,
)
from pier.host.snapshots import VmSnapshots
from pier.host.stats import StatsSampler
from pier.host.storage.host import HostWithStorage
from pier.host.storage.images import PoolImages
from pier.host.storage.service import Storage
from pier.host.vms import Vms
from pier.host.vmstate import VmCache, read_states
from pier.host.vmtuning import VmControl

log = logging.getLogger(__name__)


class Node:
    """This host's services (`vms`, `host`) and the threads behind them."""

    def __init__(self, uri: str, emit: Callable[[str, dict[str, Any]], object], *,
                 stats_interval: float = 2.0, slow_stats_interval: float = 15.0,
                 last_events: Callable[[str], dict[str, dict[str, Any]]] | None = None,
                 network_dir: str | Path | None = None, manage_network: bool = False,
                 sysfs_root: str | Path = "/sys", guest_options: dict[str, Any] | None = None,
                 hotunplug_timeout: float = 30.0, data_center: str | Path = "/rhev/data-center",
                 storage_monitor_interval: float = 10.0, peer_credentials: PeerCredentials | None = None,
                 migration_uri: str = DEFAULT_LIBVIRT_URI, backup_dir: str | Path | None = None) -> None:
        """`emit` publishes an event; `last_events(prefix)` gives the params of the newest
        event kept of each name with that prefix (the event log), to correct at start any VM
        status published before the agent last stopped; `network_dir` keeps the network
        configuration (in memory without it), which setupNetworks changes only `manage_network`.
        `sysfs_root` is where the kernel's knobs are read and written (another directory in tests);
        `guest_options` tune the guest agent poller (`pier.host.guest.GuestAgents`' keywords);
        `hotunplug_timeout` is how long a guest has to let go of an unplugged device;
        `data_center` is the storage root (VDSM's /rhev/data-center), whose domains the storage
        monitor checks every `storage_monitor_interval` seconds; `peer_credentials` are what this
        pierd shows other pierds (a migration's destination), `migration_uri` how this host's
        libvirtd reaches another's ("{host}" is the destination's address); `backup_dir` holds the
        backups' NBD sockets (pier.host.backup.backup_run_dir by default)."""
        self._cache = VmCache()
        self._last_events = last_events
        self._dispatcher = EventDispatcher(self._cache, emit, self._read_states,
                                           on_vms_changed=self._vms_changed,
                                           published=self._published_statuses,
                                           on_agent=self._agent_changed,
                                           on_device_removed=self._device_removed,
                                           on_block_job=self._block_job)
        self._connection = Connection(uri, self._dispatcher.put, on_connect=self._on_connect)
        self._guest = GuestAgents(self._connection, **(guest_options or {}))
        self.guest: GuestService = self._guest
        self._sampler = StatsSampler(self._connection, self._cache, stats_interval,
                                     slow_stats_interval, guest=self._guest)
        self._cache.on_change = self._sampler.patch_status
        self._vms = Vms(self._connection, self._cache, self._sampler, self._dispatcher.put)
        self.vms: VmService = self._vms
        self._network = Network(network_dir, stats_interval=stats_interval, libvirt_conn=self._connection.current,
                                emit=emit, manage=manage_network)
        self.network: NetworkService = self._network
        self._storage = Storage(data_center, emit, monitor_interval=storage_monitor_interval)
        self.storage: StorageService = self._storage
        self.volumes = PoolImages(Path(data_center))  # a VolumeService, and the Volumes image transfer opens
        self._migrations = Migrations(self._connection, self._cache, self._dispatcher.put, emit,
                                      lambda: self.host.uuid(), peer_credentials, migration_uri)
        self.migrations: MigrationService = self._migrations
        self.host: HostService = HostWithStorage(HostWithNetwork(HostInfo(self._connection, self._cache,
                                                                          self._migrations.counts),
                                                                 self._network), self._storage)
        self.ksm: KsmService = Ksm(sysfs_root)
        self.lldp: LldpService = Lldp(sysfs_root)
        self.hostdevs: HostDeviceService = HostDevices(self._connection, sysfs_root)
        self.block_devices: BlockDeviceService = BlockDevices(sysfs_root=sysfs_root)
        self.secrets: SecretService = Secrets(self._connection)
        self.domain_xmls: DomainXmlService = DomainXmls(self._connection)
        self.consoles: ConsoleService = Consoles(self._connection)
        self._vm_control = VmControl(self._connection, self._cache, self._vms, self._dispatcher.put,
                                     hotunplug_timeout)
        self.vm_devices: VmDeviceService = self._vm_control
        self._snapshots = VmSnapshots(self._connection, self._vm_control.changed)
        self.snapshots: SnapshotService = self._snapshots
        self.memory: MemoryStateService = MemoryStates(self._connection, self._vms, self._dispatcher.put)
        self._replications = DiskReplications(self._connection, self._vm_control.changed)
        self.replications: ReplicationService = self._replications
        self._backups = Backups(self._connection, Path(data_center),
                                Path(backup_dir) if backup_dir else backup_run_dir("/var/lib/pier"))
        self.backups: BackupService = self._backups
        self._running = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (or keep trying in the background) and start every thread."""
        if self._running:
            return
        self._running = True
        self._dispatcher.start()
        self._connection.start()
        if self._connection.connected:
            self._dispatcher.flush(10.0)  # the first load of the VM cache
        self._guest.start()
        self._sampler.start()
        self._network.start()
        self._storage.start()
        try:
            self._backups.reconcile()
        except Exception:  # the agent serves on; a leftover scratch file waits for the next start
            log.exception("cannot reconcile the backups found at start")

    def stop(self) -> None:
        """Stop the sampler, the connection (reconnect thread, event loop) and the dispatcher,
        which publishes first what libvirt handed over and the Downs held for the reboot grace."""
        if not self._running:
            return
        self._running = False
        self._snapshots.stop()
        self._storage.stop()
        self._network.stop()
        self._sampler.stop()
        self._guest.stop()
        self.flush_events(2.0)
        self._connection.stop()
        self._dispatcher.stop()

    @property
    def connected(self) -> bool:
        return self._connection.connected

    @property
    def uri(self) -> str:
        return self._connection.uri

    def flush_events(self, timeout: float = 5.0) -> bool:
        """Wait until the events libvirt has handed over so far have been handled, and emit
        any Down still held back for reboot detection (for tests and an orderly stop)."""
        done = threading.Event()
        if not EventLoop.call_soon(done.set):
            done.set()
        return done.wait(timeout) and self._dispatcher.flush(timeout)

    # -- wiring --------------------------------------------------------------------------------

    def _on_connect(self, conn: libvirt.virConnect) -> None:
        """Thread: the caller of start(), or libvirt-reconnect."""
        self._vms.cleanup_orphans(conn)

    def _read_states(self) -> dict[str, tuple[str, int, int]]:
        """Thread: libvirt-events (during a resync)."""
        conn = self._connection.get()
        with libvirt_errors(self._connection, conn, action="read the VMs' states"):
            return read_states(conn)

    def _published_statuses(self) -> dict[str, str]:
        """Thread: libvirt-events (during the first resync)."""
        if self._last_events is None:
            return {}
        return published_statuses(self._last_events(STATUS_EVENT_PREFIX))

    def _agent_changed(self, vm_id: str, connected: bool) -> None:
        """Thread: libvirt-events."""
        self._guest.agent_changed(vm_id, connected)
    def _device_removed(self, vm_id: str, alias: str) -> None:
        """Thread: libvirt-events."""
        self._vm_control.device_removed(vm_id, alias)

    def _block_job(self, news: BlockJob) -> None:
        """Thread: libvirt-events."""
        self._replications.block_job(news.vm_id, news.drive, news.job_type, news.status)

    def _vms_changed(self) -> None:
        self._sampler.kick()

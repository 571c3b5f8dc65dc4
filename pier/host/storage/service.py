"""Storage: connections, file domains, pools and the domain monitor behind one typed service.

The handlers of the StoragePool, StorageDomain and Host storage verbs call this (as
`StorageService`, pier/host/services.py). The Node builds it with the data-center root from the
settings, starts the monitor thread and stops it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pier.host.storage import domain_md as md_
from pier.host.storage.connections import Connections, Runner, run_command
from pier.host.storage.domains import Domains, disk_space, domain_class_name, domain_type_name, info_of
from pier.host.storage.monitor import DomainMonitor
from pier.host.storage.pools import Pools
from pier.rpc.errors import PierError

log = logging.getLogger(__name__)


class Storage:
    """This host's storage (see the module's docstring)."""

    def __init__(self, data_center: str | Path, emit: Callable[[str, dict[str, Any]], object], *,
                 monitor_interval: float = 10.0, run: Runner = run_command) -> None:
        self.data_center = Path(data_center)
        self.domains = Domains(self.data_center)
        self.pools = Pools(self.domains)
        self.connections = Connections(self.data_center, run)
        self.monitor = DomainMonitor(self.domains, emit, interval=monitor_interval,
                                     pool_domains=self.pools.monitored_domains)

    def start(self) -> None:
        """Start the monitor (nothing is made on disk before the first connection)."""
        self.monitor.start()

    def stop(self) -> None:
        self.monitor.stop()
        self.pools.close()

    # -- connections and listings --------------------------------------------------------------

    def connect_storage_server(self, domain_type: int, params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.connections.connect(domain_type, params)

    def disconnect_storage_server(self, domain_type: int, params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.connections.disconnect(domain_type, params)

    def domain_ids(self, pool: str | None = None, domain_class: str | None = None,
                   storage_type: str | int | None = None, remote_path: str | None = None) -> list[str]:
        """Host.getStorageDomains: every domain found, or those matching every filter given."""
        filtered = any(v not in (None, "") for v in (pool, domain_class, storage_type, remote_path))
        klass = domain_class_name(domain_class) if domain_class else None
        kind = domain_type_name(storage_type) if storage_type not in (None, "", 0) else None
        out = []
        for sd, _path in self.domains.listing():
            if not filtered:
                out.append(sd)
                continue
            try:
                md = self.domains.metadata(sd)
            except PierError:
                continue
            if pool and pool not in md_.pool_ids(md):
                continue
            if klass and md.get(md_.CLASS) != klass:
                continue
            if kind and md.get(md_.TYPE) != kind:
                continue
            if remote_path and md.get(md_.REMOTE_PATH) != remote_path:
                continue
            out.append(sd)
        return out

    def listing(self) -> list[dict[str, Any]]:
        """Every domain with what a table shows: its info, state (valid or why not) and space."""
        rows = []
        for sd, path in self.domains.listing():
            vitals = self.monitor.vitals(sd)
            row: dict[str, Any] = {"uuid": sd, "path": str(path), "monitored": vitals is not None}
            try:
                row.update(info_of(sd, self.domains.metadata(sd)))
                row.update(valid=True, error=None)
                total, free = disk_space(path)
                row.update(disktotal=total, diskfree=free)
            except PierError as exc:
                row.update(valid=False, error={"code": exc.code, "name": exc.name, "message": exc.message})
            rows.append(row)
        return rows

    def connected_pools(self) -> list[str]:
        return self.pools.connected_ids()

    def repo_stats(self, domains: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        return self.monitor.repo_stats(domains)

    def start_monitoring(self, sd_uuid: str, host_id: int) -> None:
        self.monitor.start_monitoring(sd_uuid, host_id)

    def stop_monitoring(self, sd_uuid: str) -> None:
        self.monitor.stop_monitoring(sd_uuid)

    # -- one domain ----------------------------------------------------------------------------

    def create_domain(self, sd_uuid: str, domain_type: int | str, remote_path: str, name: str,
                      domain_class: int | str, version: int = md_.DEFAULT_VERSION, block_size: int = 512,
                      max_hosts: int = 2000) -> None:
        self.domains.create(sd_uuid, domain_type, remote_path, name, domain_class, version, block_size, max_hosts)

    def check_create_domain(self, sd_uuid: str, domain_type: int | str, remote_path: str, name: str,
                            domain_class: int | str, version: int = md_.DEFAULT_VERSION, block_size: int = 512,
                            max_hosts: int = 2000) -> None:
        self.domains.check_create(sd_uuid, domain_type, remote_path, name, domain_class, version, block_size,
                                  max_hosts)

    def domain_info(self, sd_uuid: str) -> dict[str, Any]:
        return self.domains.info(sd_uuid)

    def domain_stats(self, sd_uuid: str) -> dict[str, Any]:
        return self.domains.stats(sd_uuid)

    def domain_images(self, sd_uuid: str) -> list[str]:
        return self.domains.images(sd_uuid)

    def validate_domain(self, sd_uuid: str) -> None:
        self.domains.validate(sd_uuid)

    def set_domain_description(self, sd_uuid: str, description: str) -> None:
        self.domains.set_description(sd_uuid, description)

    def format_domain(self, sd_uuid: str, auto_detach: bool) -> None:
        self.domains.format(sd_uuid, auto_detach, set(self.pools.connected_ids()))
        self.monitor.stop_monitoring(sd_uuid)

    def dump_domain(self, sd_uuid: str, full: bool = False) -> dict[str, Any]:
        return self.domains.dump(sd_uuid, full)

    def file_stats(self, sd_uuid: str, pattern: str, case_sensitive: bool) -> dict[str, dict[str, Any]]:
        return self.domains.file_stats(sd_uuid, pattern, case_sensitive)

    def attach_domain(self, sd_uuid: str, sp_uuid: str) -> None:
        self.pools.attach(sd_uuid, sp_uuid)

    def detach_domain(self, sd_uuid: str, sp_uuid: str, force: bool = False) -> None:
        self.pools.detach(sd_uuid, sp_uuid, force)

    def activate_domain(self, sd_uuid: str, sp_uuid: str) -> None:
        self.pools.activate(sd_uuid, sp_uuid)
        self.monitor.kick()

    def deactivate_domain(self, sd_uuid: str, sp_uuid: str) -> None:
        self.pools.deactivate(sd_uuid, sp_uuid)

    # -- pools ---------------------------------------------------------------------------------

    def create_pool(self, sp_uuid: str, name: str, master: str, master_version: int, domains: list[str],
                    lease_params: Mapping[str, int]) -> None:
        self.pools.create(sp_uuid, name, master, master_version, domains, lease_params)

    def connect_pool(self, sp_uuid: str, host_id: int, master: str, master_version: int,
                     domain_dict: Mapping[str, str] | None = None) -> None:
        self.pools.connect(sp_uuid, host_id, master, master_version, domain_dict)
        self.monitor.kick()

    def disconnect_pool(self, sp_uuid: str, host_id: int, remove: bool = False) -> None:
        self.pools.disconnect(sp_uuid, host_id, remove)
        self.monitor.kick()

    def destroy_pool(self, sp_uuid: str, host_id: int) -> None:
        self.pools.destroy(sp_uuid, host_id)
        self.monitor.kick()

    def pool_info(self, sp_uuid: str) -> dict[str, Any]:
        return self.pools.info(sp_uuid, self.monitor.repo_stats())

    def refresh_pool(self, sp_uuid: str, master: str, master_version: int) -> None:
        self.pools.refresh(sp_uuid, master, master_version)

    def set_pool_description(self, sp_uuid: str, description: str) -> None:
        self.pools.set_description(sp_uuid, description)

    def spm_start(self, sp_uuid: str, prev_id: int, prev_lver: int) -> None:
        self.pools.spm_start(sp_uuid, prev_id, prev_lver)

    def spm_stop(self, sp_uuid: str) -> None:
        self.pools.spm_stop(sp_uuid)

    def spm_status(self, sp_uuid: str) -> dict[str, Any]:
        return self.pools.spm_status(sp_uuid)


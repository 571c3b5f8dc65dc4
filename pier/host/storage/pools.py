"""Storage pools: their metadata on the master domain, this host's connection to them, the pool
links under `<data_center>/<spUUID>/`, and the SPM role.

The pool's own keys live in its master domain's metadata (MASTER_VERSION, POOL_DESCRIPTION,
POOL_DOMAINS, POOL_SPM_ID, POOL_SPM_LVER), as VDSM keeps them. Which pools this host is connected
to is this process's state, as in VDSM: after a restart the engine connects again.

The SPM role is a host-local lock, not sanlock (whose Python binding Debian packages only for its
own python, and one host is all this machine runs): an exclusive `fcntl` lock on the master
domain's `dom_md/leases` file, held while this host is SPM. Two agents on one host (or on hosts
sharing an NFS export with working locks) cannot both be SPM; the lock ends with the process.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from pier.host.storage import domain_md as md_
from pier.host.storage import layout, special
from pier.host.storage.domains import Domains, disk_space
from pier.rpc.errors import (
    AcquireLockFailure,
    BackupCannotBeMasterDomain,
    CannotConnectMultiplePools,
    CannotDetachMasterStorageDomain,
    InvalidParameterException,
    IsoCannotBeMasterDomain,
    PierError,
    SpmStatusError,
    StorageDomainActive,
    StorageDomainAlreadyAttached,
    StorageDomainDoesNotExist,
    StorageDomainNotInPool,
    StoragePoolAlreadyExists,
    StoragePoolDescriptionTooLongError,
    StoragePoolMasterNotFound,
    StoragePoolUnknown,
    StoragePoolWrongMaster,
)

log = logging.getLogger(__name__)

ACTIVE, ATTACHED = "Active", "Attached"
MAX_POOL_DESCRIPTION = 50
MASTER_SUBDIRS = ("vms", "tasks")


@dataclass
class Connected:
    """A pool this host is connected to."""

    sp_uuid: str
    host_id: int
    master: str
    master_version: int
    spm_lock: BinaryIO | None = None


class Pools:
    """The pools this host knows, over the domains of `domains`."""

    def __init__(self, domains: Domains) -> None:
        self._domains = domains
        self._dc = domains.data_center
        self._connected: dict[str, Connected] = {}
        self._lock = threading.RLock()

    # -- state ---------------------------------------------------------------------------------

    def connected_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._connected)

    def _get(self, sp_uuid: str) -> Connected:
        with self._lock:
            pool = self._connected.get(sp_uuid)
        if pool is None:
            raise StoragePoolUnknown(f"Unknown pool id, pool not connected: {sp_uuid}", data={"spUUID": sp_uuid})
        return pool

    def _master_md(self, pool: Connected) -> dict[str, str]:
        try:
            return self._domains.metadata(pool.master)
        except StorageDomainDoesNotExist:
            raise StoragePoolMasterNotFound(f"Cannot find master domain: spUUID={pool.sp_uuid}, "
                                            f"msdUUID={pool.master}") from None

    def members(self, sp_uuid: str) -> dict[str, str]:
        """A connected pool's domains: {sdUUID: Active | Attached}."""
        pool = self._get(sp_uuid)
        return md_.pool_domains(self._master_md(pool))

    def monitored_domains(self) -> set[str]:
        """Every domain of every connected pool (the monitor watches them)."""
        out: set[str] = set()
        for sp in self.connected_ids():
            try:
                out |= set(self.members(sp))
            except PierError:
                continue
        return out

    # -- create, connect, disconnect, destroy --------------------------------------------------

    def create(self, sp_uuid: str, name: str, master: str, master_version: int, domain_list: list[str],
               lease_params: Mapping[str, int]) -> None:
        """Make a pool: `master` becomes its master domain (Active), the others are attached."""
        if not layout.is_uuid(sp_uuid):
            raise InvalidParameterException(f"Invalid parameter: storagepoolID={sp_uuid!r} is not a UUID")
        if len(name) > MAX_POOL_DESCRIPTION:
            raise StoragePoolDescriptionTooLongError(
                f"Storage pool description is too long: {len(name)} characters, at most {MAX_POOL_DESCRIPTION}")
        md_.check_value(name, "the pool's name")
        members = list(dict.fromkeys([master, *domain_list]))
        mds = {sd: self._domains.metadata(sd) for sd in members}
        for sd, md in mds.items():
            pools = md_.pool_ids(md)
            if sp_uuid in pools:
                raise StoragePoolAlreadyExists(f"Error creating a storage pool - pool already exists: {sp_uuid} "
                                               f"(domain {sd} is in it)")
            if pools:
                raise StorageDomainAlreadyAttached(f"Storage domain already attached to pool: domain={sd}, "
                                                   f"pool={pools[0]}")
        master_class = mds[master][md_.CLASS]
        if master_class == "Iso":
            raise IsoCannotBeMasterDomain(f"ISO domain cannot be a master storage domain: {master}")
        if master_class == "Backup":
            raise BackupCannotBeMasterDomain(f"Backup domain cannot be a master storage domain: {master}")
        statuses = {sd: (ACTIVE if sd == master else ATTACHED) for sd in members}
        master_dir = layout.master_dir(self._domains.path(master))
        for sub in MASTER_SUBDIRS:
            (master_dir / sub).mkdir(parents=True, exist_ok=True, mode=md_.DIR_MODE)
        leases = {md_.LEASERETRIES: "leaseRetries", md_.LEASETIMESEC: "leaseTimeSec",
                  md_.LOCKRENEWALINTERVALSEC: "lockRenewalIntervalSec", md_.IOOPTIMEOUTSEC: "ioOpTimeoutSec"}
        self._domains.update(master, {
            md_.POOL_UUID: sp_uuid, md_.ROLE: md_.MASTER, md_.MASTER_VERSION: str(master_version),
            md_.POOL_DESCRIPTION: name, md_.POOL_DOMAINS: md_.format_pool_domains(statuses),
            md_.POOL_SPM_ID: "-1", md_.POOL_SPM_LVER: "-1",
            **{key: str(lease_params[param]) for key, param in leases.items() if param in lease_params}})
        for sd in members:
            if sd != master:
                self._domains.update(sd, {md_.POOL_UUID: sp_uuid})
        log.info("created storage pool %s (%s), master %s, domains %s", sp_uuid, name, master, ", ".join(members))

    def connect(self, sp_uuid: str, host_id: int, master: str, master_version: int,
                domain_dict: Mapping[str, str] | None = None) -> None:
        """Connect this host to the pool: check its master and version, and make the pool links."""
        with self._lock:
            current = self._connected.get(sp_uuid)
            if current is not None:
                return
            if self._connected:
                raise CannotConnectMultiplePools(f"Cannot connect pool, already connected to another pool: "
                                                 f"{', '.join(self._connected)}")
            pool = Connected(sp_uuid, host_id, master, master_version)
            md = self._check_master(pool)
            self._link(pool, domain_dict if domain_dict else md_.pool_domains(md))
            self._connected[sp_uuid] = pool
        log.info("connected to storage pool %s as host %d, master %s version %d", sp_uuid, host_id, master,
                 master_version)

    def _check_master(self, pool: Connected) -> dict[str, str]:
        md = self._master_md(pool)
        if pool.sp_uuid not in md_.pool_ids(md) or md.get(md_.ROLE) != md_.MASTER:
            raise StoragePoolWrongMaster(f"Wrong Master domain or its version: SD={pool.master}, pool={pool.sp_uuid} "
                                         "(not the pool's master)")
        found = int(md.get(md_.MASTER_VERSION, "0") or 0)
        if found != pool.master_version:
            raise StoragePoolWrongMaster(f"Wrong Master domain or its version: SD={pool.master}, pool={pool.sp_uuid} "
                                         f"(master version {found}, asked {pool.master_version})")
        return md

    def _link(self, pool: Connected, domains: Mapping[str, str]) -> None:
        wanted: set[str] = set()
        for sd in domains:
            try:
                path = self._domains.path(sd)
            except PierError:
                log.warning("pool %s: domain %s is not reachable; no link made", pool.sp_uuid, sd)
                continue
            layout.link_pool_domain(self._dc, pool.sp_uuid, sd, path)
            wanted.add(sd)
        for sd in set(layout.pool_domain_links(self._dc, pool.sp_uuid)) - wanted:
            layout.unlink_pool_domain(self._dc, pool.sp_uuid, sd)
        layout.link_pool_master(self._dc, pool.sp_uuid, self._domains.path(pool.master))

    def disconnect(self, sp_uuid: str, host_id: int, remove: bool = False) -> None:
        pool = self._get(sp_uuid)
        with self._lock:
            self._release_spm(pool)
            self._connected.pop(sp_uuid, None)
        layout.remove_pool_links(self._dc, sp_uuid)
        log.info("disconnected from storage pool %s", sp_uuid)

    def destroy(self, sp_uuid: str, host_id: int) -> None:
        """Detach every domain (the master loses the pool's keys) and disconnect."""
        pool = self._get(sp_uuid)
        md = self._master_md(pool)
        for sd in md_.pool_domains(md):
            if sd == pool.master:
                continue
            try:
                self._domains.update(sd, {md_.POOL_UUID: ""})
            except StorageDomainDoesNotExist:
                log.warning("destroying pool %s: domain %s is gone", sp_uuid, sd)
        self._domains.update(pool.master, {md_.POOL_UUID: "", md_.ROLE: md_.REGULAR,
                                           **{key: None for key in md_.POOL_KEYS}})
        shutil.rmtree(layout.master_dir(self._domains.path(pool.master)), ignore_errors=True)
        self.disconnect(sp_uuid, host_id)
        log.info("destroyed storage pool %s", sp_uuid)

    # -- reading and small changes -------------------------------------------------------------

    def info(self, sp_uuid: str, vitals: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """StoragePool.getInfo: the pool (`info`) and its domains (`dominfo`)."""
        pool = self._get(sp_uuid)
        md = self._master_md(pool)
        members = md_.pool_domains(md)
        isoprefix, dominfo = "", {}
        for sd, status in members.items():
            entry: dict[str, Any] = {"status": status, "alerts": [], "isoprefix": "", "version": 0}
            try:
                dmd = self._domains.metadata(sd)
                total, free = disk_space(self._domains.path(sd))
                entry.update(version=int(dmd.get(md_.VERSION, "0") or 0), disktotal=str(total), diskfree=str(free))
                if dmd.get(md_.CLASS) == "Iso" and status == ACTIVE:
                    isoprefix = str(layout.image_dir(layout.pool_domain_link(self._dc, sp_uuid, sd),
                                                     "11111111-1111-1111-1111-111111111111"))
                    entry["isoprefix"] = isoprefix
            except PierError as exc:
                entry.update(status="Unknown" if status == ACTIVE else status,
                             alerts=[{"code": exc.code, "message": exc.message}])
            if vitals and sd in vitals and not vitals[sd].get("valid", True):
                entry["alerts"].append({"code": vitals[sd].get("code", 0), "message": "domain monitor: invalid"})
            dominfo[sd] = entry
        info = {"master_uuid": pool.master, "lver": int(md.get(md_.POOL_SPM_LVER, "-1") or -1),
                "version": md.get(md_.VERSION, ""), "type": md.get(md_.TYPE, ""),
                "name": md.get(md_.POOL_DESCRIPTION, ""), "master_ver": int(md.get(md_.MASTER_VERSION, "0") or 0),
                "domains": md.get(md_.POOL_DOMAINS, ""), "spm_id": int(md.get(md_.POOL_SPM_ID, "-1") or -1),
                "isoprefix": isoprefix, "pool_status": "connected"}
        return {"info": info, "dominfo": dominfo}

    def refresh(self, sp_uuid: str, master: str, master_version: int) -> None:
        """Take a new master (or version) and remake the links."""
        pool = self._get(sp_uuid)
        candidate = Connected(sp_uuid, pool.host_id, master, master_version)
        md = self._check_master(candidate)
        with self._lock:
            pool.master, pool.master_version = master, master_version
            self._link(pool, md_.pool_domains(md))

    def set_description(self, sp_uuid: str, description: str) -> None:
        pool = self._spm(sp_uuid)
        if len(description) > MAX_POOL_DESCRIPTION:
            raise StoragePoolDescriptionTooLongError(
                f"Storage pool description is too long: {len(description)} characters, at most "
                f"{MAX_POOL_DESCRIPTION}")
        md_.check_value(description, "the pool's description")
        self._domains.update(pool.master, {md_.POOL_DESCRIPTION: description})

    # -- SPM -----------------------------------------------------------------------------------

    def _spm(self, sp_uuid: str) -> Connected:
        pool = self._get(sp_uuid)
        if pool.spm_lock is None:
            raise SpmStatusError(f"Not SPM: this host does not hold the SPM role of pool {sp_uuid} "
                                 "(StoragePool.spmStart)")
        return pool

    def spm_start(self, sp_uuid: str, prev_id: int, prev_lver: int) -> None:
        """Take the SPM role: lock the master's leases file, then POOL_SPM_ID=host, LVER+1."""
        pool = self._get(sp_uuid)
        with self._lock:
            if pool.spm_lock is not None:
                return
            leases = layout.dom_md_file(self._domains.path(pool.master), special.LEASES)
            handle = open(leases, "rb+")  # noqa: SIM115 - held open while this host is SPM
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.close()
                raise AcquireLockFailure(f"Cannot obtain lock: the SPM lock of pool {sp_uuid} ({leases}) is held "
                                         f"by another process: {exc.strerror}") from None
            try:
                md = self._master_md(pool)
                lver = int(md.get(md_.POOL_SPM_LVER, "-1") or -1) + 1
                self._domains.update(pool.master, {md_.POOL_SPM_ID: str(pool.host_id), md_.POOL_SPM_LVER: str(lver)})
            except BaseException:
                handle.close()
                raise
            pool.spm_lock = handle
        log.info("this host (id %d) is SPM of pool %s", pool.host_id, sp_uuid)

    def spm_stop(self, sp_uuid: str) -> None:
        pool = self._spm(sp_uuid)
        with self._lock:
            self._release_spm(pool)

    def _release_spm(self, pool: Connected) -> None:
        handle = pool.spm_lock
        if handle is None:
            return
        try:
            self._domains.update(pool.master, {md_.POOL_SPM_ID: "-1"})
        except PierError as exc:
            log.warning("pool %s: could not clear the SPM id on stopping: %s", pool.sp_uuid, exc.message)
        finally:
            pool.spm_lock = None
            handle.close()
        log.info("this host stopped being SPM of pool %s", pool.sp_uuid)

    def spm_status(self, sp_uuid: str) -> dict[str, Any]:
        pool = self._get(sp_uuid)
        md = self._master_md(pool)
        return {"spmStatus": "SPM" if pool.spm_lock is not None else "Free",
                "spmId": int(md.get(md_.POOL_SPM_ID, "-1") or -1), "spmLver": int(md.get(md_.POOL_SPM_LVER, "-1") or -1)}

    # -- domains in a pool ---------------------------------------------------------------------

    def attach(self, sd_uuid: str, sp_uuid: str) -> None:
        pool = self._spm(sp_uuid)
        md = self._domains.metadata(sd_uuid)
        pools = md_.pool_ids(md)
        if sp_uuid in pools:
            return
        if pools:
            raise StorageDomainAlreadyAttached(f"Storage domain already attached to pool: domain={sd_uuid}, "
                                               f"pool={pools[0]}")
        self._domains.update(sd_uuid, {md_.POOL_UUID: sp_uuid})
        self._set_member(pool, sd_uuid, ATTACHED)
        layout.link_pool_domain(self._dc, sp_uuid, sd_uuid, self._domains.path(sd_uuid))

    def detach(self, sd_uuid: str, sp_uuid: str, force: bool = False) -> None:
        pool = self._spm(sp_uuid)
        status = self._member_status(pool, sd_uuid)
        if sd_uuid == pool.master:
            raise CannotDetachMasterStorageDomain(f"Illegal action: {sd_uuid} is the master domain of pool {sp_uuid}")
        if status == ACTIVE and not force:
            raise StorageDomainActive(f"Illegal action, domain active: deactivate {sd_uuid} first")
        try:
            self._domains.update(sd_uuid, {md_.POOL_UUID: ""})
        except StorageDomainDoesNotExist:
            if not force:
                raise
        self._set_member(pool, sd_uuid, None)
        layout.unlink_pool_domain(self._dc, sp_uuid, sd_uuid)

    def activate(self, sd_uuid: str, sp_uuid: str) -> None:
        pool = self._spm(sp_uuid)
        self._member_status(pool, sd_uuid)
        self._domains.metadata(sd_uuid)
        self._set_member(pool, sd_uuid, ACTIVE)
        layout.link_pool_domain(self._dc, sp_uuid, sd_uuid, self._domains.path(sd_uuid))

    def deactivate(self, sd_uuid: str, sp_uuid: str) -> None:
        pool = self._spm(sp_uuid)
        self._member_status(pool, sd_uuid)
        if sd_uuid == pool.master:
            raise CannotDetachMasterStorageDomain(f"Illegal action: {sd_uuid} is the master domain of pool "
                                                  f"{sp_uuid}; move the master role first")
        self._set_member(pool, sd_uuid, ATTACHED)

    def _member_status(self, pool: Connected, sd_uuid: str) -> str:
        status = md_.pool_domains(self._master_md(pool)).get(sd_uuid)
        if status is None:
            raise StorageDomainNotInPool(f"Storage domain not in pool: domain={sd_uuid}, pool={pool.sp_uuid}")
        return status

    def _set_member(self, pool: Connected, sd_uuid: str, status: str | None) -> None:
        with self._domains.locked(pool.master):
            members = md_.pool_domains(self._master_md(pool))
            if status is None:
                members.pop(sd_uuid, None)
            else:
                members[sd_uuid] = status
            self._domains.update(pool.master, {md_.POOL_DOMAINS: md_.format_pool_domains(members)})

    def close(self) -> None:
        """Let go of every SPM lock (the agent stops)."""
        with self._lock:
            for pool in self._connected.values():
                if pool.spm_lock is not None:
                    pool.spm_lock.close()
                    pool.spm_lock = None


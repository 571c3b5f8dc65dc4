"""Live migration between two hosts (`pier.host.services.MigrationService`).

**Source side** (`migrate`): the VM must run and have no migration going, and the destination
(VDSM's `dst`, "host:port" of its HTTPS listener) must not be an address of this host: these are
refused at once, before a task starts (`check_outgoing`). The destination's pierd is asked, over
Pier's own JSON-RPC with this pierd's client certificate (`pier.host.peer`, whose connect timeout
bounds how long an unreachable one takes to fail), who it is (this host reached by another
address is refused too) and to expect the VM (`VM.migrationCreate`: it refuses a VM it already
has, one over its incoming limit, or one with a disk path or an active network it lacks). Then libvirt migrates it
**peer to peer** (VIR_MIGRATE_PEER2PEER): this host's libvirtd connects to the destination's
(`libvirt_uri`, by default `qemu+tls://{host}/system`) and drives the whole migration itself, as
VDSM does; a pierd that dies meanwhile does not strand it, and `abortJob` cancels it from either
end. The guest's memory goes QEMU to QEMU over `tcp://<dstqemu or dst host>`. The flags are LIVE,
PERSIST_DEST, UNDEFINE_SOURCE (for a persistent VM: the source forgets it), and from the params
ABORT_ON_ERROR, AUTO_CONVERGE, COMPRESSED, POSTCOPY (so that `change_params` may switch to
post-copy later) and UNSAFE (disks on storage both hosts see that libvirt cannot recognise as
shared, such as a local path exported otherwise) and TUNNELLED for `tunneled` (the memory then goes
through the libvirtd connection, not to `dstqemu`). With `outgoingLimit` N, it first waits (state
'starting', cancellable) until fewer than N outgoing migrations run here. A `convergenceSchedule`
(pier.host.convergence) acts on the samples below: it sets the downtime, switches to post-copy, or
aborts (the migration fails; the VM stays Up here).

While it runs, its progress is read from libvirt's job statistics every half second, reported to
the task and published as `|virt|VM_migration_status|<vmId>` events; `cancel` aborts the libvirt
job (the VM keeps running on the source), `change_params` changes bandwidth and downtime or
switches to post-copy. A failed or cancelled migration tells the destination to forget the VM
(`VM.migrateCancel` there) and leaves the VM Up on the source.

**Destination side** (`expect_incoming`): the checks above, and a note that the VM is coming,
counted in Host.getStats' `incomingVmMigrations` until it runs here, its source cancels, or
`INCOMING_TIMEOUT` passes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from pier.host.connection import Connection
from pier.host.convergence import ABORT, POSTCOPY, SET_DOWNTIME, Action, ConvergenceSchedule, allows_postcopy
from pier.host.domain import Domain
from pier.host.events import event_time, status_event
from pier.host.news import News, StatusNews
from pier.host.peer import PeerClient, PeerCredentials, is_this_host
from pier.host.vmstate import DOWN, MIGRATION_SOURCE, UP, VmCache, error_text
from pier.rpc.errors import (
    ImageError,
    InvalidParams,
    MigrateError,
    MigrateLimit,
    MigrationInProgress,
    MigrationNotInProgress,
    PierError,
    TaskCancelled,
    UnsupportedOperation,
    VMDown,
    VMExists,
)

log = logging.getLogger(__name__)

MIGRATION_EVENT_PREFIX = "|virt|VM_migration_status|"
MIGRATION_DESTINATION = "Migration Destination"
INCOMING_TIMEOUT = 300.0
POLL_INTERVAL = 0.5
DEFAULT_LIBVIRT_URI = "qemu+tls://{host}/system"

Emit = Callable[[str, dict[str, Any]], object]
Progress = Callable[[int, str], None]


@dataclass
class _Outgoing:
    """One migration from this host, while it runs and after it ended (for getMigrationStatus)."""

    vm_id: str
    dst: str
    postcopy_allowed: bool
    dom: libvirt.virDomain | None = None
    state: str = "starting"  # starting, running, postcopy, succeeded, failed, cancelled
    progress: int = 0
    message: str = "Migration in progress"
    abort: threading.Event = field(default_factory=threading.Event)
    stats: dict[str, Any] = field(default_factory=dict)
    slot: bool = False  # counted against outgoingLimit: past the wait for a free slot
    aborted_because: str = ""  # why the convergence schedule aborted it

    @property
    def running(self) -> bool:
        return self.state in ("starting", "running", "postcopy")

    def view(self) -> dict[str, Any]:
        code = 0 if self.state in ("starting", "running", "postcopy", "succeeded") else (
            47 if self.state == "cancelled" else 12)
        out: dict[str, Any] = {"status": {"code": code, "message": self.message}, "progress": self.progress,
                               "state": self.state, "dst": self.dst}
        for key, name in (("data_remaining", "dataRemaining"), ("data_total", "dataTotal"),
                          ("memory_bps", "bandwidth"), ("downtime", "downtime"),
                          ("time_elapsed", "elapsedMs")):
            if key in self.stats:
                out[name] = int(self.stats[key])
        return out


class Migrations:
    """Both ends of live migrations; see the module docstring."""

    def __init__(self, connection: Connection, cache: VmCache, notify: Callable[[News], None], emit: Emit,
                 host_id: Callable[[], str], credentials: PeerCredentials | None = None,
                 libvirt_uri: str = DEFAULT_LIBVIRT_URI) -> None:
        self._connection = connection
        self._cache = cache
        self._notify = notify
        self._emit = emit
        self._host_id = host_id
        self._credentials = credentials or PeerCredentials()
        self._libvirt_uri = libvirt_uri or DEFAULT_LIBVIRT_URI
        self._lock = threading.Lock()
        self._outgoing: dict[str, _Outgoing] = {}
        self._slot_freed = threading.Condition(self._lock)
        self._incoming: dict[str, float] = {}  # vmId -> deadline

    # -- reads -----------------------------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(incoming, outgoing) migrations now."""
        with self._lock:
            self._prune_incoming()
            return len(self._incoming), sum(1 for m in self._outgoing.values() if m.running)

    def status(self, vm_id: str) -> dict[str, Any]:
        """VDSM's MigrationStats of the VM's last migration from here."""
        with self._lock:
            found = self._outgoing.get(vm_id)
        if found is None:
            self._cache.require(vm_id)  # noVM for a VM this host does not know
            return {"status": {"code": 0, "message": "No migration"}, "progress": 0, "state": "none"}
        return found.view()

    # -- source side -----------------------------------------------------------------------------

    def check_outgoing(self, vm_id: str, dst: str) -> None:
        """Refuse at once what cannot start: an unknown or stopped VM, one already migrating, a bad dst."""
        peer = PeerClient(dst, self._credentials)  # NoConPeer for an address that is not HOST:PORT
        rec = self._cache.require(vm_id)
        if is_this_host(peer.host):
            raise MigrateError(f"cannot migrate VM {vm_id} to {dst}: {peer.host} is this host itself; "
                               "name another host's pierd", data={"vmId": vm_id, "dst": dst})
        if rec.status == DOWN:
            raise VMDown(f"Virtual machine {vm_id} is down")
        with self._lock:
            running = self._outgoing.get(rec.vm_id)
            if running is not None and running.running:
                raise MigrationInProgress(f"VM {vm_id} is already migrating to {running.dst}",
                                          data={"vmId": vm_id, "dst": running.dst})

    def migrate(self, vm_id: str, definition: dict[str, Any], params: dict[str, Any], progress: Progress,
                cancelled: threading.Event) -> dict[str, Any]:
        """Migrate VM `vm_id` live to `params["dst"]`; see the module docstring."""
        dst = params["dst"]
        self.check_outgoing(vm_id, dst)
        schedule = ConvergenceSchedule(params.get("convergenceSchedule"))  # InvalidParams for a bad one
        peer = PeerClient(dst, self._credentials)
        postcopy = bool(params.get("postcopy")) or allows_postcopy(params.get("convergenceSchedule"))
        job = _Outgoing(vm_id, dst, postcopy)
        with self._lock:
            self._outgoing[vm_id] = job
        try:
            return self._migrate(job, peer, definition, params, schedule, progress, cancelled)
        except BaseException as exc:
            job.state = "cancelled" if isinstance(exc, TaskCancelled) else "failed"
            job.message = "Migration canceled" if job.state == "cancelled" else str(
                getattr(exc, "message", exc))
            raise
        finally:
            with self._slot_freed:
                job.slot = False
                self._slot_freed.notify_all()

    def _take_slot(self, job: _Outgoing, limit: int | None, progress: Progress, cancelled: threading.Event) -> None:
        """Wait (cancellably) until fewer than `limit` outgoing migrations run, as VDSM waits on its
        semaphore; without a limit, take a slot at once (it still counts against others' limits)."""
        waiting = False
        while True:
            with self._slot_freed:
                busy = sum(1 for m in self._outgoing.values() if m.slot)
                if limit is None or busy < limit:
                    job.slot = True
                    break
                if cancelled.is_set() or job.abort.is_set():
                    raise TaskCancelled(f"the migration of VM {job.vm_id} to {job.dst} was cancelled while "
                                        "it waited for a free outgoing slot", data={"vmId": job.vm_id})
                if not waiting:
                    job.message = f"Waiting: {busy} outgoing migrations run, outgoingLimit is {limit}"
                self._slot_freed.wait(POLL_INTERVAL)
            if not waiting:
                waiting = True
                log.info("VM %s: %s", job.vm_id, job.message)
                progress(1, f"waiting for a free outgoing migration slot ({busy} run, outgoingLimit {limit})")
        if waiting:
            job.message = "Migration in progress"

    def _migrate(self, job: _Outgoing, peer: PeerClient, definition: dict[str, Any], params: dict[str, Any],
                 schedule: ConvergenceSchedule, progress: Progress, cancelled: threading.Event) -> dict[str, Any]:
        vm_id = job.vm_id
        progress(1, f"asking {job.dst} who it is")
        about = peer.call("Host.getAgentInfo")
        if isinstance(about, dict) and about.get("hostId") == self._host_id():
            raise MigrateError(f"cannot migrate VM {vm_id} to {job.dst}: that is this host itself",
                               data={"vmId": vm_id, "dst": job.dst})
        limit = params.get("outgoingLimit")
        self._take_slot(job, int(limit) if limit else None, progress, cancelled)
        dom = Domain.lookup(self._connection, vm_id)
        if not dom.is_active():
            raise VMDown(f"Virtual machine {vm_id} is down")
        job.dom = dom.virdomain
        progress(2, f"asking {job.dst} to expect the VM")
        peer.call("VM.migrationCreate", vmID=vm_id, params=definition,
                  incomingLimit=int(params.get("incomingLimit", 2)))
        self._notify(StatusNews(vm_id, MIGRATION_SOURCE))
        try:
            self._run_libvirt(job, dom, params, schedule, progress, cancelled)
        except BaseException:
            self._notify(StatusNews(vm_id, UP))
            try:
                peer.call("VM.migrateCancel", vmID=vm_id)
            except PierError as exc:
                log.info("VM %s: the destination %s did not forget the VM after a failed migration: %s",
                         vm_id, job.dst, exc)
            raise
        job.state, job.progress, job.message = "succeeded", 100, "Migration done"
        self._publish(job)
        # The task ends once this host reports the VM Down ("Migration succeeded"), as VDSM's source
        # does until the VM is destroyed there; libvirt here has already undefined it.
        self._cache.wait_status(vm_id, {DOWN}, 10.0)
        return {"vmId": vm_id, "dst": job.dst, "progress": 100, **{k: v for k, v in job.view().items()
                                                                   if k in ("downtime", "elapsedMs")}}

    def _flags(self, dom: Domain, params: dict[str, Any], postcopy: bool) -> int:
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
        if dom.is_persistent():
            flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        for name, flag in (("abortOnError", libvirt.VIR_MIGRATE_ABORT_ON_ERROR),
                           ("autoConverge", libvirt.VIR_MIGRATE_AUTO_CONVERGE),
                           ("compressed", libvirt.VIR_MIGRATE_COMPRESSED),
                           ("unsafe", libvirt.VIR_MIGRATE_UNSAFE),
                           ("tunneled", libvirt.VIR_MIGRATE_TUNNELLED)):
            if _truthy(params.get(name)):
                flags |= flag
        if postcopy:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        return flags

    def _run_libvirt(self, job: _Outgoing, dom: Domain, params: dict[str, Any], schedule: ConvergenceSchedule,
                     progress: Progress, cancelled: threading.Event) -> None:
        host = PeerClient(job.dst, self._credentials).host
        typed: dict[str, Any] = {}
        if not _truthy(params.get("tunneled")):  # tunnelled memory goes through libvirtd's connection
            qemu_host = str(params.get("dstqemu") or host)
            typed[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{_bracketed(qemu_host)}"
        if params.get("maxBandwidth"):
            typed[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(params["maxBandwidth"])
        flags = self._flags(dom, params, job.postcopy_allowed)
        dconnuri = self._libvirt_uri.format(host=_bracketed(host))
        failure: list[BaseException] = []

        def run() -> None:
            try:
                dom.virdomain.migrateToURI3(dconnuri, typed, flags)
            except BaseException as exc:  # handed to the task's thread
                failure.append(exc)

        worker = threading.Thread(target=run, name=f"migrate-{job.vm_id[:8]}", daemon=True)
        job.state = "running"
        progress(3, f"migrating to {job.dst}")
        worker.start()
        if params.get("migrationDowntime"):
            self._try(job, "set the downtime of", lambda d: d.migrateSetMaxDowntime(
                int(params["migrationDowntime"]), 0))
        for first in schedule.initial():
            self._converge(job, schedule, first)
        while worker.is_alive():
            worker.join(POLL_INTERVAL)
            if cancelled.is_set() and not job.abort.is_set():
                job.abort.set()
                self._try(job, "abort the migration of", lambda d: d.abortJob())
            if worker.is_alive():
                stats = self._sample(job)
                action = schedule.observe(stats) if stats else None
                if action is not None and not job.abort.is_set():
                    self._converge(job, schedule, action)
                progress(min(99, max(3, job.progress)), f"migrating to {job.dst}: {job.progress} %")
        if failure:
            exc = failure[0]
            if job.abort.is_set():
                raise TaskCancelled(f"the migration of VM {job.vm_id} to {job.dst} was cancelled; "
                                    "the VM runs here as before", data={"vmId": job.vm_id})
            if job.aborted_because:
                raise MigrateError(f"cannot migrate VM {job.vm_id} to {job.dst}: {job.aborted_because}; "
                                   "the VM runs here as before", data={"vmId": job.vm_id, "dst": job.dst,
                                                                       "convergence": "abort"}) from None
            if isinstance(exc, libvirt.libvirtError):
                raise MigrateError(f"cannot migrate VM {job.vm_id} to {job.dst}: {error_text(exc)}",
                                   data={"vmId": job.vm_id, "dst": job.dst,
                                         "libvirtCode": exc.get_error_code()}) from None
            raise exc

    def _sample(self, job: _Outgoing) -> dict[str, Any] | None:
        """Read the job's statistics into `job` (and publish new progress); them, or None without a job."""
        assert job.dom is not None
        try:
            stats = job.dom.jobStats(0)
        except libvirt.libvirtError:
            return None
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        job.stats = stats
        total, remaining = stats.get("memory_total") or stats.get("data_total"), stats.get(
            "memory_remaining", stats.get("data_remaining"))
        if total and remaining is not None:
            percent = int(100 - remaining * 100 / total)
            if percent != job.progress:
                job.progress = percent
                self._publish(job)
        return stats

    def _converge(self, job: _Outgoing, schedule: ConvergenceSchedule, action: Action) -> None:
        """Perform one action of the convergence schedule (pier.host.convergence)."""
        log.info("VM %s: convergence schedule: %s after %d stalling iterations", job.vm_id, action,
                 schedule.stalling_iterations)
        if action.name == SET_DOWNTIME:
            self._try(job, "set the downtime of", lambda d: d.migrateSetMaxDowntime(action.downtime, 0))
        elif action.name == ABORT:
            job.aborted_because = (f"its convergence schedule aborted it, still stalling after "
                                   f"{schedule.stalling_iterations} iterations")
            self._try(job, "abort the migration of", lambda d: d.abortJob())
        elif action.name == POSTCOPY:
            assert job.dom is not None
            try:
                job.dom.migrateStartPostCopy(0)
            except libvirt.libvirtError as exc:
                log.warning("VM %s: cannot switch its migration to post-copy: %s", job.vm_id, error_text(exc))
                schedule.postcopy_failed()
                return
            job.state = "postcopy"
            self._publish(job)

    def _publish(self, job: _Outgoing) -> None:
        self._emit(f"{MIGRATION_EVENT_PREFIX}{job.vm_id}",
                   {job.vm_id: {"progress": job.progress, "state": job.state}, "notify_time": event_time()})

    @staticmethod
    def _try(job: _Outgoing, action: str, call: Callable[[libvirt.virDomain], Any]) -> None:
        assert job.dom is not None
        try:
            call(job.dom)
        except libvirt.libvirtError as exc:
            log.warning("VM %s: cannot %s it: %s", job.vm_id, action, error_text(exc))

    def cancel(self, vm_id: str) -> None:
        """Abort the VM's outgoing migration (it keeps running here), or forget an incoming one
        (and the Down VM its failed start left here)."""
        with self._lock:
            job = self._outgoing.get(vm_id)
            incoming = (job is None or not job.running) and self._incoming.pop(vm_id, None) is not None
            if (job is None or not job.running) and not incoming:
                raise MigrationNotInProgress(f"no migration of VM {vm_id} runs on this host",
                                             data={"vmId": vm_id})
        if incoming:
            self._forget_leftover(vm_id)
            return
        assert job is not None
        job.abort.set()
        if job.dom is not None:
            try:
                job.dom.abortJob()
            except libvirt.libvirtError as exc:
                if job.running:
                    raise MigrateError(f"cannot cancel the migration of VM {vm_id}: {error_text(exc)}",
                                       data={"vmId": vm_id}) from None

    def change_params(self, vm_id: str, params: dict[str, Any]) -> None:
        """Change a running migration's bandwidth (MiB/s), downtime (ms), or switch it to post-copy."""
        with self._lock:
            job = self._outgoing.get(vm_id)
        if job is None or not job.running or job.dom is None:
            raise MigrationNotInProgress(f"no migration of VM {vm_id} runs on this host", data={"vmId": vm_id})
        dom = job.dom
        try:
            if "maxBandwidth" in params:
                dom.migrateSetMaxSpeed(int(params["maxBandwidth"]), 0)
            if "downtime" in params:
                dom.migrateSetMaxDowntime(int(params["downtime"]), 0)
            if params.get("postcopy"):
                if not job.postcopy_allowed:
                    raise UnsupportedOperation(f"the migration of VM {vm_id} was not started with postcopy "
                                               "allowed (VM.migrate params.postcopy)", data={"vmId": vm_id})
                dom.migrateStartPostCopy(0)
                job.state = "postcopy"
                self._publish(job)
        except libvirt.libvirtError as exc:
            raise MigrateError(f"cannot change the migration of VM {vm_id}: {error_text(exc)}",
                               data={"vmId": vm_id, "libvirtCode": exc.get_error_code()}) from None

    # -- after a restart -------------------------------------------------------------------------

    def adopt(self, vm_id: str, dst: str, postcopy_allowed: bool) -> dict[str, Any] | None:
        """After a restart: an outgoing migration of the VM that libvirt still runs (begun by a
        pierd that died; libvirt drives it peer to peer) is followed again in a thread, as
        `migrate` follows one: status, events, counters, `cancel` and `change_params` serve it.
        Its MigrationStats, or None when libvirt migrates no such VM from here."""
        try:
            dom = Domain.lookup(self._connection, vm_id)
            stats = dom.virdomain.jobStats(0)
        except (PierError, libvirt.libvirtError):
            return None
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE or \
                stats.get("operation") != libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT:
            return None
        job = _Outgoing(vm_id, dst, postcopy_allowed, dom.virdomain, state="running")
        with self._lock:
            self._outgoing[vm_id] = job
        self._sample(job)
        self._notify(StatusNews(vm_id, MIGRATION_SOURCE))
        log.info("VM %s: its migration to %s goes on in libvirt (found after a restart); following it", vm_id, dst)
        threading.Thread(target=self._follow_adopted, args=(job,), name=f"migration-follow-{vm_id[:8]}",
                         daemon=True).start()
        return job.view()

    def _follow_adopted(self, job: _Outgoing) -> None:
        assert job.dom is not None
        while True:
            time.sleep(POLL_INTERVAL)
            try:
                ongoing = job.dom.jobStats(0).get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE
            except libvirt.libvirtError:  # the VM left this host
                ongoing = False
            if not ongoing:
                break
            self._sample(job)
        try:
            here = Domain.lookup(self._connection, job.vm_id).is_active()
        except PierError:
            here = False
        if not here:
            job.state, job.progress, job.message = "succeeded", 100, "Migration done"
        else:
            job.state = "cancelled" if job.abort.is_set() else "failed"
            job.message = "Migration canceled" if job.abort.is_set() else "Migration failed"
            self._notify(StatusNews(job.vm_id, UP))
            try:
                PeerClient(job.dst, self._credentials).call("VM.migrateCancel", vmID=job.vm_id)
            except PierError as exc:
                log.info("VM %s: the destination %s did not forget the VM after a failed migration: %s",
                         job.vm_id, job.dst, exc)
        log.info("VM %s: the migration to %s followed after a restart ended: %s", job.vm_id, job.dst, job.state)
        self._publish(job)

    # -- destination side ------------------------------------------------------------------------

    def expect_incoming(self, vm_id: str, definition: dict[str, Any], incoming_limit: int) -> dict[str, Any]:
        """Check that this host can take the VM and note that it comes (VM.migrationCreate)."""
        self._forget_leftover(vm_id)
        rec = self._cache.get(vm_id)
        if rec is not None:
            raise VMExists(f"Virtual machine {vm_id} already exists on this host", data={"vmId": vm_id})
        conn = self._connection.get()
        try:
            conn.lookupByUUIDString(vm_id)
            raise VMExists(f"Virtual machine {vm_id} already exists on this host", data={"vmId": vm_id})
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                self._connection.check(exc, conn)
        self._check_devices(conn, vm_id, definition)
        with self._lock:
            self._prune_incoming()
            if vm_id not in self._incoming and len(self._incoming) >= max(incoming_limit, 1):
                raise MigrateLimit(f"this host takes {incoming_limit} incoming migrations at a time",
                                   data={"incomingLimit": incoming_limit})
            self._incoming[vm_id] = time.monotonic() + INCOMING_TIMEOUT
        name, event = status_event(vm_id, MIGRATION_DESTINATION, {})
        self._emit(name, event)
        return {"migrationPort": 0, "params": {"vmId": vm_id, "status": MIGRATION_DESTINATION}}

    def _forget_leftover(self, vm_id: str) -> None:
        """Forget the VM if this host only remembers it Down, with no domain in libvirt: what an
        incoming migration that failed leaves (libvirt destroyed the paused guest it had started)."""
        rec = self._cache.get(vm_id)
        if rec is None:
            self._cache.remove(vm_id, keep_tombstone=False)  # an earlier stay's tombstone is no news of this one
            return
        if rec.status != DOWN:
            return
        conn = self._connection.get()
        try:
            conn.lookupByUUIDString(vm_id)
            return
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                self._connection.check(exc, conn)
                return
        log.info("VM %s: forgetting the Down VM a failed incoming migration left", vm_id)
        self._cache.remove(vm_id, keep_tombstone=False)  # a tombstone would take the arriving VM's events

    @staticmethod
    def _check_devices(conn: libvirt.virConnect, vm_id: str, definition: dict[str, Any]) -> None:
        devices = definition.get("devices") if isinstance(definition, dict) else None
        for device in devices if isinstance(devices, list) else []:
            if not isinstance(device, dict):
                continue
            path = device.get("path")
            if device.get("deviceType") == "disk" and isinstance(path, str) and path.startswith("/"):
                if not os.path.exists(path):
                    raise ImageError(f"VM {vm_id}: this host has no {path} (drive {device.get('alias', '')})",
                                     data={"vmId": vm_id, "path": path})
            network = device.get("network")
            if device.get("deviceType") == "interface" and isinstance(network, str) and network:
                try:
                    active = bool(conn.networkLookupByName(network).isActive())
                except libvirt.libvirtError:
                    active = False
                if not active:
                    raise InvalidParams(f"VM {vm_id}: this host has no active network {network!r} for NIC "
                                        f"{device.get('macAddr', '')}", data={"vmId": vm_id, "network": network})

    def _prune_incoming(self) -> None:
        """Drop incoming notes whose VM now runs here, or that timed out (under the lock)."""
        now = time.monotonic()
        for vm_id, deadline in list(self._incoming.items()):
            if now > deadline or self._arrived(vm_id) or self._left(vm_id):
                del self._incoming[vm_id]

    def _left(self, vm_id: str) -> bool:
        """Whether the incoming VM came and is gone again: Down here (its migration failed, or it
        ran and was shut down), or already destroyed (its tombstone), before anyone counted it."""
        rec = self._cache.find(vm_id)
        return rec is not None and (rec.status == DOWN or self._cache.get(vm_id) is None)

    def _arrived(self, vm_id: str) -> bool:
        """Whether the incoming VM runs here now (not still paused, taking its memory in)."""
        rec = self._cache.get(vm_id)
        if rec is None or rec.status != UP:
            return False
        conn = self._connection.current()
        try:
            state = conn.lookupByUUIDString(vm_id).state()[0] if conn is not None else None
        except libvirt.libvirtError:
            return False
        return state == libvirt.VIR_DOMAIN_RUNNING


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


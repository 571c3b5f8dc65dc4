"""What each VM is doing: VDSM's statuses, exit details, and the cache that holds them.

`VmCache` holds one `VmRecord` per defined domain: its VDSM status (kept current by the event
dispatcher and by the verbs), the last status sent in an event, and the parsed definition. Reads
are answered from it, so they work while libvirtd is away.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from pier.rpc.errors import NoVM

# VDSM's VmStatus values.
UP = "Up"
DOWN = "Down"
PAUSED = "Paused"
POWERING_DOWN = "Powering down"
POWERING_UP = "Powering up"
REBOOT_IN_PROGRESS = "RebootInProgress"
WAIT_FOR_LAUNCH = "WaitForLaunch"
MIGRATION_SOURCE = "Migration Source"
SAVING_STATE = "Saving State"
RESTORING_STATE = "Restoring state"
RUNNING_STATUSES = frozenset({UP, PAUSED, POWERING_DOWN, POWERING_UP, REBOOT_IN_PROGRESS,
                              MIGRATION_SOURCE, SAVING_STATE, RESTORING_STATE})

# VDSM's exit codes and exit reasons (the reason travels as an integer, as VDSM sends it).
EXIT_NORMAL, EXIT_ERROR = 0, 1
REASONS = {
    "success": (0, "VM terminated successfully"),
    "generic error": (1, "VM terminated with error"),
    "lost qemu connection": (2, "Lost connection with qemu process"),
    "libvirt start failed": (3, "failed to start libvirt vm"),
    "migration succeeded": (4, "Migration succeeded"),
    "save state succeeded": (5, "SaveState succeeded"),
    "admin shutdown": (6, "Admin shut down"),
    "user shutdown": (7, "User shut down from within the guest"),
    "libvirt domain missing": (9, "Failed to find the libvirt domain"),
}


def exit_details(reason: str, code: int = EXIT_NORMAL, message: str | None = None) -> dict:
    """exitCode, exitReason and exitMessage for a VM going Down."""
    number, text = REASONS[reason]
    return {"exitCode": code, "exitReason": number, "exitMessage": message or text}


_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: exit_details("user shutdown"),
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: exit_details("admin shutdown"),
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: exit_details("generic error", EXIT_ERROR, "VM crashed"),
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: exit_details("migration succeeded"),
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: exit_details("save state succeeded"),
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: exit_details("libvirt start failed", EXIT_ERROR),
}
_PAUSE_CODES = {
    libvirt.VIR_DOMAIN_PAUSED_USER: "NOERR",
    libvirt.VIR_DOMAIN_PAUSED_IOERROR: "EIO",
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: "NOERR",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: "POSTCOPY",
}


def state_status(state: int, reason: int) -> tuple[str, dict[str, Any]]:
    """VDSM status and details for a libvirt (state, reason) pair."""
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return UP, {}
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_SHUTTING_DOWN:
            return POWERING_DOWN, {}
        if reason == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP:
            return WAIT_FOR_LAUNCH, {}
        if reason == libvirt.VIR_DOMAIN_PAUSED_SAVE:
            return SAVING_STATE, {}
        return PAUSED, {"pauseCode": _PAUSE_CODES.get(reason, "EOTHER")}
    if state == libvirt.VIR_DOMAIN_SHUTDOWN:
        return POWERING_DOWN, {}
    if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return PAUSED, {"pauseCode": "NOERR"}
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return DOWN, exit_details("generic error", EXIT_ERROR, "VM crashed")
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return DOWN, dict(_SHUTOFF_REASONS.get(reason, exit_details("success")))
    return WAIT_FOR_LAUNCH, {}


def error_text(exc: BaseException) -> str:
    """The message of a libvirt error (or of any exception)."""
    if isinstance(exc, libvirt.libvirtError):
        return exc.get_error_message() or str(exc)
    return str(exc)


def qemu_pid(name: str) -> int:
    """The qemu process id libvirt recorded for a running VM, or 0."""
    try:
        with open(f"/run/libvirt/qemu/{name}.pid") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def started_at(name: str) -> float:
    """Best guess, on the monotonic clock, of when a running VM was started."""
    try:
        age = time.time() - os.stat(f"/run/libvirt/qemu/{name}.pid").st_mtime
    except OSError:
        age = 0.0
    return time.monotonic() - max(age, 0.0)


@dataclass
class VmRecord:
    """What Pier knows of one VM.

    Who writes what (the threads: `libvirt-events`, the dispatcher; verb threads, running Vms):
    - status, details, status_when, started_at: both, only through `VmCache.set_status`, under
      the cache's lock (`wait_status` waits on it); the lock orders news by `status_when`.
    - emitted, announce_launch: the dispatcher alone (a verb builds a record with `emitted` set
      before `VmCache.add` publishes it).
    - definition, def_version: `invalidate` by the dispatcher, the parsed definition stored by
      a reader through `VmCache.keep_definition`; both under the cache's lock, so a definition
      parsed before an invalidation is never kept after it.
    - creating, final: the verb that creates or destroys the VM, without a lock (single stores).
      `final` is stored before the libvirt call whose event makes the dispatcher read it; a
      resync may read either value of `creating`, and skips the VM while it is True.
    - destroying: set by destroy/poweroff before they call libvirt, cleared by the verb on
      failure or by the dispatcher when it sees the VM stop; without a lock (single stores).
    - vm_id, name, launch_paused: set at creation, never changed.
    """

    vm_id: str
    name: str
    status: str = DOWN
    details: dict[str, Any] = field(default_factory=dict)
    status_when: float = 0.0  # monotonic time of the news `status` comes from
    emitted: str | None = None  # last status sent in a VM_status event
    started_at: float | None = None
    definition: dict[str, Any] | None = None
    def_version: int = 0
    creating: bool = False
    destroying: bool = False
    launch_paused: bool = False
    announce_launch: bool = False  # Pier defined it: report launch_status on libvirt's DEFINED
    launch_status: str = WAIT_FOR_LAUNCH  # Restoring state when it comes back from a saved state
    final: dict[str, Any] | None = None  # Down details to report when it is undefined



class VmCache:
    """Every known VM by id, plus tombstones of VMs just removed (for their last events)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._vms: dict[str, VmRecord] = {}
        self._gone: dict[str, VmRecord] = {}
        self.on_change: Callable[[str, str | None], None] | None = None

    def get(self, vm_id: str) -> VmRecord | None:
        return self._vms.get(vm_id)

    def require(self, vm_id: str) -> VmRecord:
        rec = self._vms.get(vm_id)
        if rec is None:
            raise NoVM(f"Virtual machine {vm_id} does not exist")
        return rec

    def find(self, vm_id: str) -> VmRecord | None:
        """A live record or a tombstone (the dispatcher still owes it its final event)."""
        return self._vms.get(vm_id) or self._gone.get(vm_id)

    def records(self) -> list[VmRecord]:
        return list(self._vms.values())

    def add(self, rec: VmRecord) -> VmRecord:
        with self._cond:
            self._gone.pop(rec.vm_id, None)
            self._vms[rec.vm_id] = rec
            self._cond.notify_all()
        self._changed(rec.vm_id, rec.status)
        return rec

    def remove(self, vm_id: str, *, keep_tombstone: bool = True) -> None:
        with self._cond:
            rec = self._vms.pop(vm_id, None)
            if rec is not None and keep_tombstone:
                self._gone[vm_id] = rec
                if len(self._gone) > 1000:
                    self._gone.pop(next(iter(self._gone)))
            if not keep_tombstone:
                self._gone.pop(vm_id, None)
            self._cond.notify_all()
        if rec is not None:
            self._changed(vm_id, None)

    def invalidate(self, rec: VmRecord) -> None:
        """Drop the record's parsed definition: the domain's XML changed."""
        with self._cond:
            rec.definition = None
            rec.def_version += 1

    def keep_definition(self, rec: VmRecord, definition: dict[str, Any], version: int) -> None:
        """Keep a definition parsed while the record was at `version`, unless it changed since."""
        with self._cond:
            if rec.def_version == version:
                rec.definition = definition

    def set_status(self, rec: VmRecord, status: str, details: dict[str, Any] | None = None,
                   when: float | None = None) -> bool:
        """Record what the VM is doing as of `when` (now by default). News older than what
        is recorded (an event from before a verb's own change) is ignored: False."""
        with self._cond:
            when = time.monotonic() if when is None else when
            if when < rec.status_when:
                return False
            rec.status_when = when
            if status in RUNNING_STATUSES and rec.status not in RUNNING_STATUSES:
                rec.started_at = time.monotonic()
            rec.status = status
            rec.details = dict(details or {})
            self._cond.notify_all()
        if self._vms.get(rec.vm_id) is rec:
            self._changed(rec.vm_id, status)
        return True

    def wait_status(self, vm_id: str, statuses: set[str], timeout: float,
                    cancelled: threading.Event | None = None) -> str | None:
        """Block until the VM's status is in `statuses` (a removed VM counts as Down)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                rec = self._vms.get(vm_id)
                status = rec.status if rec is not None else DOWN
                if status in statuses:
                    return status
                left = deadline - time.monotonic()
                if left <= 0 or (cancelled is not None and cancelled.is_set()):
                    return None
                self._cond.wait(min(left, 0.1) if cancelled is not None else left)

    def counts(self) -> tuple[int, int, int]:
        """(all VMs, running VMs, migrating VMs)."""
        recs = list(self._vms.values())
        active = sum(1 for r in recs if r.status != DOWN)
        migrating = sum(1 for r in recs if r.status == MIGRATION_SOURCE)
        return len(recs), active, migrating

    def _changed(self, vm_id: str, status: str | None) -> None:
        if self.on_change is not None:
            self.on_change(vm_id, status)


def read_states(conn: libvirt.virConnect) -> dict[str, tuple[str, int, int]]:
    """{uuid: (name, state, reason)} for every domain, in one call when libvirt allows it."""
    out: dict[str, tuple[str, int, int]] = {}
    try:
        for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0):
            out[dom.UUIDString()] = (dom.name(), stats.get("state.state", 0),
                                     stats.get("state.reason", 0))
        return out
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
    for dom in conn.listAllDomains(0):
        state, reason = dom.state()
        out[dom.UUIDString()] = (dom.name(), state, reason)
    return out

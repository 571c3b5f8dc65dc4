"""libvirt events -> VDSM events, on one dispatcher thread (`libvirt-events`).

libvirt callbacks, the connection and verbs put news on the dispatcher's queue: the frozen
dataclasses of `pier.host.news`, one handler each. The dispatcher alone turns them into VM status changes: it updates the VM cache and calls the
event sink with `|virt|VM_status|<vmId>` and `{vmId: {...}, "notify_time": ...}` as VDSM does.

A VM that stops is reported Down only after a short grace: if it starts again meanwhile it
was a reboot (RebootInProgress then Up), as nova does. After a (re)connect the dispatcher
resyncs: it compares the cache with libvirt's states and reports what changed meanwhile. At the
agent's start the cache is empty; what was last published for each VM (kept in the event log)
stands in for it, so a VM whose last event says "Powering down" while it runs is reported Up, and
one published as running that is gone is reported Down.

libvirt's block job events (copies, commits) have no VDSM event (VDSM's engine polls vmJobs): each
is published as Pier's own `|pier|VM_block_job|<vmId>` with {vmId: {"drive", "jobType", "status"},
"notify_time"}, after `on_block_job` has brought the VM's cached devices in line with libvirt (a
VM_status with the definition's new hash follows when they changed) and cleaned up after a copy.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt

from pier.host.news import (
    AgentLifecycle,
    Barrier,
    BlockJob,
    Connected,
    DeviceRemoved,
    DevicesChanged,
    Disconnected,
    Lifecycle,
    News,
    Reboot,
    StatusNews,
    Stop,
    VmNews,
)
from pier.host.vmstate import (
    DOWN,
    EXIT_ERROR,
    MIGRATION_SOURCE,
    PAUSED,
    POWERING_DOWN,
    POWERING_UP,
    REBOOT_IN_PROGRESS,
    SAVING_STATE,
    UP,
    WAIT_FOR_LAUNCH,
    VmCache,
    VmRecord,
    exit_details,
    started_at,
    state_status,
)
from pier.rpc.errors import PierError
from pier.rpc.threads import OwnedThread

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], object]
REBOOT_GRACE = 0.5
STATUS_EVENT_PREFIX = "|virt|VM_status|"
AGENT_EVENT_PREFIX = "|virt|VM_guest_agent|"
BLOCK_JOB_EVENT_PREFIX = "|pier|VM_block_job|"
BLOCK_JOB_TYPES = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: "pull",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: "copy",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: "commit",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: "active_commit",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP: "backup",
}
BLOCK_JOB_STATUSES = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED: "completed",
    libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED: "failed",
    libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED: "canceled",
    libvirt.VIR_DOMAIN_BLOCK_JOB_READY: "ready",
}
_AGENT_REASONS = {
    libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_DOMAIN_STARTED: "domain started",
    libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_CHANNEL: "channel",
}

_STOP_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: exit_details("user shutdown"),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: exit_details("admin shutdown"),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: exit_details("generic error", EXIT_ERROR,
                                                           "VM crashed"),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: exit_details("migration succeeded"),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: exit_details("save state succeeded"),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: exit_details("lost qemu connection", EXIT_ERROR),
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: exit_details("success"),
}
_SUSPEND_CODES = {
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED: "NOERR",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: "EIO",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED: "NOERR",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY: "POSTCOPY",
}
# Statuses that are a finer "Up": a verb's announcement (Powering down) applies to a VM in one of them.
_UP_LIKE = {UP, POWERING_DOWN, POWERING_UP, REBOOT_IN_PROGRESS, WAIT_FOR_LAUNCH}
_LEAVING = {MIGRATION_SOURCE, SAVING_STATE}  # a VM on its way out, back to Up when that fails


def event_time() -> int:
    """VDSM's notify_time: monotonic milliseconds plus INT_MAX (old engines need > INT_MAX)."""
    return int(time.monotonic() * 1000) + 2**31 - 1


def status_event(vm_id: str, status: str, details: dict[str, Any]) -> tuple[str, dict]:
    """The (name, params) of a VDSM VM_status event."""
    body = {"status": status, **details}
    return f"{STATUS_EVENT_PREFIX}{vm_id}", {vm_id: body, "notify_time": event_time()}


def published_statuses(latest: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{vmId: status} from the newest VM_status event of each VM ({event name: params})."""
    out: dict[str, str] = {}
    for name, params in latest.items():
        vm_id = name[len(STATUS_EVENT_PREFIX):]
        body = params.get(vm_id) if name.startswith(STATUS_EVENT_PREFIX) else None
        if isinstance(body, dict) and isinstance(body.get("status"), str):
            out[vm_id] = body["status"]
    return out


_SET_AFTER_A_START = frozenset({PAUSED, POWERING_DOWN})
"""Statuses only a running VM can get: libvirt's start event, delivered after a verb recorded
one of them, does not take the VM back to Up (its own event for the change follows)."""


class EventDispatcher:
    """Owns the `libvirt-events` thread; see the module docstring."""

    THREAD_NAME = "libvirt-events"

    def __init__(self, cache: VmCache, emit: Emit,
                 read_states: Callable[[], dict[str, tuple[str, int, int]]],
                 on_vms_changed: Callable[[], None],
                 published: Callable[[], dict[str, str]],
                 reboot_grace: float = REBOOT_GRACE,
                 on_agent: Callable[[str, bool], None] | None = None,
                 on_device_removed: Callable[[str, str], None] | None = None,
                 on_block_job: Callable[[BlockJob], None] | None = None) -> None:
        """`read_states` gives libvirt's {vmId: (name, state, reason)}; `on_vms_changed` is told
        when VMs come or go; `published` gives the last status published of each VM (the event
        log), for the first resync; `reboot_grace` is how long a stop waits for a start;
        `on_agent(vmId, connected)` is told when a VM's guest agent connects or disconnects;
        `on_device_removed(vm_id, alias)` is told (on this thread) when a guest let go of a device;
        `on_block_job(news)` (on this thread) when a block job became ready or ended, before its event."""
        self._cache = cache
        self._emit = emit
        self._read_states = read_states
        self._published = published
        self._on_vms_changed = on_vms_changed
        self._on_device_removed = on_device_removed
        self._on_block_job = on_block_job
        self._grace = reboot_grace
        self._on_agent = on_agent
        self._queue: queue.SimpleQueue[News] = queue.SimpleQueue()
        self._pending: dict[str, tuple[float, str, dict[str, Any], float]] = {}
        self._when = 0.0  # when the news being handled happened (monotonic)
        self._thread: OwnedThread | None = None
        self._handlers: dict[type[News], Callable[[Any], None]] = {
            Lifecycle: self._lifecycle,
            Reboot: self._reboot,
            DeviceRemoved: self._device_removed,
            BlockJob: self._block_job,
            AgentLifecycle: self._agent_lifecycle,
            DevicesChanged: self._devices_changed,
            StatusNews: self._status_news,
            Connected: self._connected,
            Disconnected: self._disconnected,
            Barrier: self._barrier,
        }

    def put(self, news: News) -> None:
        """Enqueue news; safe from any thread, including libvirt callbacks."""
        self._queue.put(news)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = OwnedThread(self.THREAD_NAME, self._run, wake=lambda: self._queue.put(Stop()))
        self._thread.start()

    def stop(self) -> None:
        """Handle what is queued, publish the Downs still held back for the reboot grace (an
        orderly stop must not lose them), then end the thread."""
        if self._thread is None:
            return
        self._thread.stop(2.0)
        self._thread = None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued before this call has been handled."""
        done = threading.Event()
        self._queue.put(Barrier(done))
        return done.wait(timeout)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            timeout = 0.5
            if self._pending:
                timeout = max(0.0, min(p[0] for p in self._pending.values()) - time.monotonic())
            news: News | None
            try:
                news = self._queue.get(timeout=timeout)
            except queue.Empty:
                news = None
            stopping = isinstance(news, Stop)
            try:
                self._fire_due(force=stopping)
                if news is not None and not stopping:
                    self._handle(news)
            except Exception:
                log.exception("failed to handle %r", news)
            if stopping:
                return

    def _handle(self, news: News) -> None:
        self._when = news.when if isinstance(news, VmNews) else time.monotonic()
        handler = self._handlers.get(type(news))
        if handler is None:
            log.error("no handler for %r; dropped", news)
            return
        handler(news)

    def _device_removed(self, news: DeviceRemoved) -> None:
        rec = self._cache.find(news.vm_id)
        if rec is not None:
            self._cache.invalidate(rec)
            self._emit(f"|virt|VM_device_removed|{news.vm_id}",
                       {news.vm_id: {"alias": news.alias}, "notify_time": event_time()})
        if self._on_device_removed is not None:
            try:
                self._on_device_removed(news.vm_id, news.alias)
            except Exception:
                log.exception("VM %s: handling the removal of device %s failed", news.vm_id, news.alias)

    def _block_job(self, news: BlockJob) -> None:
        """Refresh the VM (the hook reads its XML again: a pivot or an abort done by anyone shows),
        then publish `|pier|VM_block_job|<vmId>`."""
        rec = self._cache.find(news.vm_id)
        if rec is not None:
            self._cache.invalidate(rec)
        if self._on_block_job is not None:
            try:
                self._on_block_job(news)
            except Exception:
                log.exception("VM %s: handling the block job event of drive %s failed", news.vm_id, news.drive)
        body = {"drive": news.drive, "jobType": BLOCK_JOB_TYPES.get(news.job_type, "unknown"),
                "status": BLOCK_JOB_STATUSES.get(news.status, "unknown")}
        self._emit(f"{BLOCK_JOB_EVENT_PREFIX}{news.vm_id}", {news.vm_id: body, "notify_time": event_time()})

    def _devices_changed(self, news: DevicesChanged) -> None:
        """A VM_status event with the VM's status and its definition's new hash, as VDSM sends one
        when a VM's devices change (engines then read the devices again)."""
        rec = self._cache.get(news.vm_id)
        if rec is not None:
            name, params = status_event(rec.vm_id, rec.status, {"hash": news.hash})
            self._emit(name, params)

    def _agent_lifecycle(self, news: AgentLifecycle) -> None:
        """The guest agent came up or went down: tell the poller, and publish
        `|virt|VM_guest_agent|<vmId>` with {vmId: {"guestAgent": "up"|"down", "reason": ...}}. The
        "down" libvirt reports as every VM starts (its channel appears unconnected) is no news."""
        if self._cache.find(news.vm_id) is None:
            return
        if self._on_agent is not None:
            self._on_agent(news.vm_id, news.connected)
        started = news.reason == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_DOMAIN_STARTED
        if not news.connected and started:
            return
        body = {"guestAgent": "up" if news.connected else "down",
                "reason": _AGENT_REASONS.get(news.reason, "unknown")}
        self._emit(f"{AGENT_EVENT_PREFIX}{news.vm_id}", {news.vm_id: body, "notify_time": event_time()})

    def _status_news(self, news: StatusNews) -> None:
        """A verb's announcement (e.g. Powering down); libvirt's own events may have overtaken
        it, so it only applies to a VM that still runs."""
        rec = self._cache.get(news.vm_id)
        if rec is None or news.vm_id in self._pending:
            return
        if rec.status in _UP_LIKE or (rec.status in _LEAVING and news.status == UP):  # a failed migration or save
            self._set(rec, news.status, {})

    def _connected(self, news: Connected) -> None:
        self._resync(first=news.first)

    def _disconnected(self, news: Disconnected) -> None:
        log.warning("lost the connection to libvirtd (reason %s)", news.reason)

    def _barrier(self, news: Barrier) -> None:
        self._fire_due(force=True)
        news.done.set()

    def _set(self, rec: VmRecord, status: str, details: dict[str, Any], *,
             update: bool = True) -> None:
        """Record a status (unless a verb recorded newer news) and emit it unless it is the
        one last emitted: events tell the history, the cache the present."""
        if update:
            self._cache.set_status(rec, status, details, self._when)
        if status == rec.emitted:
            return
        rec.emitted = status
        name, params = status_event(rec.vm_id, status, details)
        self._emit(name, params)

    def _fire_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for vm_id, (deadline, _status, _details, _when) in list(self._pending.items()):
            if force or deadline <= now:
                self._flush(vm_id)

    def _flush(self, vm_id: str) -> None:
        pending = self._pending.pop(vm_id, None)
        rec = self._cache.find(vm_id)
        if pending is not None and rec is not None:
            when, self._when = self._when, pending[3]
            try:
                self._set(rec, pending[1], pending[2])
            finally:
                self._when = when

    # -- translation ---------------------------------------------------------------------------

    def _lifecycle(self, news: Lifecycle) -> None:
        vm_id, name, event, detail = news.vm_id, news.name, news.event, news.detail
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            self._flush(vm_id)
            rec = self._cache.find(vm_id)
            if rec is not None and rec.emitted not in (None, DOWN):
                details = rec.final or exit_details("libvirt domain missing", EXIT_ERROR)
                self._set(rec, DOWN, details, update=False)
            self._cache.remove(vm_id, keep_tombstone=False)
            self._on_vms_changed()
            return

        rec = self._cache.find(vm_id)
        if rec is None:
            if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
                return  # a transient domain we never saw; nothing to report
            rec = self._cache.add(VmRecord(vm_id, name, status=DOWN, emitted=DOWN))
            self._on_vms_changed()
        self._cache.invalidate(rec)

        if event == libvirt.VIR_DOMAIN_EVENT_DEFINED:
            if rec.announce_launch and rec.emitted is None:
                rec.announce_launch = False
                self._set(rec, rec.launch_status, {}, update=False)
            return

        if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
            if vm_id in self._pending and self._pending[vm_id][1] == DOWN:
                del self._pending[vm_id]  # stopped and started again at once: a reboot
                self._set(rec, REBOOT_IN_PROGRESS, {})
                self._set(rec, UP, {})
            elif rec.launch_paused and rec.emitted in (None, WAIT_FOR_LAUNCH):
                self._set(rec, PAUSED, {"pauseCode": "NOERR"})
            else:  # a start delivered late keeps what a verb recorded since (a pause, a shutdown)
                self._set(rec, UP, {}, update=rec.status not in _SET_AFTER_A_START)
            self._on_vms_changed()
            return

        self._flush(vm_id)
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            details = _STOP_DETAILS.get(detail, exit_details("success"))
            if rec.destroying:
                rec.destroying = False
                self._set(rec, DOWN, exit_details("admin shutdown"))
            elif detail in (libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
                            libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
                            libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED):
                self._pending[vm_id] = (time.monotonic() + self._grace, DOWN, details,
                                        self._when)
            else:
                self._set(rec, DOWN, details)
        elif event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
            if rec.status == MIGRATION_SOURCE and detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED:
                return  # the migration's last pass: still "Migration Source", as VDSM reports it
            if rec.status == SAVING_STATE:
                return  # libvirt pauses the guest to save it: still "Saving State", as VDSM reports it
            self._set(rec, PAUSED, {"pauseCode": _SUSPEND_CODES.get(detail, "EOTHER")})
        elif event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
            self._set(rec, UP, {})
        elif event == libvirt.VIR_DOMAIN_EVENT_SHUTDOWN:
            if not rec.destroying:  # qemu reports a destroy's SIGTERM as a host shutdown
                self._set(rec, POWERING_DOWN, {})
        elif event == libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED:
            self._set(rec, PAUSED, {"pauseCode": "NOERR"})
        elif event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
            self._set(rec, DOWN, exit_details("generic error", EXIT_ERROR, "guest crashed"))

    def _reboot(self, news: Reboot) -> None:
        vm_id = news.vm_id
        rec = self._cache.find(vm_id)
        if rec is None:
            return
        self._flush(vm_id)
        self._set(rec, REBOOT_IN_PROGRESS, {})
        self._pending[vm_id] = (time.monotonic() + self._grace, UP, {}, self._when)

    # -- resync --------------------------------------------------------------------------------

    def _resync(self, first: bool) -> None:
        """Bring the cache in line with libvirt and report what differs from what was last
        published: on the first load, from the event log's last VM_status of each VM (a VM with
        none is loaded quietly); later, from the cache."""
        try:
            states = self._read_states()
        except PierError as exc:  # the new connection died already; the next one resyncs
            log.warning("resync failed: %s", exc)
            return
        published = self._load_published() if first else {}
        for vm_id, last in published.items():
            if vm_id not in states and last != DOWN and self._cache.get(vm_id) is None:
                gone = VmRecord(vm_id, "", emitted=last)  # gone while the agent was away
                self._set(gone, DOWN, exit_details("libvirt domain missing", EXIT_ERROR), update=False)
        for known in self._cache.records():
            if known.vm_id in states or known.creating:
                continue
            self._pending.pop(known.vm_id, None)
            if not first and known.emitted != DOWN:
                self._set(known, DOWN, exit_details("libvirt domain missing", EXIT_ERROR),
                          update=False)
            self._cache.remove(known.vm_id, keep_tombstone=False)
        for vm_id, (name, state, reason) in states.items():
            status, details = state_status(state, reason)
            rec = self._cache.get(vm_id)
            if rec is None:
                # Report a VM found running; one found defined-but-off has no news to tell.
                if first:
                    emitted: str | None = published.get(vm_id, status)
                else:
                    emitted = DOWN if status == DOWN else None
                rec = VmRecord(vm_id, name, status=status, details=details, emitted=emitted)
                if status != DOWN:
                    rec.started_at = started_at(name)
                self._cache.add(rec)
                if emitted != status:
                    self._set(rec, status, details)
                continue
            self._cache.invalidate(rec)
            if vm_id in self._pending or rec.creating:
                continue
            if first:
                self._cache.set_status(rec, status, details)
                rec.emitted = published.get(vm_id, status)
            if status != rec.status or status != rec.emitted:
                self._set(rec, status, details)
        self._on_vms_changed()

    def _load_published(self) -> dict[str, str]:
        try:
            return self._published()
        except Exception:  # the event log cannot say: load quietly, as with no history
            log.exception("cannot read the last published VM statuses; loading the VMs quietly")
            return {}

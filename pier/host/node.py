"""Node: the one object the verb handlers call to reach this host's hypervisor.

It wires the parts of `pier.host` together and owns their threads: the libvirt connection
(and through it the shared event loop and the reconnect thread), the event dispatcher, and
the stats sampler. `start()` does not fail when libvirtd is away; verbs that need libvirt
then raise LibvirtUnavailable at once, while lists, statuses and stats come from the cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import libvirt

from pier.host.capabilities import HostFacts
from pier.host.connection import Connection, EventLoop
from pier.host.events import STATUS_EVENT_PREFIX, EventDispatcher, published_statuses
from pier.host.stats import HostStats, StatsSampler
from pier.host.vms import Vms
from pier.host.vmstate import DOWN, VmCache, read_states
from pier.rpc.errors import LibvirtUnavailable

log = logging.getLogger(__name__)


class Node:
    """Facade over this host's libvirt: VMs, their events and stats, and host facts."""

    def __init__(self, uri: str, emit: Callable[[str, dict], None], *,
                 stats_interval: float = 2.0, slow_stats_interval: float = 15.0,
                 last_events: Callable[[str], dict[str, dict[str, Any]]] | None = None) -> None:
        """`emit` publishes an event; `last_events(prefix)` gives the params of the newest
        event kept of each name with that prefix (the event log), to correct at start any VM
        status published before the agent last stopped."""
        self._cache = VmCache()
        self._last_events = last_events
        self._dispatcher = EventDispatcher(self._cache, emit, self._read_states,
                                           on_vms_changed=self._vms_changed,
                                           published=self._published_statuses)
        self._connection = Connection(uri, self._dispatcher.put, on_connect=self._on_connect)
        self._vms = Vms(self._connection, self._cache, self._dispatcher.put)
        self._sampler = StatsSampler(self._connection, self._cache, stats_interval,
                                     slow_stats_interval)
        self._cache.on_change = self._sampler.patch_status
        self._facts = HostFacts(uri)
        self._host_stats = HostStats(self._cache.counts, lambda: self._connection.connected)
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
        self._sampler.start()

    def stop(self) -> None:
        """Stop the sampler, the connection (reconnect thread, event loop) and the dispatcher."""
        if not self._running:
            return
        self._running = False
        self._sampler.stop()
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

    # -- host ----------------------------------------------------------------------------------

    def host_uuid(self) -> str:
        return self._facts.host_uuid()

    def capabilities(self) -> dict[str, Any]:
        """VdsmCapabilities (VDSM's field names and types)."""
        conn = self._connection.current()
        try:
            return self._facts.capabilities(conn)
        except libvirt.libvirtError as exc:
            try:
                self._connection.check(exc, conn)
            except LibvirtUnavailable:
                pass
            return self._facts.capabilities(None)

    def hardware_info(self) -> dict[str, str]:
        conn = self._connection.current()
        try:
            return self._facts.hardware_info(conn)
        except libvirt.libvirtError:
            return self._facts.hardware_info(None)

    def host_stats(self) -> dict[str, Any]:
        """HostStats from /proc and the VM cache; never calls libvirt."""
        return self._host_stats.get()

    # -- VMs: reads (served from the cache) ------------------------------------------------------

    def list_vms(self, vm_ids: list[str] | None = None, full: bool = False
                 ) -> list[dict[str, Any]]:
        return self._vms.list(vm_ids, full)

    def vm_info(self, vm_id: str) -> dict[str, Any]:
        return self._vms.definition(vm_id)

    def vm_status(self, vm_id: str) -> str:
        return self._vms.status(vm_id)

    def vm_stats(self, vm_id: str) -> dict[str, Any]:
        rec = self._cache.require(vm_id)
        found = self._sampler.stats(vm_id)
        if found is not None:
            return found
        out: dict[str, Any] = {"vmId": rec.vm_id, "vmName": rec.name, "status": rec.status,
                               "statsAge": "0.00"}
        if rec.status == DOWN:
            out.update(rec.details)
        else:  # not sampled yet: no figures, and no answer from libvirt if it is away
            out["monitorResponse"] = "0" if self._connection.connected else "-1"
        return out

    def all_vm_stats(self) -> list[dict[str, Any]]:
        """VmStats of every VM, prepared at the last sample (cheap at any size)."""
        return self._sampler.all_stats()

    def wait_vm_status(self, vm_id: str, statuses: set[str], timeout: float,
                       cancelled: threading.Event | None = None) -> str | None:
        return self._cache.wait_status(vm_id, statuses, timeout, cancelled)

    # -- VMs: verbs (need libvirt) ---------------------------------------------------------------

    def create_vm(self, vm_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """Define and start a VM; see Vms.create (vm_id may come from params or the XML)."""
        return self._vms.create(vm_id or "", params)

    def destroy_vm(self, vm_id: str) -> None:
        self._vms.destroy(vm_id)

    def poweroff_vm(self, vm_id: str) -> None:
        """Hard power-off that keeps the VM defined (the end of a forced shutdown)."""
        self._vms.poweroff(vm_id)

    def shutdown_vm(self, vm_id: str) -> None:
        self._vms.shutdown(vm_id)

    def end_power_down(self, vm_id: str) -> None:
        """A shutdown gave up without the VM going down: report it Up again if libvirt says it runs."""
        self._vms.end_power_down(vm_id)

    def reboot_vm(self, vm_id: str) -> None:
        self._vms.reboot(vm_id)

    def reset_vm(self, vm_id: str) -> None:
        self._vms.reset(vm_id)

    def pause_vm(self, vm_id: str) -> dict[str, Any]:
        return self._vms.pause(vm_id)

    def cont_vm(self, vm_id: str) -> dict[str, Any]:
        return self._vms.cont(vm_id)

    # -- wiring --------------------------------------------------------------------------------

    def _on_connect(self, conn: libvirt.virConnect) -> None:
        """Thread: the caller of start(), or libvirt-reconnect."""
        self._vms.cleanup_orphans(conn)

    def _read_states(self) -> dict[str, tuple[str, int, int]]:
        """Thread: libvirt-events (during a resync)."""
        conn = self._connection.get()
        try:
            return read_states(conn)
        except libvirt.libvirtError as exc:
            self._connection.check(exc, conn)
            raise

    def _published_statuses(self) -> dict[str, str]:
        """Thread: libvirt-events (during the first resync)."""
        if self._last_events is None:
            return {}
        return published_statuses(self._last_events(STATUS_EVENT_PREFIX))

    def _vms_changed(self) -> None:
        self._sampler.kick()

"""The VMs of this host (`pier.host.services.VmService`): a thin wrapper over libvirt that keeps
`pier.host.vmstate.VmCache` current.

Reads are answered from the cache and the stats sampler, so they work while libvirtd is away.
`Vms` runs the verbs: create (define, start, undo on failure), destroy (power off and undefine),
shutdown, reboot, reset, pause, cont, on `pier.host.domain.Domain`, whose `libvirt_errors` turns
libvirt's errors into Pier's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import libvirt

from pier.host.capabilities import guest_domain_types
from pier.host.connection import Connection, is_connection_error
from pier.host.devices import as_bool
from pier.host.domain import Domain, libvirt_errors
from pier.host.domxml import DomainXml, build_domain, domain_from_raw, normalize_uuid
from pier.host.news import News, StatusNews
from pier.host.stats import StatsSampler
from pier.host.vmstate import (
    DOWN,
    EXIT_ERROR,
    PAUSED,
    POWERING_DOWN,
    POWERING_UP,
    REBOOT_IN_PROGRESS,
    RESTORING_STATE,
    UP,
    WAIT_FOR_LAUNCH,
    VmCache,
    VmRecord,
    error_text,
    exit_details,
    qemu_pid,
)
from pier.rpc.errors import (
    CreateError,
    DestroyError,
    ImageError,
    InvalidParams,
    LibvirtUnavailable,
    NoVM,
    PierError,
    VMDown,
    VMExists,
)

log = logging.getLogger(__name__)

# The statuses each running-VM verb acts from: a libvirt refusal while the VM is in another one
# (a cont of a VM that runs) is the caller's conflict, not an unexpected failure.
_ACTS_ON = {
    "cont": frozenset({PAUSED}),
    "pause": frozenset({UP, POWERING_DOWN, POWERING_UP, REBOOT_IN_PROGRESS, WAIT_FOR_LAUNCH}),
    "shutdown": frozenset({UP, POWERING_DOWN, POWERING_UP, REBOOT_IN_PROGRESS}),
}


class Vms:
    """The VMs: reads and verbs. `notify` hands a verb's news to the event dispatcher."""

    def __init__(self, connection: Connection, cache: VmCache, sampler: StatsSampler,
                 notify: Callable[[News], None]) -> None:
        self._connection = connection
        self._cache = cache
        self._sampler = sampler
        self._notify = notify
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._orphans: set[str] = set()
        self._domain_types: tuple[int, set[str]] | None = None

    # -- reads ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connection.connected

    def definition(self, vm_id: str) -> dict[str, Any]:
        """VmDefinition: the parsed domain XML (cached) plus status, pid and exit details."""
        rec = self._cache.require(vm_id)
        static = rec.definition
        if static is None:
            version = rec.def_version
            static = self._load_definition(rec)
            if static is not None:
                self._cache.keep_definition(rec, static, version)
        out = dict(static or {"vmId": rec.vm_id, "vmName": rec.name, "vmType": "kvm"})
        out["status"] = rec.status
        out.update(rec.details)
        out["pid"] = qemu_pid(rec.name) if rec.status != DOWN else 0
        return out

    def _load_definition(self, rec: VmRecord) -> dict[str, Any] | None:
        """The VM's definition from libvirt's XML; None while libvirt cannot say (the caller
        answers from the cache). XML Pier cannot turn into a definition is a bug to see: it is
        logged with its traceback, once per version of the XML, and the VM is answered as a stub
        (its id, name and status) so listing and status keep working."""
        try:
            xml = Domain.lookup(self._connection, rec.vm_id).xml()
        except (NoVM, LibvirtUnavailable):
            return None
        except PierError as exc:  # libvirt refused, or gave XML that does not parse
            log.error("VM %s: cannot read its domain XML: %s", rec.vm_id, exc)
            return None
        try:
            return xml.to_definition()
        except Exception:
            log.exception("VM %s (%s): cannot make a VM definition of its domain XML; answering "
                          "a stub", rec.vm_id, rec.name)
            return {"vmId": rec.vm_id, "vmName": rec.name, "vmType": "kvm"}

    def listing(self, vm_ids: Iterable[str] | None = None, full: bool = False
             ) -> list[dict[str, Any]]:
        if vm_ids is None:
            recs = self._cache.records()
        else:
            recs = [r for r in (self._cache.get(v) for v in vm_ids) if r is not None]
        if full:
            out = []
            for rec in recs:
                try:
                    out.append(self.definition(rec.vm_id))
                except NoVM:
                    continue
            return out
        return [{"vmId": r.vm_id, "status": r.status} for r in recs]

    def status(self, vm_id: str) -> str:
        return self._cache.require(vm_id).status

    def stats(self, vm_id: str) -> dict[str, Any]:
        """VmStats from the latest sample; before the first, what the cache knows."""
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

    def all_stats(self) -> list[dict[str, Any]]:
        """VmStats of every VM, prepared at the last sample (cheap at any size)."""
        return self._sampler.all_stats()

    def wait_status(self, vm_id: str, statuses: set[str], timeout: float,
                    cancelled: threading.Event | None = None) -> str | None:
        return self._cache.wait_status(vm_id, statuses, timeout, cancelled)

    # -- create / destroy ------------------------------------------------------------------------

    def create(self, vm_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """Define and start a VM from vmParams (or vmParams["xml"]); nothing stays on failure.

        Without a `vm_id`, vmParams["vmId"] or the raw XML's <uuid> names the VM, else a new UUID."""
        if not isinstance(params, dict):
            raise InvalidParams("vmParams: expected an object")
        if not vm_id:
            vm_id = params.get("vmId") or ""
            if not vm_id and params.get("xml"):
                vm_id = DomainXml.parse(params["xml"], "vmParams.xml").uuid
            vm_id = vm_id or str(uuid.uuid4())
        vm_id = normalize_uuid(vm_id)
        launch_paused = as_bool(params.get("launchPaused"), "vmParams.launchPaused")
        conn = self._connection.get()
        if params.get("xml"):
            dom_xml = domain_from_raw(vm_id, params["xml"])
        else:
            dom_xml = build_domain(vm_id, params, domain_type=self._domain_type(conn, params))
        return self._launch(conn, vm_id, dom_xml, launch_paused)

    def restore(self, vm_id: str, xml: str, state_path: str) -> dict[str, Any]:
        """Define the VM from `xml` (the domain a saved state was taken from, its disks where they
        are now) and bring it back running from the state saved in `state_path` (libvirt's save
        image: VM.hibernate's, or a memory snapshot's); nothing stays defined on failure."""
        vm_id = normalize_uuid(vm_id)
        dom_xml = domain_from_raw(vm_id, xml)
        return self._launch(self._connection.get(), vm_id, dom_xml, False, state_path)

    def _launch(self, conn: libvirt.virConnect, vm_id: str, dom_xml: DomainXml, launch_paused: bool,
                state_path: str | None = None) -> dict[str, Any]:
        with self._lock:
            if vm_id in self._busy:
                raise VMExists(f"Virtual machine {vm_id} is being created")
            self._busy.add(vm_id)
        try:
            self._check_free(conn, vm_id, dom_xml.name)
            for path in dom_xml.local_image_paths():
                if not os.path.exists(path):
                    raise ImageError(f"Drive image file {path} could not be found",
                                     data={"path": path})
            rec = self._cache.add(VmRecord(vm_id, dom_xml.name, status=WAIT_FOR_LAUNCH if state_path is None
                                           else RESTORING_STATE, creating=True, launch_paused=launch_paused,
                                           announce_launch=True, launch_status=WAIT_FOR_LAUNCH
                                           if state_path is None else RESTORING_STATE))
            try:
                self._define_and_start(conn, rec, dom_xml.to_string(), launch_paused, state_path)
            except BaseException:
                self._cache.remove(vm_id)
                raise
            rec.creating = False
            self._cache.set_status(rec, PAUSED if launch_paused else UP,
                                   {"pauseCode": "NOERR"} if launch_paused else {})
            return self.definition(vm_id)
        finally:
            with self._lock:
                self._busy.discard(vm_id)

    def _check_free(self, conn: libvirt.virConnect, vm_id: str, name: str) -> None:
        if self._cache.get(vm_id) is not None:
            raise VMExists(f"Virtual machine {vm_id} already exists")
        for lookup, key in ((conn.lookupByUUIDString, vm_id), (conn.lookupByName, name)):
            try:
                with libvirt_errors(self._connection, conn, action=f"create VM {vm_id}",
                                    error=CreateError):
                    dom = lookup(key)
            except NoVM:
                continue
            raise VMExists(f"Virtual machine {dom.UUIDString()} ({dom.name()}) already exists")

    def _define_and_start(self, conn: libvirt.virConnect, rec: VmRecord, xml: str,
                          launch_paused: bool, state_path: str | None = None) -> None:
        with libvirt_errors(self._connection, conn, action=f"define VM {rec.vm_id}",
                            error=CreateError):
            dom = conn.defineXML(xml)
        try:
            if state_path is not None:
                with libvirt_errors(self._connection, conn, action=f"restore VM {rec.vm_id} from {state_path}",
                                    error=CreateError):
                    conn.restoreFlags(state_path, xml, libvirt.VIR_DOMAIN_SAVE_RUNNING)
                return
            with libvirt_errors(self._connection, conn, action=f"start VM {rec.vm_id}",
                                error=CreateError):
                self._start(dom, launch_paused)
        except BaseException as exc:
            rec.final = exit_details("libvirt start failed", EXIT_ERROR, error_text(exc))
            self._undo_define(conn, dom, rec.vm_id)
            raise

    @staticmethod
    def _start(dom: libvirt.virDomain, paused: bool) -> None:
        if not paused:
            dom.create()
            return
        try:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG,
                                            libvirt.VIR_ERR_NO_SUPPORT):
                raise
            dom.create()  # drivers without START_PAUSED (the test driver)
            dom.suspend()

    def _undo_define(self, conn: libvirt.virConnect, dom: libvirt.virDomain, vm_id: str) -> None:
        try:
            if dom.isActive():
                dom.destroy()
            self._undefine(dom)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            log.warning("VM %s: could not undefine after a failed create (%s); will retry "
                        "after reconnecting", vm_id, error_text(exc))
            with self._lock:
                self._orphans.add(vm_id)

    @staticmethod
    def _undefine(dom: libvirt.virDomain) -> None:
        flag_sets = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM,
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
        )
        for flags in flag_sets:
            try:
                dom.undefineFlags(flags)
                return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG,
                                                libvirt.VIR_ERR_NO_SUPPORT):
                    raise
        dom.undefine()

    def cleanup_orphans(self, conn: libvirt.virConnect) -> None:
        """Undefine VMs a failed create left behind while libvirtd was away (on reconnect)."""
        with self._lock:
            orphans, self._orphans = set(self._orphans), set()
        for vm_id in orphans:
            try:
                dom = conn.lookupByUUIDString(vm_id)
                if dom.isActive():
                    dom.destroy()
                self._undefine(dom)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    log.warning("VM %s: still cannot undefine (%s)", vm_id,
                                error_text(exc))

    def destroy(self, vm_id: str) -> None:
        """Power the VM off if it runs, then undefine it: afterwards it is gone."""
        dom, rec = self._lookup(vm_id)
        rec.destroying = True
        rec.final = exit_details("admin shutdown")
        try:
            self._power_off(dom)
            with dom.errors("undefine", DestroyError, by_state=False):
                try:
                    self._undefine(dom.virdomain)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                                    libvirt.VIR_ERR_OPERATION_INVALID):
                        raise
        except BaseException:
            rec.destroying = False
            rec.final = None
            raise
        self._cache.remove(rec.vm_id)

    def poweroff(self, vm_id: str) -> None:
        """Power the VM off hard and keep it defined (Down); nothing to do if it is off."""
        dom, rec = self._lookup(vm_id)
        rec.destroying = True
        try:
            self._power_off(dom)
        except BaseException:
            rec.destroying = False
            raise
        self._cache.set_status(rec, DOWN, exit_details("admin shutdown"))

    @staticmethod
    def _power_off(dom: Domain) -> None:
        raw = dom.virdomain
        with dom.errors("power off", DestroyError, by_state=False):
            for attempt in range(3):
                try:
                    if raw.isActive():
                        raw.destroy()
                    return
                except libvirt.libvirtError as exc:
                    code = exc.get_error_code()
                    if code in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                        return
                    if (code != libvirt.VIR_ERR_SYSTEM_ERROR or attempt == 2
                            or is_connection_error(exc)):
                        raise
                    time.sleep(0.5)  # qemu did not die from SIGTERM/SIGKILL yet ("busy")

    # -- running-VM verbs ------------------------------------------------------------------------

    def shutdown(self, vm_id: str) -> None:
        dom, rec = self._lookup(vm_id, running=True)
        self._with_fallback(dom, "shutdown", dom.virdomain.shutdownFlags,
                            libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        self._notify(StatusNews(rec.vm_id, POWERING_DOWN))

    def end_power_down(self, vm_id: str) -> None:
        """A shutdown gave up and the VM did not go down: if libvirt says it runs, it is Up again
        (VDSM too reports "Powering down" only for a while)."""
        rec = self._cache.get(vm_id)
        if rec is None or rec.status != POWERING_DOWN:
            return
        try:
            status = Domain.lookup(self._connection, rec.vm_id).status()[0]
        except PierError as exc:
            log.debug("VM %s: cannot read its state after a shutdown: %s", vm_id, exc)
            return
        if status == UP:
            self._notify(StatusNews(rec.vm_id, UP))

    def reboot(self, vm_id: str) -> None:
        dom, _ = self._lookup(vm_id, running=True)
        self._with_fallback(dom, "reboot", dom.virdomain.reboot,
                            libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)

    def reset(self, vm_id: str) -> None:
        dom, _ = self._lookup(vm_id, running=True)
        with dom.errors("reset"):
            dom.virdomain.reset(0)

    def pause(self, vm_id: str) -> dict[str, Any]:
        """Pause a running VM; a VM already paused stays so, and that is success (as on qemu)."""
        dom, rec = self._lookup(vm_id, running=True)
        with dom.errors("pause", acts_on=_ACTS_ON["pause"]):
            try:
                dom.virdomain.suspend()
            except libvirt.libvirtError:
                if dom.current_status() != PAUSED:
                    raise
                return self.definition(rec.vm_id)  # its pauseCode (an I/O error, say) stays as it was
        self._cache.set_status(rec, PAUSED, {"pauseCode": "NOERR"})
        return self.definition(rec.vm_id)

    def cont(self, vm_id: str) -> dict[str, Any]:
        dom, rec = self._lookup(vm_id, running=True)
        with dom.errors("cont", acts_on=_ACTS_ON["cont"]):
            dom.virdomain.resume()
        self._cache.set_status(rec, UP)
        return self.definition(rec.vm_id)

    # -- helpers -------------------------------------------------------------------------------

    def _lookup(self, vm_id: str, running: bool = False) -> tuple[Domain, VmRecord]:
        dom = Domain.lookup(self._connection, vm_id)
        rec = self._cache.get(dom.vm_id)
        if rec is None:  # not loaded into the cache yet: learn it quietly
            status, details = dom.status()
            rec = self._cache.add(VmRecord(dom.vm_id, dom.name, status=status,
                                           details=details, emitted=status))
        if running and not dom.is_active():
            raise VMDown(f"Virtual machine {dom.vm_id} is down")
        return dom, rec

    @staticmethod
    def _with_fallback(dom: Domain, verb: str, method: Callable[[int], Any], flags: int) -> None:
        """Call `method(flags)`, or `method(0)` on a driver that refuses the flags."""
        with dom.errors(verb, acts_on=_ACTS_ON.get(verb)):
            try:
                method(flags)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG,
                                                libvirt.VIR_ERR_NO_SUPPORT):
                    raise
                method(0)

    def _domain_type(self, conn: libvirt.virConnect, params: dict[str, Any]) -> str:
        """kvm when the host offers it (and kvmEnable allows), else qemu, else what there is
        (the test driver offers only "test")."""
        if self._domain_types is None or self._domain_types[0] != id(conn):
            self._domain_types = (id(conn), guest_domain_types(conn.getCapabilities()))
        types = self._domain_types[1]
        kvm = as_bool(params.get("kvmEnable"), "vmParams.kvmEnable", default=True)
        for wanted in (("kvm", "qemu") if kvm else ("qemu",)):
            if wanted in types:
                return wanted
        return sorted(types)[0] if types else "qemu"

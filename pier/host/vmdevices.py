"""A running VM's devices, memory and CPUs (`pier.host.services.VmDeviceService`).

Every change is checked before libvirt is asked (a path that does not exist, an alias, MAC or
target a device already has, memory beyond maxMemory, CPUs beyond maxVCpus): a refused call
leaves the VM's running guest and its definition exactly as they were. A change applies to the
running guest and to the persistent definition together. Plugging in does both in one libvirt
call (libvirt saves the definition only when the guest took the device); unplugging asks the
running guest first and waits until it lets go of the device, and only then removes it from the
definition, so a guest that never releases it keeps it in both, as VDSM keeps it listed (one that
lets go of it later loses it from the definition then, on libvirt's device-removed event). After
each change the VM cache's definition is read again before the call returns (`VM.getInfo`
shows the change at once) and a `DevicesChanged` news makes the dispatcher emit a VM_status event
with the definition's new hash, as VDSM does for engines to refresh the VM's devices.

Tuning (I/O limits, CPU period and quota, SLA policy), the balloon, destroy-on-reboot and the
VM's TPM and NVRAM data are in `pier.host.vmtuning`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import random
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import libvirt

from pier.host.connection import Connection
from pier.host.devices import (
    Device,
    Disk,
    Graphics,
    Interface,
    Memory,
    as_bool,
    as_int,
    set_alias,
    sub,
)
from pier.host.domain import Domain
from pier.host.domxml import DomainXml
from pier.host.news import DevicesChanged, News
from pier.host.vms import Vms
from pier.host.vmstate import VmCache
from pier.rpc.errors import (
    ChangeDisk,
    HotplugDisk,
    HotplugMemory,
    HotplugNic,
    HotunplugDisk,
    HotunplugNic,
    ImageError,
    InvalidParams,
    PierError,
    SetNumberOfCpus,
    UpdateDevice,
)

log = logging.getLogger(__name__)

HOTUNPLUG_TIMEOUT = 30.0
"""Seconds a guest has to let go of a device (VDSM's hotunplug_timeout)."""
_POLL = 0.05
_LIVE, _CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG


def field(where: str) -> dict[str, str]:
    return {"field": f"params.{where}"}


class Sides:
    """The running guest's XML (when it runs) and the persistent definition (when there is one)."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        with domain.errors("read the state of"):
            self.active = bool(domain.virdomain.isActive())
            self.persistent = bool(domain.virdomain.isPersistent())
        self.live = domain.xml() if self.active else None
        self.config = domain.xml(inactive=True) if self.persistent or not self.active else None

    def xmls(self) -> list[DomainXml]:
        return [xml for xml in (self.live, self.config) if xml is not None]

    def current(self) -> DomainXml:
        """What the VM is now: the running guest's XML, else its definition."""
        found = self.live or self.config
        assert found is not None
        return found

    def devices(self) -> list[Device]:
        return [device for xml in self.xmls() for device in xml.devices()]

    def find(self, match: Callable[[Device], bool]) -> Device | None:
        """The first device matching, in the running guest, else in the definition."""
        for xml in self.xmls():
            for device in xml.devices():
                if match(device):
                    return device
        return None


class VmDevices:
    """Implements the device verbs of `pier.host.services.VmDeviceService` over libvirt."""

    def __init__(self, connection: Connection, cache: VmCache, vms: Vms, notify: Callable[[News], None],
                 hotunplug_timeout: float = HOTUNPLUG_TIMEOUT) -> None:
        self._connection = connection
        self._cache = cache
        self._vms = vms
        self._notify = notify
        self.hotunplug_timeout = hotunplug_timeout
        self._late: dict[tuple[str, str], tuple[str, str]] = {}  # (vmId, alias) -> identity; see device_removed
        self._late_lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------------

    def devices(self, vm_id: str) -> list[dict[str, Any]]:
        """The VM's devices in VDSM's form, as VM.getInfo lists them."""
        return list(self._vms.definition(vm_id).get("devices", []))

    def changed(self, domain: Domain) -> dict[str, Any]:
        """After a change: the cached definition read again, an event, and the VmDefinition."""
        rec = self._cache.get(domain.vm_id)
        text = ""
        if rec is not None:
            self._cache.invalidate(rec)
            version = rec.def_version
            try:
                xml = domain.xml()
                text = xml.to_string()
                self._cache.keep_definition(rec, xml.to_definition(), version)
            except PierError as exc:  # the definition is then read at the next look
                log.debug("VM %s: cannot read its XML after a change: %s", domain.vm_id, exc)
            definition = self._vms.definition(domain.vm_id)
        else:  # a VM the cache has not seen yet (made outside Pier a moment ago): as libvirt has it
            xml = domain.xml()
            text = xml.to_string()
            status, details = domain.status()
            definition = {**xml.to_definition(), "status": status, **details}
        self._notify(DevicesChanged(domain.vm_id, hashlib.sha256(text.encode()).hexdigest()[:16]))
        return definition

    # -- disks ---------------------------------------------------------------------------------

    def hotplug_disk(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Plug in the disk of params["drive"] (virtio-blk or virtio-scsi, adding a virtio-scsi
        controller when the VM has none)."""
        drive = _object(params, "drive")
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        disk = Disk.from_params(drive, "drive")
        if disk.element.get("device") != "disk":
            raise InvalidParams("drive.device: hotplugDisk plugs in disks; a CD is changed with VM.changeCD",
                                data=field("drive.device"))
        alias = set_alias(disk, drive.get("alias"), "drive")
        self._check_alias(sides, alias, "drive", HotplugDisk)
        path = disk.path
        if disk.element.get("type") in ("file", "block") and not os.path.exists(path):
            raise ImageError(f"drive.path: {path} does not exist", data={**field("drive.path"), "path": path})
        for other in sides.devices():
            if isinstance(other, Disk) and other.path == path:
                raise HotplugDisk(f"drive.path: VM {vm_id} already has {path} as disk {other.target.get('dev')}",
                                  data=field("drive.path"))
        self._name_disk(sides, disk, drive)
        added_controller = None
        if disk.target.get("bus") == "scsi":
            added_controller = self._scsi_controller(domain, sides, disk)
        try:
            domain.attach(disk, HotplugDisk)
        except PierError:
            if added_controller is not None:
                self._undo_controller(domain, added_controller)
            raise
        log.info("VM %s: disk %s (%s) plugged in as %s", vm_id, alias, path, disk.target.get("dev"))
        return self.changed(domain)

    def hotunplug_disk(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Unplug the disk params["drive"] names (by alias, name or path)."""
        drive = _object(params, "drive")
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        disk = sides.find(lambda d: isinstance(d, Disk) and d.element.get("device", "disk") == "disk"
                          and _names_disk(d, drive))
        if disk is None:
            raise HotunplugDisk(f"drive: VM {vm_id} has no disk {_describe(drive, ('alias', 'name', 'path'))}",
                                data=field("drive"))
        self._unplug(sides, disk, HotunplugDisk)
        return self.changed(domain)

    def change_cd(self, vm_id: str, spec: Any, floppy: bool = False) -> dict[str, Any]:
        """Put the image at spec's path in the VM's CD-ROM (floppy) drive; an empty path ejects.
        `spec` is a path, or {path, and optionally alias or name of the drive}."""
        kind = "floppy" if floppy else "cdrom"
        spec = {"path": spec} if isinstance(spec, str) else _object({"driveSpec": spec}, "driveSpec")
        path = spec.get("path") or ""
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise InvalidParams(f"driveSpec.path: {path!r} is not an absolute path", data=field("driveSpec.path"))
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        drive = sides.find(lambda d: isinstance(d, Disk) and d.element.get("device") == kind
                           and (not (spec.get("alias") or spec.get("name")) or _names_disk(d, spec)))
        if drive is None:
            raise ChangeDisk(f"VM {vm_id} has no {kind} drive{_describe(spec, ('alias', 'name'), ' ')}",
                             data={"vmId": vm_id})
        if path and not os.path.exists(path):
            raise ImageError(f"driveSpec.path: {path} does not exist", data={**field("driveSpec.path"), "path": path})
        assert isinstance(drive, Disk)
        target = drive.target.get("dev")
        self._update_each(sides, lambda d: isinstance(d, Disk) and d.target.get("dev") == target,
                          lambda element: _set_media(element, path), ChangeDisk)
        log.info("VM %s: %s %s now holds %s", vm_id, kind, target, path or "nothing")
        return self.changed(domain)

    # -- NICs ----------------------------------------------------------------------------------

    def hotplug_nic(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Plug in the NIC of params["nic"]."""
        spec = _object(params, "nic")
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        nic = Interface.from_params({"device": "bridge", **spec}, "nic")
        alias = set_alias(nic, spec.get("alias"), "nic")
        self._check_alias(sides, alias, "nic", HotplugNic)
        if not nic.mac:
            nic.element.insert(0, ET.Element("mac", address=_new_mac(sides)))
        for other in sides.devices():
            if isinstance(other, Interface) and other.mac.lower() == nic.mac.lower():
                raise HotplugNic(f"nic.macAddr: VM {vm_id} already has a NIC with MAC {nic.mac}",
                                 data=field("nic.macAddr"))
        domain.attach(nic, HotplugNic)
        log.info("VM %s: NIC %s (%s) plugged in", vm_id, alias, nic.mac)
        return self.changed(domain)

    def hotunplug_nic(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Unplug the NIC params["nic"] names (by alias or macAddr)."""
        spec = _object(params, "nic")
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        nic = sides.find(lambda d: isinstance(d, Interface) and _names_nic(d, spec))
        if nic is None:
            raise HotunplugNic(f"nic: VM {vm_id} has no NIC {_describe(spec, ('alias', 'macAddr'))}",
                               data=field("nic"))
        self._unplug(sides, nic, HotunplugNic)
        return self.changed(domain)

    # -- updates -------------------------------------------------------------------------------

    def update_device(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """VM.updateDevice: a NIC's link state or network, a display's password, a CD's image."""
        kind = params.get("deviceType")
        if kind == "disk":
            return self.change_cd(vm_id, {k: params[k] for k in ("path", "alias", "name") if k in params})
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        if kind == "interface":
            nic = sides.find(lambda d: isinstance(d, Interface) and _names_nic(d, params))
            if nic is None:
                raise UpdateDevice(f"params: VM {vm_id} has no NIC {_describe(params, ('alias', 'macAddr'))}",
                                   data=field("params"))
            assert isinstance(nic, Interface)
            mac = nic.mac.lower()
            self._update_each(sides, lambda d: isinstance(d, Interface) and d.mac.lower() == mac,
                              lambda element: _change_nic(element, params), UpdateDevice)
        elif kind == "graphics":
            wanted = params.get("graphicsType") or params.get("device")
            screen = sides.find(lambda d: isinstance(d, Graphics)
                                and (not params.get("alias") or d.alias == params["alias"])
                                and (not wanted or d.element.get("type") == wanted))
            if screen is None:
                raise UpdateDevice(f"params: VM {vm_id} has no {wanted or ''} graphics device".replace("  ", " "),
                                   data=field("params"))
            screen_type = screen.element.get("type")
            valid_to = _valid_to(params.get("ttl"))
            connected = _connected(params.get("existingConnAction"))
            password = str(params.get("password") or "")

            def ticket(element: ET.Element) -> None:
                changed = Graphics(element).with_ticket(password, valid_to, connected).element
                element.attrib.clear()
                element.attrib.update(changed.attrib)

            self._update_each(sides, lambda d: isinstance(d, Graphics) and d.element.get("type") == screen_type,
                              ticket, UpdateDevice)
        else:
            raise InvalidParams(f"params.deviceType: {kind!r} is not one of interface, graphics, disk",
                                data=field("params.deviceType"))
        return self.changed(domain)

    # -- memory and CPUs -----------------------------------------------------------------------

    def hotplug_memory(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Plug in a DIMM of params["memory"]["size"] MiB on guest NUMA node params["memory"]["node"]."""
        spec = _object(params, "memory")
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        dimm = Memory.from_params(spec, "memory")
        assert isinstance(dimm, Memory)
        alias = set_alias(dimm, spec.get("alias"), "memory")
        self._check_alias(sides, alias, "memory", HotplugMemory)
        now = sides.current()
        max_memory = now.root.find("maxMemory")
        if max_memory is None:
            raise HotplugMemory(f"VM {vm_id} was not made for memory hotplug: create it with maxMemSize",
                                data={"vmId": vm_id})
        max_mib = _kib_of(max_memory) // 1024
        mem_mib = now.memory_kib // 1024
        if mem_mib + dimm.size_mib > max_mib:
            raise HotplugMemory(f"memory.size: {dimm.size_mib} MiB more would make {mem_mib + dimm.size_mib} MiB, "
                                f"beyond the VM's maxMemSize of {max_mib} MiB", data=field("memory.size"))
        slots = int(max_memory.get("slots", "0") or 0)
        used = sum(1 for d in now.devices() if isinstance(d, Memory))
        if used >= slots:
            raise HotplugMemory(f"memory: all {slots} memory slots of VM {vm_id} are taken", data=field("memory"))
        cells = {cell.get("id") for cell in now.root.findall("cpu/numa/cell")}
        if str(dimm.node) not in cells:
            raise HotplugMemory(f"memory.node: VM {vm_id} has no guest NUMA node {dimm.node}",
                                data=field("memory.node"))
        domain.attach(dimm, HotplugMemory)
        log.info("VM %s: DIMM %s of %d MiB plugged in", vm_id, alias, dimm.size_mib)
        return self.changed(domain)

    def hotunplug_memory(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Unplug the DIMM params["memory"]["alias"] names."""
        spec = _object(params, "memory")
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        alias = spec.get("alias")
        dimm = sides.find(lambda d: isinstance(d, Memory) and d.alias == alias)
        if dimm is None:
            raise HotplugMemory(f"memory.alias: VM {vm_id} has no memory device {alias!r}", data=field("memory.alias"))
        self._unplug(sides, dimm, HotplugMemory)
        return self.changed(domain)

    def set_cpus(self, vm_id: str, count: int) -> dict[str, Any]:
        """Give the VM `count` virtual CPUs (at most its maxVCpus)."""
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        maximum = sides.current().max_vcpus
        if count < 1 or count > maximum:
            raise SetNumberOfCpus(f"numberOfCpus: {count} is not between 1 and the VM's maxVCpus, {maximum}",
                                  data=field("numberOfCpus"))
        raw = domain.virdomain
        if sides.active and sides.current().vcpus != count:
            with domain.errors(f"set {count} CPUs of", SetNumberOfCpus):
                raw.setVcpusFlags(count, _LIVE)
        if sides.persistent:
            with domain.errors(f"set {count} CPUs in the definition of", SetNumberOfCpus):
                raw.setVcpusFlags(count, _CONFIG)
        log.info("VM %s: %d CPUs", vm_id, count)
        return self.changed(domain)

    # -- helpers -------------------------------------------------------------------------------

    def add_device(self, vm_id: str, device: dict[str, Any]) -> dict[str, Any]:
        """Plug in a disk, NIC or DIMM in VDSM's device form; the device as the VM now lists it."""
        kind = device.get("deviceType")
        plug = {"disk": ("drive", self.hotplug_disk), "interface": ("nic", self.hotplug_nic),
                "memory": ("memory", self.hotplug_memory)}.get(str(kind))
        if plug is None:
            raise InvalidParams(f"device.deviceType: {kind!r} is not one of disk, interface, memory",
                                data=field("device.deviceType"))
        given = dict(device)
        if not given.get("alias"):
            given["alias"] = set_alias(Device(ET.Element("x")), None, "device")
        definition = plug[1](vm_id, {plug[0]: given})
        return next(d for d in definition.get("devices", []) if d.get("alias") == given["alias"])

    def remove_device(self, vm_id: str, alias: str) -> dict[str, Any]:
        """Unplug the device with this alias (a disk, NIC, DIMM or another kind)."""
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        device = sides.find(lambda d: d.alias == alias)
        if device is None:
            raise UpdateDevice(f"alias: VM {vm_id} has no device {alias!r}", data=field("alias"))
        error = {Disk: HotunplugDisk, Interface: HotunplugNic, Memory: HotplugMemory}.get(type(device), UpdateDevice)
        self._unplug(sides, device, error)
        return self.changed(domain)

    @staticmethod
    def _check_alias(sides: Sides, alias: str, where: str, error: type[PierError]) -> None:
        if any(d.alias == alias for d in sides.devices()):
            raise error(f"{where}.alias: VM {sides.domain.vm_id} already has a device {alias}",
                        data=field(f"{where}.alias"))

    @staticmethod
    def _name_disk(sides: Sides, disk: Disk, drive: dict[str, Any]) -> None:
        taken = {d.target.get("dev") for d in sides.devices() if isinstance(d, Disk)}
        name = disk.target.get("dev")
        if name:
            if name in taken:
                raise HotplugDisk(f"drive.name: VM {sides.domain.vm_id} already has a disk {name}",
                                  data=field("drive.name"))
            return
        prefix, index = disk.name_prefix(), 0
        while prefix + _letters(index) in taken:
            index += 1
        disk.target.set("dev", prefix + _letters(index))

    def _scsi_controller(self, domain: Domain, sides: Sides, disk: Disk) -> ET.Element | None:
        """Address the disk to a virtio-scsi controller, plugging one in when the VM has none;
        the controller plugged in, if any."""
        controllers = [el for xml in sides.xmls() for el in xml.devices_element.findall("controller[@type='scsi']")]
        virtio = next((el for el in controllers if el.get("model") == "virtio-scsi"), None)
        added = None
        if virtio is None:
            index = max((int(el.get("index", "0")) for el in controllers), default=-1) + 1
            added = ET.Element("controller", type="scsi", index=str(index), model="virtio-scsi")
            domain.attach(ET.tostring(added, encoding="unicode"), HotplugDisk)
            virtio = added
        controller = virtio.get("index", "0")
        units = {int(addr.get("unit", "0")) for d in sides.devices() if isinstance(d, Disk)
                 for addr in [d.element.find("address[@type='drive']")]
                 if addr is not None and addr.get("controller", "0") == controller}
        unit = next(u for u in range(len(units) + 1) if u not in units)
        sub(disk.element, "address", type="drive", controller=controller, bus="0", target="0", unit=str(unit))
        return added

    @staticmethod
    def _undo_controller(domain: Domain, controller: ET.Element) -> None:
        try:
            with domain.errors("take back the SCSI controller of", HotplugDisk):
                domain.virdomain.detachDeviceFlags(ET.tostring(controller, encoding="unicode"),
                                                   domain.affect_flags())
        except PierError as exc:
            log.error("VM %s: could not take back the SCSI controller added for a failed hotplug: %s",
                      domain.vm_id, exc)

    def _unplug(self, sides: Sides, device: Device, error: type[PierError]) -> None:
        """Take the device from the running guest, waiting for the guest to let go of it, then
        from the definition; a guest that holds on to it keeps it in both (error: it says so)."""
        domain, alias = sides.domain, device.alias
        identity = _identity(device)
        if sides.live is not None:
            live = next((d for d in sides.live.devices() if _identity(d) == identity), None)
            if live is not None:
                self._unplug_live(domain, live, error)
        if sides.config is not None and sides.persistent:
            saved = next((d for d in sides.config.devices() if _identity(d) == identity), None)
            if saved is not None:
                with domain.errors(f"remove device {alias} from the definition of", error):
                    domain.virdomain.detachDeviceFlags(_xml(saved), _CONFIG)
        log.info("VM %s: device %s unplugged", domain.vm_id, alias or identity)

    def _unplug_live(self, domain: Domain, device: Device, error: type[PierError]) -> None:
        identity = _identity(device)
        deadline = time.monotonic() + self.hotunplug_timeout
        # By its XML: libvirt then waits a few seconds for the guest itself (by alias it would not)
        with domain.errors(f"unplug device {device.alias} from", error):
            domain.virdomain.detachDeviceFlags(_xml(device), _LIVE)
        pause = 0.002  # libvirt may return a moment before its definition lets the device go
        while True:
            if not any(_identity(d) == identity for d in domain.xml().devices()):
                return
            if time.monotonic() >= deadline:
                if device.alias:
                    with self._late_lock:
                        self._late[(domain.vm_id, device.alias)] = identity
                raise error(f"the guest of VM {domain.vm_id} did not release device {device.alias or identity} "
                            f"within {self.hotunplug_timeout:g} s; it stays plugged in (and in the definition), "
                            "its removal requested", data={"vmId": domain.vm_id, "alias": device.alias})
            time.sleep(pause)
            pause = min(pause * 2, _POLL)

    def device_removed(self, vm_id: str, alias: str) -> None:
        """The guest let go of a device (libvirt's device-removed event; thread: libvirt-events).
        One whose unplug timed out leaves the definition now, as it would have then."""
        with self._late_lock:
            identity = self._late.pop((vm_id, alias), None)
        if identity is None:
            return
        domain = Domain.lookup(self._connection, vm_id)
        sides = Sides(domain)
        if sides.config is None or not sides.persistent:
            return
        saved = next((d for d in sides.config.devices() if _identity(d) == identity), None)
        if saved is not None:
            with domain.errors(f"remove device {alias} from the definition of", UpdateDevice):
                domain.virdomain.detachDeviceFlags(_xml(saved), _CONFIG)
            log.info("VM %s: the guest let go of device %s late; it left the definition too", vm_id, alias)
        self.changed(domain)

    @staticmethod
    def _update_each(sides: Sides, match: Callable[[Device], bool], change: Callable[[ET.Element], None],
                     error: type[PierError]) -> None:
        """Change the matching device in the running guest, then in the definition; undo the
        first when the second fails."""
        domain = sides.domain
        done: list[tuple[str, int]] = []
        pairs = [(sides.live, _LIVE)] if sides.active else []
        if sides.persistent:
            pairs.append((sides.config, _CONFIG))
        elif not sides.active:
            pairs.append((sides.config, libvirt.VIR_DOMAIN_AFFECT_CURRENT))
        try:
            for xml, flags in pairs:
                assert xml is not None
                device = next((d for d in xml.devices() if match(d)), None)
                if device is None:
                    continue
                before = _xml(device)
                element = copy.deepcopy(device.element)
                change(element)
                domain.update(ET.tostring(element, encoding="unicode"), error, flags=flags)
                done.append((before, flags))
        except PierError:
            for before, flags in reversed(done):
                try:
                    domain.update(before, error, flags=flags)
                except PierError as exc:
                    log.error("VM %s: could not undo a device update: %s", domain.vm_id, exc)
            raise


def _object(params: dict[str, Any], key: str) -> dict[str, Any]:
    value = params.get(key) if isinstance(params, dict) else None
    if not isinstance(value, dict):
        raise InvalidParams(f"{key}: expected an object", data=field(key))
    return value


def _names_disk(disk: Device, spec: dict[str, Any]) -> bool:
    assert isinstance(disk, Disk)
    if spec.get("alias"):
        return disk.alias == spec["alias"]
    if spec.get("name"):
        return disk.target.get("dev") == spec["name"]
    return bool(spec.get("path")) and disk.path == spec["path"]


def _names_nic(nic: Device, spec: dict[str, Any]) -> bool:
    assert isinstance(nic, Interface)
    if spec.get("alias"):
        return nic.alias == spec["alias"]
    return bool(spec.get("macAddr")) and nic.mac.lower() == str(spec["macAddr"]).lower()


def _describe(spec: dict[str, Any], keys: tuple[str, ...], lead: str = "") -> str:
    named = [f"{key} {spec[key]}" for key in keys if spec.get(key)]
    return lead + " ".join(named) if named else ("(nothing names it)" if not lead else "")


def _identity(device: Device) -> tuple[str, str]:
    """What names a device in both the running guest's XML and the definition (libvirt keeps
    user aliases in both; else a disk's target, a NIC's MAC)."""
    if device.alias.startswith("ua-"):
        return ("alias", device.alias)
    if isinstance(device, Disk):
        return ("disk", device.target.get("dev", ""))
    if isinstance(device, Interface):
        return ("mac", device.mac.lower())
    return ("alias", device.alias)


def _xml(device: Device) -> str:
    return ET.tostring(device.element, encoding="unicode")


def _set_media(element: ET.Element, path: str) -> None:
    source = element.find("source")
    if source is not None:
        element.remove(source)
    if path:
        source = ET.Element("source", {"dev" if path.startswith("/dev/") else "file": path})
        element.set("type", "block" if path.startswith("/dev/") else "file")
        driver = element.find("driver")
        element.insert(list(element).index(driver) + 1 if driver is not None else 0, source)


def _change_nic(element: ET.Element, params: dict[str, Any]) -> None:
    if "linkActive" in params:
        up = as_bool(params["linkActive"], "params.linkActive", default=True)
        link = element.find("link")
        if link is None:
            link = sub(element, "link")
        link.set("state", "up" if up else "down")
    network = params.get("network")
    if network:
        kind = element.get("type", "bridge")
        if kind not in ("bridge", "network"):
            raise UpdateDevice(f"params.network: a {kind} NIC cannot move to another network", data=field("params.network"))
        source = element.find("source")
        if source is None:
            source = sub(element, "source")
        source.attrib.clear()
        source.set(kind, str(network))


def _valid_to(ttl: Any) -> str | None:
    if ttl in (None, "", 0, "0"):
        return None
    seconds = as_int(ttl, "params.ttl", minimum=1)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + seconds))


def _connected(action: Any) -> str | None:
    if action in (None, ""):
        return None
    actions = {"disconnect": "disconnect", "keep": "keep", "fail": "fail"}
    if action not in actions:
        raise InvalidParams(f"params.existingConnAction: {action!r} is not one of disconnect, keep, fail",
                            data=field("params.existingConnAction"))
    return actions[action]


def _kib_of(element: ET.Element) -> int:
    unit = element.get("unit", "KiB").lower()
    scale = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}
    return int((element.text or "0").strip()) * scale.get(unit, 1024) // 1024


def _letters(index: int) -> str:
    letters, index = "", index + 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return letters


def _new_mac(sides: Sides) -> str:
    taken = {d.mac.lower() for d in sides.devices() if isinstance(d, Interface)}
    while True:
        mac = "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))
        if mac not in taken:
            return mac

"""Host devices: libvirt's node devices in VDSM's HostDevice shape, SR-IOV VFs, giving devices back.

`parse_node_device` turns a node device's XML into VDSM's HostDeviceParams (every value a string,
as VDSM sends them). A device is assignable to a VM when the host can hand it over safely: a PCI
device needs an IOMMU group (no IOMMU, no assignment) and must not be a bridge; USB devices and
SCSI generic devices need none. `HostDevices` lists them, changes a physical function's number of
virtual functions through sysfs (the root is injectable for tests), gives a device detached for a
VM back to its host driver, and assigns devices to VMs and takes them back (through
`pier.host.domain.Domain`). A device that cannot be assigned is refused before anything changes:
libvirt is never asked to take a device the host cannot give safely.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import libvirt

from pier.host.connection import Connection
from pier.host.domain import Domain, libvirt_errors
from pier.host.domxml import parse_xml
from pier.rpc.errors import (
    HostdevDetachError,
    InvalidParams,
    NoSuchDevice,
    PierError,
    Unexpected,
    UnsupportedOperation,
)

log = logging.getLogger(__name__)

# The drivers that hold a PCI device taken from the host for a VM.
STUB_DRIVERS = ("vfio-pci", "pci-stub")
PCI_BRIDGE_CLASS = 0x06  # the PCI base class of host, PCI and ISA bridges


def _text(element: ET.Element | None, path: str) -> str | None:
    found = element.find(path) if element is not None else None
    return found.text.strip() if found is not None and found.text else None


def _number(value: str | None) -> str | None:
    """A decimal string for a number libvirt writes in decimal or hexadecimal."""
    if value is None:
        return None
    try:
        return str(int(value, 0))
    except ValueError:
        return value


def pci_name(domain: int, bus: int, slot: int, function: int) -> str:
    """libvirt's node device name of the PCI device at this address."""
    return f"pci_{domain:04x}_{bus:02x}_{slot:02x}_{function:x}"


def parse_node_device(xml: str) -> tuple[str, dict[str, Any]]:
    """(name, HostDeviceParams) of one node device's XML."""
    root = ET.fromstring(xml)  # libvirt's own output
    name = _text(root, "name") or ""
    cap = root.find("capability")
    kind = cap.get("type", "") if cap is not None else ""
    params: dict[str, Any] = {"capability": kind}
    for key, value in (("parent", _text(root, "parent")), ("driver", _text(root, "driver/name")),
                       ("udev_path", _text(root, "devnode[@type='dev']"))):
        if value:
            params[key] = value
    if cap is None:
        params["is_assignable"] = "false"
        return name, params
    for what in ("vendor", "product"):
        element = cap.find(what)
        if element is not None:
            if element.get("id"):
                params[f"{what}_id"] = element.get("id")
            if element.text and element.text.strip():
                params[what] = element.text.strip()
    group = cap.find("iommuGroup")
    if group is not None and group.get("number") is not None:
        params["iommu_group"] = group.get("number")
    numa = cap.find("numa")
    if numa is not None and numa.get("node") is not None:
        params["numa_node"] = numa.get("node")
    if kind == "pci":
        params["address"] = {key: _number(_text(cap, key)) or "0" for key in ("domain", "bus", "slot", "function")}
        vfs = cap.find("capability[@type='virt_functions']")
        if vfs is not None and vfs.get("maxCount"):
            params["totalvfs"] = vfs.get("maxCount")
        pf = cap.find("capability[@type='phys_function']/address")
        if pf is not None:
            params["physfn"] = pci_name(*(int(pf.get(key, "0"), 0) for key in ("domain", "bus", "slot", "function")))
        device_class = int(_text(cap, "class") or "0", 0)
        params["is_assignable"] = str(group is not None and device_class >> 16 != PCI_BRIDGE_CLASS).lower()
    elif kind == "usb_device":
        params["address"] = {"bus": _number(_text(cap, "bus")) or "0", "device": _number(_text(cap, "device")) or "0"}
        params["is_assignable"] = "true"
    elif kind == "scsi":
        params["address"] = {key: _number(_text(cap, key)) or "0" for key in ("host", "bus", "target", "lun")}
        params["is_assignable"] = "true"
    elif kind == "net":
        params["interface"] = _text(cap, "interface") or ""
        params["is_assignable"] = "false"
    elif kind == "storage":
        if _text(cap, "block"):
            params["block_path"] = _text(cap, "block")
        if _text(cap, "vendor") and "vendor" not in params:
            params["vendor"] = _text(cap, "vendor")
        params["is_assignable"] = "false"
    else:
        params["is_assignable"] = "false"
    return name, params


class HostDevices:
    """Implements `pier.host.services.HostDeviceService`: libvirt's node devices and sysfs."""

    def __init__(self, connection: Connection, sysfs_root: str | Path = "/sys") -> None:
        self._connection = connection
        self._sysfs = Path(sysfs_root)

    def list_by_caps(self, caps: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """{name: {"params": HostDeviceParams}} of the devices with one of `caps` (all when none)."""
        wanted = set(caps or ())
        conn = self._connection.get()
        found: dict[str, dict[str, Any]] = {}
        with libvirt_errors(self._connection, conn, action="list the host's devices"):
            devices = conn.listAllDevices(0)
        for device in devices:
            try:
                name, params = parse_node_device(device.XMLDesc(0))  # one call each, not two with listCaps()
            except libvirt.libvirtError as exc:
                self._connection.check(exc, conn)
                continue  # unplugged while we looked
            if not wanted or params["capability"] in wanted:
                found[name] = {"params": params}
        return found

    def device(self, name: str, field: str = "deviceName") -> dict[str, Any]:
        """HostDeviceParams of the device `name`; NoSuchDevice naming `field` when there is none."""
        conn = self._connection.get()
        try:
            xml = conn.nodeDeviceLookupByName(name).XMLDesc(0)
        except libvirt.libvirtError as exc:
            self._connection.check(exc, conn)
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NODE_DEVICE:
                raise NoSuchDevice(f"{field}: no host device {name!r} on this host",
                                   data={"field": f"params.{field}"}) from None
            raise Unexpected(f"cannot read host device {name}: {exc.get_error_message()}") from None
        return parse_node_device(xml)[1]

    def change_numvfs(self, name: str, numvfs: int) -> None:
        """Give SR-IOV physical function `name` `numvfs` virtual functions."""
        params = self.device(name)
        if "totalvfs" not in params:
            raise UnsupportedOperation(f"host device {name} is not an SR-IOV physical function",
                                       data={"deviceName": name})
        if numvfs > int(params["totalvfs"]):
            raise InvalidParams(f"numvfs: {name} supports at most {params['totalvfs']} virtual functions, "
                                f"not {numvfs}", data={"field": "params.numvfs"})
        path = self._pci_directory(params) / "sriov_numvfs"
        current = self._read_int(path)
        if current == numvfs:
            return
        if current:
            self._write(path, 0)  # the kernel changes a nonzero count only through zero
        self._write(path, numvfs)
        log.info("host device %s has %d virtual functions (had %s)", name, numvfs, current)

    def reattach(self, name: str) -> None:
        """Give device `name` back to its host driver when it is held for a VM (bound to a stub
        driver); a device already with the host is left as it is."""
        params = self.device(name)
        if params["capability"] != "pci" or params.get("driver") not in STUB_DRIVERS:
            log.info("host device %s is not held for a VM (driver %s): nothing to give back", name,
                     params.get("driver") or "none")
            return
        conn = self._connection.get()
        with libvirt_errors(self._connection, conn, action=f"give host device {name} back to the host"):
            conn.nodeDeviceLookupByName(name).reAttach()
        log.info("host device %s given back to the host", name)

    def hotplug(self, vm_id: str, devices: list[str]) -> list[str]:
        """Assign the host devices of these <hostdev> XMLs to VM `vm_id` (the running guest and
        its definition), all or none. Each is checked first: a device the host does not have is
        NoSuchDevice, one that cannot be assigned HostdevDetachError, and nothing is touched."""
        domain = Domain.lookup(self._connection, vm_id)
        plugs = [Plug(index, given) for index, given in enumerate(devices)]
        known = self.list_by_caps(["pci", "usb_device"])
        names = [plug.host_device(known) for plug in plugs]
        done: list[Plug] = []
        try:
            for plug, name in zip(plugs, names, strict=True):
                domain.attach(plug.xml(), HostdevDetachError)
                done.append(plug)
                log.info("host device %s assigned to VM %s", name, domain.vm_id)
        except PierError:
            for plug in reversed(done):
                try:
                    self._unplug(domain, plug)
                except PierError as exc:
                    log.error("could not take %s back from VM %s after a failed hotplug: %s", plug.field,
                              domain.vm_id, exc)
            raise
        return list(devices)

    def hotunplug(self, vm_id: str, devices: list[str]) -> list[str]:
        """Ask VM `vm_id` to let go of the host devices of these <hostdev> XMLs; from a running
        guest each goes when the guest releases it (a device-removed event follows)."""
        domain = Domain.lookup(self._connection, vm_id)
        plugs = [Plug(index, given) for index, given in enumerate(devices)]
        for plug in plugs:
            self._unplug(domain, plug)
        return list(devices)

    @staticmethod
    def _unplug(domain: Domain, plug: Plug) -> None:
        held = domain.xml(inactive=not domain.is_active()).devices()
        if not any(device.element.tag == "hostdev" and _source_key(device.element) == plug.source for device in held):
            raise NoSuchDevice(f"{plug.field}: VM {domain.vm_id} has no host device at {_describe(plug.source)}",
                               data={"field": f"params.{plug.field}", "vmId": domain.vm_id})
        # By its XML, not its alias: libvirt finds a host device by its source in the running guest
        # and in the definition alike, where the alias libvirt gave it is not kept.
        flags = domain.affect_flags()
        with domain.errors(f"take host device {_describe(plug.source)} from", UnsupportedOperation):
            domain.virdomain.detachDeviceFlags(plug.xml(), flags)

    def _pci_directory(self, params: dict[str, Any]) -> Path:
        address = params["address"]
        slot = (f"{int(address['domain']):04x}:{int(address['bus']):02x}:{int(address['slot']):02x}."
                f"{int(address['function']):x}")
        return self._sysfs / "bus" / "pci" / "devices" / slot

    @staticmethod
    def _read_int(path: Path) -> int:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError) as exc:
            raise _sysfs_error(f"cannot read {path}", exc, path) from None

    @staticmethod
    def _write(path: Path, value: int) -> None:
        try:
            with open(path, "w") as stream:
                stream.write(f"{value}\n")
        except OSError as exc:
            raise _sysfs_error(f"cannot write {value} to {path}", exc, path) from None


def _sysfs_error(what: str, exc: Exception, path: Path) -> PierError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return Unexpected(f"{what}: {reason}", data={"file": str(path)})


class Plug:
    """One <hostdev> a caller gave, checked: its element and the host device its <source> names."""

    def __init__(self, index: int, given: str) -> None:
        self.field = f"devices[{index}]"
        self.element = parse_xml(given, self.field)
        if self.element.tag != "hostdev" or self.element.get("mode", "subsystem") != "subsystem":
            raise self.invalid("expected a <hostdev mode='subsystem'> element")
        self.kind = self.element.get("type", "")
        if self.kind not in ("pci", "usb"):
            raise self.invalid(f"type {self.kind!r}: Pier assigns pci and usb host devices")
        source = _source_key(self.element)
        if source is None:
            raise self.invalid("<source> names no host device (a PCI address, or a USB address or vendor and product)")
        self.source: tuple[Any, ...] = source
        if self.element.get("managed") == "no":
            raise self.invalid("managed='no': Pier lets libvirt take the device from the host and give it back")
        if self.kind == "pci":
            self.element.set("managed", "yes")

    def invalid(self, why: str) -> InvalidParams:
        return InvalidParams(f"{self.field}: {why}", data={"field": f"params.{self.field}"})

    def host_device(self, known: dict[str, dict[str, Any]]) -> str:
        """The name of the host device this plug names, if the host has it and it can be assigned."""
        for name, device in known.items():
            params = device["params"]
            if self.source in _node_keys(params):
                if params.get("is_assignable") != "true":
                    raise HostdevDetachError(f"{self.field}: host device {name} cannot be assigned to a VM: "
                                             f"{_why_not_assignable(params)}",
                                             data={"field": f"params.{self.field}", "device": name})
                return name
        raise NoSuchDevice(f"{self.field}: no host device at {_describe(self.source)} on this host",
                           data={"field": f"params.{self.field}"})

    def xml(self) -> str:
        return ET.tostring(self.element, encoding="unicode")


def _ints(element: ET.Element | None, keys: tuple[str, ...]) -> tuple[int, ...] | None:
    if element is None or any(element.get(key) is None for key in keys):
        return None
    try:
        return tuple(int(element.get(key, ""), 0) for key in keys)
    except ValueError:
        return None


def _source_key(hostdev: ET.Element) -> tuple[Any, ...] | None:
    """What identifies the host device under a <hostdev>'s <source>."""
    source = hostdev.find("source")
    if source is None:
        return None
    if hostdev.get("type") == "pci":
        address = _ints(source.find("address"), ("domain", "bus", "slot", "function"))
        return ("pci", *address) if address else None
    address = _ints(source.find("address"), ("bus", "device"))
    if address:
        return ("usb", *address)
    vendor, product = source.find("vendor"), source.find("product")
    ids = _ints(vendor, ("id",)), _ints(product, ("id",))
    return ("usb-id", ids[0][0], ids[1][0]) if ids[0] and ids[1] else None


def _node_keys(params: dict[str, Any]) -> set[tuple[Any, ...]]:
    """The keys (as _source_key makes them) by which a <hostdev> may name this node device."""
    address = params.get("address") or {}
    if params.get("capability") == "pci":
        return {("pci", *(int(address[key]) for key in ("domain", "bus", "slot", "function")))}
    if params.get("capability") != "usb_device":
        return set()
    keys: set[tuple[Any, ...]] = {("usb", int(address["bus"]), int(address["device"]))}
    if params.get("vendor_id") and params.get("product_id"):
        keys.add(("usb-id", int(params["vendor_id"], 16), int(params["product_id"], 16)))
    return keys


def _describe(key: tuple[Any, ...]) -> str:
    if key[0] == "pci":
        return "PCI address " + pci_name(*key[1:]).removeprefix("pci_")
    if key[0] == "usb":
        return f"USB bus {key[1]} device {key[2]}"
    return f"USB vendor {key[1]:#06x} product {key[2]:#06x}"


def _why_not_assignable(params: dict[str, Any]) -> str:
    if params.get("capability") == "pci" and "iommu_group" not in params:
        return ("it is in no IOMMU group: this host's IOMMU is off or absent (intel_iommu=on or amd_iommu=on "
                "on the kernel command line, and VT-d or AMD-Vi in the firmware)")
    if params.get("capability") == "pci":
        return "it is a PCI bridge"
    return f"a {params.get('capability')} device is not assigned to VMs"

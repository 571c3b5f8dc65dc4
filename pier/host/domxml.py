"""Domain XML: built from VDSM VM params or taken raw, and read back as a VmDefinition.

Pier makes and reads domain XML only here (the device classes live in `devices.py`).
Untrusted XML is parsed with defusedxml (no entities, no external references). A parsed
domain is edited in place, so whatever Pier does not model survives the round trip.
"""

from __future__ import annotations

import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Any

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from pier.host.devices import (
    Channel,
    Console,
    Device,
    Disk,
    Graphics,
    Interface,
    as_bool,
    as_int,
    device_from_element,
    device_from_params,
    sub,
)
from pier.rpc.errors import InvalidParams, MissingParam

OVIRT_VM_NS = "http://ovirt.org/vm/1.0"
"""VDSM's metadata namespace; engines put VM facts libvirt has no element for here."""
ET.register_namespace("ovirt-vm", OVIRT_VM_NS)
ET.register_namespace("qemu", "http://libvirt.org/schemas/domain/qemu/1.0")

_UNITS = {
    "b": 1, "bytes": 1, "kb": 10**3, "k": 2**10, "kib": 2**10, "mb": 10**6, "m": 2**20,
    "mib": 2**20, "gb": 10**9, "g": 2**30, "gib": 2**30, "tb": 10**12, "t": 2**40, "tib": 2**40,
}
_BOOT_DEVS = {"c": "hd", "d": "cdrom", "n": "network", "a": "fd"}
CPU_MODES = ("host-passthrough", "host-model")
_DIRECT_BOOT = {"kernel": "kernel", "initrd": "initrd", "kernelArgs": "cmdline"}
"""vmParams field -> its element under <os>."""
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def check_xml_chars(root: ET.Element, where: str) -> None:
    """InvalidParams when a text or attribute built from params holds a character XML 1.0 cannot
    carry (NUL, other control characters, lone surrogates): libvirt would choke on it."""
    for element in root.iter():
        for value, place in [(element.text, f"<{element.tag}>"),
                             *((value, f"<{element.tag} {name}=...>") for name, value in element.attrib.items())]:
            found = _NOT_XML_CHAR.search(value or "")
            if found:
                raise InvalidParams(f"{where}: {value!r} (for {place}) holds U+{ord(found.group()):04X}, which a "
                                    "domain's XML cannot carry", data={"field": f"params.{where}"})


def normalize_uuid(value: Any, where: str = "vmId") -> str:
    """The canonical lower-case form of a UUID string; InvalidParams if it is not one."""
    try:
        return str(uuidlib.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise InvalidParams(f"{where}: {value!r} is not a UUID") from None


def parse_xml(text: Any, where: str = "xml") -> ET.Element:
    """Parse untrusted XML with the hardened parser; InvalidParams naming `where` on failure."""
    if not isinstance(text, (str, bytes)) or not text:
        raise InvalidParams(f"{where}: expected a non-empty XML string")
    try:
        return SafeET.fromstring(text)
    except ET.ParseError as exc:
        raise InvalidParams(f"{where}: not well-formed XML ({exc})") from None
    except DefusedXmlException as exc:
        raise InvalidParams(f"{where}: forbidden XML construct ({exc!r})") from None


class DomainXml:
    """A domain XML document being built or read. Reading never rewrites it."""

    def __init__(self, root: ET.Element) -> None:
        if root.tag != "domain":
            raise InvalidParams(f"xml: root element is <{root.tag}>, expected <domain>")
        self.root = root

    @classmethod
    def parse(cls, text: str, where: str = "xml") -> DomainXml:
        return cls(parse_xml(text, where))

    def to_string(self) -> str:
        return ET.tostring(self.root, encoding="unicode")

    # -- top-level facts ----------------------------------------------------------------------

    @property
    def uuid(self) -> str:
        return (self.root.findtext("uuid") or "").strip()

    @uuid.setter
    def uuid(self, value: str) -> None:
        el = self.root.find("uuid")
        if el is None:
            el = ET.Element("uuid")
            name = self.root.find("name")
            index = list(self.root).index(name) + 1 if name is not None else 0
            self.root.insert(index, el)
        el.text = value

    @property
    def name(self) -> str:
        return (self.root.findtext("name") or "").strip()

    @property
    def domain_type(self) -> str:
        return self.root.get("type", "")

    @property
    def memory_kib(self) -> int:
        return _kib(self.root.find("memory"))

    @property
    def vcpus(self) -> int:
        el = self.root.find("vcpu")
        if el is None:
            return 1
        return int(el.get("current") or (el.text or "1").strip())

    @property
    def max_vcpus(self) -> int:
        el = self.root.find("vcpu")
        return 1 if el is None else int((el.text or "1").strip())

    def metadata(self, name: str) -> str | None:
        """The text of `<ovirt-vm:NAME>` in the domain metadata, if any."""
        el = self.root.find(f"metadata/{{{OVIRT_VM_NS}}}vm/{{{OVIRT_VM_NS}}}{name}")
        return None if el is None else (el.text or "").strip()

    def set_metadata(self, name: str, value: str, type_: str | None = None) -> None:
        meta = self.root.find("metadata")
        if meta is None:
            meta = sub(self.root, "metadata")
        vm = meta.find(f"{{{OVIRT_VM_NS}}}vm")
        if vm is None:
            vm = sub(meta, f"{{{OVIRT_VM_NS}}}vm")
        el = vm.find(f"{{{OVIRT_VM_NS}}}{name}")
        if el is None:
            el = sub(vm, f"{{{OVIRT_VM_NS}}}{name}", type=type_)
        el.text = value

    # -- devices ------------------------------------------------------------------------------

    @property
    def devices_element(self) -> ET.Element:
        el = self.root.find("devices")
        if el is None:
            el = sub(self.root, "devices")
        return el

    def devices(self) -> list[Device]:
        return [device_from_element(el) for el in self.devices_element]

    def add_device(self, device: Device) -> None:
        self.devices_element.append(device.element)

    def disks(self) -> list[Disk]:
        return [d for d in self.devices() if isinstance(d, Disk)]

    def local_image_paths(self) -> list[str]:
        """Paths of file and block disks (not network ones) that must exist on this host."""
        return [
            d.path for d in self.disks()
            if d.path and d.element.get("type", "file") in ("file", "block")
        ]

    def graphics(self) -> list[Graphics]:
        return [d for d in self.devices() if isinstance(d, Graphics)]

    def assign_disk_names(self) -> None:
        """Give each disk without a target name the next free name of its bus (vda, sdb...)."""
        disks = self.disks()
        taken = {d.target.get("dev") for d in disks if d.target.get("dev")}
        for disk in disks:
            if disk.target.get("dev"):
                continue
            prefix = disk.name_prefix()
            index = 0
            while (name := prefix + _drive_letters(index)) in taken:
                index += 1
            taken.add(name)
            disk.target.set("dev", name)

    # -- VDSM view ----------------------------------------------------------------------------

    def to_definition(self) -> dict[str, Any]:
        """The static part of VDSM's VmDefinition (status, pid... are added by the caller)."""
        os_type = self.root.find("os/type")
        clock = self.root.find("clock")
        devices = self.devices()
        out: dict[str, Any] = {
            "vmId": self.uuid,
            "vmName": self.name,
            "memSize": self.memory_kib // 1024,
            "smp": self.vcpus,
            "maxVCpus": self.max_vcpus,
            "vmType": "kvm",
            "kvmEnable": self.domain_type == "kvm",
            "acpiEnable": self.root.find("features/acpi") is not None,
            "timeOffset": int(clock.get("adjustment", "0") or 0) if clock is not None else 0,
            "nice": 0,
            "transparentHugePages": True,
            "memGuaranteedSize": int(self.metadata("memGuaranteedSize") or 0),
            "clientIp": "",
            "devices": [d.to_vdsm() for d in devices],
        }
        if os_type is not None and os_type.get("machine"):
            out["emulatedMachine"] = os_type.get("machine")
        for field, tag in _DIRECT_BOOT.items():
            text = self.root.findtext(f"os/{tag}")
            if text:
                out[field] = text.strip()
        cpu = self.root.find("cpu")
        if cpu is not None:
            model = cpu.findtext("model")
            out["cpuType"] = model.strip() if model else cpu.get("mode", "")
        graphics = [d for d in devices if isinstance(d, Graphics)]
        if graphics:
            first = graphics[0]
            out["display"] = "qxl" if first.element.get("type") == "spice" else "vnc"
            out["displayPort"] = first.port
            if first.element.get("type") == "spice":
                out["displaySecurePort"] = first.tls_port
            out["displayIp"] = first.listen or "0"
        return out


def _kib(el: ET.Element | None) -> int:
    text = "" if el is None else (el.text or "").strip()
    if el is None or not text:
        return 0
    unit = el.get("unit", "KiB").lower()
    return int(text) * _UNITS.get(unit, 1024) // 1024


def _drive_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return letters


def build_domain(vm_id: str, params: dict[str, Any], *, domain_type: str) -> DomainXml:
    """Build the domain XML for VDSM `vmParams`; errors name the offending field."""
    if not isinstance(params, dict):
        raise InvalidParams("vmParams: expected an object")
    vm_id = normalize_uuid(vm_id)
    name = params.get("vmName")
    if not name:
        raise MissingParam("vmParams.vmName: missing")
    if not isinstance(name, str) or "/" in name or len(name) > 200:
        raise InvalidParams(f"vmParams.vmName: {name!r} is not a valid VM name")
    if params.get("memSize") in (None, ""):
        raise MissingParam("vmParams.memSize: missing")
    mem_mib = as_int(params["memSize"], "vmParams.memSize", minimum=1)
    smp = as_int(params.get("smp", 1), "vmParams.smp", minimum=1)
    max_vcpus = as_int(params.get("maxVCpus", smp), "vmParams.maxVCpus", minimum=smp)

    root = ET.Element("domain", type=domain_type)
    dom = DomainXml(root)
    sub(root, "name").text = name
    sub(root, "uuid").text = vm_id
    sub(root, "memory", unit="KiB").text = str(mem_mib * 1024)
    sub(root, "currentMemory", unit="KiB").text = str(mem_mib * 1024)
    vcpu = sub(root, "vcpu", placement="static")
    vcpu.text = str(max_vcpus)
    if max_vcpus != smp:
        vcpu.set("current", str(smp))

    os_el = sub(root, "os")
    machine = params.get("emulatedMachine")
    if machine is not None and not isinstance(machine, str):
        raise InvalidParams(f"vmParams.emulatedMachine: {machine!r} is not a string")
    sub(os_el, "type", machine=machine or None).text = "hvm"
    boot = params.get("boot")
    if boot:
        for letter in str(boot):
            if letter not in _BOOT_DEVS:
                raise InvalidParams(f"vmParams.boot: {boot!r} (letters from c, d, n, a)")
            sub(os_el, "boot", dev=_BOOT_DEVS[letter])
    _add_direct_boot(os_el, params)

    if as_bool(params.get("acpiEnable"), "vmParams.acpiEnable", default=True):
        sub(sub(root, "features"), "acpi")
    cpu_type = params.get("cpuType")
    if cpu_type:
        if not isinstance(cpu_type, str):
            raise InvalidParams(f"vmParams.cpuType: {cpu_type!r} is not a string")
        if cpu_type in CPU_MODES:
            sub(root, "cpu", mode=cpu_type)
        else:
            cpu = sub(root, "cpu", mode="custom", match="exact")
            sub(cpu, "model", fallback="allow").text = cpu_type
    offset = as_int(params.get("timeOffset", 0) or 0, "vmParams.timeOffset")
    if offset:
        sub(root, "clock", offset="variable", adjustment=str(offset), basis="utc")
    else:
        sub(root, "clock", offset="utc")
    for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "destroy")):
        sub(root, f"on_{event}").text = action

    devices = params.get("devices")
    devices = [] if devices is None else devices
    if not isinstance(devices, list):
        raise InvalidParams("vmParams.devices: expected a list")
    for index, dev_params in enumerate(devices):
        device = device_from_params(dev_params, f"vmParams.devices[{index}]")
        dom.add_device(device)
        if isinstance(device, Console):
            dom.devices_element.extend(device.companions())
    if not any(isinstance(d, Channel) and d.name == Channel.GUEST_AGENT for d in dom.devices()):
        dom.add_device(Channel.unix(Channel.GUEST_AGENT))  # as VDSM gives every VM
    display = params.get("display")
    if display and not dom.graphics():
        if display not in ("vnc", "qxl"):
            raise InvalidParams(f"vmParams.display: {display!r} is not one of vnc, qxl")
        dom.add_device(Graphics.from_params({"device": display}, "vmParams.display"))
    dom.assign_disk_names()
    _check_unique_macs(dom)

    guaranteed = params.get("memGuaranteedSize")
    if guaranteed not in (None, ""):
        value = as_int(guaranteed, "vmParams.memGuaranteedSize", minimum=0)
        dom.set_metadata("memGuaranteedSize", str(value), "int")
    check_xml_chars(root, "vmParams")
    return dom


def _add_direct_boot(os_el: ET.Element, params: dict[str, Any]) -> None:
    """`kernel`, `initrd` and `kernelArgs`: boot a kernel from a host file instead of a disk."""
    given: dict[str, str] = {}
    for field in _DIRECT_BOOT:
        value = params.get(field)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            raise InvalidParams(f"vmParams.{field}: expected a string, got {value!r}")
        if field != "kernelArgs" and not value.startswith("/"):
            raise InvalidParams(f"vmParams.{field}: {value!r} is not an absolute path")
        given[field] = value
    if given and "kernel" not in given:
        raise MissingParam(f"vmParams.kernel: missing (needed by {' and '.join(given)})")
    for field, tag in _DIRECT_BOOT.items():
        if field in given:
            sub(os_el, tag).text = given[field]


def _check_unique_macs(dom: DomainXml) -> None:
    seen: set[str] = set()
    for dev in dom.devices():
        if isinstance(dev, Interface) and dev.mac:
            if dev.mac in seen:
                raise InvalidParams(f"vmParams.devices: MAC address {dev.mac} is used twice")
            seen.add(dev.mac)


def domain_from_raw(vm_id: str, xml: str) -> DomainXml:
    """Take caller-given domain XML as it is, making sure its `<uuid>` is `vm_id`."""
    vm_id = normalize_uuid(vm_id)
    dom = DomainXml.parse(xml, "vmParams.xml")
    if not dom.name:
        raise MissingParam("vmParams.xml: the domain has no <name>")
    if dom.uuid:
        given = normalize_uuid(dom.uuid, "vmParams.xml <uuid>")
        if given != vm_id:
            raise InvalidParams(
                f"vmParams.xml: <uuid> {given} does not match vmId {vm_id}"
            )
    dom.uuid = vm_id
    return dom

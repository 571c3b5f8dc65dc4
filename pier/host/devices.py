"""Device classes of a domain XML: each one builds, reads and describes its own element.

A device wraps one element of `<devices>`. It is made from VDSM device params
(`from_params`), or found in a parsed domain (`from_element`), and shown as a VDSM
device dict (`to_vdsm`). Reading never rewrites the element, so attributes and children
Pier does not model survive a round trip.
"""

from __future__ import annotations

import copy
import re
import uuid
import xml.etree.ElementTree as ET
from typing import Any, ClassVar

from pier.rpc.errors import InvalidParams, MissingParam

_MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")
_TRUE = ("true", "1", "yes", "on")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_VOLUME_PATH = re.compile(rf"/(?P<domainID>{_UUID})/images/(?P<imageID>{_UUID})/(?P<volumeID>{_UUID})$")
"""A volume's file in a storage domain's layout: <sdUUID>/images/<imgUUID>/<volUUID>."""


def as_bool(value: Any, where: str, default: bool = False) -> bool:
    """A VDSM boolean (bool, "true"/"false", 0/1) as a bool; InvalidParams otherwise."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value.lower() in _TRUE + ("false", "0", "no", "off"):
        return value.lower() in _TRUE
    raise InvalidParams(f"{where}: expected a boolean, got {value!r}")


def as_int(value: Any, where: str, *, minimum: int | None = None) -> int:
    """A VDSM integer (int or decimal string) as an int; InvalidParams otherwise."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidParams(f"{where}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise InvalidParams(f"{where}: must be at least {minimum}, got {number}")
    return number


def choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise InvalidParams(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def sub(parent: ET.Element, tag: str, **attrs: str | None) -> ET.Element:
    """Append a child element with the given (non-None) attributes."""
    return ET.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})


class Device:
    """One element under `<devices>`; subclasses model the kinds Pier manages."""

    tag: ClassVar[str] = ""
    device_type: ClassVar[str] = ""

    def __init__(self, element: ET.Element) -> None:
        self.element = element

    @classmethod
    def from_element(cls, element: ET.Element) -> Device:
        return cls(element)

    @classmethod
    def from_params(cls, p: dict[str, Any], where: str) -> Device:
        raise InvalidParams(f"{where}.deviceType: {cls.tag!r} cannot be built from params")

    @property
    def alias(self) -> str:
        el = self.element.find("alias")
        return el.get("name", "") if el is not None else ""

    @property
    def address(self) -> dict[str, str]:
        el = self.element.find("address")
        return dict(el.attrib) if el is not None else {}

    def to_vdsm(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "deviceType": self.device_type or self.element.tag,
            "device": self.element.get("type") or self.element.get("model") or self.element.tag,
        }
        self._add_common(out)
        return out

    def _add_common(self, out: dict[str, Any]) -> None:
        if self.alias:
            out["alias"] = self.alias
        if self.address:
            out["address"] = self.address
        boot = self.element.find("boot")
        if boot is not None and boot.get("order"):
            out["bootOrder"] = boot.get("order")


class Disk(Device):
    """`<disk>`: a file or block device seen by the guest as a disk or a cdrom."""

    tag = "disk"
    device_type = "disk"
    DEVICES = ("disk", "cdrom")
    IFACES = ("virtio", "ide", "sata", "scsi", "usb")
    FORMATS = {"raw": "raw", "qcow2": "qcow2", "cow": "qcow2"}
    _PREFIX = {"virtio": "vd", "ide": "hd", "sata": "sd", "scsi": "sd", "usb": "sd"}

    @classmethod
    def from_params(cls, p: dict[str, Any], where: str) -> Disk:
        device = choice(p.get("device", "disk"), cls.DEVICES, f"{where}.device")
        path = p.get("path") or ""
        if not isinstance(path, str):
            raise InvalidParams(f"{where}.path: expected a string, got {path!r}")
        if device == "disk" and not path:
            raise MissingParam(f"{where}.path: a disk needs a path, or a volume (domainID, imageID, volumeID)",
                               data={"field": f"{where}.path"})
        if path and not path.startswith("/"):
            raise InvalidParams(f"{where}.path: {path!r} is not an absolute path")
        fmt = p.get("format", "raw")
        if fmt not in cls.FORMATS:
            raise InvalidParams(f"{where}.format: {fmt!r} is not one of raw, qcow2, cow")
        default_iface = "virtio" if device == "disk" else "sata"
        iface = choice(p.get("iface", default_iface), cls.IFACES, f"{where}.iface")
        readonly = as_bool(p.get("readonly"), f"{where}.readonly", default=device == "cdrom")
        if device == "cdrom" and iface == "virtio":
            raise InvalidParams(f"{where}.iface: a cdrom cannot be on virtio")

        is_block = path.startswith("/dev/")
        el = ET.Element("disk", type="block" if is_block else "file", device=device)
        sub(el, "driver", name="qemu", type=cls.FORMATS[fmt])
        if path:
            sub(el, "source", **({"dev": path} if is_block else {"file": path}))
        sub(el, "target", dev=p.get("name") or "", bus=iface)
        if readonly:
            sub(el, "readonly")
        if p.get("serial"):
            sub(el, "serial").text = str(p["serial"])
        if p.get("bootOrder") not in (None, ""):
            sub(el, "boot", order=str(as_int(p["bootOrder"], f"{where}.bootOrder", minimum=1)))
        cls._add_chain(el, p.get("volumeChain") or [])
        return cls(el)

    @staticmethod
    def _add_chain(el: ET.Element, chain: list[dict[str, Any]]) -> None:
        """A prepared volume's backing chain (leaf first, as Pier's drive preparation gives it) as
        nested <backingStore>s, so libvirt uses (and labels) exactly these files."""
        below = el
        for entry in chain[1:]:
            below = sub(below, "backingStore", type="file")
            sub(below, "format", type=str(entry["format"]))
            sub(below, "source", file=str(entry["path"]))
        if len(chain) > 1:
            sub(below, "backingStore")

    @property
    def path(self) -> str:
        src = self.element.find("source")
        if src is None:
            return ""
        return src.get("file") or src.get("dev") or src.get("name") or ""

    @property
    def target(self) -> ET.Element:
        el = self.element.find("target")
        if el is None:
            el = sub(self.element, "target")
        return el

    IO_TUNE_KEYS = ("total_bytes_sec", "read_bytes_sec", "write_bytes_sec",
                    "total_iops_sec", "read_iops_sec", "write_iops_sec")

    @property
    def io_tune(self) -> dict[str, int]:
        """VDSM's ioTune of the disk: each of IO_TUNE_KEYS, 0 when unlimited."""
        el = self.element.find("iotune")
        return {key: int((el.findtext(key) if el is not None else None) or 0) for key in self.IO_TUNE_KEYS}

    def name_prefix(self) -> str:
        return self._PREFIX.get(self.target.get("bus", "virtio"), "sd")

    def to_vdsm(self) -> dict[str, Any]:
        driver = self.element.find("driver")
        out: dict[str, Any] = {
            "deviceType": "disk",
            "device": self.element.get("device", "disk"),
            "type": "disk",
            "diskType": self.element.get("type", "file"),
            "path": self.path,
            "format": "raw" if driver is None else driver.get("type", "raw"),
            "iface": self.target.get("bus", ""),
            "name": self.target.get("dev", ""),
            "readonly": self.element.find("readonly") is not None,
            "propagateErrors": "off",
            "shared": "shareable" if self.element.find("shareable") is not None else "none",
        }
        serial = self.element.findtext("serial")
        if serial:
            out["serial"] = serial
        self._add_volume_chain(out)
        self._add_replica(out)
        self._add_common(out)
        return out

    def chain_paths(self) -> list[str]:
        """The disk's files, leaf first, down its <backingStore>s (as libvirt reports them)."""
        paths: list[str] = []
        node: ET.Element | None = self.element
        while node is not None:
            source = node.find("source")
            path = (source.get("file") or source.get("dev") or "") if source is not None else ""
            if not path:
                break
            paths.append(path)
            node = node.find("backingStore")
        return paths

    def _add_replica(self, out: dict[str, Any]) -> None:
        """VDSM's diskReplicate of a disk libvirt copies (VM.diskReplicateStart): where to (how far
        the copy got, and whether it can pivot, are in the VM's vmJobs)."""
        mirror = self.element.find("mirror")
        source = mirror.find("source") if mirror is not None else None
        if mirror is None or source is None or mirror.get("job", "copy") != "copy":
            return
        path = source.get("file") or source.get("dev") or ""
        fmt = mirror.find("format")
        replica: dict[str, Any] = {"path": path, "format": "raw" if fmt is None else fmt.get("type", "raw")}
        match = _VOLUME_PATH.search(path)
        if match:
            replica.update(match.groupdict())
        out["diskReplicate"] = replica

    def _add_volume_chain(self, out: dict[str, Any]) -> None:
        """VDSM's volume fields of a disk whose files are volumes of a storage domain: its leaf's
        domainID/imageID/volumeID and its volumeChain, base first."""
        found = [_VOLUME_PATH.search(path) for path in self.chain_paths()]
        if not found or not all(found):
            return
        chain = [{**match.groupdict(), "path": match.string} for match in found if match]
        out.update({key: chain[0][key] for key in ("domainID", "imageID", "volumeID")})
        out["volumeChain"] = chain[::-1]


class Interface(Device):
    """`<interface>`: a NIC on a libvirt network or a host bridge."""

    tag = "interface"
    device_type = "interface"
    DEVICES = ("bridge", "network")
    MODELS = {"virtio": "virtio", "pv": "virtio", "e1000": "e1000", "rtl8139": "rtl8139"}

    @classmethod
    def from_params(cls, p: dict[str, Any], where: str) -> Interface:
        device = choice(p.get("device", "bridge"), cls.DEVICES, f"{where}.device")
        network = p.get("network")
        if not network:
            raise MissingParam(f"{where}.network: a NIC needs a network (or bridge) name")
        if not isinstance(network, str):
            raise InvalidParams(f"{where}.network: expected a string, got {network!r}")
        model = p.get("nicModel", "virtio")
        if model not in cls.MODELS:
            raise InvalidParams(
                f"{where}.nicModel: {model!r} is not one of {', '.join(cls.MODELS)}"
            )
        mac = p.get("macAddr")
        if mac is not None and (not isinstance(mac, str) or not _MAC_RE.match(mac)):
            raise InvalidParams(f"{where}.macAddr: {mac!r} is not a MAC address")

        el = ET.Element("interface", type=device)
        if mac:
            sub(el, "mac", address=mac.lower())
        sub(el, "source", **{device: network})
        sub(el, "model", type=cls.MODELS[model])
        if "linkActive" in p:
            up = as_bool(p["linkActive"], f"{where}.linkActive", default=True)
            sub(el, "link", state="up" if up else "down")
        if p.get("bootOrder") not in (None, ""):
            sub(el, "boot", order=str(as_int(p["bootOrder"], f"{where}.bootOrder", minimum=1)))
        return cls(el)

    @property
    def mac(self) -> str:
        el = self.element.find("mac")
        return el.get("address", "") if el is not None else ""

    def to_vdsm(self) -> dict[str, Any]:
        kind = self.element.get("type", "")
        src = self.element.find("source")
        model = self.element.find("model")
        link = self.element.find("link")
        target = self.element.find("target")
        out: dict[str, Any] = {
            "deviceType": "interface",
            "type": "interface",
            "device": kind,
            "network": "" if src is None else (src.get(kind) or src.get("network") or ""),
            "macAddr": self.mac,
            "nicModel": "" if model is None else model.get("type", ""),
            "linkActive": link is None or link.get("state", "up") == "up",
            "filter": "",
        }
        if target is not None and target.get("dev"):
            out["name"] = target.get("dev")
        self._add_common(out)
        return out


class Graphics(Device):
    """`<graphics>`: a VNC or SPICE display."""

    EXPIRED = "1970-01-01T00:00:01"

    tag = "graphics"
    device_type = "graphics"
    DEVICES = ("vnc", "spice")

    @classmethod
    def from_params(cls, p: dict[str, Any], where: str) -> Graphics:
        device = p.get("device", "vnc")
        device = "spice" if device == "qxl" else device
        choice(device, cls.DEVICES, f"{where}.device")
        port = as_int(p.get("port", -1), f"{where}.port", minimum=-1)
        el = ET.Element("graphics", type=device)
        if port == -1:
            el.set("autoport", "yes")
        else:
            el.set("port", str(port))
            el.set("autoport", "no")
        if device == "spice" and p.get("tlsPort") not in (None, "", "-1", -1):
            el.set("tlsPort", str(as_int(p["tlsPort"], f"{where}.tlsPort", minimum=0)))
        listen = p.get("listen") or (p.get("specParams") or {}).get("displayIp")
        if listen:
            el.set("listen", str(listen))
            sub(el, "listen", type="address", address=str(listen))
        keymap = p.get("keyMap") or (p.get("specParams") or {}).get("keyMap")
        if keymap:
            el.set("keymap", str(keymap))
        # As VDSM does: a password that expired long ago locks the display until VM.setTicket gives
        # one, and QEMU takes a password later only for a display started with one.
        el.set("passwd", "*****")
        el.set("passwdValidTo", cls.EXPIRED)
        return cls(el)

    @property
    def port(self) -> int:
        return int(self.element.get("port", "-1") or -1)

    @property
    def tls_port(self) -> int:
        return int(self.element.get("tlsPort", "-1") or -1)

    @property
    def listen(self) -> str:
        el = self.element.find("listen")
        if el is not None and el.get("address"):
            return el.get("address", "")
        return self.element.get("listen", "")

    @property
    def kind(self) -> str:
        """vnc or spice."""
        return self.element.get("type", "vnc")

    def with_ticket(self, password: str, valid_to: str | None, connected: str | None) -> Graphics:
        """A copy with a new password (`passwd`), valid until `valid_to` (libvirt's
        `passwdValidTo`, UTC 'YYYY-MM-DDTHH:MM:SS'; None: no expiry) and, when given, what
        happens to clients already connected (`connected`: keep, disconnect or fail)."""
        element = copy.deepcopy(self.element)
        element.set("passwd", password)
        if valid_to:
            element.set("passwdValidTo", valid_to)
        else:
            element.attrib.pop("passwdValidTo", None)
        if connected:
            element.set("connected", connected)
        return Graphics(element)

    def to_vdsm(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "deviceType": "graphics",
            "type": "graphics",
            "device": self.element.get("type", "vnc"),
            "port": str(self.port),
        }
        if self.element.get("type") == "spice":
            out["tlsPort"] = str(self.tls_port)
        if self.listen:
            out["specParams"] = {"displayIp": self.listen}
        self._add_common(out)
        return out


class Video(Device):
    """`<video>`: the emulated display adapter."""

    tag = "video"
    device_type = "video"
    MODELS = ("vga", "cirrus", "qxl", "virtio", "bochs", "none")

    @classmethod
    def from_params(cls, p: dict[str, Any], where: str) -> Video:
        model = choice(p.get("device", "vga"), cls.MODELS, f"{where}.device")
        el = ET.Element("video")
        sub(el, "model", type=model)
        return cls(el)

    def to_vdsm(self) -> dict[str, Any]:
        model = self.element.find("model")
        out = {"deviceType": "video", "type": "video",
               "device": "" if model is None else model.get("type", "")}
        self._add_common(out)
        return out


class Balloon(Device):
    """`<memballoon>`: the memory balloon (also the source of guest memory stats)."""

    tag = "memballoon"
    device_type = "balloon"
    MODELS = ("virtio", "none")

    @classmethod
    def from_params(cls, p: dict[str, Any], where: str) -> Balloon:
        model = (p.get("specParams") or {}).get("model", "virtio")
        choice(model, cls.MODELS, f"{where}.specParams.model")
        return cls(ET.Element("memballoon", model=model))

    def to_vdsm(self) -> dict[str, Any]:
        out = {"deviceType": "balloon", "type": "balloon", "device": "memballoon",
               "specParams": {"model": self.element.get("model", "")}}
        self._add_common(out)
        return out


class Memory(Device):
    """`<memory model='dimm'>`: a DIMM plugged into a guest NUMA node (memory hotplug)."""

    tag = "memory"
    device_type = "memory"

    @classmethod
    def from_params(cls, p: dict[str, Any], where: str) -> Memory:
        if p.get("size") in (None, ""):
            raise MissingParam(f"{where}.size: a memory device needs a size (MiB)")
        size = as_int(p["size"], f"{where}.size", minimum=1)
        node = as_int(p.get("node", 0) or 0, f"{where}.node", minimum=0)
        el = ET.Element("memory", model="dimm")
        target = sub(el, "target")
        sub(target, "size", unit="KiB").text = str(size * 1024)
        sub(target, "node").text = str(node)
        return cls(el)

    @property
    def size_mib(self) -> int:
        el = self.element.find("target/size")
        if el is None or not (el.text or "").strip():
            return 0
        unit = el.get("unit", "KiB").lower()
        scale = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30}
        return int(el.text or 0) * scale.get(unit, 1024) // 2**20

    @property
    def node(self) -> int:
        return int((self.element.findtext("target/node") or "0").strip() or 0)

    def to_vdsm(self) -> dict[str, Any]:
        out: dict[str, Any] = {"deviceType": "memory", "type": "memory", "device": "memory",
                               "size": self.size_mib, "node": self.node}
        self._add_common(out)
        return out


class Console(Device):
    """`<console>`: VDSM's console device; a serial one (specParams.consoleType "serial") comes with
    the `<serial>` port it is shown on (`companions`), as VDSM adds it."""

    tag = "console"
    device_type = "console"
    TYPES = ("serial", "virtio")

    @classmethod
    def from_params(cls, p: dict[str, Any], where: str) -> Console:
        spec = p.get("specParams") or {}
        if not isinstance(spec, dict):
            raise InvalidParams(f"{where}.specParams: expected an object")
        kind = choice(spec.get("consoleType", "virtio"), cls.TYPES, f"{where}.specParams.consoleType")
        if as_bool(spec.get("enableSocket"), f"{where}.specParams.enableSocket"):
            raise InvalidParams(f"{where}.specParams.enableSocket: consoles on a socket are not supported")
        el = ET.Element("console", type="pty")
        sub(el, "target", type=kind, port="0")
        return cls(el)

    @property
    def console_type(self) -> str:
        target = self.element.find("target")
        return "" if target is None else target.get("type", "")

    def companions(self) -> list[ET.Element]:
        """The elements that go with this console in `<devices>`."""
        if self.console_type != "serial":
            return []
        serial = ET.Element("serial", type="pty")
        sub(serial, "target", port="0")
        return [serial]

    def to_vdsm(self) -> dict[str, Any]:
        out: dict[str, Any] = {"deviceType": "console", "type": "console", "device": "console",
                               "specParams": {"consoleType": self.console_type,
                                              "enableSocket": self.element.get("type") == "unix"}}
        self._add_common(out)
        return out


class Channel(Device):
    """`<channel>`: a virtio-serial port to a host socket, such as the guest agent's."""

    tag = "channel"
    device_type = "channel"
    GUEST_AGENT = "org.qemu.guest_agent.0"

    @classmethod
    def from_params(cls, p: dict[str, Any], where: str) -> Channel:
        choice(p.get("device", "unix"), ("unix",), f"{where}.device")
        name = p.get("name") or (p.get("specParams") or {}).get("name") or cls.GUEST_AGENT
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name):
            raise InvalidParams(f"{where}.name: {name!r} is not a channel name (letters, digits, '.', '_', '-')")
        return cls.unix(name)

    @classmethod
    def unix(cls, name: str) -> Channel:
        """A channel on a UNIX socket whose path libvirt chooses."""
        el = ET.Element("channel", type="unix")
        sub(el, "source", mode="bind")
        sub(el, "target", type="virtio", name=name)
        return cls(el)

    @property
    def name(self) -> str:
        target = self.element.find("target")
        return "" if target is None else target.get("name", "")

    def to_vdsm(self) -> dict[str, Any]:
        source = self.element.find("source")
        out: dict[str, Any] = {"deviceType": "channel", "type": "channel", "device": self.element.get("type", ""),
                               "name": self.name}
        if source is not None and source.get("path"):
            out["path"] = source.get("path")
        self._add_common(out)
        return out


USER_ALIAS_PREFIX = "ua-"
"""libvirt keeps an alias a caller chose only when it starts with this (VDSM's are ua-<uuid>)."""


def set_alias(device: Device, alias: str | None, where: str) -> str:
    """Give the device a user alias: `alias` (which must start with ua-), or a new ua-<uuid>."""
    if alias in (None, ""):
        alias = USER_ALIAS_PREFIX + str(uuid.uuid4())
    if not isinstance(alias, str) or not re.match(r"^ua-[A-Za-z0-9_-]{1,100}$", alias):
        raise InvalidParams(f"{where}.alias: {alias!r} is not a user alias (ua- then letters, digits, - or _)",
                            data={"field": f"params.{where}.alias"})
    el = device.element.find("alias")
    if el is None:
        el = sub(device.element, "alias")
    el.set("name", alias)
    return alias


DEVICE_CLASSES: dict[str, type[Device]] = {
    "disk": Disk, "interface": Interface, "graphics": Graphics, "video": Video,
    "balloon": Balloon, "memory": Memory,
    "console": Console, "channel": Channel,
}
"""VDSM deviceType -> the class that builds it from params."""

_BY_TAG: dict[str, type[Device]] = {cls.tag: cls for cls in DEVICE_CLASSES.values()}


def device_from_element(element: ET.Element) -> Device:
    """The device object for an element under `<devices>` (generic when Pier does not model it)."""
    return _BY_TAG.get(element.tag, Device).from_element(element)


def device_from_params(params: Any, where: str) -> Device:
    """Build one device from its VDSM params; errors name `where` (e.g. "devices[2]")."""
    if not isinstance(params, dict):
        raise InvalidParams(f"{where}: expected an object, got {type(params).__name__}")
    kind = params.get("deviceType") or params.get("type")
    if not kind:
        raise MissingParam(f"{where}.deviceType: missing")
    cls = DEVICE_CLASSES.get(kind)
    if cls is None:
        raise InvalidParams(
            f"{where}.deviceType: {kind!r} is not supported (one of {', '.join(DEVICE_CLASSES)})"
        )
    return cls.from_params(params, where)

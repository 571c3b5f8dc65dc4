"""Host facts: VDSM's capabilities and hardware information, and the stable host id.

Most facts come from /proc, /sys and /etc (cheap, and true even while libvirtd is away);
libvirt adds what only it knows (guest machine types, NUMA distances, its own and QEMU's
versions, SMBIOS). Facts that cannot change while Pier runs are computed once and cached.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Any

import defusedxml.ElementTree as SafeET
import libvirt

from pier.rpc.errors import HardwareInfoError

log = logging.getLogger(__name__)

_OS_NAMES = {"rhel": "RHEL", "centos": "RHEL", "almalinux": "RHEL", "rocky": "RHEL",
             "fedora": "Fedora", "debian": "Debian", "ubuntu": "Debian"}


def read(path: str, default: str = "") -> str:
    """A small file's stripped content, or `default` if it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return default


def version_string(number: int) -> str:
    """libvirt's packed version (major * 1e6 + minor * 1e3 + micro) as "major.minor.micro"."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def guest_domain_types(caps_xml: str) -> set[str]:
    """Domain types ("kvm", "qemu", "test"...) the host offers for hvm guests."""
    root = SafeET.fromstring(caps_xml)
    return {
        dom.get("type", "")
        for guest in root.findall("guest")
        if guest.findtext("os_type") == "hvm"
        for dom in guest.findall("arch/domain")
    }


def _host_uuid() -> str:
    machine_id = read("/etc/machine-id")
    if len(machine_id) == 32:
        try:
            return str(uuidlib.UUID(hex=machine_id))
        except ValueError:
            pass
    product = read("/sys/class/dmi/id/product_uuid")
    if product:
        try:
            return str(uuidlib.UUID(product))
        except ValueError:
            pass
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, socket.getfqdn()))


class HostFacts:
    """Answers capabilities(), hardware_info() and host_uuid(); caches what cannot change."""

    def __init__(self, uri: str) -> None:
        # A test-driver node is a simulated host of its own, with an id of its own.
        self._uuid: str | None = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, uri)) if uri.startswith("test:") else None
        self._caps: dict[str, Any] | None = None
        self._hw: dict[str, str] | None = None

    def host_uuid(self) -> str:
        """The host's id: from /etc/machine-id, else the SMBIOS UUID, else the FQDN (the test
        driver: from its URI)."""
        if self._uuid is None:
            self._uuid = _host_uuid()
        return self._uuid

    def capabilities(self, conn: libvirt.virConnect | None) -> dict[str, Any]:
        """VdsmCapabilities. Without a connection, the libvirt parts are left empty (uncached)."""
        if self._caps is not None:
            return dict(self._caps)
        caps = self._local_caps()
        if conn is None:
            return caps
        caps.update(self._libvirt_caps(conn))
        self._caps = caps
        return dict(caps)

    def hardware_info(self, conn: libvirt.virConnect | None) -> dict[str, str]:
        """HardwareInformation from /sys/class/dmi/id, gaps filled from libvirt's sysinfo.

        A machine without SMBIOS answers empty fields. HardwareInfoError (hwInfoErr) when the
        facts are there but cannot be read: no fact came out, and a DMI file could not be read,
        or libvirt's sysinfo was needed and failed (libvirtd away included). Some facts and a
        failure: the facts, and a warning in the log."""
        if self._hw is not None:
            return dict(self._hw)
        hw: dict[str, str] = {}
        failures: list[str] = []
        for key, name in _DMI_FILES.items():
            hw[key], failure = _read_fact(DMI_DIR + name)
            failures += [failure] if failure else []
        if not all(hw.values()):
            failure = _fill_from_sysinfo(hw, conn)
            failures += [failure] if failure else []
        if failures and not any(hw.values()):
            raise HardwareInfoError("cannot read the hardware information: " + "; ".join(failures),
                                    data={"failures": failures})
        if failures:
            log.warning("hardware information is incomplete: %s", "; ".join(failures))
        elif conn is not None:
            self._hw = hw
        return dict(hw)

    # -- parts ---------------------------------------------------------------------------------

    def _local_caps(self) -> dict[str, Any]:
        cpuinfo = _cpuinfo()
        online = _cpu_list(read("/sys/devices/system/cpu/online", "0"))
        sockets, cores = _topology(online)
        mem = meminfo()
        return {
            "kvmEnabled": str(os.path.exists("/dev/kvm")).lower(),
            "cpuModel": cpuinfo.get("model name", ""),
            "cpuSpeed": cpuinfo.get("cpu MHz", "0"),
            "cpuFlags": ",".join(cpuinfo.get("flags", "").split()),
            "cpuSockets": str(sockets),
            "cpuCores": str(cores),
            "cpuThreads": str(len(online)),
            "onlineCpus": ",".join(str(c) for c in online),
            "memSize": str(mem.get("MemTotal", 0) // 1024),
            "reservedMem": "321",
            "guestOverhead": "65",
            "uuid": self.host_uuid(),
            "vmTypes": ["kvm"],
            "operatingSystem": _os_version(),
            "packages2": {"kernel": _kernel_version()},
            "kernelArgs": read("/proc/cmdline"),
            "realtimeKernel": "RT" in os.uname().version,
            "nestedVirtualization": any(
                read(f"/sys/module/{m}/parameters/nested") in ("Y", "1")
                for m in ("kvm_intel", "kvm_amd")
            ),
            "fipsEnabled": read("/proc/sys/crypto/fips_enabled", "0") == "1",
            "selinux": {"mode": "-1"},
            "ISCSIInitiatorName": _iscsi_name(),
            "HBAInventory": {"iSCSI": [{"InitiatorName": _iscsi_name()}], "FC": []},
            "nameservers": _nameservers(),
            "supportsIPv6": os.path.exists("/proc/net/if_inet6"),
            "software_version": "4.50",
            "software_revision": "0",
            "version_name": "Pier",
            "kdumpStatus": -1,
            "autoNumaBalancing": _autonuma(),
            "hostdevPassthrough": "false",
            "additionalFeatures": [],
            "hooks": {},
            "vncEncrypted": False,
            "backupEnabled": False,
            "netConfigDirty": "False",
            "lastClientIface": "",
            "rngSources": ["random"] + (["hwrng"] if os.path.exists("/dev/hwrng") else []),
            "networks": {}, "bridges": {}, "nics": {}, "bondings": {}, "vlans": {},
        }

    def _libvirt_caps(self, conn: libvirt.virConnect) -> dict[str, Any]:
        root = SafeET.fromstring(conn.getCapabilities())
        host_arch = root.findtext("host/cpu/arch") or os.uname().machine
        machines: list[str] = []
        for guest in root.findall("guest"):
            arch = guest.find("arch")
            if arch is None or arch.get("name") != host_arch:
                continue
            for machine in arch.findall("machine"):
                for name in (machine.text, machine.get("canonical")):
                    if name and name not in machines:
                        machines.append(name)
        numa: dict[str, Any] = {}
        distances: dict[str, list[int]] = {}
        for cell in root.findall("host/topology/cells/cell"):
            cell_id = cell.get("id", "0")
            mem = cell.find("memory")
            numa[cell_id] = {
                "cpus": sorted(int(c.get("id", "0")) for c in cell.findall("cpus/cpu")),
                "totalMemory": str(int((mem.text or "0") if mem is not None else 0) // 1024),
            }
            distances[cell_id] = [int(s.get("value", "0"))
                                  for s in cell.findall("distances/sibling")]
        if not numa:
            numa, distances = _sys_numa()
        qemu_version = ""
        try:
            qemu_version = version_string(conn.getVersion())
        except libvirt.libvirtError:
            pass
        model = root.findtext("host/cpu/model")
        out: dict[str, Any] = {
            "emulatedMachines": machines,
            "numaNodes": numa,
            "numaNodeDistance": distances,
            "hugepages": sorted(int(p.get("size", "0"))
                                for p in root.findall("host/cpu/pages")),
            "packages2": {
                "kernel": _kernel_version(),
                "libvirt": {"version": version_string(conn.getLibVersion()), "release": ""},
                "qemu-kvm": {"version": qemu_version, "release": ""},
            },
        }
        counter = root.find("host/cpu/counter[@name='tsc']")
        if counter is not None:
            out["tscFrequency"] = counter.get("frequency", "")
            out["tscScaling"] = counter.get("scaling") == "yes"
        if model:
            out["cpuFlags"] = _local_flags_plus_model(model)
        return out


DMI_DIR = "/sys/class/dmi/id/"
_DMI_FILES = {"systemManufacturer": "sys_vendor", "systemProductName": "product_name",
              "systemVersion": "product_version", "systemSerialNumber": "product_serial",
              "systemUUID": "product_uuid", "systemFamily": "product_family"}
_SYSINFO_NAMES = {"manufacturer": "systemManufacturer", "product": "systemProductName",
                  "version": "systemVersion", "serial": "systemSerialNumber",
                  "uuid": "systemUUID", "family": "systemFamily"}


def _read_fact(path: str) -> tuple[str, str | None]:
    """(the file's stripped text, None), ("", None) when this machine has no such file, or
    ("", why) when it has one that cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip(), None
    except FileNotFoundError:
        return "", None
    except (OSError, UnicodeDecodeError) as exc:
        return "", f"{path}: {getattr(exc, 'strerror', None) or exc}"


def _fill_from_sysinfo(hw: dict[str, str], conn: libvirt.virConnect | None) -> str | None:
    """Fill empty `hw` fields from libvirt's SMBIOS sysinfo; why it could not, or None."""
    if conn is None:
        return "libvirtd is not reachable for its sysinfo"
    try:
        root = SafeET.fromstring(conn.getSysinfo(0))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_ERR_NO_SUPPORT):
            return None  # the host has no SMBIOS to tell
        return f"libvirt's sysinfo: {exc.get_error_message() or exc}"
    except ET.ParseError as exc:
        return f"libvirt's sysinfo is not XML: {exc}"
    for entry in root.findall("system/entry"):
        key = _SYSINFO_NAMES.get(entry.get("name", ""))
        if key and not hw[key]:
            hw[key] = (entry.text or "").strip()
    return None


def _local_flags_plus_model(model: str) -> str:
    flags = _cpuinfo().get("flags", "").split()
    return ",".join(flags + [f"model_{model}"])


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in read("/proc/cpuinfo").splitlines():
        if not line.strip():
            break  # the first processor block is enough
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def _cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.extend(range(int(lo), int(hi) + 1))
        elif part.strip():
            cpus.append(int(part))
    return cpus


def _topology(online: list[int]) -> tuple[int, int]:
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    for cpu in online:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        package = read(base + "physical_package_id", "0")
        sockets.add(package)
        cores.add((package, read(base + "core_id", str(cpu))))
    return max(len(sockets), 1), max(len(cores), 1)


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB."""
    out: dict[str, int] = {}
    for line in read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            out[key] = int(fields[0])
    return out


def _sys_numa() -> tuple[dict[str, Any], dict[str, list[int]]]:
    numa: dict[str, Any] = {}
    distances: dict[str, list[int]] = {}
    base = "/sys/devices/system/node/"
    for node in _cpu_list(read(base + "online", "0")):
        total = 0
        for line in read(f"{base}node{node}/meminfo").splitlines():
            if "MemTotal:" in line:
                total = int(line.split()[-2]) // 1024
        numa[str(node)] = {"cpus": _cpu_list(read(f"{base}node{node}/cpulist", "")),
                           "totalMemory": str(total)}
        distances[str(node)] = [int(d) for d in read(f"{base}node{node}/distance").split()]
    return numa, distances


def _os_version() -> dict[str, str]:
    info: dict[str, str] = {}
    for line in read("/etc/os-release").splitlines():
        key, _, value = line.partition("=")
        info[key] = value.strip().strip('"')
    os_id = info.get("ID", "")
    version = info.get("VERSION_ID", "")
    if os_id == "debian":
        version = read("/etc/debian_version", version)
    return {
        "name": _OS_NAMES.get(os_id, info.get("NAME", "unknown")),
        "version": version,
        "release": "",
        "pretty_name": info.get("PRETTY_NAME", ""),
    }


def _kernel_version() -> dict[str, str]:
    version, _, release = os.uname().release.partition("-")
    return {"version": version, "release": release}


def _iscsi_name() -> str:
    for line in read("/etc/iscsi/initiatorname.iscsi").splitlines():
        if line.startswith("InitiatorName="):
            return line.split("=", 1)[1].strip()
    return ""


def _nameservers() -> list[str]:
    return [line.split()[1] for line in read("/etc/resolv.conf").splitlines()
            if line.startswith("nameserver") and len(line.split()) > 1]


def _autonuma() -> int:
    value = read("/proc/sys/kernel/numa_balancing")
    return int(value) if value in ("0", "1") else 2

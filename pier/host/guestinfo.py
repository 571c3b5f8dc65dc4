"""VDSM's guest fields from libvirt's guest agent answers, and memoryStats from balloon figures.

Each function takes what one libvirt call answered (`guestInfo` of one type, or
`interfaceAddresses` from the agent) and gives the VmStats fields VDSM made of the same agent
replies (VDSM's qemu-ga poller), so an engine reads them as it always did.
"""

from __future__ import annotations

from typing import Any

import libvirt


def _arch(machine: str) -> str:
    known = {"ppc", "ppcle", "ppc64", "ppc64le", "x86", "x86_64"}
    if machine in known:
        return machine
    return "x86" if machine in ("i386", "i486", "i586", "i686") else "unknown"


def os_fields(info: dict[str, Any]) -> dict[str, Any]:
    """guestOs, guestOsInfo and appsList from guestInfo's os.* keys."""
    kernel = str(info.get("os.kernel-release", ""))
    windows = info.get("os.id") == "mswindows"
    return {
        "guestOs": str(info.get("os.pretty-name", "")) if windows else kernel,
        "guestOsInfo": {
            "type": "windows" if windows else "linux",
            "arch": _arch(str(info.get("os.machine", ""))),
            "kernel": "" if windows else kernel,
            "distribution": str(info.get("os.name", "")),
            "version": str(info.get("os.version-id", info.get("os.kernel-version", ""))),
            "codename": str(info.get("os.variant", "")),
        },
        # qemu-guest-agent lists no applications; VDSM's qemu-ga poller reports the kernel
        "appsList": [f"kernel-{kernel}"] if kernel and not windows else [],
    }


def hostname_fields(info: dict[str, Any]) -> dict[str, Any]:
    name = str(info.get("hostname", ""))
    return {"guestName": name, "guestFQDN": name} if name else {}


def timezone_fields(info: dict[str, Any]) -> dict[str, Any]:
    """guestTimezone: VDSM's offset in minutes east of UTC and the zone's name."""
    if "timezone.offset" not in info:
        return {}
    return {"guestTimezone": {"offset": int(info["timezone.offset"]) // 60,
                              "zone": str(info.get("timezone.name", "unknown"))}}


def users_fields(info: dict[str, Any]) -> dict[str, Any]:
    """username: the logged-in users, `user@domain` where there is a domain, comma-separated."""
    names = []
    for i in range(int(info.get("user.count", 0))):
        user = info.get(f"user.{i}.name")
        if user:
            domain = info.get(f"user.{i}.domain")
            names.append(f"{user}@{domain}" if domain else str(user))
    return {"username": ", ".join(names)}


def filesystem_fields(info: dict[str, Any]) -> dict[str, Any]:
    """disksUsage: [{path, fs, total, used}] in bytes (strings, as VDSM), each mounted filesystem
    whose size the agent knows."""
    disks = []
    for i in range(int(info.get("fs.count", 0))):
        key = f"fs.{i}."
        if key + "total-bytes" not in info or key + "used-bytes" not in info:
            continue
        disks.append({"path": str(info.get(key + "mountpoint", "")), "fs": str(info.get(key + "fstype", "")),
                      "total": str(info[key + "total-bytes"]), "used": str(info[key + "used-bytes"])})
    return {"disksUsage": disks}


def interface_fields(addresses: dict[str, Any]) -> dict[str, Any]:
    """netIfaces [{name, hw, inet, inet6}] and guestIPs (every address but loopback's, IPv4
    first, space-separated) from interfaceAddresses(SRC_AGENT)."""
    ifaces = []
    v4: list[str] = []
    v6: list[str] = []
    for name, params in sorted(addresses.items()):
        iface: dict[str, Any] = {"name": name, "hw": (params or {}).get("hwaddr") or "", "inet": [], "inet6": []}
        for addr in (params or {}).get("addrs") or []:
            text = addr.get("addr")
            if not text:
                continue
            ipv6 = addr.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV6
            iface["inet6" if ipv6 else "inet"].append(text)
            if name != "lo" and text not in ("127.0.0.1", "::1"):
                (v6 if ipv6 else v4).append(text)
        ifaces.append(iface)
    return {"netIfaces": ifaces, "guestIPs": " ".join(v4 + v6)}


TRANSLATE = {"users": users_fields, "os": os_fields, "hostname": hostname_fields,
              "timezone": timezone_fields, "filesystem": filesystem_fields,
              "interfaces": interface_fields}


def memory_stats(values: dict[str, Any]) -> dict[str, str]:
    """VDSM's memoryStats (KiB and counts, as strings) from bulk stats' balloon.* figures; empty
    until the guest's balloon driver reports (it needs a stats period)."""
    if "balloon.available" not in values and "balloon.unused" not in values:
        return {}
    unused = values.get("balloon.unused", 0)
    return {
        "mem_total": str(values.get("balloon.available", 0)),
        "mem_unused": str(unused),
        "mem_free": str(values.get("balloon.usable", unused)),
        "mem_cached": str(values.get("balloon.disk_caches", 0)),
        "swap_in": str(values.get("balloon.swap_in", 0)),
        "swap_out": str(values.get("balloon.swap_out", 0)),
        "majflt": str(values.get("balloon.major_fault", 0)),
        "pageflt": str(values.get("balloon.major_fault", 0) + values.get("balloon.minor_fault", 0)),
    }


def copy_json(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists and immutable leaves), much cheaper than deepcopy."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value

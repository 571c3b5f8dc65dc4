"""LLDP as VDSM's Host.getLldp reports it: per NIC, whether LLDP is gathered and its TLVs.

Pier gathers no LLDP itself: it would come from an LLDP agent (lldpad or lldpd) running on the
host. `Lldp` finds out whether one runs (a process of that name under /proc) and says, for each
NIC, that none does, or which one runs and that Pier does not read from it yet. Paths are
injectable for tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pier.rpc.errors import NoSuchDevice

AGENTS = ("lldpad", "lldpd")


class Lldp:
    """Implements `pier.host.services.LldpService` over /sys/class/net and /proc."""

    def __init__(self, sysfs_root: str | Path = "/sys", proc_root: str | Path = "/proc") -> None:
        self._net = Path(sysfs_root) / "class" / "net"
        self._proc = Path(proc_root)

    def nics(self) -> list[str]:
        """The host's NICs: the network interfaces backed by a device (not bridges, veths, lo)."""
        try:
            return sorted(link.name for link in self._net.iterdir() if (link / "device").exists())
        except OSError:
            return []

    def agent(self) -> str | None:
        """The LLDP agent running on this host, if any."""
        try:
            entries = list(self._proc.iterdir())
        except OSError:
            return None
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if name in AGENTS:
                return name
        return None

    def info(self, devices: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """{nic: Lldp} for `devices` (every NIC when None); an interface that does not exist is
        NoSuchDevice naming it."""
        names = self.nics() if devices is None else list(devices)
        for index, name in enumerate(names):
            if "/" in name or name in ("", ".", "..") or not (self._net / name).exists():
                raise NoSuchDevice(f"filter.devices[{index}]: no network interface {name!r} on this host",
                                    data={"field": f"params.filter.devices[{index}]"})
        agent = self.agent()
        message = (f"{agent} runs on this host, but Pier does not read LLDP from it" if agent else
                   f"no LLDP agent ({' or '.join(AGENTS)}) runs on this host")
        return {name: {"enabled": False, "tlvs": [], "agent": agent, "message": message} for name in names}

"""What a network needs beyond netlink: a DHCP client per device, and a libvirt network.

DHCP: Debian's images carry no DHCP client by default (no dhclient, udhcpc or dhcpcd), and
pyroute2, which Pier uses anyway, ships one (`pyroute2.dhcp`). `DhcpClients` runs it as a child
process per device (`python -m pyroute2.dhcp.cli DEVICE`), with its lease file and pid file in the
state directory, and the hooks that put the leased address on the device (and the default route,
when the network has it). A client outlives a pierd restart; pierd adopts it by its pid file.

libvirt: each bridged network is also a libvirt network `vdsm-<name>` in forward mode bridge
(VDSM's convention), so a VM NIC with `network: <name>` lands on its bridge.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

log = logging.getLogger(__name__)

LIBVIRT_PREFIX = "vdsm-"
HOOKS = "pyroute2.dhcp.hooks."


def libvirt_network_xml(name: str, bridge: str) -> str:
    from xml.sax.saxutils import escape, quoteattr

    return (f"<network><name>{escape(LIBVIRT_PREFIX + name)}</name><forward mode='bridge'/>"
            f"<bridge name={quoteattr(bridge)}/></network>")


class DhcpClients:
    """One pyroute2 DHCP client process per device."""

    def __init__(self, directory: Path | None, netns: str | None = None) -> None:
        self._dir = directory
        self._prefix = ["ip", "netns", "exec", netns] if netns else []

    def _pid_file(self, device: str) -> Path | None:
        return self._dir / f"{device}.pid" if self._dir is not None else None

    def _pid(self, device: str) -> int | None:
        path = self._pid_file(device)
        if path is None or not path.exists():
            return None
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            path.unlink(missing_ok=True)
            return None
        return pid

    def running(self, device: str) -> bool:
        return self._pid(device) is not None

    def start(self, device: str, default_route: bool) -> None:
        if self._dir is None or self.running(device):
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        hooks = ["configure_ip", "remove_ip"] + (["add_default_gw", "remove_default_gw"] if default_route else [])
        command = [*self._prefix, sys.executable, "-m", "pyroute2.dhcp.cli", device, "--log-level", "WARNING"]
        for hook in hooks:
            command += ["--hook", HOOKS + hook]
        with open(self._dir / f"{device}.log", "ab") as out:
            process = subprocess.Popen(command, cwd=self._dir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                       start_new_session=True)
        self._pid_file(device).write_text(str(process.pid))  # type: ignore[union-attr]
        log.info("started a DHCP client on %s (pid %d)", device, process.pid)

    def stop(self, device: str, timeout: float = 5.0) -> None:
        pid = self._pid(device)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)  # it releases the lease and removes the address
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (adopted): poll its existence
                done = 0
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    done = pid
            if done == pid:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        self._pid_file(device).unlink(missing_ok=True)  # type: ignore[union-attr]
        log.info("stopped the DHCP client on %s", device)


class Outside:
    """DHCP clients and libvirt networks (`pier.host.network.plan.Outside`)."""

    def __init__(self, dhcp: DhcpClients, libvirt_conn: Callable[[], libvirt.virConnect | None] | None = None) -> None:
        self._dhcp = dhcp
        self._conn = libvirt_conn

    def start_dhcp(self, device: str, default_route: bool) -> None:
        self._dhcp.start(device, default_route)

    def stop_dhcp(self, device: str) -> None:
        self._dhcp.stop(device)

    def define_network(self, name: str, bridge: str) -> None:
        conn = self._conn() if self._conn is not None else None
        if conn is None:
            return
        try:
            old = conn.networkLookupByName(LIBVIRT_PREFIX + name)
        except libvirt.libvirtError:
            old = None
        if old is not None:
            self._drop(old)
        net = conn.networkDefineXML(libvirt_network_xml(name, bridge))
        net.create()
        net.setAutostart(True)

    def undefine_network(self, name: str) -> None:
        conn = self._conn() if self._conn is not None else None
        if conn is None:
            return
        try:
            net = conn.networkLookupByName(LIBVIRT_PREFIX + name)
        except libvirt.libvirtError:
            return
        self._drop(net)

    @staticmethod
    def _drop(net: libvirt.virNetwork) -> None:
        if net.isActive():
            net.destroy()
        net.undefine()

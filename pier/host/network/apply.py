"""Changing the kernel's network one undoable step at a time.

`Journal` runs each step (a netlink request through pyroute2's IPRoute) and records, from what the
kernel said just before, the step that undoes it: an MTU change records the old MTU, a deleted
bridge records its kind and options, a removed address records itself. `undo()` runs those in
reverse order, so a failure half-way, or an unconfirmed change, leaves the host as it was.

Bonds and VLANs are requests like any other; a kernel without the bonding or 8021q support
refuses them (EOPNOTSUPP), which `KernelLacks` turns into an error naming what is missing.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from pier.rpc.errors import PierError, UnsupportedOperation

log = logging.getLogger(__name__)

EOPNOTSUPP = 95
ENODEV = 19
# What a kernel lacks when it refuses to make a device of a kind.
KERNEL_SUPPORT = {"bond": "bonding (the bonding module)", "vlan": "802.1Q VLANs (the 8021q module)",
                  "bridge": "bridges (the bridge module)"}


class KernelLacks(UnsupportedOperation):
    """The kernel cannot make a kind of device."""


class NetworkChangeError(PierError):
    """A netlink request failed; what was done before it has been undone."""

    code, name, message, http_status = 16, "unexpected", "Network change failed", 500


@dataclass
class Step:
    """One change: what it did, and how to take it back."""

    description: str
    undo: Callable[[], None]


class Journal:
    """Runs changes over `ipr` and keeps what undoes them."""

    def __init__(self, ipr: Any, field_of: Callable[[str], str | None] | None = None) -> None:
        self._ipr = ipr
        self.steps: list[Step] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []  # every request sent, for tests and benches
        self._field_of = field_of or (lambda device: device)
        self._up_after_undo: list[str] = []  # devices made again by undo, brought up once a port is back

    def field(self, device: str) -> str:
        """The request field a device comes from (the device's name when none)."""
        return self._field_of(device) or device

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, command: str, **kwargs: Any) -> Any:
        self.requests.append((command, kwargs))
        if command.startswith("link "):
            return self._ipr.link(command.split()[1], **kwargs)
        if command.startswith("addr "):
            return self._ipr.addr(command.split()[1], **kwargs)
        if command.startswith("route "):
            return self._ipr.route(command.split()[1], **kwargs)
        raise ValueError(command)

    def _get(self, name: str) -> Any:
        """The device's RTM_NEWLINK message, or None (one request: pyroute2's link_lookup dumps them all)."""
        try:
            return self._ipr.link("get", ifname=name)[0]
        except NetlinkError as exc:
            if exc.code == ENODEV:
                return None
            raise

    def index(self, name: str) -> int | None:
        msg = self._get(name)
        return None if msg is None else int(msg["index"])

    def _link(self, name: str) -> Any:
        msg = self._get(name)
        if msg is None:
            raise NetworkChangeError(f"there is no device {name}", data={"device": name})
        return msg

    def _index_now(self, name: str) -> int:
        """The device's index when an undo runs: a device deleted and made again since the step was
        recorded (a network changed, then rolled back) has a new one."""
        return int(self._link(name)["index"])

    def _name_of(self, index: int | None) -> str | None:
        if not index:
            return None
        return str(self._ipr.link("get", index=index)[0].get("IFLA_IFNAME"))

    def _did(self, description: str, undo: Callable[[], None]) -> None:
        log.debug("network: %s", description)
        self.steps.append(Step(description, undo))

    # -- steps ---------------------------------------------------------------------------------

    def add_link(self, name: str, kind: str, **attrs: Any) -> None:
        try:
            self._send("link add", ifname=name, kind=kind, **attrs)
        except NetlinkError as exc:
            if exc.code == EOPNOTSUPP and kind in KERNEL_SUPPORT:
                field = self.field(name)
                raise KernelLacks(f"{field}: this kernel cannot make a {kind} device {name}: it has no support for "
                                  f"{KERNEL_SUPPORT[kind]}", data={"field": field, "kind": kind}) from None
            raise
        self._did(f"made {kind} {name}", lambda: self._send("link del", ifname=name))

    def delete_link(self, name: str) -> None:
        """Delete a device Pier made (bridge, bond, VLAN); undo makes it again, bare but up if it was."""
        msg = self._link(name)
        kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
        info = dict(data["attrs"]) if data is not None and "attrs" in data else {}
        mtu, address = msg.get("IFLA_MTU"), msg.get("IFLA_ADDRESS")
        was_up = bool(msg["flags"] & 1)
        again: dict[str, Any] = {"mtu": mtu}
        parent: str | None = None
        if kind == "bridge":
            again["br_stp_state"] = info.get("IFLA_BR_STP_STATE", 0)
        elif kind == "vlan":
            again.update(vlan_id=info.get("IFLA_VLAN_ID"))
            parent = self._name_of(msg.get("IFLA_LINK"))
        elif kind == "bond":
            again["bond_mode"] = info.get("IFLA_BOND_MODE", 0)
        if address and address != "00:00:00:00:00:00":  # a bridge without ports has none
            again["address"] = address
        self._send("link del", ifname=name)

        def make_again() -> None:
            if kind == "vlan" and parent is not None:
                again["link"] = self._index_now(parent)
            self._send("link add", ifname=name, kind=kind, **again)
            if was_up:  # up once a port is back, as it was first: its link-local address comes from
                self._up_after_undo.append(name)  # the MAC address it takes from that port

        self._did(f"deleted {kind} {name}", make_again)

    def set_master(self, name: str, master: str | None) -> None:
        msg = self._link(name)
        before = msg.get("IFLA_MASTER") or 0
        target = self.index(master) if master else 0
        if before == target:
            return
        master_before = self._name_of(before)
        self._send("link set", index=msg["index"], master=target)

        def restore() -> None:
            self._send("link set", index=self._index_now(name),
                       master=self._index_now(master_before) if master_before else 0)
            if master_before in self._up_after_undo:
                self._up_after_undo.remove(master_before)
                self._send("link set", index=self._index_now(master_before), state="up")

        self._did(f"{name}: master {master or 'none'}", restore)

    def set_mtu(self, name: str, mtu: int) -> None:
        msg = self._link(name)
        before = msg.get("IFLA_MTU")
        if before == mtu:
            return
        try:
            self._send("link set", index=msg["index"], mtu=mtu)
        except NetlinkError as exc:
            field = self.field(name)
            raise NetworkChangeError(f"{field}: {name} refused MTU {mtu}: {exc.args[-1]}",
                                     data={"field": field}) from None
        self._did(f"{name}: mtu {mtu}", lambda: self._send("link set", index=self._index_now(name), mtu=before))

    def set_up(self, name: str, up: bool = True) -> None:
        msg = self._link(name)
        was_up = bool(msg["flags"] & 1)
        if was_up == up:
            return
        self._send("link set", index=msg["index"], state="up" if up else "down")
        self._did(f"{name}: {'up' if up else 'down'}",
                  lambda: self._send("link set", index=self._index_now(name), state="up" if was_up else "down"))

    def add_address(self, name: str, cidr: str) -> None:
        index = self._link(name)["index"]
        interface = ipaddress.ip_interface(cidr)
        family = socket.AF_INET if interface.version == 4 else socket.AF_INET6
        present = [a for a in self._ipr.get_addr(index=index, family=family)
                   if (a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")) == str(interface.ip)
                   and a["prefixlen"] == interface.network.prefixlen]
        if present:
            return
        extra: dict[str, Any] = {"IFA_FLAGS": 0x02} if family == socket.AF_INET6 else {}  # IFA_F_NODAD
        self._send("addr add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen,
                   family=family, **extra)
        self._did(f"{name}: address {cidr}", lambda: self._send(
            "addr del", index=self._index_now(name), address=str(interface.ip),
            prefixlen=interface.network.prefixlen, family=family))

    def flush_addresses(self, name: str, keep_link_local: bool = True) -> None:
        """Remove every address of a device (undo puts them back, in their order)."""
        index = self._link(name)["index"]
        for msg in list(self._ipr.get_addr(index=index)):
            if keep_link_local and msg["scope"] == 253:
                continue
            family, prefixlen = msg["family"], msg["prefixlen"]
            address = msg.get("IFA_LOCAL") if family == socket.AF_INET else None
            address = address or msg.get("IFA_ADDRESS")
            self._send("addr del", index=index, address=address, prefixlen=prefixlen, family=family)
            self._did(f"{name}: removed {address}/{prefixlen}", self._readd(name, address, prefixlen, family))

    def _readd(self, name: str, address: str, prefixlen: int, family: int) -> Callable[[], None]:
        extra: dict[str, Any] = {"IFA_FLAGS": 0x02} if family == socket.AF_INET6 else {}
        return lambda: self._send("addr add", index=self._index_now(name), address=address, prefixlen=prefixlen,
                                  family=family, **extra)

    def default_route(self, family: int, gateway: str | None, device: str | None) -> None:
        """Make the main table's default route of `family` go via `gateway` on `device` (None: remove it)."""
        current = [r for r in self._ipr.get_default_routes(family=family, table=254)]
        before = [(r.get("RTA_GATEWAY"), r.get("RTA_OIF")) for r in current]
        devices_before = [self._name_of(oif) for _, oif in before]
        index = self.index(device) if device else None
        if gateway is not None and before == [(gateway, index)]:
            return
        if gateway is None and not before:
            return
        for old_gateway, old_oif in before:
            self._send("route del", dst="default" if family == socket.AF_INET else "::/0", family=family,
                       gateway=old_gateway, oif=old_oif, table=254)
        if gateway is not None:
            self._send("route add", dst="default" if family == socket.AF_INET else "::/0", family=family,
                       gateway=gateway, oif=index, table=254)

        def restore() -> None:
            if gateway is not None and device is not None and self.index(device) is not None:
                self._send("route del", dst="default" if family == socket.AF_INET else "::/0", family=family,
                           gateway=gateway, oif=self._index_now(device), table=254)
            for (old_gateway, _), old_device in zip(before, devices_before, strict=True):
                through = {"oif": self._index_now(old_device)} if old_device else {}
                self._send("route add", dst="default" if family == socket.AF_INET else "::/0", family=family,
                           gateway=old_gateway, table=254, **through)

        self._did(f"default route {gateway or 'none'} ({'IPv4' if family == socket.AF_INET else 'IPv6'})", restore)

    def external(self, description: str, do: Callable[[], None], undo: Callable[[], None]) -> None:
        """A step outside netlink (a DHCP client, a libvirt network)."""
        do()
        self._did(description, undo)

    # -- undo ----------------------------------------------------------------------------------

    def undo(self) -> list[str]:
        """Take back every step, newest first; returns what could not be undone."""
        failed = []
        while self.steps:
            step = self.steps.pop()
            try:
                step.undo()
            except Exception as exc:  # keep undoing the rest: each step is independent
                log.error("network: could not undo %r: %s", step.description, exc)
                failed.append(f"{step.description}: {exc}")
        while self._up_after_undo:
            name = self._up_after_undo.pop(0)
            try:
                self._send("link set", index=self._index_now(name), state="up")
            except Exception as exc:
                log.error("network: could not bring %s up again: %s", name, exc)
                failed.append(f"{name} up: {exc}")
        return failed

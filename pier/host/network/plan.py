"""From one configuration to another: which networks and bonds go, which come, in what order.

A network whose attributes changed is taken down and made again, as VDSM does; networks and bonds
left alone are not touched. The order: networks going away first (DHCP client, libvirt network,
default route, addresses, bridge port, bridge, VLAN), then bonds going away, then new bonds, then
new networks (VLAN, MTU, bridge, port, link up, addresses, DHCP, default route, libvirt network).
Every step goes through the `Journal`, which can undo it. What is outside netlink (the DHCP
client, the libvirt network) goes through an `Outside` object.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from pier.host.network.apply import Journal
from pier.host.network.model import DEFAULT_MTU, BondSpec, Desired, NetworkSpec

Progress = Callable[[int, str], None]


class Outside(Protocol):
    """What a network needs besides netlink."""

    def start_dhcp(self, device: str, default_route: bool) -> None: ...

    def stop_dhcp(self, device: str) -> None: ...

    def define_network(self, name: str, bridge: str) -> None: ...

    def undefine_network(self, name: str) -> None: ...


class NothingOutside:
    """No DHCP client and no libvirt: for tests of the netlink part alone."""

    def start_dhcp(self, device: str, default_route: bool) -> None:
        pass

    def stop_dhcp(self, device: str) -> None:
        pass

    def define_network(self, name: str, bridge: str) -> None:
        pass

    def undefine_network(self, name: str) -> None:
        pass


def fields(new: Desired) -> dict[str, str]:
    """Which request field each device comes from, for errors."""
    out = {bond: f"bondings.{bond}" for bond in new.bonds}
    for net in new.networks.values():
        if net.southbound and net.vlan is not None:
            out[net.southbound] = f"networks.{net.name}.vlan"
        if net.bridged:
            out[net.name] = f"networks.{net.name}"
        if net.nic:
            out.setdefault(net.nic, f"networks.{net.name}.mtu")
    return out


def changes(old: Desired, new: Desired) -> tuple[list[str], list[str], list[str], list[str]]:
    """(networks to take down, bonds to take down, bonds to make, networks to make)."""
    down = [name for name, net in old.networks.items() if new.networks.get(name) != net]
    up = [name for name, net in new.networks.items() if old.networks.get(name) != net]
    bonds_down = [name for name, bond in old.bonds.items() if new.bonds.get(name) != bond]
    bonds_up = [name for name, bond in new.bonds.items() if old.bonds.get(name) != bond]
    # a network on a bond that is made again goes down and up with it
    for name, net in new.networks.items():
        if net.bonding in bonds_down and name not in up:
            up.append(name)
            if name in old.networks and name not in down:
                down.append(name)
    return down, bonds_down, bonds_up, up


def apply_changes(journal: Journal, old: Desired, new: Desired, outside: Outside,
                  progress: Progress | None = None) -> None:
    """Take the kernel from `old` to `new` through `journal` (undoable)."""
    down, bonds_down, bonds_up, up = changes(old, new)
    total = max(1, len(down) + len(bonds_down) + len(bonds_up) + len(up))
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(10 + 80 * done // total, what)

    for name in down:
        take_down(journal, old.networks[name], outside)
        tick(f"network {name} taken down")
    for name in bonds_down:
        take_down_bond(journal, old.bonds[name])
        tick(f"bond {name} taken down")
    for name in bonds_up:
        make_bond(journal, new.bonds[name])
        tick(f"bond {name} made")
    for name in up:
        make(journal, new.networks[name], outside)
        tick(f"network {name} made")


def take_down(journal: Journal, net: NetworkSpec, outside: Outside) -> None:
    device = net.device
    if device is not None and journal.index(device) is None:
        device = None
    if net.dhcp and device is not None:
        journal.external(f"stopped DHCP on {device}", lambda: outside.stop_dhcp(device),
                         lambda: outside.start_dhcp(device, net.default_route))
    if net.bridged:
        journal.external(f"removed libvirt network of {net.name}", lambda: outside.undefine_network(net.name),
                         lambda: outside.define_network(net.name, net.name))
    if net.default_route and device is not None:
        if net.gateway:
            journal.default_route(socket.AF_INET, None, None)
        if net.ipv6gateway:
            journal.default_route(socket.AF_INET6, None, None)
    if device is not None:
        journal.flush_addresses(device)
    if net.bridged and journal.index(net.name) is not None:
        if net.southbound and journal.index(net.southbound) is not None:
            journal.set_master(net.southbound, None)
        journal.delete_link(net.name)
    if net.vlan is not None and net.southbound and journal.index(net.southbound) is not None:
        journal.delete_link(net.southbound)
    if net.nic and net.mtu and net.mtu != DEFAULT_MTU and journal.index(net.nic) is not None:
        journal.set_mtu(net.nic, DEFAULT_MTU)


def take_down_bond(journal: Journal, bond: BondSpec) -> None:
    if journal.index(bond.name) is None:
        return
    for nic in bond.nics:
        if journal.index(nic) is not None:
            journal.set_master(nic, None)
    journal.delete_link(bond.name)


def bond_request(bond: BondSpec) -> dict[str, object]:
    """The netlink attributes of a bond device (pyroute2's `bond_*` names) from its options."""
    modes = {"balance-rr": 0, "active-backup": 1, "balance-xor": 2, "broadcast": 3, "802.3ad": 4,
             "balance-tlb": 5, "balance-alb": 6}
    attrs: dict[str, object] = {}
    for key, value in bond.options.items():
        if key == "mode":
            attrs["bond_mode"] = modes[value] if value in modes else int(value)
        elif value.isdigit():
            attrs[f"bond_{key}"] = int(value)
        else:
            attrs[f"bond_{key}"] = value
    return attrs


def make_bond(journal: Journal, bond: BondSpec) -> None:
    journal.add_link(bond.name, "bond", **bond_request(bond))
    for nic in bond.nics:
        journal.set_up(nic, False)  # a NIC is enslaved while down
        journal.set_master(nic, bond.name)
        journal.set_up(nic, True)
    journal.set_up(bond.name, True)


def make(journal: Journal, net: NetworkSpec, outside: Outside) -> None:
    mtu = net.mtu or DEFAULT_MTU
    if net.base is not None:
        journal.set_mtu(net.base, mtu)
        journal.set_up(net.base, True)
    if net.vlan is not None and net.base is not None and net.southbound is not None:
        base_index = journal.index(net.base)
        journal.add_link(net.southbound, "vlan", link=base_index, vlan_id=net.vlan, mtu=mtu)
        journal.set_up(net.southbound, True)
    if net.bridged:
        journal.add_link(net.name, "bridge", br_stp_state=int(net.stp))
        if net.southbound is not None:
            journal.set_master(net.southbound, net.name)
        journal.set_mtu(net.name, mtu)
        journal.set_up(net.name, True)
    device = net.device
    assert device is not None  # a bridgeless network always has a southbound device (model.check)
    if net.ipv4:
        journal.add_address(device, net.ipv4)
    if net.ipv6:
        journal.add_address(device, net.ipv6)
    if net.dhcp:
        journal.external(f"started DHCP on {device}", lambda: outside.start_dhcp(device, net.default_route),
                         lambda: outside.stop_dhcp(device))
    if net.default_route and net.gateway:
        journal.default_route(socket.AF_INET, net.gateway, device)
    if net.default_route and net.ipv6gateway:
        journal.default_route(socket.AF_INET6, net.ipv6gateway, device)
    if net.bridged:
        journal.external(f"defined libvirt network of {net.name}", lambda: outside.define_network(net.name, net.name),
                         lambda: outside.undefine_network(net.name))

"""The host's network as VDSM reports it (VdsmNetworkCapabilities), from a kernel snapshot.

`capabilities(snapshot, networks, ...)` is a pure function: the kernel's links, addresses and
default routes (`kernel.Snapshot`), the networks Pier made (their setupNetworks attributes, from
the running configuration) and what the caller read beside netlink (NIC speeds, nameservers,
IPv6 support) go in; VDSM's maps come out, with VDSM's field names and types:

- `nics`: the NICs (hardware devices and veths, which stand for NICs in containers and tests);
- `bridges`, `bondings`, `vlans`: those kinds of devices, whoever made them;
- `networks`: only the networks Pier made; a bridged network's device is a bridge named after it;
- each device's addresses: `addr`/`netmask` (the first IPv4 address), `ipv4addrs` and `ipv6addrs`
  as address/prefix (IPv6 link-local ones left out), `gateway`/`ipv6gateway` and
  `ipv4defaultroute` from the main table's default routes, `dhcpv4`/`dhcpv6`/`ipv6autoconf` from
  the network's own attributes, or, for a device no network names, from whether its addresses are
  leased (not permanent); `mtu` as a string.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

from pier.host.network.kernel import Address, Link, Snapshot

NIC_KINDS = frozenset({None, "veth"})
LINK_LOCAL_SCOPE = 253
NO_IPV6_GATEWAY = "::"
SWITCH = "legacy"


def netmask(prefixlen: int) -> str:
    """An IPv4 prefix length as a dotted netmask."""
    return str(ipaddress.IPv4Network(f"0.0.0.0/{prefixlen}").netmask)


def is_nic(link: Link) -> bool:
    return link.kind in NIC_KINDS and link.name != "lo"


class _Index:
    """The snapshot arranged for lookups by device."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.links = snapshot.links
        self.by_index = snapshot.by_index()
        self.addresses: dict[int, list[Address]] = {}
        for address in snapshot.addresses:
            self.addresses.setdefault(address.index, []).append(address)
        self.gateways: dict[tuple[int, int], str] = {}
        for route in snapshot.routes:
            if route.oif is not None:
                self.gateways.setdefault((route.oif, route.family), route.gateway or "")
        self.enslaved: dict[int, list[str]] = {}
        for link in snapshot.links:
            if link.master is not None:
                self.enslaved.setdefault(link.master, []).append(link.name)

    def ports(self, link: Link) -> list[str]:
        return sorted(self.enslaved.get(link.index, []))


def ip_info(index: _Index, link: Link, attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The address fields VDSM gives every device; `attrs` are the setupNetworks attributes of
    the network on it, when Pier made one."""
    own = index.addresses.get(link.index, [])
    ipv4 = [a for a in own if a.family == socket.AF_INET]
    ipv6 = [a for a in own if a.family == socket.AF_INET6 and a.scope != LINK_LOCAL_SCOPE]
    primary = ipv4[0] if ipv4 else None
    has_v4_default = (link.index, socket.AF_INET) in index.gateways
    if attrs is not None:
        dhcpv4 = attrs.get("bootproto") == "dhcp"
        dhcpv6 = bool(attrs.get("dhcpv6", False))
        autoconf = bool(attrs.get("ipv6autoconf", False))
    else:
        dhcpv4 = any(not a.permanent for a in ipv4)
        dhcpv6 = False
        autoconf = False
    return {
        "addr": primary.address if primary else "",
        "netmask": netmask(primary.prefixlen) if primary else "",
        "ipv4addrs": [a.cidr for a in ipv4],
        "ipv6addrs": [a.cidr for a in ipv6],
        "gateway": index.gateways.get((link.index, socket.AF_INET), ""),
        "ipv4defaultroute": has_v4_default,
        "ipv6gateway": index.gateways.get((link.index, socket.AF_INET6)) or NO_IPV6_GATEWAY,
        "dhcpv4": dhcpv4,
        "dhcpv6": dhcpv6,
        "ipv6autoconf": autoconf,
        "mtu": str(link.mtu),
    }


def _attrs_by_device(networks: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {device_of(name, attrs): attrs for name, attrs in networks.items()}


def device_of(name: str, attrs: Mapping[str, Any]) -> str:
    """The device carrying a network's addresses: its bridge (named after it), else its southbound."""
    return name if attrs.get("bridged", True) else southbound_of(attrs)


def southbound_of(attrs: Mapping[str, Any]) -> str:
    """The NIC, bond or VLAN device (`<nic or bond>.<id>`) a network sits on."""
    base = attrs.get("bonding") or (attrs.get("nic") or "")
    vlan = attrs.get("vlan")
    return f"{base}.{vlan}" if vlan not in (None, "") else base


def capabilities(snapshot: Snapshot, networks: Mapping[str, Mapping[str, Any]], *,
                 speeds: Mapping[str, int] | None = None, nameservers: list[str] | None = None,
                 supports_ipv6: bool = True, dirty: bool = False) -> dict[str, Any]:
    """VdsmNetworkCapabilities of `snapshot`, with `networks` (name -> setupNetworks attributes)
    being the networks Pier made."""
    index = _Index(snapshot)
    attrs_of = _attrs_by_device(networks)
    speeds = speeds or {}
    nics: dict[str, Any] = {}
    bridges: dict[str, Any] = {}
    bondings: dict[str, Any] = {}
    vlans: dict[str, Any] = {}
    for link in index.links:
        info = ip_info(index, link, attrs_of.get(link.name))
        if is_nic(link):
            nics[link.name] = {**info, "hwaddr": link.mac, "speed": int(speeds.get(link.name, 0))}
        elif link.kind == "bridge":
            bridges[link.name] = {**info, "ports": index.ports(link),
                                  "stp": "on" if link.info.get("IFLA_BR_STP_STATE") else "off",
                                  "opts": bridge_opts(link)}
        elif link.kind == "bond":
            slaves = index.ports(link)
            active = index.by_index.get(link.info.get("IFLA_BOND_ACTIVE_SLAVE", -1))
            bondings[link.name] = {**info, "hwaddr": link.mac, "slaves": slaves,
                                   "active_slave": active.name if active else "",
                                   "opts": bond_opts(link), "switch": SWITCH}
        elif link.kind == "vlan":
            parent = index.by_index.get(link.parent) if link.parent is not None else None
            vlans[link.name] = {**info, "iface": parent.name if parent else "",
                                "vlanid": int(link.info.get("IFLA_VLAN_ID", 0))}
    by_name = snapshot.by_name()
    made: dict[str, Any] = {}
    for name, attrs in networks.items():
        made[name] = network_entry(index, by_name, name, attrs)
    return {"nics": nics, "bridges": bridges, "bondings": bondings, "vlans": vlans, "networks": made,
            "nameservers": list(nameservers or []), "supportsIPv6": supports_ipv6,
            "netConfigDirty": str(dirty)}


def network_entry(index: _Index, by_name: Mapping[str, Link], name: str,
                  attrs: Mapping[str, Any]) -> dict[str, Any]:
    """One network Pier made, as VDSM's NetInfoNetwork (bridged or bridgeless)."""
    bridged = bool(attrs.get("bridged", True))
    southbound = southbound_of(attrs)
    device = name if bridged else southbound
    link = by_name.get(device)
    entry: dict[str, Any] = {"bridged": bridged, "southbound": southbound, "switch": SWITCH, "iface": device}
    if link is not None:
        entry.update(ip_info(index, link, attrs))
    if bridged:
        entry["ports"] = index.ports(link) if link is not None else []
        entry["stp"] = "on" if link is not None and link.info.get("IFLA_BR_STP_STATE") else "off"
    else:
        entry["interface"] = device
    return entry


def bridge_opts(link: Link) -> dict[str, str]:
    """A few bridge options, as strings the way VDSM reports them."""
    names = {"IFLA_BR_FORWARD_DELAY": "forward_delay", "IFLA_BR_HELLO_TIME": "hello_time",
             "IFLA_BR_MAX_AGE": "max_age", "IFLA_BR_AGEING_TIME": "ageing_time",
             "IFLA_BR_PRIORITY": "priority", "IFLA_BR_STP_STATE": "stp_state",
             "IFLA_BR_VLAN_FILTERING": "vlan_filtering", "IFLA_BR_MCAST_SNOOPING": "multicast_snooping"}
    return {out: str(link.info[attr]) for attr, out in names.items() if attr in link.info}


def bond_opts(link: Link) -> dict[str, str]:
    """A bond's options by the names of the bonding driver (`mode`, `miimon`, ...)."""
    return {attr[len("IFLA_BOND_"):].lower(): str(value) for attr, value in link.info.items()
            if attr.startswith("IFLA_BOND_") and attr != "IFLA_BOND_ACTIVE_SLAVE" and not isinstance(value, dict)}


def read_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """The `nameserver` lines of resolv.conf."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return [parts[1] for parts in (line.split() for line in lines) if len(parts) >= 2 and parts[0] == "nameserver"]

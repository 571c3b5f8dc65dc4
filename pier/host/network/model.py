"""The desired state of the host's network: setupNetworks' request, read and checked.

`desired(running, networks, bondings)` merges a setupNetworks request into the running
configuration (an entry with `remove: true` goes, any other replaces the entry of that name) and
`check(config, snapshot)` refuses a configuration the kernel cannot carry, before anything is
touched: every error is an `InvalidParams` naming the field (`networks.pub.nic`), so the host is
left as it was. Addresses are normalised on the way in (`ipaddr` + `netmask` or `prefix` into an
interface address), so that the diff compares like with like.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pier.host.network.config import Config
from pier.host.network.facts import is_nic
from pier.host.network.kernel import Snapshot
from pier.rpc.errors import InvalidParams, UnsupportedOperation

MIN_MTU = 68
DEFAULT_MTU = 1500
MAX_NAME = 15  # IFNAMSIZ - 1: the longest device name the kernel takes
BRIDGE_OPTS = ("stp",)


def _bad(field_name: str, message: str) -> InvalidParams:
    return InvalidParams(f"{field_name}: {message}", data={"field": field_name})


@dataclass(frozen=True)
class NetworkSpec:
    """One network as Pier will make it."""

    name: str
    bridged: bool = True
    nic: str | None = None
    bonding: str | None = None
    vlan: int | None = None
    mtu: int | None = None
    dhcp: bool = False
    ipv4: str | None = None  # address/prefix
    gateway: str | None = None
    ipv6: str | None = None  # address/prefix
    ipv6gateway: str | None = None
    dhcpv6: bool = False
    ipv6autoconf: bool = False
    default_route: bool = False
    stp: bool = False

    @property
    def base(self) -> str | None:
        """The NIC or bond under it (below a VLAN when it has one)."""
        return self.bonding or self.nic

    @property
    def southbound(self) -> str | None:
        """The NIC, bond or VLAN device the network sits on (None: a bridge with no port)."""
        if self.base is None:
            return None
        return f"{self.base}.{self.vlan}" if self.vlan is not None else self.base

    @property
    def device(self) -> str | None:
        """The device carrying its addresses."""
        return self.name if self.bridged else self.southbound


@dataclass(frozen=True)
class BondSpec:
    name: str
    nics: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)


def interface_address(field_name: str, address: str, netmask: str | None = None,
                      prefix: Any = None, version: int = 4) -> str:
    """`address/prefix` from VDSM's separate fields, or InvalidParams naming the field."""
    try:
        if "/" in address:
            parsed = ipaddress.ip_interface(address)
        elif netmask:
            parsed = ipaddress.ip_interface(f"{address}/{netmask}")
        elif prefix not in (None, ""):
            parsed = ipaddress.ip_interface(f"{address}/{int(prefix)}")
        else:
            parsed = ipaddress.ip_interface(f"{address}/{32 if version == 4 else 128}")
    except ValueError as exc:
        raise _bad(field_name, f"{address!r} is not an IPv{version} address ({exc})") from None
    if parsed.version != version:
        raise _bad(field_name, f"{address!r} is not an IPv{version} address")
    return str(parsed)


def plain_address(field_name: str, address: str, version: int) -> str:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise _bad(field_name, f"{address!r} is not an IPv{version} address") from None
    if parsed.version != version:
        raise _bad(field_name, f"{address!r} is not an IPv{version} address")
    return str(parsed)


def network_spec(name: str, attrs: Mapping[str, Any]) -> NetworkSpec:
    """A network's setupNetworks attributes as a NetworkSpec; InvalidParams naming a bad field."""
    where = f"networks.{name}"
    if not name or len(name) > MAX_NAME or "/" in name or " " in name or name in (".", ".."):
        raise _bad(where, f"a network's name is 1 to {MAX_NAME} characters without '/' or spaces")
    nic = attrs.get("nic")
    if isinstance(nic, list):  # VDSM once sent a one-element list
        nic = nic[0] if nic else None
    bonding = attrs.get("bonding") or None
    if nic and bonding:
        raise _bad(f"{where}.nic", f"the network is given both a NIC ({nic}) and a bond ({bonding})")
    vlan = attrs.get("vlan")
    if vlan in ("", None):
        vlan = None
    else:
        try:
            vlan = int(vlan)
        except (TypeError, ValueError):
            raise _bad(f"{where}.vlan", f"{vlan!r} is not a VLAN id") from None
        if not 1 <= vlan <= 4094:
            raise _bad(f"{where}.vlan", f"{vlan} is not a VLAN id (1 to 4094)")
        if not (nic or bonding):
            raise _bad(f"{where}.vlan", "a VLAN needs a NIC or a bond to sit on")
    mtu = attrs.get("mtu")
    if mtu not in (None, ""):
        try:
            mtu = int(mtu)
        except (TypeError, ValueError):
            raise _bad(f"{where}.mtu", f"{mtu!r} is not an MTU") from None
        if mtu < MIN_MTU:
            raise _bad(f"{where}.mtu", f"{mtu} is below the least MTU, {MIN_MTU}")
    else:
        mtu = None
    if attrs.get("dhcpv6") in (True, "true", "True"):
        raise UnsupportedOperation(f"{where}.dhcpv6: Pier runs no DHCPv6 client; give a static ipv6addr, or "
                                   "ipv6autoconf for the kernel's router-advertisement addresses",
                                   data={"field": f"{where}.dhcpv6"})
    bootproto = attrs.get("bootproto") or "none"
    if bootproto not in ("none", "dhcp"):
        raise _bad(f"{where}.bootproto", f"{bootproto!r} is neither 'none' nor 'dhcp'")
    ipv4 = gateway = ipv6 = ipv6gateway = None
    if attrs.get("ipaddr"):
        if bootproto == "dhcp":
            raise _bad(f"{where}.ipaddr", "a static address and bootproto 'dhcp' exclude each other")
        ipv4 = interface_address(f"{where}.ipaddr", str(attrs["ipaddr"]), attrs.get("netmask"), attrs.get("prefix"))
    elif attrs.get("netmask"):
        raise _bad(f"{where}.netmask", "a netmask without an ipaddr")
    if attrs.get("gateway"):
        gateway = plain_address(f"{where}.gateway", str(attrs["gateway"]), 4)
    if attrs.get("ipv6addr"):
        ipv6 = interface_address(f"{where}.ipv6addr", str(attrs["ipv6addr"]), version=6)
    if attrs.get("ipv6gateway") and attrs["ipv6gateway"] != "::":
        ipv6gateway = plain_address(f"{where}.ipv6gateway", str(attrs["ipv6gateway"]), 6)
    bridged = attrs.get("bridged", True)
    if isinstance(bridged, str):
        bridged = bridged.lower() == "true"
    if not bridged and not (nic or bonding):
        raise _bad(f"{where}.nic", "a bridgeless network needs a NIC or a bond")
    stp = attrs.get("stp", False)
    if isinstance(stp, str):
        stp = stp.lower() in ("true", "on", "yes")
    return NetworkSpec(name=name, bridged=bool(bridged), nic=nic or None, bonding=bonding, vlan=vlan, mtu=mtu,
                       dhcp=bootproto == "dhcp", ipv4=ipv4, gateway=gateway, ipv6=ipv6, ipv6gateway=ipv6gateway,
                       dhcpv6=bool(attrs.get("dhcpv6", False)), ipv6autoconf=bool(attrs.get("ipv6autoconf", False)),
                       default_route=bool(attrs.get("defaultRoute", False)), stp=bool(stp))


def bond_options(field_name: str, options: str) -> dict[str, str]:
    """`mode=1 miimon=100` as a mapping."""
    found: dict[str, str] = {}
    for word in options.split():
        key, sep, value = word.partition("=")
        if not sep or not key or not value:
            raise _bad(field_name, f"{word!r} is not option=value")
        found[key] = value
    return found


def bond_spec(name: str, attrs: Mapping[str, Any]) -> BondSpec:
    where = f"bondings.{name}"
    if not name or len(name) > MAX_NAME:
        raise _bad(where, f"a bond's name is 1 to {MAX_NAME} characters")
    nics = attrs.get("nics") or []
    if not nics:
        raise _bad(f"{where}.nics", "a bond needs at least one NIC")
    if len(set(nics)) != len(nics):
        raise _bad(f"{where}.nics", "a NIC is listed twice")
    return BondSpec(name=name, nics=tuple(nics), options=bond_options(f"{where}.options", attrs.get("options") or ""))


def guarded(field_name: str, parse: Any, name: str, attrs: Mapping[str, Any]) -> Any:
    """`parse(name, attrs)`, with any value it cannot read refused as InvalidParams naming the entry."""
    try:
        return parse(name, attrs)
    except InvalidParams:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise _bad(field_name, f"cannot read it: {exc}") from None


def desired(running: Config, networks: Mapping[str, Mapping[str, Any]],
            bondings: Mapping[str, Mapping[str, Any]]) -> Config:
    """The running configuration with a setupNetworks request applied (not yet checked)."""
    out: Config = {"networks": dict(running["networks"]), "bondings": dict(running["bondings"])}
    for section, request in (("networks", networks), ("bondings", bondings)):
        for name, attrs in request.items():
            if attrs.get("remove"):
                if name not in out[section]:
                    raise _bad(f"{section}.{name}.remove", f"there is no {section[:-1]} {name} to remove")
                del out[section][name]
            else:
                out[section][name] = {key: value for key, value in attrs.items() if key != "remove"}
    return out


@dataclass(frozen=True)
class Desired:
    """A checked configuration: its networks and bonds as specs."""

    networks: dict[str, NetworkSpec]
    bonds: dict[str, BondSpec]


def check(config: Config, snapshot: Snapshot) -> Desired:
    """The configuration's specs, if the kernel's devices can carry it; else InvalidParams."""
    links = snapshot.by_name()
    nets = {name: guarded(f"networks.{name}", network_spec, name, attrs) for name, attrs in config["networks"].items()}
    bonds = {name: guarded(f"bondings.{name}", bond_spec, name, attrs) for name, attrs in config["bondings"].items()}
    in_bond: dict[str, str] = {}
    for bond in bonds.values():
        if bond.name in links and links[bond.name].kind not in (None, "bond"):
            raise _bad(f"bondings.{bond.name}", f"{bond.name} is a {links[bond.name].kind} device, not a bond")
        for nic in bond.nics:
            where = f"bondings.{bond.name}.nics"
            if nic not in links or not is_nic(links[nic]):
                raise _bad(where, f"there is no NIC {nic}")
            if nic in in_bond:
                raise _bad(where, f"{nic} is in bond {in_bond[nic]} too")
            in_bond[nic] = bond.name
    untagged: dict[str, str] = {}
    tagged: set[tuple[str, int]] = set()
    for net in nets.values():
        where = f"networks.{net.name}"
        if net.name in links and links[net.name].kind not in ("bridge",) and net.bridged:
            raise _bad(where, f"a device named {net.name} exists and is not a bridge")
        if net.nic is not None:
            if net.nic not in links or not is_nic(links[net.nic]):
                raise _bad(f"{where}.nic", f"there is no NIC {net.nic}")
            if net.nic in in_bond:
                raise _bad(f"{where}.nic", f"NIC {net.nic} is in bond {in_bond[net.nic]}; put the network on the bond")
        if net.bonding is not None and net.bonding not in bonds:
            raise _bad(f"{where}.bonding", f"there is no bond {net.bonding} (declare it under bondings)")
        if net.base is not None:
            if net.vlan is None:
                if net.base in untagged:
                    raise _bad(where, f"{net.base} already carries network {untagged[net.base]} without a VLAN")
                untagged[net.base] = net.name
            else:
                if (net.base, net.vlan) in tagged:
                    raise _bad(f"{where}.vlan", f"VLAN {net.vlan} on {net.base} is used by another network")
                tagged.add((net.base, net.vlan))
        if net.mtu is not None:
            limit = max_mtu(links, net)
            if limit and net.mtu > limit:
                raise _bad(f"{where}.mtu", f"{net.mtu} is above the largest MTU {net.base or net.name} takes, {limit}")
        if net.gateway and net.ipv4:
            interface = ipaddress.ip_interface(net.ipv4)
            if ipaddress.ip_address(net.gateway) not in interface.network:
                raise _bad(f"{where}.gateway", f"{net.gateway} is not in {interface.network}")
    routed = [net.name for net in nets.values() if net.default_route]
    if len(routed) > 1:
        raise _bad(f"networks.{routed[1]}.defaultRoute", f"network {routed[0]} has the default route already")
    return Desired(nets, bonds)


def max_mtu(links: Mapping[str, Any], net: NetworkSpec) -> int:
    """The largest MTU the network's lower device takes (0: no limit known)."""
    lower = links.get(net.nic) if net.nic else None
    if lower is None and net.bonding:
        return 0
    if lower is None:
        return 65535
    return int(lower.max_mtu or 0)

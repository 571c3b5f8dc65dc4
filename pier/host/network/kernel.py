"""What the kernel says about this host's network, read over netlink (pyroute2) in one pass.

`read_snapshot(ipr)` dumps the links, the addresses and the default routes into small frozen
records (`Link`, `Address`, `Route`) that the rest of `pier.host.network` works on: the facts
(`facts.py`), the statistics (`stats.py`) and the diff against a desired state. Nothing here
parses `ip` output or reads /sys; what netlink does not carry (a NIC's speed) is read elsewhere.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAIN_TABLE = 254
IFF_UP = 0x1
IFA_F_PERMANENT = 0x80
STAT_KEYS = ("rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped")


@dataclass(frozen=True)
class Link:
    """One network device: its kind (None for hardware), where it is enslaved, its counters."""

    index: int
    name: str
    kind: str | None
    mtu: int
    max_mtu: int
    min_mtu: int
    mac: str
    up: bool
    operstate: str
    master: int | None = None
    parent: int | None = None  # the link a VLAN sits on (IFLA_LINK)
    info: dict[str, Any] = field(default_factory=dict, compare=False)  # IFLA_INFO_DATA, by attribute name
    stats: dict[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Address:
    index: int
    family: int
    address: str
    prefixlen: int
    permanent: bool
    scope: int

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True)
class Route:
    """A default route of the main table."""

    family: int
    gateway: str | None
    oif: int | None


@dataclass(frozen=True)
class Snapshot:
    links: tuple[Link, ...]
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]

    def by_name(self) -> dict[str, Link]:
        return {link.name: link for link in self.links}

    def by_index(self) -> dict[int, Link]:
        return {link.index: link for link in self.links}


LINK_ATTRS = frozenset({"IFLA_IFNAME", "IFLA_MTU", "IFLA_MAX_MTU", "IFLA_MIN_MTU", "IFLA_ADDRESS",
                        "IFLA_OPERSTATE", "IFLA_MASTER", "IFLA_LINK", "IFLA_LINKINFO"})
ADDRESS_ATTRS = frozenset({"IFA_ADDRESS", "IFA_LOCAL", "IFA_FLAGS"})


def attributes(msg: Any, wanted: frozenset[str]) -> dict[str, Any]:
    """The attributes of a message named in `wanted`, by name. pyroute2 decodes an attribute when
    it is first read, so reading only these (and never `msg.get`, which searches the list each
    time) is most of what makes the facts cheap."""
    found = {}
    for slot in msg["attrs"]:
        name = slot.cell[0] if hasattr(slot, "cell") else slot[0]
        if name in wanted:
            found[name] = slot.get_value() if hasattr(slot, "get_value") else slot[1]
    return found


def link_from(msg: Any, with_stats: bool = True) -> Link:
    """A `Link` from an RTM_NEWLINK message (pyroute2's ifinfmsg); its counters only `with_stats`."""
    attrs = attributes(msg, LINK_ATTRS | {"IFLA_STATS64"} if with_stats else LINK_ATTRS)
    linkinfo: Any = attrs.get("IFLA_LINKINFO")
    kind = linkinfo.get("IFLA_INFO_KIND") if linkinfo is not None else None
    info: dict[str, Any] = {}
    if linkinfo is not None and kind in ("bridge", "bond", "vlan"):
        data = linkinfo.get("IFLA_INFO_DATA")
        info = dict(data["attrs"]) if data is not None and "attrs" in data else {}
    stats = attrs.get("IFLA_STATS64") or {}
    return Link(
        index=msg["index"], name=attrs.get("IFLA_IFNAME", ""), kind=kind, mtu=attrs.get("IFLA_MTU") or 0,
        max_mtu=attrs.get("IFLA_MAX_MTU") or 0, min_mtu=attrs.get("IFLA_MIN_MTU") or 0,
        mac=attrs.get("IFLA_ADDRESS") or "", up=bool(msg["flags"] & IFF_UP),
        operstate=attrs.get("IFLA_OPERSTATE") or "UNKNOWN", master=attrs.get("IFLA_MASTER"),
        parent=attrs.get("IFLA_LINK") if kind == "vlan" else None, info=info,
        stats={key: int(stats.get(key, 0)) for key in STAT_KEYS} if with_stats else {},
    )


def address_from(msg: Any) -> Address:
    attrs = attributes(msg, ADDRESS_ATTRS)
    flags = attrs.get("IFA_FLAGS")
    flags = msg["flags"] if flags is None else flags
    address = attrs.get("IFA_LOCAL") if msg["family"] == socket.AF_INET else None
    return Address(index=msg["index"], family=msg["family"], address=address or attrs.get("IFA_ADDRESS") or "",
                   prefixlen=msg["prefixlen"], permanent=bool(flags & IFA_F_PERMANENT), scope=msg["scope"])


def route_from(msg: Any) -> Route:
    return Route(family=msg["family"], gateway=msg.get("RTA_GATEWAY"), oif=msg.get("RTA_OIF"))


def default_routes(messages: Iterable[Any]) -> tuple[Route, ...]:
    """The default routes (destination length 0) of the main table among route messages."""
    return tuple(route_from(msg) for msg in messages
                 if msg["dst_len"] == 0 and (msg.get("RTA_TABLE") or msg["table"]) == MAIN_TABLE
                 and msg["type"] == 1)


def read_snapshot(ipr: Any) -> Snapshot:
    """Links, addresses and default routes, over the netlink socket `ipr` (a pyroute2 IPRoute)."""
    links = tuple(link_from(msg, with_stats=False) for msg in ipr.get_links())
    addresses = tuple(address_from(msg) for msg in ipr.get_addr())
    routes = default_routes(ipr.get_default_routes(table=MAIN_TABLE))
    return Snapshot(links, addresses, routes)


def read_links(ipr: Any) -> tuple[Link, ...]:
    """Only the links (with their counters): what a statistics sample needs."""
    return tuple(link_from(msg) for msg in ipr.get_links())

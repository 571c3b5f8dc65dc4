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


def link_from(msg: Any) -> Link:
    """A `Link` from an RTM_NEWLINK message (pyroute2's ifinfmsg)."""
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    info = dict(data["attrs"]) if data is not None and "attrs" in data else {}
    stats = msg.get("IFLA_STATS64") or {}
    return Link(
        index=msg["index"], name=msg.get("IFLA_IFNAME"), kind=kind, mtu=msg.get("IFLA_MTU") or 0,
        max_mtu=msg.get("IFLA_MAX_MTU") or 0, min_mtu=msg.get("IFLA_MIN_MTU") or 0,
        mac=msg.get("IFLA_ADDRESS") or "", up=bool(msg["flags"] & IFF_UP),
        operstate=msg.get("IFLA_OPERSTATE") or "UNKNOWN", master=msg.get("IFLA_MASTER"),
        parent=msg.get("IFLA_LINK") if kind == "vlan" else None, info=info,
        stats={key: int(stats.get(key, 0)) for key in STAT_KEYS},
    )


def address_from(msg: Any) -> Address:
    flags = msg.get("IFA_FLAGS")
    flags = msg["flags"] if flags is None else flags
    address = msg.get("IFA_LOCAL") if msg["family"] == socket.AF_INET else None
    return Address(index=msg["index"], family=msg["family"], address=address or msg.get("IFA_ADDRESS"),
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
    links = tuple(link_from(msg) for msg in ipr.get_links())
    addresses = tuple(address_from(msg) for msg in ipr.get_addr())
    routes = default_routes(ipr.get_default_routes(table=MAIN_TABLE))
    return Snapshot(links, addresses, routes)


def read_links(ipr: Any) -> tuple[Link, ...]:
    """Only the links (with their counters): what a statistics sample needs."""
    return tuple(link_from(msg) for msg in ipr.get_links())

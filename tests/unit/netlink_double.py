"""A stand-in for pyroute2's IPRoute in unit tests: a tiny kernel of links and addresses that records
every request, and refuses the kinds of devices it is told it lacks (as this machine's kernel does)."""

from __future__ import annotations

from typing import Any

from pyroute2.netlink.exceptions import NetlinkError


class Msg(dict):
    """Enough of a pyroute2 message: attributes by name, nested link info, header fields."""

    def get_nested(self, *path: str) -> Any:
        value: Any = self
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value


class Kernel:
    def __init__(self, nics: tuple[str, ...] = ("eth0", "eth1"), lacks: tuple[str, ...] = ()) -> None:
        self.links: dict[str, dict[str, Any]] = {}
        self.addresses: list[tuple[int, str, int, int]] = []
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.lacks = set(lacks)
        self._next = 1
        for nic in nics:
            self._add(nic, None)

    def _add(self, name: str, kind: str | None, **attrs: Any) -> None:
        self.links[name] = {"index": self._next, "kind": kind, "mtu": attrs.pop("mtu", None) or 1500, "master": 0,
                            "up": False, "attrs": attrs}
        self._next += 1

    def _name(self, index: int) -> str:
        return next(name for name, link in self.links.items() if link["index"] == index)

    def link(self, command: str, **kw: Any) -> Any:
        if command == "get":  # a read: not recorded
            if "index" in kw:
                return self.get_links(kw["index"])
            if kw["ifname"] not in self.links:
                raise NetlinkError(19, "No such device")
            return self.get_links(self.links[kw["ifname"]]["index"])
        self.requests.append(("link", command, dict(kw)))
        if command == "add":
            if kw["kind"] in self.lacks:
                raise NetlinkError(95, "Operation not supported")
            self._add(kw.pop("ifname"), kw.pop("kind"), **kw)
        elif command == "del":
            del self.links[kw["ifname"]]
        elif command == "set":
            link = self.links[self._name(kw["index"])]
            if "master" in kw:
                link["master"] = kw["master"]
            if "mtu" in kw:
                link["mtu"] = kw["mtu"]
            if "state" in kw:
                link["up"] = kw["state"] == "up"
        return None

    def addr(self, command: str, **kw: Any) -> None:
        self.requests.append(("addr", command, dict(kw)))
        entry = (kw["index"], kw["address"], kw["prefixlen"], kw["family"])
        if command == "add":
            self.addresses.append(entry)
        else:
            self.addresses.remove(entry)

    def route(self, command: str, **kw: Any) -> None:
        self.requests.append(("route", command, dict(kw)))

    def link_lookup(self, ifname: str) -> list[int]:
        return [self.links[ifname]["index"]] if ifname in self.links else []

    def get_links(self, index: int) -> list[Msg]:
        name = self._name(index)
        link = self.links[name]
        return [Msg(index=index, flags=1 if link["up"] else 0, IFLA_IFNAME=name, IFLA_MTU=link["mtu"],
                    IFLA_MASTER=link["master"] or None,
                    IFLA_LINKINFO={"IFLA_INFO_KIND": link["kind"], "IFLA_INFO_DATA": {"attrs": []}})]

    def get_addr(self, index: int, family: int | None = None) -> list[Msg]:
        return [Msg(index=i, family=f, prefixlen=p, scope=0, IFA_LOCAL=a, IFA_ADDRESS=a)
                for i, a, p, f in self.addresses if i == index and (family is None or f == family)]

    def get_default_routes(self, family: int, table: int) -> list[Msg]:
        return []

    def state(self) -> tuple[dict[str, tuple[Any, ...]], list[tuple[int, str, int, int]]]:
        return ({name: (link["kind"], link["mtu"], link["master"], link["up"]) for name, link in self.links.items()},
                sorted(self.addresses))

    def by_name(self) -> tuple[dict[str, tuple[Any, ...]], list[tuple[str, str, int, int]]]:
        """The state with devices named instead of numbered: a device made again has a new index."""
        def name(index: int) -> str | None:
            return self._name(index) if index else None
        return ({link_name: (link["kind"], link["mtu"], name(link["master"]), link["up"])
                 for link_name, link in self.links.items()},
                sorted((name(index) or "", address, prefix, family) for index, address, prefix, family in self.addresses))

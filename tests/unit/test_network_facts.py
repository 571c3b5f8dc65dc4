"""VDSM's network capabilities from a kernel snapshot (pier.host.network.facts), and the config store."""

from __future__ import annotations

import socket
from pathlib import Path

from pier.host.network.config import ConfigStore
from pier.host.network.facts import capabilities, netmask, read_nameservers
from pier.host.network.kernel import Address, Link, Route, Snapshot

V4, V6 = socket.AF_INET, socket.AF_INET6


def link(index: int, name: str, kind: str | None = None, **extra: object) -> Link:
    fields: dict = {"mtu": 1500, "max_mtu": 65535, "min_mtu": 68, "mac": f"52:54:00:00:00:{index:02x}",
                    "up": True, "operstate": "UP"}
    fields.update(extra)
    return Link(index=index, name=name, kind=kind, **fields)


def host() -> Snapshot:
    links = (
        link(1, "lo", operstate="UNKNOWN"),
        link(2, "eth0", master=10),
        link(3, "eth1", "veth", mtu=9000),
        link(4, "eth2", master=5),
        link(6, "eth3", master=5),
        link(5, "bond0", "bond", info={"IFLA_BOND_MODE": 1, "IFLA_BOND_MIIMON": 100, "IFLA_BOND_ACTIVE_SLAVE": 6}),
        link(7, "bond0.100", "vlan", parent=5, info={"IFLA_VLAN_ID": 100}),
        link(10, "pub", "bridge", info={"IFLA_BR_STP_STATE": 1, "IFLA_BR_FORWARD_DELAY": 1500}),
        link(11, "vnet0", "tun", master=10),
    )
    addresses = (
        Address(1, V4, "127.0.0.1", 8, True, 254),
        Address(10, V4, "192.0.2.10", 24, True, 0),
        Address(10, V4, "192.0.2.11", 24, True, 0),
        Address(10, V6, "2001:db8::10", 64, True, 0),
        Address(10, V6, "fe80::1", 64, True, 253),
        Address(3, V4, "198.51.100.7", 25, False, 0),
        Address(7, V4, "203.0.113.5", 24, True, 0),
    )
    routes = (Route(V4, "192.0.2.1", 10), Route(V6, "2001:db8::1", 10))
    return Snapshot(links, addresses, routes)


NETWORKS = {
    "pub": {"nic": "eth0", "bridged": True, "bootproto": "none", "ipaddr": "192.0.2.10", "netmask": "255.255.255.0"},
    "lan": {"nic": "eth1", "bridged": False, "bootproto": "dhcp"},
    "tagged": {"bonding": "bond0", "vlan": 100, "bridged": False},
}


def test_nics_are_hardware_and_veth_devices_with_their_addresses() -> None:
    caps = capabilities(host(), {}, speeds={"eth0": 1000})
    assert sorted(caps["nics"]) == ["eth0", "eth1", "eth2", "eth3"]
    eth0, eth1 = caps["nics"]["eth0"], caps["nics"]["eth1"]
    assert eth0["speed"] == 1000 and eth0["hwaddr"] == "52:54:00:00:00:02" and eth0["mtu"] == "1500"
    assert eth0["addr"] == "" and eth0["ipv4addrs"] == [] and eth0["gateway"] == ""
    assert eth0["ipv6gateway"] == "::" and eth0["ipv4defaultroute"] is False
    assert eth1["mtu"] == "9000" and eth1["speed"] == 0
    # a leased (not permanent) address, on a device no network names, is reported as DHCP
    assert eth1["addr"] == "198.51.100.7" and eth1["netmask"] == "255.255.255.128" and eth1["dhcpv4"] is True


def test_bridges_bonds_and_vlans() -> None:
    caps = capabilities(host(), {})
    pub = caps["bridges"]["pub"]
    assert pub["ports"] == ["eth0", "vnet0"] and pub["stp"] == "on" and pub["opts"]["forward_delay"] == "1500"
    assert pub["addr"] == "192.0.2.10" and pub["netmask"] == "255.255.255.0"
    assert pub["ipv4addrs"] == ["192.0.2.10/24", "192.0.2.11/24"]
    assert pub["ipv6addrs"] == ["2001:db8::10/64"]  # link-local left out
    assert pub["gateway"] == "192.0.2.1" and pub["ipv4defaultroute"] is True and pub["ipv6gateway"] == "2001:db8::1"
    bond = caps["bondings"]["bond0"]
    assert bond["slaves"] == ["eth2", "eth3"] and bond["active_slave"] == "eth3"
    assert bond["opts"] == {"mode": "1", "miimon": "100"}
    vlan = caps["vlans"]["bond0.100"]
    assert vlan["iface"] == "bond0" and vlan["vlanid"] == 100 and vlan["addr"] == "203.0.113.5"
    assert "lo" not in caps["nics"] and "vnet0" not in caps["nics"]


def test_networks_are_only_those_pier_made() -> None:
    assert capabilities(host(), {})["networks"] == {}
    nets = capabilities(host(), NETWORKS)["networks"]
    assert set(nets) == {"pub", "lan", "tagged"}
    pub = nets["pub"]
    assert pub["bridged"] is True and pub["iface"] == "pub" and pub["southbound"] == "eth0"
    assert pub["ports"] == ["eth0", "vnet0"] and pub["addr"] == "192.0.2.10" and pub["dhcpv4"] is False
    assert pub["gateway"] == "192.0.2.1" and pub["ipv4defaultroute"] is True
    lan = nets["lan"]
    assert lan["bridged"] is False and lan["interface"] == lan["iface"] == "eth1" and lan["dhcpv4"] is True
    tagged = nets["tagged"]
    assert tagged["interface"] == "bond0.100" and tagged["southbound"] == "bond0.100"
    assert tagged["addr"] == "203.0.113.5" and tagged["dhcpv4"] is False  # the network says static


def test_a_network_whose_device_is_gone_is_still_listed() -> None:
    nets = capabilities(host(), {"gone": {"nic": "eth9", "bridged": True}})["networks"]
    assert nets["gone"]["bridged"] is True and nets["gone"]["ports"] == [] and "addr" not in nets["gone"]


def test_host_wide_fields() -> None:
    caps = capabilities(host(), {}, nameservers=["192.0.2.53"], supports_ipv6=False, dirty=True)
    assert caps["nameservers"] == ["192.0.2.53"] and caps["supportsIPv6"] is False
    assert caps["netConfigDirty"] == "True" and caps["bondings"] and caps["vlans"]


def test_netmask_and_nameservers(tmp_path: Path) -> None:
    assert [netmask(n) for n in (0, 8, 23, 32)] == ["0.0.0.0", "255.0.0.0", "255.255.254.0", "255.255.255.255"]
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver\n")
    assert read_nameservers(str(resolv)) == ["192.0.2.53", "2001:db8::53"]
    assert read_nameservers(str(tmp_path / "none")) == []


def test_config_store_keeps_running_and_safe_apart(tmp_path: Path) -> None:
    for store in (ConfigStore(tmp_path / "net"), ConfigStore()):
        assert store.running() == {"networks": {}, "bondings": {}} and store.safe() is None and not store.dirty()
        store.set_running({"networks": {"pub": {"nic": "eth0"}}, "bondings": {}})
        assert store.dirty() and store.safe() is None
        store.save()
        assert store.safe() == store.running() and not store.dirty()
        store.set_running({"networks": {}, "bondings": {}})
        assert store.dirty() and store.safe() == {"networks": {"pub": {"nic": "eth0"}}, "bondings": {}}
    assert ConfigStore(tmp_path / "net").safe() == {"networks": {"pub": {"nic": "eth0"}}, "bondings": {}}

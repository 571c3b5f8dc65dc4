"""The network verbs over the registry, and the network facts in Host.getCapabilities/getStats."""

from __future__ import annotations

from pier.host.network.host import HostWithNetwork
from tests.fakes import FakeHost, FakeNetwork, FakeVms
from tests.unit.conftest import Stack


def test_network_capabilities_statistics_and_networks(stack: Stack) -> None:
    caps = stack.call("Host.getNetworkCapabilities")
    assert caps["nics"]["eth0"]["speed"] == 1000 and caps["networks"] == {}
    stack.network.rx_bytes = 4242
    assert stack.call("Host.getNetworkStatistics")["network"]["eth0"]["rx"] == "4242"
    stack.network.networks["pub"] = {"bridged": True, "iface": "pub", "southbound": "eth0"}
    assert stack.call("Host.getNetworks") == {"pub": {"bridged": True, "iface": "pub", "southbound": "eth0"}}


def test_the_network_reads_are_for_viewers_and_never_audited(stack: Stack, schema: object) -> None:
    verbs = stack.registry.verbs
    for name in ("Host.getNetworkCapabilities", "Host.getNetworkStatistics", "Host.getNetworks"):
        assert verbs[name].role == "viewer" and verbs[name].readonly


class BrokenNetwork(FakeNetwork):
    def capabilities(self) -> dict:
        raise OSError("netlink refused")


def test_capabilities_and_stats_carry_the_network_where_vdsm_puts_it() -> None:
    vms = FakeVms()
    host = HostWithNetwork(FakeHost(vms), FakeNetwork())
    caps = host.capabilities()
    assert caps["cpuCores"] == "2" and caps["uuid"] == host.uuid()
    assert caps["nics"]["eth0"]["hwaddr"] == "52:54:00:00:00:01"
    assert {"bondings", "vlans", "bridges", "networks", "nameservers", "supportsIPv6", "netConfigDirty"} <= set(caps)
    stats = host.stats()
    assert stats["vmCount"] == 0 and stats["network"]["eth0"]["tx"] == "2000"
    assert stats["rxDropped"] == "1" and stats["txDropped"] == "2"
    assert host.hardware_info() == {"systemManufacturer": "Fake"}
    # a failed netlink read costs the network fields, not the rest of the capabilities
    broken = HostWithNetwork(FakeHost(vms), BrokenNetwork())
    assert broken.capabilities()["cpuCores"] == "2" and "nics" not in broken.capabilities()

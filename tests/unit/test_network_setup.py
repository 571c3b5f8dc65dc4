"""setupNetworks below the kernel: the request checks, the netlink requests for bonds and VLANs,
undo, and the verbs over the registry."""

from __future__ import annotations

import socket
import threading

import pytest

from pier.host.network.apply import Journal, KernelLacks
from pier.host.network.kernel import Link, Snapshot
from pier.host.network.model import Desired, check, desired
from pier.host.network.plan import NothingOutside, apply_changes, bond_request, fields
from pier.rpc.errors import InvalidParams, UnsupportedOperation
from tests.unit.conftest import VM_ID, Stack
from tests.unit.netlink_double import Kernel

EMPTY = Desired({}, {})


def snapshot(*names: str) -> Snapshot:
    return Snapshot(tuple(Link(index=i + 2, name=name, kind=None, mtu=1500, max_mtu=9216, min_mtu=68, mac="",
                               up=True, operstate="UP") for i, name in enumerate(names)), (), ())


def planned(networks: dict, bondings: dict | None = None) -> Desired:
    return check(desired({"networks": {}, "bondings": {}}, networks, bondings or {}), snapshot("eth0", "eth1"))


def run(kernel: Kernel, new: Desired, old: Desired = EMPTY) -> Journal:
    journal = Journal(kernel, fields(new).get)
    apply_changes(journal, old, new, NothingOutside())
    return journal


def test_a_bond_is_requested_with_its_mode_and_options_and_its_nics_enslaved_while_down() -> None:
    kernel = Kernel()
    new = planned({"bonded": {"bonding": "bond0", "bridged": False, "ipaddr": "192.0.2.5/24"}},
                  {"bond0": {"nics": ["eth0", "eth1"], "options": "mode=802.3ad miimon=100 lacp_rate=fast"}})
    run(kernel, new)
    requests = kernel.requests
    assert requests[0] == ("link", "add", {"ifname": "bond0", "kind": "bond", "bond_mode": 4, "bond_miimon": 100,
                                           "bond_lacp_rate": "fast"})
    eth0, bond0 = kernel.links["eth0"]["index"], kernel.links["bond0"]["index"]
    assert [(cmd, kw) for _, cmd, kw in requests if kw.get("index") == eth0][:2] == [
        ("set", {"index": eth0, "master": bond0}), ("set", {"index": eth0, "state": "up"})]  # it was down
    assert ("addr", "add", {"index": bond0, "address": "192.0.2.5", "prefixlen": 24, "family": socket.AF_INET}) \
        in requests
    assert kernel.links["eth0"]["master"] == kernel.links["eth1"]["master"] == bond0


def test_a_vlan_is_requested_on_its_base_device_with_its_id() -> None:
    kernel = Kernel()
    run(kernel, planned({"tagged": {"nic": "eth1", "vlan": "100", "mtu": 9000}}))
    eth1 = kernel.links["eth1"]["index"]
    assert ("link", "add", {"ifname": "eth1.100", "kind": "vlan", "link": eth1, "vlan_id": 100, "mtu": 9000}) \
        in kernel.requests
    assert kernel.links["tagged"]["kind"] == "bridge" and kernel.links["eth1.100"]["master"] == \
        kernel.links["tagged"]["index"]
    assert kernel.links["eth1"]["mtu"] == 9000


@pytest.mark.parametrize(("networks", "bondings", "field", "support"), [
    ({"tagged": {"nic": "eth1", "vlan": 7, "bridged": False}}, {}, "networks.tagged.vlan", "8021q"),
    ({}, {"bond0": {"nics": ["eth0"]}}, "bondings.bond0", "bonding"),
])
def test_a_kernel_without_the_support_gets_a_clear_error_and_is_left_as_it_was(
        networks: dict, bondings: dict, field: str, support: str) -> None:
    kernel = Kernel(lacks=("bond", "vlan"))
    before = kernel.state()
    journal = Journal(kernel, fields(planned(networks, bondings)).get)
    with pytest.raises(KernelLacks) as refused:
        apply_changes(journal, EMPTY, planned(networks, bondings), NothingOutside())
    assert refused.value.data["field"] == field and support in refused.value.message
    journal.undo()
    assert kernel.state() == before


def test_undo_takes_every_step_back_newest_first() -> None:
    kernel = Kernel()
    before = kernel.state()
    journal = run(kernel, planned({"pub": {"nic": "eth0", "ipaddr": "192.0.2.5/24", "ipv6addr": "2001:db8::5/64",
                                           "mtu": 9000}}))
    assert kernel.state() != before and len(journal.steps) >= 6
    assert journal.undo() == [] and kernel.state() == before and journal.steps == []


def test_undoing_a_changed_network_makes_the_old_one_again_with_its_port_and_addresses() -> None:
    """The change deletes the bridge and makes it again with a new index; the steps recorded before
    that (the port, the addresses) are undone on the bridge as it is then, found by name."""
    kernel = Kernel()
    old = planned({"pub": {"nic": "eth0", "ipaddr": "192.0.2.5/24", "ipv6addr": "2001:db8::5/64"}})
    run(kernel, old)
    before = kernel.by_name()
    journal = run(kernel, planned({"pub": {"nic": "eth0", "ipaddr": "192.0.2.5/24", "mtu": 1400}}), old)
    assert kernel.by_name() != before
    assert journal.undo() == [] and kernel.by_name() == before


def test_removing_then_making_again_a_changed_network() -> None:
    kernel = Kernel()
    old = planned({"pub": {"nic": "eth0", "ipaddr": "192.0.2.5/24"}})
    run(kernel, old)
    new = planned({"pub": {"nic": "eth0", "ipaddr": "192.0.2.6/24"}})
    run(kernel, new, old)
    pub = kernel.links["pub"]["index"]
    assert [(a, p) for i, a, p, _ in kernel.addresses if i == pub] == [("192.0.2.6", 24)]


@pytest.mark.parametrize(("networks", "bondings", "field"), [
    ({"pub": {"nic": "eth9"}}, {}, "networks.pub.nic"),
    ({"pub": {"nic": "eth0", "bonding": "bond0"}}, {"bond0": {"nics": ["eth1"]}}, "networks.pub.nic"),
    ({"pub": {"nic": "eth0", "mtu": 67}}, {}, "networks.pub.mtu"),
    ({"pub": {"nic": "eth0", "mtu": 9217}}, {}, "networks.pub.mtu"),
    ({"pub": {"nic": "eth0", "mtu": "big"}}, {}, "networks.pub.mtu"),
    ({"pub": {"nic": "eth0", "ipaddr": "192.0.2.500"}}, {}, "networks.pub.ipaddr"),
    ({"pub": {"nic": "eth0", "ipaddr": "192.0.2.5", "netmask": "255.0.255.0"}}, {}, "networks.pub.ipaddr"),
    ({"pub": {"nic": "eth0", "ipv6addr": "192.0.2.5/24"}}, {}, "networks.pub.ipv6addr"),
    ({"pub": {"nic": "eth0", "gateway": "nowhere"}}, {}, "networks.pub.gateway"),
    ({"pub": {"nic": "eth0", "vlan": 4095}}, {}, "networks.pub.vlan"),
    ({"pub": {"nic": "eth0", "bootproto": "dhcp", "ipaddr": "192.0.2.5/24"}}, {}, "networks.pub.ipaddr"),
    ({"pub": {"bridged": False}}, {}, "networks.pub.nic"),
    ({"a": {"nic": "eth0"}, "b": {"nic": "eth0"}}, {}, "networks.b"),
    ({"pub": {"nic": "eth0"}}, {"bond0": {"nics": ["eth0"]}}, "networks.pub.nic"),
    ({}, {"bond0": {"nics": []}}, "bondings.bond0.nics"),
    ({}, {"bond0": {"nics": ["eth0", "eth0"]}}, "bondings.bond0.nics"),
    ({}, {"bond0": {"nics": ["eth0"], "options": "mode"}}, "bondings.bond0.options"),
    ({"pub": {"bonding": "bond9"}}, {}, "networks.pub.bonding"),
    ({"a": {"nic": "eth0", "defaultRoute": True}, "b": {"nic": "eth1", "defaultRoute": True}}, {},
     "networks.b.defaultRoute"),
    ({"gone": {"remove": True}}, {}, "networks.gone.remove"),
])
def test_bad_input_names_the_field(networks: dict, bondings: dict, field: str) -> None:
    with pytest.raises(InvalidParams) as refused:
        planned(networks, bondings)
    assert refused.value.data == {"field": field} and refused.value.message.startswith(field + ":")


def test_bond_options_by_name_or_number() -> None:
    spec = planned({}, {"bond0": {"nics": ["eth0"], "options": "mode=1 updelay=200 xmit_hash_policy=layer3+4"}})
    assert bond_request(spec.bonds["bond0"]) == {"bond_mode": 1, "bond_updelay": 200,
                                                 "bond_xmit_hash_policy": "layer3+4"}


# -- the verbs over the registry (fakes) -----------------------------------------------------------


def test_setup_networks_runs_as_a_task(stack: Stack) -> None:
    task = stack.call("Host.setupNetworks", networks={"pub": {"nic": "eth0"}})
    done = stack.tasks.wait(task["taskID"], 10)
    assert done["state"] == "succeeded" and done["progress"] == 100
    assert done["result"] == {"networks": {"pub": {"bridged": True, "iface": "pub", "southbound": "eth0"}}}
    assert stack.call("Host.getNetworks")["pub"]["southbound"] == "eth0"
    stack.call("Host.setSafeNetworkConfig")
    assert stack.network.safe == {"networks": {"pub": {"nic": "eth0", "bridged": True}}, "bondings": {}}


def test_a_bad_request_is_refused_at_the_call_naming_the_field(stack: Stack) -> None:
    with pytest.raises(InvalidParams, match=r"^networks\.pub\.nic:") as refused:
        stack.call("Host.setupNetworks", networks={"pub": {"nic": "eth7"}})
    assert refused.value.data["field"] == "networks.pub.nic"
    assert stack.call("Host.getAllTasks") == {} and "pub" not in stack.network.running["networks"]
    with pytest.raises(InvalidParams, match="mtu"):
        stack.call("Host.setupNetworks", networks={"pub": {"nic": "eth0", "mtu": [1]}})  # the schema's own check


def test_removing_a_network_a_running_vm_uses_needs_force(stack: Stack) -> None:
    stack.network.running["networks"]["pub"] = {"nic": "eth0"}
    stack.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 64})
    stack.vms.records[VM_ID]["devices"] = [{"deviceType": "interface", "network": "pub"}]
    tasks_before = stack.call("Host.getAllTasks")
    with pytest.raises(InvalidParams, match=r"^networks\.pub\.remove:") as refused:
        stack.call("Host.setupNetworks", networks={"pub": {"remove": True}})
    assert VM_ID in refused.value.message and "pub" in stack.network.running["networks"]
    assert stack.call("Host.getAllTasks") == tasks_before  # refused before any task started
    task = stack.call("Host.setupNetworks", networks={"pub": {"remove": True}}, options={"force": True})
    assert stack.tasks.wait(task["taskID"], 10)["state"] == "succeeded"
    assert "pub" not in stack.network.running["networks"]


def test_confirm_connectivity_ends_the_wait(stack: Stack) -> None:
    confirmer = threading.Timer(0.2, stack.call, ("Host.confirmConnectivity",))
    confirmer.start()
    task = stack.call("Host.setupNetworks", networks={"pub": {"nic": "eth0"}},
                      options={"connectivityCheck": True, "connectivityTimeout": 30})
    confirmer.join()
    assert task["state"] == "succeeded"


def test_dhcpv6_is_refused_naming_the_field() -> None:
    with pytest.raises(UnsupportedOperation) as refused:
        planned({"pub": {"nic": "eth0", "dhcpv6": True}})
    assert refused.value.data == {"field": "networks.pub.dhcpv6"} and "no DHCPv6 client" in refused.value.message
    assert planned({"pub": {"nic": "eth0", "dhcpv6": False, "ipv6autoconf": True}}).networks["pub"].ipv6autoconf

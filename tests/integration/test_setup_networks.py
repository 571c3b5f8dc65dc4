"""Host.setupNetworks on a real kernel, in a namespace lab (netlab.py): make, change, remove, roll back.

Most tests drive the network service on the lab's host namespace from outside it
(`Network(netns=...)`); the persistence tests run a whole pierd inside it. "Host unchanged" is
checked by comparing `ip -j addr` of the namespace before and after.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from pier.host.network import apply, service
from pier.host.network.apply import KernelLacks
from pier.host.network.service import ConnectivityLost, Network
from pier.rpc.errors import InvalidParams, PierError, TargetBusy
from tests.integration.clients import unix_request
from tests.integration.conftest import Pierd
from tests.integration.netlab import DHCP_RANGE, PEER_V4, NetLab, ip
from tests.integration.test_host_libvirt import wait_until
from tests.integration.test_network import lab_pierd, rest

pytest_plugins = ["tests.integration.test_network"]  # the `lab` fixture

PUB = {"nic": "nic0", "ipaddr": "10.77.0.5", "netmask": "255.255.255.0", "gateway": PEER_V4,
       "defaultRoute": True, "ipv6addr": "fd77::5/64"}


@pytest.fixture
def network(lab: NetLab, tmp_path: Path) -> Iterator[Network]:
    made = Network(tmp_path / "netstate", netns=lab.host, stats_interval=3600, manage=True)
    made.start()
    try:
        yield made
    finally:
        made.stop()


def addresses(lab: NetLab) -> dict[str, list[str]]:
    return {link["ifname"]: sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                                   if a.get("scope") != "link")
            for link in lab.addr()}


def test_a_bridged_network_with_static_addresses_then_removed(lab: NetLab, network: Network) -> None:
    before = addresses(lab)
    network.setup({"pub": PUB}, {}, {})
    links = lab.links()
    assert links["pub"]["linkinfo"]["info_kind"] == "bridge" and links["nic0"]["master"] == "pub"
    assert addresses(lab)["pub"] == ["10.77.0.5/24", "fd77::5/64"]
    assert f"default via {PEER_V4} dev pub" in ip("route", netns=lab.host)
    made = network.capabilities()["networks"]["pub"]
    assert made["bridged"] is True and made["ports"] == ["nic0"] and made["addr"] == "10.77.0.5"
    assert made["gateway"] == PEER_V4 and made["ipv4defaultroute"] is True and made["mtu"] == "1500"
    assert network.config.running()["networks"]["pub"]["nic"] == "nic0"

    network.setup({"pub": {"remove": True}}, {}, {})
    assert "pub" not in lab.links() and "master" not in lab.links()["nic0"]
    assert addresses(lab) == before and "default" not in ip("route", netns=lab.host)
    assert network.capabilities()["networks"] == {}


def test_a_dhcp_network(lab: NetLab, network: Network) -> None:
    network.setup({"lan": {"nic": "nic1", "bridged": False, "bootproto": "dhcp"}}, {}, {})
    lan = wait_until(lambda: network.capabilities()["networks"]["lan"]["ipv4addrs"], timeout=20)
    assert lan, "no DHCP lease within 20 s"
    leased = lan[0].split("/")[0]
    low, high = (int(a.rsplit(".", 1)[1]) for a in DHCP_RANGE)
    assert leased.startswith("10.77.0.") and low <= int(leased.rsplit(".", 1)[1]) <= high
    assert network.capabilities()["networks"]["lan"]["dhcpv4"] is True
    network.setup({"lan": {"remove": True}}, {}, {})
    assert wait_until(lambda: addresses(lab)["nic1"] == []), "the leased address stayed after removal"


def test_an_mtu_change(lab: NetLab, network: Network) -> None:
    network.setup({"pub": {**PUB, "mtu": 9000}}, {}, {})
    links = lab.links()
    assert links["pub"]["mtu"] == 9000 and links["nic0"]["mtu"] == 9000
    network.setup({"pub": {**PUB, "mtu": 1400}}, {}, {})
    links = lab.links()
    assert links["pub"]["mtu"] == 1400 and links["nic0"]["mtu"] == 1400
    assert network.capabilities()["networks"]["pub"]["mtu"] == "1400"


def test_an_unconfirmed_change_is_rolled_back(lab: NetLab, network: Network) -> None:
    before = lab.addr()
    started = time.monotonic()
    with pytest.raises(ConnectivityLost, match="rolled back"):
        network.setup({"pub": {**PUB, "mtu": 1400}}, {}, {"connectivityCheck": True, "connectivityTimeout": 1})
    assert 1 <= time.monotonic() - started < 10
    assert lab.addr() == before and "pub" not in lab.links()
    assert network.config.running()["networks"] == {}


def test_an_unconfirmed_change_of_a_network_puts_the_old_one_back(lab: NetLab, network: Network) -> None:
    """The change takes the bridge down and makes it again; the rollback makes the old one again,
    with its port, addresses, default route and link-local address as they were."""
    network.setup({"pub": PUB}, {}, {})
    before, routes = lab.addr(by_name=True), ip("route", netns=lab.host)
    with pytest.raises(ConnectivityLost, match="rolled back"):
        network.setup({"pub": {**PUB, "mtu": 1400}}, {}, {"connectivityCheck": True, "connectivityTimeout": 1})
    assert lab.addr(by_name=True) == before and ip("route", netns=lab.host) == routes
    assert network.config.running()["networks"]["pub"]["nic"] == "nic0"


def test_a_confirmed_change_stays(lab: NetLab, network: Network) -> None:
    confirmer = threading.Timer(0.5, network.confirm)
    confirmer.start()
    network.setup({"pub": PUB}, {}, {"connectivityCheck": "true", "connectivityTimeout": 10})
    assert "pub" in lab.links() and network.config.running()["networks"]["pub"]


def test_a_failure_half_way_leaves_the_host_as_before(lab: NetLab, network: Network,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    network.setup({"old": {"nic": "nic1", "bridged": False, "ipaddr": "10.77.0.9/24"}}, {}, {})
    before = lab.addr()
    real = apply.Journal.default_route

    def refused(self: apply.Journal, *args: Any) -> None:
        real(self, *args)
        raise NetlinkError(101, "Network is unreachable")  # after the bridge, its port, MTU and addresses

    monkeypatch.setattr(apply.Journal, "default_route", refused)
    with pytest.raises(PierError, match="was undone"):
        network.setup({"pub": {**PUB, "mtu": 1400}, "old": {"remove": True}}, {}, {})
    assert lab.addr() == before
    assert "default" not in ip("route", netns=lab.host)
    assert set(network.config.running()["networks"]) == {"old"}


@pytest.mark.parametrize(("networks", "bondings", "kind"), [
    ({"tagged": {"nic": "nic0", "vlan": 100, "bridged": False, "ipaddr": "10.77.1.5/24"}}, {}, "vlan"),
    ({"bonded": {"bonding": "bond0", "ipaddr": "10.77.2.5/24"}},
     {"bond0": {"nics": ["nic0", "nic1"], "options": "mode=active-backup miimon=100"}}, "bond"),
])
def test_bonds_and_vlans_name_the_missing_kernel_support(lab: NetLab, network: Network, networks: dict,
                                                         bondings: dict, kind: str) -> None:
    before = lab.addr()
    with pytest.raises(KernelLacks) as refused:
        network.setup(networks, bondings, {})
    support = {"vlan": "8021q", "bond": "bonding"}[kind]
    assert support in refused.value.message and refused.value.data["kind"] == kind
    assert refused.value.data["field"] in ("networks.tagged.vlan", "bondings.bond0")
    assert lab.addr() == before and network.config.running() == {"networks": {}, "bondings": {}}


@pytest.mark.parametrize(("networks", "bondings", "field"), [
    ({"pub": {"nic": "nic7"}}, {}, "networks.pub.nic"),
    ({"pub": {"nic": "nic0", "bonding": "bond0"}}, {"bond0": {"nics": ["nic1"]}}, "networks.pub.nic"),
    ({"pub": {"nic": "nic0", "mtu": 67}}, {}, "networks.pub.mtu"),
    ({"pub": {"nic": "nic0", "mtu": 70000}}, {}, "networks.pub.mtu"),
    ({"pub": {"nic": "nic0", "ipaddr": "10.77.0.300", "netmask": "255.255.255.0"}}, {}, "networks.pub.ipaddr"),
    ({"pub": {"nic": "nic0", "ipv6addr": "fd77::zz/64"}}, {}, "networks.pub.ipv6addr"),
    ({"pub": {"nic": "nic0", "ipaddr": "10.77.0.5/24", "gateway": "10.78.0.1"}}, {}, "networks.pub.gateway"),
    ({}, {"bond0": {"nics": []}}, "bondings.bond0.nics"),
    ({"pub": {"remove": True}}, {}, "networks.pub.remove"),
])
def test_bad_input_names_the_field_and_changes_nothing(lab: NetLab, network: Network, networks: dict,
                                                       bondings: dict, field: str) -> None:
    before = lab.addr()
    with pytest.raises(InvalidParams) as refused:
        network.setup(networks, bondings, {})
    assert refused.value.data["field"] == field and refused.value.message.startswith(field)
    assert lab.addr() == before and network.config.running() == {"networks": {}, "bondings": {}}


def test_two_changes_at_once_wait_or_are_busy(lab: NetLab, network: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "BUSY_AFTER", 0.5)
    first = threading.Thread(target=network.setup, args=({"pub": PUB}, {}, {"connectivityCheck": True,
                                                                            "connectivityTimeout": 5}))
    first.start()
    try:
        assert wait_until(lambda: "pub" in lab.links())
        with pytest.raises(TargetBusy):
            network.setup({"lan": {"nic": "nic1", "bridged": False}}, {}, {})
    finally:
        network.confirm()
        first.join(10)
    network.setup({"lan": {"nic": "nic1", "bridged": False}}, {}, {})  # its turn now
    assert set(network.config.running()["networks"]) == {"pub", "lan"}


def run_task(daemon: Any, networks: dict, options: dict | None = None) -> dict:
    task = rest(daemon, "/host/network/setup", "POST", {"networks": networks, "options": options or {}})
    return rest(daemon, f"/tasks/{task['taskID']}?wait=30")


def test_pierd_restores_the_safe_configuration_at_start(lab: NetLab, tmp_path: Path, test_uri: str) -> None:
    state = tmp_path / "state"
    daemon = lab_pierd(lab, state, test_uri)
    try:
        done = run_task(daemon, {"pub": PUB})
        assert done["state"] == "succeeded" and done["progress"] == 100, done
        assert rest(daemon, "/networks")["pub"]["addr"] == "10.77.0.5"
        names = [event["name"] for event in rest(daemon, "/events?after=0")["events"]]
        assert "|net|host_conn|no_id" in names  # as VDSM tells its engine after a network change
        assert rest(daemon, "/host/network")["netConfigDirty"] == "True"
        rest(daemon, "/host/network/save", "POST", {})
        assert rest(daemon, "/host/network")["netConfigDirty"] == "False"
    finally:
        assert daemon.stop() == 0
    saved_addresses = addresses(lab)

    daemon = lab_pierd(lab, state, test_uri)  # saved: nothing to restore
    try:
        assert not daemon.logged("restoring the safe one")
        assert set(rest(daemon, "/networks")) == {"pub"}
        done = run_task(daemon, {"lan": {"nic": "nic1", "bridged": False, "ipaddr": "10.77.0.9/24"}})
        assert done["state"] == "succeeded", done
    finally:
        assert daemon.stop() == 0

    daemon = lab_pierd(lab, state, test_uri)  # not saved: back to the safe configuration, and it says so
    try:
        assert daemon.logged("differs from the safe one") and daemon.logged("restored the safe configuration")
        assert set(rest(daemon, "/networks")) == {"pub"}
        # the addresses and ports are those saved; nic1 stays up, as a removed network leaves its NIC
        assert addresses(lab) == saved_addresses and lab.links()["nic0"]["master"] == "pub"
    finally:
        assert daemon.stop() == 0


def test_rpc_callers_get_the_answer_when_the_change_is_done(lab: NetLab, tmp_path: Path, test_uri: str) -> None:
    """As VDSM answered: JSON-RPC and XML-RPC answer setupNetworks once it is done or rolled back;
    meanwhile Host.confirmConnectivity is served on the same socket."""
    daemon = lab_pierd(lab, tmp_path / "state", test_uri)
    try:
        status, reply = unix_request(daemon.socket, "POST", "/jsonrpc", {
            "jsonrpc": "2.0", "id": 1, "method": "Host.setupNetworks",
            "params": {"networks": {"pub": PUB}, "bondings": {}, "options": {}}})
        assert status == 200 and reply["result"]["state"] == "succeeded", reply
        assert "pub" in lab.links()  # done when answered, with no task to follow

        before = lab.addr(by_name=True)
        started = time.monotonic()
        status, reply = unix_request(daemon.socket, "POST", "/jsonrpc", {
            "jsonrpc": "2.0", "id": 2, "method": "Host.setupNetworks",
            "params": {"networks": {"pub": {**PUB, "mtu": 1400}}, "bondings": {},
                       "options": {"connectivityCheck": True, "connectivityTimeout": 1}}})
        assert 1 <= time.monotonic() - started < 15
        assert "rolled back" in reply["error"]["message"], reply
        assert lab.addr(by_name=True) == before  # the bridge was made again: only its index changed

        confirmer = threading.Timer(1.0, lambda: unix_request(daemon.socket, "POST", "/api/v1/host/network/confirm", {}))
        confirmer.start()
        envelope = ("<?xml version='1.0'?><methodCall><methodName>setupNetworks</methodName><params>"
                    "<param><value><struct><member><name>lan</name><value><struct>"
                    "<member><name>nic</name><value><string>nic1</string></value></member>"
                    "<member><name>bridged</name><value><boolean>0</boolean></value></member>"
                    "<member><name>ipaddr</name><value><string>10.77.0.9/24</string></value></member>"
                    "</struct></value></member></struct></value></param>"
                    "<param><value><struct></struct></value></param>"
                    "<param><value><struct><member><name>connectivityCheck</name><value><boolean>1</boolean>"
                    "</value></member><member><name>connectivityTimeout</name><value><int>20</int></value>"
                    "</member></struct></value></param></params></methodCall>")
        answer = xmlrpc_unix(daemon.socket, envelope)
        confirmer.join()
        assert answer["status"]["code"] == 0, answer
        assert "10.77.0.9/24" in addresses(lab)["nic1"]
    finally:
        assert daemon.stop() == 0


def xmlrpc_unix(socket_path: str, envelope: str) -> Any:
    import http.client
    import socket
    import xmlrpc.client

    connection = http.client.HTTPConnection("localhost", timeout=60)
    connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.sock.connect(socket_path)
    connection.request("POST", "/RPC2", body=envelope.encode(), headers={"Content-Type": "text/xml"})
    payload = connection.getresponse().read()
    connection.close()
    return xmlrpc.client.loads(payload)[0][0]


@pytest.mark.kvm
def test_a_vm_gets_a_nic_on_a_network_pier_made(lab: NetLab, tmp_path: Path) -> None:
    """On qemu:///system: the lab's own libvirtd, beside pierd in the lab's namespace, so the
    bridge and the guest's tap are both there and this machine's namespace is never touched."""
    if not Path("/usr/sbin/libvirtd").exists():
        pytest.skip("libvirtd is not installed")
    lab.start_libvirtd()
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "pierd.toml").write_text("stats_interval = 0.2\n")
    daemon = Pierd(state, "qemu:///system", "--config", str(tmp_path / "pierd.toml"), "--manage-network",
                   prefix=lab.enter)
    vm_id = str(uuid.uuid4())
    try:
        done = run_task(daemon, {"pub": PUB})
        assert done["state"] == "succeeded", done
        listed = subprocess.run([*lab.enter, "virsh", "-c", "qemu:///system", "net-dumpxml", "vdsm-pub"],
                                capture_output=True, text=True, check=True).stdout
        assert "<forward mode='bridge'/>" in listed and "<bridge name='pub'/>" in listed
        created = rest(daemon, "/vms", "POST", {
            "vmId": vm_id, "vmName": f"pier-net-{vm_id[:8]}", "memSize": 32, "smp": "1",
            "devices": [{"deviceType": "interface", "device": "network", "network": "vdsm-pub", "nicModel": "virtio"}]})
        assert created["vmId"] == vm_id
        ports = wait_until(lambda: [name for name, link in lab.links().items() if link.get("master") == "pub"
                                  and name != "nic0"])
        assert ports and ports[0].startswith("vnet"), lab.links()
        assert rest(daemon, "/networks")["pub"]["ports"] == sorted(["nic0", *ports])

        status, refused = unix_request(daemon.socket, "POST", "/api/v1/host/network/setup",
                                       {"networks": {"pub": {"remove": True}}})  # a running VM is on it
        assert status == 400 and refused["detail"].startswith("networks.pub.remove:")
        assert "pub" in lab.links()
    finally:
        unix_request(daemon.socket, "DELETE", f"/api/v1/vms/{vm_id}")
        assert daemon.stop() == 0

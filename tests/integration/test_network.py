"""The network facts and statistics on a real kernel: in a namespace of the test's own (netlab.py).

The service reads a lab namespace from outside (`Network(netns=...)`), and a whole pierd runs
inside one (`ip netns exec`), reached through its local socket. The machine's own namespace is
never changed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pier.host.network.service import Network
from tests.integration.clients import unix_request
from tests.integration.conftest import Pierd
from tests.integration.netlab import PEER_V4, NetLab, ip, lab_unusable, namespaces, sweep
from tests.integration.test_host_libvirt import wait_until


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NetLab]:
    reason = lab_unusable()
    if reason is not None:
        pytest.skip(reason)
    sweep()
    made = NetLab(tmp_path)
    try:
        yield made
    finally:
        made.close()


def lab_pierd(lab: NetLab, state: Path, uri: str) -> Pierd:
    """A pierd inside the lab's host namespace that may change its network, sampling every 0.2 s."""
    state.mkdir(parents=True, exist_ok=True)
    config = state.parent / "pierd.toml"
    config.write_text("stats_interval = 0.2\n")
    return Pierd(state, uri, "--config", str(config), "--manage-network", prefix=["ip", "netns", "exec", lab.host])


@pytest.fixture
def netpierd(lab: NetLab, tmp_path: Path, test_uri: str) -> Iterator[Pierd]:
    daemon = lab_pierd(lab, tmp_path / "state", test_uri)
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, "pierd did not exit cleanly:\n" + "".join(daemon.log[-30:])


def rest(daemon: Pierd, path: str, method: str = "GET", body: Any = None) -> Any:
    status, answer = unix_request(daemon.socket, method, "/api/v1" + path, body)
    assert status < 300, answer
    return answer


def send_udp_from_peer(lab: NetLab, address: str, count: int = 20) -> None:
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"import time\nfor _ in range({count}): s.sendto(b'x' * 1000, ({address!r}, 9)); time.sleep(0.01)")
    subprocess.run(["ip", "netns", "exec", lab.peer, sys.executable, "-c", code], check=True, timeout=30)


def configure(lab: NetLab) -> None:
    """nic0: static IPv4 and IPv6 and the default route; nic1: a port of bridge `brx`, MTU 9000."""
    ip("link", "set", "nic0", "up", netns=lab.host)
    ip("addr", "add", "10.77.0.5/24", "dev", "nic0", netns=lab.host)
    ip("-6", "addr", "add", "fd77::5/64", "dev", "nic0", "nodad", netns=lab.host)
    ip("route", "add", "default", "via", PEER_V4, netns=lab.host)
    ip("link", "add", "brx", "type", "bridge", netns=lab.host)
    ip("link", "set", "nic1", "mtu", "9000", "master", "brx", "up", netns=lab.host)
    ip("link", "set", "brx", "up", netns=lab.host)


def test_the_facts_of_a_namespace_are_what_ip_shows(lab: NetLab) -> None:
    configure(lab)
    network = Network(netns=lab.host, stats_interval=3600)
    network.start()
    try:
        caps = network.capabilities()
    finally:
        network.stop()
    assert set(caps["nics"]) == {"nic0", "nic1"} and set(caps["bridges"]) == {"brx"}
    assert caps["bondings"] == {} and caps["vlans"] == {} and caps["networks"] == {}
    shown = {link["ifname"]: link for link in lab.addr()}
    nic0 = caps["nics"]["nic0"]
    assert nic0["hwaddr"] == shown["nic0"]["address"] and nic0["mtu"] == str(shown["nic0"]["mtu"])
    assert nic0["ipv4addrs"] == [f"{a['local']}/{a['prefixlen']}" for a in shown["nic0"]["addr_info"]
                                 if a["family"] == "inet"] == ["10.77.0.5/24"]
    assert nic0["ipv6addrs"] == ["fd77::5/64"] and nic0["netmask"] == "255.255.255.0"
    assert nic0["gateway"] == PEER_V4 and nic0["ipv4defaultroute"] is True and nic0["dhcpv4"] is False
    assert caps["nics"]["nic1"]["mtu"] == "9000" and caps["nics"]["nic1"]["ipv4defaultroute"] is False
    assert caps["bridges"]["brx"]["ports"] == ["nic1"] and caps["bridges"]["brx"]["stp"] == "off"


def test_pierd_in_a_namespace_serves_its_network(lab: NetLab, netpierd: Pierd) -> None:
    configure(lab)
    caps = rest(netpierd, "/host/network")
    assert set(caps["nics"]) == {"nic0", "nic1"}  # the lab's NICs, not this machine's
    assert caps["nics"]["nic0"]["addr"] == "10.77.0.5"
    # the speed comes from the sampler, which reads it once the NIC is up (10000 Mb/s: a veth's)
    assert wait_until(lambda: rest(netpierd, "/host/network")["nics"]["nic1"]["speed"] == 10000)
    host = rest(netpierd, "/host")
    assert set(host["nics"]) == {"nic0", "nic1"} and host["nics"]["nic0"]["ipv6addrs"] == ["fd77::5/64"]
    assert host["bridges"]["brx"]["ports"] == ["nic1"] and host["supportsIPv6"] is True
    assert rest(netpierd, "/networks") == {}

    def received() -> int:  # both NICs share the peer's segment: either may answer for 10.77.0.5
        figures = rest(netpierd, "/host/network/stats")["network"]
        return int(figures["nic0"]["rx"]) + int(figures["nic1"]["rx"])

    before = received()
    send_udp_from_peer(lab, "10.77.0.5")
    assert wait_until(lambda: received() >= before + 10 * 1000), "the sampler never saw the traffic"
    stats = rest(netpierd, "/host/network/stats")["network"]["nic0"]
    assert stats["state"] == "up" and stats["speed"] == "10000" and stats["name"] == "nic0"
    host_stats = rest(netpierd, "/host/stats")
    assert set(host_stats["network"]) == {"nic0", "nic1", "brx"} and host_stats["rxDropped"].isdigit()


def test_the_lab_is_gone_after_a_failing_test(tmp_path: Path) -> None:
    reason = lab_unusable()
    if reason is not None:
        pytest.skip(reason)
    lab = NetLab(tmp_path, nics=1)
    try:
        with pytest.raises(RuntimeError):
            try:
                ip("link", "set", "nic9", "up", netns=lab.host)  # a failing step of some test
            finally:
                lab.close()
    finally:
        lab.close()
    assert lab.host not in namespaces() and lab.peer not in namespaces()
    assert lab.dnsmasq is not None and lab.dnsmasq.poll() is not None
    # a namespace left by a test process that died is swept; one of a live process is not
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, alive = f"pier-h-{dead.stdout.strip()}-0", f"pier-h-{__import__('os').getpid()}-999"
    for name in (stale, alive):
        ip("netns", "add", name)
    try:
        assert stale in sweep() and stale not in namespaces() and alive in namespaces()
    finally:
        for name in (stale, alive):
            ip("netns", "del", name, check=False)


def test_the_machine_namespace_is_untouched(lab: NetLab) -> None:
    """Everything the lab made lives in its namespaces."""
    mine = {link["ifname"] for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
                                                                  text=True, check=True).stdout)}
    assert not {"nic0", "nic1", "lab", "peer0", "peer1"} & mine
    assert socket.gethostname()  # the lab has no effect on this process


def test_a_pierd_started_without_manage_network_only_reads(pierd: Pierd) -> None:
    """Regression: a pierd on this machine's namespace (as the fuzzer's is) once made a bridge named
    after a fuzzed network; without --manage-network it refuses, naming the setting."""
    links_before = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    status, refused = unix_request(pierd.socket, "POST", "/api/v1/host/network/setup", {"networks": {"pierx0": {}}})
    assert status == 409 and refused["title"] == "unsupportedOperationErr"  # at the call: no task starts
    assert "--manage-network" in refused["detail"]
    assert subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout == links_before
    assert rest(pierd, "/networks") == {}


def test_the_lab_ends_what_still_runs_in_it(tmp_path: Path) -> None:
    reason = lab_unusable()
    if reason is not None:
        pytest.skip(reason)
    lab = NetLab(tmp_path, nics=1, dhcp=False)
    try:
        stray = subprocess.Popen(["ip", "netns", "exec", lab.host, "sleep", "60"])
        assert wait_until(lambda: str(stray.pid) in ip("netns", "pids", lab.host))
    finally:
        lab.close()
    assert stray.wait(5) is not None and lab.host not in namespaces()


def test_the_facts_are_read_again_only_after_the_kernel_announces_a_change(lab: NetLab,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pier.host.network import service

    dumps: list[int] = []
    real = service.read_snapshot
    monkeypatch.setattr(service, "read_snapshot", lambda ipr: dumps.append(1) or real(ipr))
    network = Network(netns=lab.host, stats_interval=3600)
    network.start()
    try:
        assert network.capabilities()["nics"]["nic0"]["ipv4addrs"] == []
        for _ in range(20):
            network.capabilities()
        assert len(dumps) == 1  # nothing changed: no dump
        ip("addr", "add", "10.77.0.8/24", "dev", "nic0", netns=lab.host)  # behind Pier's back
        assert network.capabilities()["nics"]["nic0"]["ipv4addrs"] == ["10.77.0.8/24"]  # at once, no wait
        ip("link", "set", "nic1", "mtu", "1280", netns=lab.host)
        assert network.capabilities()["nics"]["nic1"]["mtu"] == "1280"
        ip("link", "set", "nic0", "up", netns=lab.host)
        ip("route", "add", "default", "via", PEER_V4, "dev", "nic0", netns=lab.host)
        assert network.capabilities()["nics"]["nic0"]["gateway"] == PEER_V4
        assert len(dumps) == 4
    finally:
        network.stop()

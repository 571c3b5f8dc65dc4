"""What a network needs beyond netlink: the libvirt network `vdsm-<name>`, and DHCP client bookkeeping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import defusedxml.ElementTree as SafeET
import libvirt

from pier.host.network.outside import DhcpClients, Outside, libvirt_network_xml
from pier.host.testdriver import make_test_uri


def test_a_bridged_network_is_a_libvirt_network_in_forward_mode_bridge(tmp_path: Path) -> None:
    conn = libvirt.open(make_test_uri(tmp_path / "node.xml"))
    try:
        outside = Outside(DhcpClients(None), lambda: conn)
        outside.define_network("pub", "pub")
        net = conn.networkLookupByName("vdsm-pub")
        root = SafeET.fromstring(net.XMLDesc())
        assert root.find("forward").get("mode") == "bridge" and root.find("bridge").get("name") == "pub"
        assert net.isActive() and net.autostart()
        outside.define_network("pub", "pub")  # again: replaced, not refused
        outside.undefine_network("pub")
        assert "vdsm-pub" not in [n.name() for n in conn.listAllNetworks()]
        outside.undefine_network("pub")  # gone already: nothing to do
    finally:
        conn.close()


def test_network_names_are_escaped_in_the_xml() -> None:
    root = SafeET.fromstring(libvirt_network_xml("a<b", "br'0"))
    assert root.findtext("name") == "vdsm-a<b" and root.find("bridge").get("name") == "br'0"


def test_without_libvirt_nothing_is_defined() -> None:
    Outside(DhcpClients(None)).define_network("pub", "pub")  # no connection: a no-op, no error


def test_a_dhcp_client_is_found_by_its_pid_file_and_stopped(tmp_path: Path) -> None:
    clients = DhcpClients(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "eth0.pid").write_text(str(sleeper.pid))
        assert clients.running("eth0") and not clients.running("eth1")
        clients.stop("eth0")
        assert sleeper.wait(5) is not None and not (tmp_path / "eth0.pid").exists()
        (tmp_path / "eth1.pid").write_text("999999999")  # a client that is gone: forgotten
        assert not clients.running("eth1") and not (tmp_path / "eth1.pid").exists()
    finally:
        sleeper.kill()
        sleeper.wait()

"""The tiny real guest on qemu:///system: it boots, its agent and serial console answer, it gets an
address on libvirt's default network, and it powers off when asked (ACPI or agent)."""

from __future__ import annotations

import ipaddress
import json
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import libvirt
import pytest

from tests.integration.clients import http_request

if TYPE_CHECKING:  # imported by pytest_plugins, so that pytest rewrites its asserts
    from tests.integration.guest import Guest

pytest_plugins = ["tests.integration.guest"]  # the `booted_guest` fixture
pytestmark = pytest.mark.kvm


def vm_status_events(guest: Guest) -> list[dict]:
    kept = json.loads(http_request("GET", f"{guest.api}/events?after=0&types=virt.VM_status&limit=1000")[2])
    return [e["params"][guest.vm_id] for e in kept["events"] if guest.vm_id in e["params"]]


def wait_down(guest: Guest, timeout: float = 60) -> dict:
    """The VM_status event that says the VM is Down."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        down = [e for e in vm_status_events(guest) if e["status"] == "Down"]
        if down:
            return down[-1]
        time.sleep(0.2)
    raise AssertionError(f"the VM is not Down after {timeout} s: {vm_status_events(guest)}")


def test_the_guest_boots_and_its_agent_and_serial_shell_answer(booted_guest: Guest) -> None:
    info = booted_guest.agent("guest-info")
    assert any(c["name"] == "guest-shutdown" and c["enabled"] for c in info["supported_commands"])
    release = booted_guest.agent("guest-get-osinfo")["kernel-release"]
    assert booted_guest.shell.run("uname -r").strip() == release
    assert release.endswith("-cloud-amd64")
    # The 16 MiB virtio disk, in 512-byte sectors; a failing command gives its status.
    assert booted_guest.shell.run("cat /sys/block/vda/size").strip() == "32768"
    status, output = booted_guest.shell.run_status("ls /nonexistent")
    assert status != 0 and "nonexistent" in output


def test_a_graceful_shutdown_powers_the_guest_off_from_within(booted_guest: Guest) -> None:
    """VM.shutdown without force: the guest handles the ACPI power button, so the VM goes Down as
    shut down by the user from within the guest (exitReason 7), not by force (6)."""
    status, _, body = http_request("POST", f"{booted_guest.api}/vms/{booted_guest.vm_id}/shutdown",
                                   {"timeout": 60})
    assert status == 202, body
    task = json.loads(http_request("GET", f"{booted_guest.api}/tasks/{json.loads(body)['taskID']}?wait=90")[2])
    assert task["state"] == "succeeded", task
    down = wait_down(booted_guest)
    assert (down["exitCode"], down["exitReason"]) == (0, 7), down
    assert "Powering down" in [e["status"] for e in vm_status_events(booted_guest)]


def test_the_agent_can_power_the_guest_off(booted_guest: Guest) -> None:
    booted_guest.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
    down = wait_down(booted_guest)
    assert down["exitReason"] == 7, down


def test_the_guest_gets_an_address_on_the_default_network(booted_guest: Guest) -> None:
    network = booted_guest.conn.networkLookupByName("default")
    ip = ET.fromstring(network.XMLDesc()).find("ip")
    assert ip is not None
    subnet = ipaddress.ip_network(f"{ip.get('address')}/{ip.get('netmask') or ip.get('prefix')}", strict=False)
    mac = ET.fromstring(booted_guest.dom.XMLDesc()).find("devices/interface/mac")
    assert mac is not None
    addresses: list[str] = []
    deadline = time.monotonic() + 60
    while not addresses and time.monotonic() < deadline:
        for nic in booted_guest.agent("guest-network-get-interfaces"):
            if nic.get("hardware-address") == mac.get("address"):
                addresses = [a["ip-address"] for a in nic.get("ip-addresses", []) if a["ip-address-type"] == "ipv4"]
        time.sleep(0.5)
    assert addresses and ipaddress.ip_address(addresses[0]) in subnet, addresses
    leases = booted_guest.dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
    assert addresses[0] in [a["addr"] for nic in leases.values() for a in nic["addrs"]]

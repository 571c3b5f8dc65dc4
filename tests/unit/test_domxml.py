"""Domain XML: built from vmParams and compared with checked-in expected files, read back as a
VmDefinition, raw XML passthrough, and errors that name the offending field.

To regenerate an expected file after an intended change: PIER_REGEN_DOMXML=1 pytest this file,
then review the diff.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pier.host.domxml import DomainXml, build_domain, domain_from_raw
from pier.rpc.errors import InvalidParams, MissingParam

DATA = Path(__file__).parent / "data" / "domxml"
VM_ID = "7a1c2f3e-0b6d-4c59-9e8a-0123456789ab"
OTHER_ID = "11111111-2222-4333-8444-555555555555"


def canonical(xml: str) -> str:
    return ET.canonicalize(xml_data=xml, strip_text=True)


def check_expected(name: str, xml: str) -> None:
    path = DATA / f"{name}.xml"
    if os.environ.get("PIER_REGEN_DOMXML") == "1":
        element = ET.fromstring(xml)
        ET.indent(element)
        path.write_text(ET.tostring(element, encoding="unicode") + "\n")
    assert canonical(xml) == canonical(path.read_text()), f"differs from {path}"


MINIMAL: dict[str, Any] = {"vmName": "pier-test-minimal", "memSize": 256, "smp": "1"}

CASES: dict[str, dict[str, Any]] = {
    "minimal": MINIMAL,
    "disk_nic_vnc": {
        "vmName": "pier-test-full",
        "memSize": "1024",
        "smp": 2,
        "maxVCpus": "4",
        "emulatedMachine": "pc-q35-7.2",
        "cpuType": "host-passthrough",
        "timeOffset": "3600",
        "memGuaranteedSize": 512,
        "devices": [
            {"deviceType": "disk", "device": "disk", "path": "/var/lib/pier/images/a.qcow2",
             "format": "cow", "iface": "virtio", "bootOrder": "1", "serial": "abc"},
            {"deviceType": "disk", "device": "disk", "path": "/dev/mapper/data",
             "iface": "scsi", "readonly": "true"},
            {"deviceType": "interface", "device": "network", "network": "default",
             "macAddr": "52:54:00:AA:BB:CC", "nicModel": "virtio"},
            {"deviceType": "interface", "device": "bridge", "network": "br0",
             "nicModel": "e1000", "linkActive": False},
            {"deviceType": "graphics", "device": "vnc", "port": "-1", "listen": "0.0.0.0"},
            {"deviceType": "video", "device": "vga"},
            {"deviceType": "balloon", "specParams": {"model": "virtio"}},
        ],
    },
    "cdrom": {
        "vmName": "pier-test-cdrom",
        "memSize": 512,
        "smp": "1",
        "boot": "dc",
        "devices": [
            {"deviceType": "disk", "device": "cdrom", "path": "/var/lib/pier/iso/install.iso"},
            {"deviceType": "disk", "device": "cdrom", "path": ""},
            {"deviceType": "disk", "device": "disk", "path": "/var/lib/pier/images/b.img",
             "iface": "sata"},
        ],
    },
    "direct_boot_console": {
        **MINIMAL, "vmName": "pier-test-direct-boot", "kernel": "/var/lib/pier/guest/vmlinuz",
        "initrd": "/var/lib/pier/guest/initrd.img", "kernelArgs": "console=ttyS0 quiet",
        "devices": [{"deviceType": "console", "device": "console", "specParams": {"consoleType": "serial"}}],
    },
    "launch_paused": {**MINIMAL, "vmName": "pier-test-paused", "launchPaused": "true",
                      "display": "qxl", "acpiEnable": "false"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_built_xml_matches_expected_file(case: str) -> None:
    dom = build_domain(VM_ID, CASES[case], domain_type="kvm")
    check_expected(case, dom.to_string())


def test_raw_xml_gets_the_vm_id_filled_in() -> None:
    raw = (DATA / "raw_input.xml").read_text()
    dom = domain_from_raw(VM_ID, raw)
    assert dom.uuid == VM_ID
    check_expected("raw_uuid_filled", dom.to_string())


def test_raw_xml_with_the_same_uuid_is_accepted_in_any_case() -> None:
    raw = f"<domain type='kvm'><name>x</name><uuid>{VM_ID.upper()}</uuid></domain>"
    assert domain_from_raw(VM_ID, raw).name == "x"


def test_raw_xml_with_another_uuid_names_both() -> None:
    raw = f"<domain type='kvm'><name>x</name><uuid>{OTHER_ID}</uuid></domain>"
    with pytest.raises(InvalidParams) as err:
        domain_from_raw(VM_ID, raw)
    assert OTHER_ID in err.value.message and VM_ID in err.value.message


@pytest.mark.parametrize("raw, fragment", [
    ("<domain><name>x</name>", "not well-formed"),
    ("<vm><name>x</name></vm>", "<vm>"),
    ("<domain type='kvm'><memory>1</memory></domain>", "<name>"),
    ('<!DOCTYPE d [<!ENTITY e "boom">]><domain><name>&e;</name></domain>', "forbidden"),
])
def test_bad_raw_xml_is_refused(raw: str, fragment: str) -> None:
    with pytest.raises((InvalidParams, MissingParam)) as err:
        domain_from_raw(VM_ID, raw)
    assert fragment in err.value.message


@pytest.mark.parametrize("params, error, field", [
    ({"memSize": 256}, MissingParam, "vmParams.vmName"),
    ({"vmName": "a"}, MissingParam, "vmParams.memSize"),
    ({"vmName": "a", "memSize": "lots"}, InvalidParams, "vmParams.memSize"),
    ({"vmName": "a", "memSize": 0}, InvalidParams, "vmParams.memSize"),
    ({"vmName": "a", "memSize": 64, "smp": "0"}, InvalidParams, "vmParams.smp"),
    ({"vmName": "a/b", "memSize": 64}, InvalidParams, "vmParams.vmName"),
    ({"vmName": "a", "memSize": 64, "devices": {}}, InvalidParams, "vmParams.devices"),
    ({"vmName": "a", "memSize": 64, "devices": [{"device": "disk"}]},
     MissingParam, "vmParams.devices[0].deviceType"),
    ({"vmName": "a", "memSize": 64, "devices": [{"deviceType": "tpm"}]},
     InvalidParams, "vmParams.devices[0].deviceType"),
    ({"vmName": "a", "memSize": 64, "devices": [{"deviceType": "disk"}]},
     MissingParam, "vmParams.devices[0].path"),
    ({"vmName": "a", "memSize": 64, "devices": [
        {"deviceType": "graphics"},
        {"deviceType": "disk", "path": "/x", "iface": "floppy"}]},
     InvalidParams, "vmParams.devices[1].iface"),
    ({"vmName": "a", "memSize": 64, "devices": [
        {"deviceType": "disk", "path": "relative.img"}]},
     InvalidParams, "vmParams.devices[0].path"),
    ({"vmName": "a", "memSize": 64, "devices": [
        {"deviceType": "disk", "path": "/x", "format": "vmdk"}]},
     InvalidParams, "vmParams.devices[0].format"),
    ({"vmName": "a", "memSize": 64, "devices": [
        {"deviceType": "interface", "network": "default", "macAddr": "nope"}]},
     InvalidParams, "vmParams.devices[0].macAddr"),
    ({"vmName": "a", "memSize": 64, "devices": [{"deviceType": "interface"}]},
     MissingParam, "vmParams.devices[0].network"),
    ({"vmName": "a", "memSize": 64, "devices": [
        {"deviceType": "interface", "network": "default", "nicModel": "ne2k"}]},
     InvalidParams, "vmParams.devices[0].nicModel"),
    ({"vmName": "a", "memSize": 64, "devices": [{"deviceType": "graphics", "device": "rdp"}]},
     InvalidParams, "vmParams.devices[0].device"),
    ({"vmName": "a", "memSize": 64, "devices": [{"deviceType": "graphics", "port": "x"}]},
     InvalidParams, "vmParams.devices[0].port"),
    ({"vmName": "a", "memSize": 64, "launchPaused": "maybe", "acpiEnable": "maybe"},
     InvalidParams, "vmParams.acpiEnable"),
    ({"vmName": "a", "memSize": 64, "display": "rdp"}, InvalidParams, "vmParams.display"),
    ({"vmName": "a\x00b", "memSize": 64}, InvalidParams, "'a\\x00b' (for <name>) holds U+0000"),
    ({"vmName": "a", "memSize": 64, "devices": [{"deviceType": "disk", "path": "/x\ud800"}]},
     InvalidParams, "(for <source file=...>) holds U+D800"),
    ({"vmName": "a", "memSize": 64, "devices": [
        {"deviceType": "interface", "network": "n", "macAddr": "52:54:00:00:00:01"},
        {"deviceType": "interface", "network": "n", "macAddr": "52:54:00:00:00:01"}]},
     InvalidParams, "52:54:00:00:00:01"),
    ({"vmName": "a", "memSize": 64, "initrd": "/boot/initrd.img"}, MissingParam, "vmParams.kernel"),
    ({"vmName": "a", "memSize": 64, "kernel": "vmlinuz"}, InvalidParams, "vmParams.kernel"),
    ({"vmName": "a", "memSize": 64, "kernel": "/k", "initrd": "initrd"}, InvalidParams, "vmParams.initrd"),
    ({"vmName": "a", "memSize": 64, "kernel": "/k", "kernelArgs": ["quiet"]}, InvalidParams, "vmParams.kernelArgs"),
    ({"vmName": "a", "memSize": 64, "devices": [{"deviceType": "console", "specParams": {"consoleType": "vga"}}]},
     InvalidParams, "vmParams.devices[0].specParams.consoleType"),
    ({"vmName": "a", "memSize": 64, "devices": [{"deviceType": "channel", "name": "../x"}]},
     InvalidParams, "vmParams.devices[0].name"),
    ({"vmName": "a", "memSize": 64, "devices": [{"deviceType": "channel", "device": "pty"}]},
     InvalidParams, "vmParams.devices[0].device"),
])
def test_bad_params_raise_an_error_naming_the_field(params: dict[str, Any], error: type,
                                                      field: str) -> None:
    with pytest.raises(error) as err:
        build_domain(VM_ID, params, domain_type="kvm")
    assert field in err.value.message


def test_a_built_vm_reads_back_its_direct_boot_console_and_agent_channel() -> None:
    info = build_domain(VM_ID, CASES["direct_boot_console"], domain_type="kvm").to_definition()
    assert (info["kernel"], info["initrd"], info["kernelArgs"]) == (
        "/var/lib/pier/guest/vmlinuz", "/var/lib/pier/guest/initrd.img", "console=ttyS0 quiet")
    by_type = {dev["deviceType"]: dev for dev in info["devices"]}
    assert by_type["console"]["specParams"] == {"consoleType": "serial", "enableSocket": False}
    assert by_type["channel"]["name"] == "org.qemu.guest_agent.0"


def test_a_guest_agent_channel_given_in_devices_is_not_added_twice() -> None:
    params = {**MINIMAL, "devices": [{"deviceType": "channel"}]}
    channels = [d for d in build_domain(VM_ID, params, domain_type="kvm").to_definition()["devices"]
                if d["deviceType"] == "channel"]
    assert [c["name"] for c in channels] == ["org.qemu.guest_agent.0"]


def test_bad_vm_id_is_refused() -> None:
    with pytest.raises(InvalidParams, match="vmId"):
        build_domain("not-a-uuid", MINIMAL, domain_type="kvm")


def test_parsing_libvirt_output_gives_a_vm_definition() -> None:
    dom = DomainXml.parse((DATA / "libvirt_running.xml").read_text())
    info = dom.to_definition()
    assert info["vmId"] == "4d3a1a34-5c0e-4f6e-9a59-7a0b3b1f2c11"
    assert info["vmName"] == "pier-test-running"
    assert (info["memSize"], info["smp"], info["kvmEnable"]) == (32, 1, True)
    assert info["emulatedMachine"] == "pc-i440fx-7.2"
    assert info["display"] == "vnc" and info["displayPort"] == 5900
    assert info["memGuaranteedSize"] == 16
    by_type: dict[str, list[dict[str, Any]]] = {}
    for dev in info["devices"]:
        by_type.setdefault(dev["deviceType"], []).append(dev)
    disk = by_type["disk"][0]
    assert disk["path"] == "/var/lib/pier/images/r.qcow2" and disk["format"] == "qcow2"
    assert disk["alias"] == "virtio-disk0"
    assert disk["address"] == {"type": "pci", "domain": "0x0000", "bus": "0x00",
                               "slot": "0x05", "function": "0x0"}
    nic = by_type["interface"][0]
    assert (nic["device"], nic["network"], nic["macAddr"], nic["nicModel"]) == (
        "network", "default", "52:54:00:6b:3c:58", "virtio")
    assert nic["name"] == "vnet2" and nic["alias"] == "net0"
    assert by_type["graphics"][0]["port"] == "5900"
    assert {d["deviceType"] for d in info["devices"]} >= {"controller", "input", "video",
                                                          "balloon", "serial"}


def test_round_trip_keeps_elements_pier_does_not_model() -> None:
    text = (DATA / "libvirt_running.xml").read_text()
    dom = DomainXml.parse(text)
    dom.to_definition()
    dom.assign_disk_names()
    assert canonical(dom.to_string()) == canonical(text)
    dom.uuid = VM_ID
    after = DomainXml.parse(dom.to_string())
    assert after.uuid == VM_ID
    assert after.root.find("seclabel") is not None
    assert after.root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert after.metadata("memGuaranteedSize") == "16"


def test_disk_names_are_assigned_per_bus_without_clashes() -> None:
    params = {**MINIMAL, "devices": [
        {"deviceType": "disk", "path": "/a", "name": "vdb"},
        {"deviceType": "disk", "path": "/b"},
        {"deviceType": "disk", "path": "/c"},
        {"deviceType": "disk", "path": "/d", "iface": "ide"},
    ]}
    names = [d.target.get("dev") for d in build_domain(VM_ID, params, domain_type="kvm").disks()]
    assert names == ["vdb", "vda", "vdc", "hda"]

"""The XML of memory hotplug and of the devices Pier plugs in: maxMemory and guest NUMA from
vmParams (compared with checked-in expected files, as tests/unit/test_domxml.py does), DIMMs, user
aliases and display passwords, and errors that name the offending field."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from pier.host.devices import Device, Graphics, Memory, device_from_element, set_alias
from pier.host.domxml import build_domain
from pier.rpc.errors import InvalidParams, MissingParam
from tests.unit.test_domxml import VM_ID, check_expected

HOTPLUGGABLE: dict[str, Any] = {"vmName": "pier-test-hotplug", "memSize": 256, "smp": "2", "maxVCpus": "4",
                                "maxMemSize": 2048, "maxMemSlots": 8}


def test_max_mem_size_gives_max_memory_and_one_numa_node_with_every_cpu() -> None:
    dom = build_domain(VM_ID, HOTPLUGGABLE, domain_type="kvm")
    check_expected("hotpluggable", dom.to_string())
    definition = dom.to_definition()
    assert (definition["maxMemSize"], definition["maxMemSlots"], definition["smp"], definition["maxVCpus"]) == \
        (2048, 8, 2, 4)


def test_guest_numa_nodes_as_given() -> None:
    params = {**HOTPLUGGABLE, "guestNumaNodes": [{"nodeIndex": 0, "cpus": "0-1", "memory": "128"},
                                                 {"nodeIndex": 1, "cpus": "2-3", "memory": 128}]}
    cells = build_domain(VM_ID, params, domain_type="kvm").root.findall("cpu/numa/cell")
    assert [(c.get("id"), c.get("cpus"), c.get("memory")) for c in cells] == \
        [("0", "0-1", str(128 * 1024)), ("1", "2-3", str(128 * 1024))]


@pytest.mark.parametrize(("change", "field"), [
    ({"maxMemSize": 128}, "vmParams.maxMemSize"),
    ({"maxMemSlots": 256}, "vmParams.maxMemSlots"),
    ({"guestNumaNodes": [{"cpus": "0-3", "memory": 100}]}, "vmParams.guestNumaNodes"),
    ({"guestNumaNodes": [{"cpus": "zero", "memory": 256}]}, "vmParams.guestNumaNodes[0].cpus"),
])
def test_bad_memory_hotplug_params_name_their_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParams) as raised:
        build_domain(VM_ID, {**HOTPLUGGABLE, **change}, domain_type="kvm")
    assert raised.value.message.startswith(field)


def test_a_dimm_is_built_read_back_and_needs_a_size() -> None:
    dimm = Memory.from_params({"size": 512, "node": 1}, "memory")
    again = device_from_element(ET.fromstring(ET.tostring(dimm.element)))
    assert isinstance(again, Memory)
    assert again.to_vdsm() == {"deviceType": "memory", "type": "memory", "device": "memory", "size": 512, "node": 1}
    with pytest.raises(MissingParam):
        Memory.from_params({"node": 0}, "memory")


def test_a_user_alias_is_kept_or_made_and_must_start_with_ua() -> None:
    device = Device(ET.Element("disk"))
    assert set_alias(device, "ua-mine", "drive") == "ua-mine" and device.alias == "ua-mine"
    made = set_alias(Device(ET.Element("disk")), None, "drive")
    assert made.startswith("ua-") and len(made) == 39
    with pytest.raises(InvalidParams) as raised:
        set_alias(device, "net0", "drive")
    assert raised.value.message.startswith("drive.alias:")


def test_a_display_password_with_a_validity_and_without() -> None:
    screen = Graphics.from_params({"device": "vnc"}, "graphics")
    assert isinstance(screen, Graphics)
    ticketed = screen.with_ticket("s3cret", "2030-01-01T00:00:00", "keep").element
    assert (ticketed.get("passwd"), ticketed.get("passwdValidTo"), ticketed.get("connected")) == \
        ("s3cret", "2030-01-01T00:00:00", "keep")
    assert "passwdValidTo" not in screen.with_ticket("", None, None).element.attrib

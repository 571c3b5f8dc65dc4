"""The guest agent on qemu:///system: what Pier does for a VM whose agent is missing or silent
(no guest OS is needed for that), and for a VM whose agent runs (the booted test guest)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from pier.host.node import Node
from pier.rpc.errors import FreezeError, GuestTimeout, ThawError

pytestmark = pytest.mark.kvm

AGENT_CHANNEL = """<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"""


def domain_xml(vm_id: str, channel: bool) -> str:
    return f"""<domain type='kvm'>
  <name>pier-agent-{vm_id[:8]}</name><uuid>{vm_id}</uuid>
  <memory unit='MiB'>32</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>{AGENT_CHANNEL if channel else ''}<memballoon model='virtio'/></devices>
</domain>"""


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, params: dict[str, Any]) -> None:
        self.seen.append((name, params))


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def node(system_libvirt: str, events: Events) -> Iterator[Node]:
    node = Node(system_libvirt, events, stats_interval=0.2, slow_stats_interval=0.5,
                guest_options={"fast_interval": 1.0, "slow_interval": 2.0, "retry_interval": 1.0})
    node.start()
    yield node
    node.stop()


def running_vm(node: Node, channel: bool) -> Iterator[str]:
    vm_id = str(uuid.uuid4())
    node.vms.create(vm_id, {"xml": domain_xml(vm_id, channel)})
    try:
        yield vm_id
    finally:
        node.vms.destroy(vm_id)


@pytest.fixture
def vm(node: Node) -> Iterator[str]:
    """A running VM with an agent channel and no guest OS (so no agent on it)."""
    yield from running_vm(node, channel=True)


@pytest.fixture
def vm_without_channel(node: Node) -> Iterator[str]:
    yield from running_vm(node, channel=False)


def both_xmls(vm_id: str) -> tuple[str, str]:
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByUUIDString(vm_id)
        return dom.XMLDesc(0), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


def test_freeze_with_a_silent_agent_is_nonresp_and_the_vm_is_as_before(node: Node, vm: str) -> None:
    before = both_xmls(vm)
    with pytest.raises(GuestTimeout, match="does not answer") as refused:
        node.guest.freeze(vm)
    assert (refused.value.code, refused.value.name) == (19, "nonresp")
    with pytest.raises(GuestTimeout):
        node.guest.thaw(vm)
    assert both_xmls(vm) == before
    assert node.vms.status(vm) == "Up"


def test_freeze_without_an_agent_channel_names_it_and_the_vm_is_as_before(node: Node,
                                                                          vm_without_channel: str) -> None:
    vm = vm_without_channel
    before = both_xmls(vm)
    with pytest.raises(FreezeError, match="no guest agent channel") as refused:
        node.guest.freeze(vm)
    assert refused.value.code == 76
    with pytest.raises(ThawError, match="no guest agent channel"):
        node.guest.thaw(vm)
    assert both_xmls(vm) == before


def test_stats_of_a_vm_whose_agent_is_silent_say_so_and_have_no_guest_fields(node: Node, vm: str) -> None:
    stats = wait_for(lambda: (s := node.vms.stats(vm)).get("guestAgentState") == "disconnected" and s)
    assert "guestIPs" not in stats and stats["guestAgentAges"] == {}
    assert stats["status"] == "Up"

"""The guest agent on qemu:///system: what Pier does for a VM whose agent is missing or silent
(no guest OS is needed for that), and for a VM whose agent runs (the booted tiny guest, through
pierd's REST API)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import libvirt
import pytest

from pier.host import guest as guest_module
from pier.host.node import Node
from pier.rpc.errors import FreezeError, GuestTimeout, ThawError
from tests.integration.clients import http_request
from tests.integration.conftest import Pierd

if TYPE_CHECKING:  # imported by pytest_plugins, so that pytest rewrites its asserts
    from tests.integration.guest import Guest

pytest_plugins = ["tests.integration.guest"]  # the `booted_guest` fixture
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
        # the agent poller's first visit sets the balloon's statistics period in the live XML:
        # "the VM as before" is the VM after it
        wait_for(lambda: node.vms.stats(vm_id).get("guestAgentState") not in (None, "unknown"))
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


# -- a guest whose agent runs ----------------------------------------------------------------------


def stats(guest: Guest) -> dict[str, Any]:
    status, _, body = http_request("GET", f"{guest.api}/vms/{guest.vm_id}/stats")
    assert status == 200, body
    return json.loads(body)[0]


def agent_events(guest: Guest) -> list[dict[str, Any]]:
    kept = json.loads(http_request("GET", f"{guest.api}/events?after=0&types=virt.VM_guest_agent&limit=1000")[2])
    return [e["params"][guest.vm_id] for e in kept["events"] if guest.vm_id in e["params"]]


def post(guest: Guest, action: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    status, _, text = http_request("POST", f"{guest.api}/vms/{guest.vm_id}/{action}", body or {})
    return status, json.loads(text)


def test_the_guests_facts_and_address_are_in_its_stats(booted_guest: Guest) -> None:
    guest = booted_guest
    osinfo = guest.agent("guest-get-osinfo")
    mac = guest.dom.XMLDesc().split("<mac address='")[1].split("'")[0]

    def with_address() -> dict[str, Any] | None:
        found = stats(guest)
        return found if "192.168.122." in found.get("guestIPs", "") else None

    found = wait_for(with_address, timeout=90)
    own = [a["ip-address"] for nic in guest.agent("guest-network-get-interfaces")
           for a in nic.get("ip-addresses", []) if nic["name"] != "lo"]
    assert set(found["guestIPs"].split()) == set(own)
    assert mac in [nic["hw"] for nic in found["netIfaces"]]
    assert found["guestAgentState"] == "connected"
    assert found["guestFQDN"] == guest.agent("guest-get-host-name")["host-name"]
    assert found["guestOsInfo"]["kernel"] == osinfo["kernel-release"] == found["guestOs"]
    assert found["guestOsInfo"]["type"] == "linux" and found["appsList"] == [f"kernel-{osinfo['kernel-release']}"]
    assert {"interfaces", "os", "hostname"} <= set(found["guestAgentAges"])
    assert all(float(age) < 120 for age in found["guestAgentAges"].values())
    memory = wait_for(lambda: stats(guest).get("memoryStats"), timeout=60)  # the balloon reports
    assert int(memory["mem_total"]) > 0 and int(memory["mem_unused"]) > 0
    assert agent_events(guest)[0] == {"guestAgent": "up", "reason": "channel"}


@pytest.fixture
def guest_with_filesystem(guest_pierd: Pierd, guest_conn: libvirt.virConnect) -> Iterator[Guest]:
    """The tiny guest with an ext4 disk (made on the host) mounted at /mnt/data: its own root is
    an initramfs, which qemu-ga does not freeze (and with nothing frozen it stays thawed)."""
    from tests.integration.guest import DISK_DIR, NAME_PREFIX, new_guest, remove_vm  # after pytest_plugins
    disk = DISK_DIR / f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}.img"
    with open(disk, "wb") as made:
        made.truncate(16 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
    vm_id = str(uuid.uuid4())
    guest: Guest | None = None
    try:
        guest = new_guest(guest_pierd, guest_conn, str(disk), vm_id)
        guest.shell.run("mkdir -p /mnt/data && mount -t ext4 /dev/vda /mnt/data")
        yield guest
    finally:
        if guest is not None:
            guest.close()
        remove_vm(guest_pierd, guest_conn, vm_id)
        disk.unlink(missing_ok=True)


def test_freeze_and_thaw(guest_with_filesystem: Guest) -> None:
    guest = guest_with_filesystem
    status, body = post(guest, "freeze")
    assert status == 200, body
    assert guest.agent("guest-fsfreeze-status") == "frozen"
    assert stats(guest)["status"] == "Up"  # stats are served while the guest is frozen
    status, body = post(guest, "thaw")
    assert status == 200, body
    assert guest.agent("guest-fsfreeze-status") == "thawed"
    guest.shell.run("touch /mnt/data/written-after-thaw")


def test_the_agent_going_down_and_up_are_events(booted_guest: Guest) -> None:
    guest = booted_guest
    wait_for(lambda: agent_events(guest))
    guest.shell.run("killall qemu-ga")  # the guest's init starts it again after half a second
    events = wait_for(lambda: (e := agent_events(guest))[-1]["guestAgent"] == "up" and len(e) >= 3 and e)
    assert [e["guestAgent"] for e in events[-3:]] == ["up", "down", "up"]
    assert events[-2]["reason"] == "channel"


def test_desktop_verbs_name_what_the_agent_lacks(booted_guest: Guest) -> None:
    status, body = post(booted_guest, "desktop/login", {"domain": "", "username": "u", "password": "p"})
    assert (status, body["name"]) == (409, "unsupportedOperationErr"), body
    assert "qemu-guest-agent has no command" in body["detail"]
    status, body = post(booted_guest, "desktop/lock")
    assert (status, body["name"]) == (409, "unsupportedOperationErr"), body  # the tiny guest has no loginctl
    assert "loginctl" in body["detail"]


def test_a_shutdown_message_goes_to_wall_in_the_guest(booted_guest: Guest) -> None:
    """The tiny guest has no `wall`: one that writes what it is given to the serial console stands
    in for it (a real guest has util-linux's). Without it the shutdown goes on and says why."""
    guest = booted_guest
    status, body = post(guest, "shutdown", {"message": "pier: first", "reboot": True})
    assert status == 202, body
    task = json.loads(http_request("GET", f"{guest.api}/tasks/{body['taskID']}?wait=90")[2])
    assert task["state"] == "succeeded", task
    kept = json.loads(http_request("GET", f"{guest.api}/events?after=0&types=jobs.status&limit=1000")[2])
    messages = [e["params"][body["taskID"]]["message"] for e in kept["events"] if body["taskID"] in e["params"]]
    assert any("did not reach the guest's users: cannot run `wall`" in m for m in messages), messages

    # the reboot: the agent goes down, then comes up again
    wait_for(lambda: [e["guestAgent"] for e in agent_events(guest)][-2:] == ["down", "up"], timeout=120)
    guest.wait_agent(120)
    guest.close()  # the console of the guest before its reboot
    script = "printf '#!/bin/sh\\n(echo; echo \"WALL:$(cat)\") > /dev/ttyS0\\n' > /bin/wall && chmod +x /bin/wall"
    pid = guest.agent("guest-exec", {"path": "/bin/sh", "arg": ["-c", script]})["pid"]
    assert wait_for(lambda: guest.agent("guest-exec-status", {"pid": pid}).get("exited"))
    shell = guest.shell  # reads the console from now on
    status, body = post(guest, "shutdown", {"message": "pier: going down", "timeout": 60})
    assert status == 202, body
    task = json.loads(http_request("GET", f"{guest.api}/tasks/{body['taskID']}?wait=90")[2])
    assert task["state"] == "succeeded", task
    with shell._changed:
        assert shell._changed.wait_for(lambda: "WALL:pier: going down" in shell.buffer, 30), shell.buffer[-500:]


def test_a_hung_agent_stalls_neither_the_stats_nor_the_sampler(booted_guest: Guest) -> None:
    """qemu-ga stopped (SIGSTOP) answers nothing: VM.getStats still answers at once with fresh
    figures (statsAge) while the guest fields' ages grow, and after the agent response timeout Pier
    says the agent is away; once it connects again its fields are read again at once."""
    guest = booted_guest
    wait_for(lambda: "interfaces" in stats(guest).get("guestAgentAges", {}))
    guest.shell.run("killall -STOP qemu-ga")
    try:
        started = time.monotonic()
        slowest = 0.0
        found = stats(guest)
        while time.monotonic() - started < 35 and found["guestAgentState"] != "disconnected":
            asked = time.monotonic()
            found = stats(guest)
            slowest = max(slowest, time.monotonic() - asked)
            assert float(found["statsAge"]) < 5, found["statsAge"]  # the sampler goes on
            time.sleep(0.5)
        assert slowest < 1.0, slowest
        assert found["guestAgentState"] == "disconnected", found
        assert float(found["guestAgentAges"]["interfaces"]) > guest_module.AGENT_TIMEOUT - 1
    finally:
        guest.shell.run("killall -CONT qemu-ga")
    guest.shell.run("killall qemu-ga")  # restarted by the guest's init: libvirt says it connected
    wait_for(lambda: stats(guest)["guestAgentState"] == "connected", timeout=30)

"""pier.host.node.Node driven directly: on libvirt's test driver (a private `test:///<file>` per
test) and on the real libvirtd (`qemu:///system`, small diskless guests).

The reconnect test that kills libvirtd runs only with PIER_DISRUPTIVE=1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from pier.host.node import Node
from pier.rpc.errors import (
    CreateError,
    ImageError,
    InvalidParams,
    LibvirtUnavailable,
    NoVM,
    VMDown,
    VMExists,
)
from tests.integration.conftest import PrivateLibvirtd

DATA = Path(__file__).parent / "data"
OWN_THREADS = {"libvirt-event-loop", "libvirt-events", "libvirt-reconnect", "stats-sampler"}


class Events:
    """Collects what a Node emits; waits for a VM to reach a status."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, name: str, params: dict[str, Any]) -> None:
        with self._cond:
            self.threads.add(threading.current_thread().name)
            self.items.append((name, params))
            self._cond.notify_all()

    def statuses(self, vm_id: str) -> list[str]:
        with self._cond:
            return [p[vm_id]["status"] for n, p in self.items
                    if n == f"|virt|VM_status|{vm_id}"]

    def last(self, vm_id: str) -> dict[str, Any]:
        return [p[vm_id] for n, p in self.items if n == f"|virt|VM_status|{vm_id}"][-1]

    def wait_for(self, vm_id: str, statuses: list[str], timeout: float = 10.0) -> list[str]:
        """Wait until the VM's statuses end with `statuses`; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.statuses(vm_id)[-len(statuses):] != statuses:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.statuses(vm_id)


def new_id() -> str:
    return str(uuid.uuid4())


def own_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name in OWN_THREADS)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


def defined_names(node: Node) -> list[str]:
    return sorted(d.name() for d in node._connection.get().listAllDomains())


# -- the test driver ---------------------------------------------------------------------------


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    path = tmp_path / "testnode.xml"
    shutil.copy(DATA / "testnode.xml", path)
    return f"test://{path}"


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def node(test_uri: str, events: Events) -> Iterator[Node]:
    n = Node(test_uri, events, stats_interval=0.1, slow_stats_interval=0.3)
    n.start()
    assert n.connected
    yield n
    n.stop()
    assert own_threads() == []


@pytest.fixture
def image(tmp_path: Path) -> str:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * 4096)
    return str(path)


def vm_params(name: str, image: str | None = None, **extra: Any) -> dict[str, Any]:
    devices: list[dict[str, Any]] = [
        {"deviceType": "interface", "device": "network", "network": "default",
         "macAddr": "52:54:00:12:34:56", "nicModel": "virtio"},
        {"deviceType": "graphics", "device": "vnc", "port": "-1"},
    ]
    if image:
        devices.insert(0, {"deviceType": "disk", "device": "disk", "path": image,
                           "format": "raw", "iface": "virtio"})
    return {"vmName": name, "memSize": 64, "smp": "1", "devices": devices, **extra}


def test_create_pause_cont_destroy_with_events_in_order(node: Node, events: Events,
                                                        image: str) -> None:
    vm_id = new_id()
    info = node.vms.create(vm_id, vm_params("pier-test-a", image))
    assert (info["vmId"], info["vmName"], info["status"], info["memSize"]) == (
        vm_id, "pier-test-a", "Up", 64)
    assert {d["deviceType"] for d in info["devices"]} >= {"disk", "interface", "graphics"}
    disk = next(d for d in info["devices"] if d["deviceType"] == "disk")
    assert (disk["path"], disk["name"]) == (image, "vda")
    assert node.vms.listing() == [{"vmId": vm_id, "status": "Up"}]
    assert node.vms.listing(full=True)[0]["vmName"] == "pier-test-a"
    assert node.vms.status(vm_id) == "Up"

    assert node.vms.pause(vm_id)["status"] == "Paused"
    assert node.vms.status(vm_id) == "Paused"
    assert node.vms.cont(vm_id)["status"] == "Up"
    node.vms.destroy(vm_id)
    assert node.flush_events()

    assert events.statuses(vm_id) == ["WaitForLaunch", "Up", "Paused", "Up", "Down"]
    assert events.last(vm_id)["exitReason"] == 6
    assert events.threads == {"libvirt-events"}
    with pytest.raises(NoVM):
        node.vms.definition(vm_id)
    assert node.vms.listing() == [] and defined_names(node) == []


def test_create_from_raw_xml_fills_in_the_uuid(node: Node, image: str) -> None:
    vm_id = new_id()
    xml = f"""<domain type='test'><name>pier-test-raw</name><memory unit='MiB'>32</memory>
      <os><type>hvm</type></os><devices><disk type='file' device='disk'>
      <source file='{image}'/><target dev='vdb' bus='virtio'/></disk></devices></domain>"""
    info = node.vms.create(vm_id, {"xml": xml})
    assert info["vmId"] == vm_id and info["status"] == "Up"
    assert node._connection.get().lookupByName("pier-test-raw").UUIDString() == vm_id
    with pytest.raises(InvalidParams, match=vm_id):
        node.vms.create(vm_id, {"xml": xml.replace("<name>", f"<uuid>{new_id()}</uuid><name>")})
    other = new_id()
    named = xml.replace("<name>pier-test-raw", f"<uuid>{other}</uuid><name>pier-test-raw2")
    assert node.vms.create(None, {"xml": named})["vmId"] == other


def test_create_without_an_id_gives_the_vm_a_new_uuid(node: Node, image: str) -> None:
    info = node.vms.create(None, vm_params("pier-test-noid", image))
    assert info["vmId"] == str(uuid.UUID(info["vmId"]))
    assert node._connection.get().lookupByName("pier-test-noid").UUIDString() == info["vmId"]


def test_launch_paused_starts_paused(node: Node, events: Events) -> None:
    vm_id = new_id()
    info = node.vms.create(vm_id, vm_params("pier-test-paused", launchPaused=True))
    assert info["status"] == "Paused"
    assert node.flush_events()
    assert events.statuses(vm_id) == ["WaitForLaunch", "Paused"]
    assert node.vms.cont(vm_id)["status"] == "Up"


def test_duplicate_id_or_name_is_vm_exists(node: Node) -> None:
    vm_id = new_id()
    node.vms.create(vm_id, vm_params("pier-test-dup"))
    with pytest.raises(VMExists):
        node.vms.create(vm_id, vm_params("pier-test-other"))
    with pytest.raises(VMExists, match="pier-test-dup"):
        node.vms.create(new_id(), vm_params("pier-test-dup"))
    assert defined_names(node) == ["pier-test-dup"]


@pytest.mark.parametrize("verb", ["definition", "status", "stats", "destroy", "poweroff",
                                  "shutdown", "reboot", "reset", "pause", "cont"])
def test_unknown_vm_is_no_vm(node: Node, verb: str) -> None:
    with pytest.raises(NoVM):
        getattr(node.vms, verb)(new_id())


def test_missing_image_is_image_error_naming_the_path(node: Node, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.img")
    with pytest.raises(ImageError, match="nowhere.img") as err:
        node.vms.create(new_id(), vm_params("pier-test-noimg", missing))
    assert err.value.data == {"path": missing}
    assert defined_names(node) == [] and node.vms.listing() == []


def test_xml_libvirt_rejects_leaves_nothing_defined(node: Node) -> None:
    xml = """<domain type='test'><name>pier-test-bad</name><memory unit='MiB'>32</memory>
      <os><type>hvm</type></os><devices><disk type='file' device='disk'>
      <target dev='vda' bus='bogus'/></disk></devices></domain>"""
    with pytest.raises(CreateError, match="bogus"):
        node.vms.create(new_id(), {"xml": xml})
    assert defined_names(node) == [] and node.vms.listing() == []


def test_a_failed_start_is_undefined_again(node: Node, events: Events,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: libvirt.virDomain) -> int:
        raise libvirt.libvirtError("start refused by the test")

    monkeypatch.setattr(libvirt.virDomain, "create", refuse)
    vm_id = new_id()
    with pytest.raises(CreateError, match="cannot start"):
        node.vms.create(vm_id, vm_params("pier-test-nostart"))
    assert defined_names(node) == [] and node.vms.listing() == []
    assert node.flush_events()
    assert events.statuses(vm_id) == ["WaitForLaunch", "Down"]
    assert events.last(vm_id)["exitReason"] == 3
    assert "refused by the test" in events.last(vm_id)["exitMessage"]


def test_shutdown_goes_down_and_destroy_then_removes(node: Node, events: Events) -> None:
    vm_id = new_id()
    node.vms.create(vm_id, vm_params("pier-test-shut"))
    node.vms.shutdown(vm_id)
    assert node.vms.wait_status(vm_id, {"Down"}, 5.0) == "Down"
    assert events.wait_for(vm_id, ["Down"])[-1] == "Down"
    assert events.last(vm_id)["exitReason"] == 7
    assert node.vms.definition(vm_id)["status"] == "Down"
    with pytest.raises(VMDown):
        node.vms.pause(vm_id)
    with pytest.raises(VMDown):
        node.vms.shutdown(vm_id)
    node.vms.destroy(vm_id)
    assert node.flush_events()
    assert events.statuses(vm_id).count("Down") == 1
    assert defined_names(node) == []


def test_poweroff_keeps_the_vm_defined_and_down(node: Node, events: Events) -> None:
    vm_id = new_id()
    node.vms.create(vm_id, vm_params("pier-test-poweroff"))
    node.vms.poweroff(vm_id)
    assert node.vms.status(vm_id) == "Down"
    seen = events.wait_for(vm_id, ["Down"])
    # Under load the dispatcher may reach the start event after the VM is already off, and then
    # reports what is true now rather than a stale Up.
    assert seen[0] == "WaitForLaunch" and seen[-1] == "Down" and seen.count("Down") == 1, seen
    assert events.last(vm_id)["exitReason"] == 6
    node.vms.poweroff(vm_id)  # already off: nothing to do
    assert defined_names(node) == ["pier-test-poweroff"]
    node.vms.destroy(vm_id)
    assert node.flush_events() and events.statuses(vm_id).count("Down") == 1


def test_stats_are_sampled_for_a_running_vm(node: Node, image: str) -> None:
    vm_id = new_id()
    node.vms.create(vm_id, vm_params("pier-test-stats", image))
    stats = wait_until(lambda: node._sampler.stats(vm_id))
    assert stats["vmId"] == vm_id and stats["status"] == "Up"
    for key in ("vmName", "cpuUser", "cpuSys", "elapsedTime", "memUsage", "balloonInfo",
                "disks", "network", "monitorResponse", "statsAge", "statusTime"):
        assert key in stats, key
    assert float(stats["statsAge"]) < 5
    assert [s["vmId"] for s in node.vms.all_stats()] == [vm_id]
    node.vms.pause(vm_id)
    assert node.vms.stats(vm_id)["status"] == "Paused"
    node.vms.destroy(vm_id)
    assert wait_until(lambda: node.vms.all_stats() == [])


def test_host_facts(node: Node) -> None:
    caps = node.host.capabilities()
    for key in ("cpuModel", "cpuCores", "cpuSockets", "cpuThreads", "onlineCpus", "cpuSpeed",
                "cpuFlags", "memSize", "numaNodes", "numaNodeDistance", "kvmEnabled",
                "packages2", "operatingSystem", "uuid", "emulatedMachines", "vmTypes",
                "software_version"):
        assert key in caps, key
    assert caps["uuid"] == node.host.uuid() == node.host.uuid()
    assert int(caps["memSize"]) > 0 and caps["packages2"]["libvirt"]["version"]
    assert set(node.host.hardware_info()) == {"systemManufacturer", "systemProductName",
                                         "systemVersion", "systemSerialNumber", "systemUUID",
                                         "systemFamily"}
    stats = node.host.stats()
    for key in ("cpuUser", "cpuSys", "cpuIdle", "cpuLoad", "memFree", "memUsed", "swapTotal",
                "swapFree", "elapsedTime", "dateTime", "vmCount", "cpuStatistics",
                "numaNodeMemFree", "bootTime"):
        assert key in stats, key


def test_start_stop_start_leaves_no_thread_behind(test_uri: str, events: Events) -> None:
    n = Node(test_uri, events, stats_interval=0.1)
    for _ in range(2):
        started = time.monotonic()
        n.start()
        assert own_threads() == sorted(OWN_THREADS)
        n.stop()
        assert time.monotonic() - started < 3
        assert own_threads() == []


def test_lost_connection_serves_reads_fails_verbs_fast_and_resyncs(node: Node, events: Events
                                                                    ) -> None:
    vm_id = new_id()
    node.vms.create(vm_id, vm_params("pier-test-lost"))
    wait_until(lambda: node._sampler.stats(vm_id))
    node._connection.lost()
    assert not node.connected or node.flush_events()
    # Reads keep answering from the cache while the link is down (it may be back already).
    assert node.vms.listing()[0]["vmId"] == vm_id
    assert node.vms.stats(vm_id)["vmId"] == vm_id
    # The reconnected test driver starts from its file again: the VM is gone, and the resync
    # reports it.
    assert wait_until(lambda: node.connected, 5)
    assert events.wait_for(vm_id, ["Down"])[-1] == "Down"
    assert events.last(vm_id)["exitReason"] == 9
    assert wait_until(lambda: node.vms.listing() == [])


def test_verbs_fail_fast_while_disconnected(test_uri: str, events: Events,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(uri: str) -> libvirt.virConnect:
        raise libvirt.libvirtError("libvirtd is away (test)")

    monkeypatch.setattr(libvirt, "open", refuse)
    n = Node(test_uri, events)
    started = time.monotonic()
    n.start()
    try:
        assert not n.connected
        with pytest.raises(LibvirtUnavailable):
            n.vms.create(new_id(), vm_params("pier-test-away"))
        with pytest.raises(LibvirtUnavailable):
            n.vms.destroy(new_id())
        with pytest.raises(NoVM):
            n.vms.status(new_id())
        assert n.vms.listing() == [] and n.vms.all_stats() == []
        assert n.host.capabilities()["memSize"]
        assert time.monotonic() - started < 5, "a verb waited for a connection attempt"  # a bound, not a figure
    finally:
        n.stop()
    assert own_threads() == []


def test_all_vm_stats_lists_1000_vms(node: Node) -> None:
    """All of them, from the sampler's cache (bench/scale.py measures how fast: ~10 ms at p50)."""
    conn = node._connection.get()
    for i in range(1000):
        dom = conn.defineXML(f"<domain type='test'><name>pier-test-{i}</name>"
                             "<memory unit='MiB'>32</memory><os><type>hvm</type></os></domain>")
        dom.create()
    assert wait_until(lambda: len(node.vms.all_stats()) == 1000, 20)
    result = node.vms.all_stats()
    assert sorted(stats["vmName"] for stats in result) == sorted(f"pier-test-{i}" for i in range(1000))


def test_libvirtd_restart_reconnects_serves_cache_and_resyncs(private_libvirtd: PrivateLibvirtd,
                                                              events: Events) -> None:
    n = Node(private_libvirtd.uri, events, stats_interval=0.1, slow_stats_interval=0.2)
    n.start()
    try:
        assert n.connected
        preexisting = {v["vmId"] for v in n.vms.listing()}  # the test driver's own "test" VM
        vm_id = new_id()
        n.vms.create(vm_id, vm_params("pier-test-private"))
        assert wait_until(lambda: n._sampler.stats(vm_id))

        private_libvirtd.kill()
        assert wait_until(lambda: not n.connected, 5), "the close callback marks it dead"
        started = time.monotonic()
        with pytest.raises(LibvirtUnavailable):
            n.vms.pause(vm_id)
        with pytest.raises(LibvirtUnavailable):
            n.vms.create(new_id(), vm_params("pier-test-private-2"))
        assert time.monotonic() - started < 5, "verbs fail at once while libvirtd is away"  # a bound, not a figure
        assert n.vms.status(vm_id) == "Up"
        assert {v["vmId"] for v in n.vms.listing()} == preexisting | {vm_id}
        assert any(s["vmId"] == vm_id for s in n.vms.all_stats())
        assert n.vms.definition(vm_id)["vmName"] == "pier-test-private"

        private_libvirtd.start()
        assert wait_until(lambda: n.connected, 10), "reconnected with backoff"
        # The restarted daemon's test driver forgot our VM: the resync reports it gone, and
        # says nothing about the VM that is there before and after.
        assert events.wait_for(vm_id, ["Down"])[-1] == "Down"
        assert events.last(vm_id)["exitReason"] == 9
        assert all(events.statuses(v) == [] for v in preexisting)
        assert wait_until(lambda: {v["vmId"] for v in n.vms.listing()} == preexisting)
        vm2 = new_id()
        assert n.vms.create(vm2, vm_params("pier-test-private-3"))["status"] == "Up"
        assert events.wait_for(vm2, ["Up"])[-1] == "Up", "callbacks registered again"
    finally:
        n.stop()
    assert own_threads() == []


# -- the real libvirtd ---------------------------------------------------------------------------


def _system_libvirt() -> str | None:
    """Why qemu:///system cannot be used here, or None when it can."""
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        return f"qemu:///system is not reachable: {exc.get_error_message()}"
    try:
        net = conn.networkLookupByName("default")
        if not net.isActive():
            return "libvirt network 'default' is not active"
    except libvirt.libvirtError:
        return "libvirt network 'default' does not exist"
    finally:
        conn.close()
    return None


@pytest.fixture
def kvm_node(events: Events) -> Iterator[Node]:
    reason = _system_libvirt()
    if reason and os.environ.get("PIER_REQUIRE_KVM") == "1":
        pytest.fail(f"qemu:///system is required but unusable: {reason}")
    if reason:
        pytest.skip(reason)
    n = Node("qemu:///system", events, stats_interval=0.5, slow_stats_interval=1.0)
    n.start()
    created: list[str] = []
    n.created = created  # type: ignore[attr-defined]
    yield n
    for vm_id in created:
        try:
            n.vms.destroy(vm_id)
        except NoVM:
            pass
    n.stop()


def diskless(name: str, **extra: Any) -> dict[str, Any]:
    return {"vmName": name, "memSize": 32, "smp": "1",
            "kvmEnable": "true" if os.path.exists("/dev/kvm") else "false",
            "devices": [
                {"deviceType": "interface", "device": "network", "network": "default",
                 "nicModel": "virtio"},
                {"deviceType": "graphics", "device": "vnc", "port": "-1",
                 "listen": "127.0.0.1"},
            ], **extra}


def virsh_names() -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                          capture_output=True, text=True, check=False).stdout


@pytest.mark.kvm
def test_kvm_guest_create_pause_cont_destroy(kvm_node: Node, events: Events) -> None:
    vm_id = new_id()
    name = f"pier-test-kvm-{vm_id[:8]}"
    kvm_node.created.append(vm_id)  # type: ignore[attr-defined]
    started = time.monotonic()
    info = kvm_node.vms.create(vm_id, diskless(name))
    created_in = time.monotonic() - started
    assert info["status"] == "Up" and info["pid"] > 0
    assert info["kvmEnable"] is os.path.exists("/dev/kvm")
    assert info["display"] == "vnc" and info["displayPort"] >= 5900
    nic = next(d for d in info["devices"] if d["deviceType"] == "interface")
    assert nic["network"] == "default" and nic["alias"] and nic["macAddr"]

    assert kvm_node.vms.pause(vm_id)["status"] == "Paused"
    assert kvm_node.vms.cont(vm_id)["status"] == "Up"
    stats = wait_until(lambda: (s := kvm_node._sampler.stats(vm_id)) and s.get("cpuActual")
                       and s, 10)
    assert stats and "balloonInfo" in stats and stats["network"]
    started = time.monotonic()
    kvm_node.vms.destroy(vm_id)
    destroyed_in = time.monotonic() - started
    statuses = events.wait_for(vm_id, ["Down"])
    assert statuses == ["WaitForLaunch", "Up", "Paused", "Up", "Down"]
    assert name not in virsh_names()
    print(f"KVM guest: create {created_in:.2f} s, destroy {destroyed_in:.2f} s")


@pytest.mark.kvm
def test_kvm_failed_start_leaves_nothing_defined(kvm_node: Node) -> None:
    vm_id = new_id()
    name = f"pier-test-kvm-{vm_id[:8]}"
    params = diskless(name)
    params["devices"][0]["network"] = "pier-test-no-such-network"
    with pytest.raises(CreateError, match="pier-test-no-such-network"):
        kvm_node.vms.create(vm_id, params)
    assert name not in virsh_names()
    with pytest.raises(NoVM):
        kvm_node.vms.definition(vm_id)


@pytest.mark.kvm
@pytest.mark.disruptive
@pytest.mark.skipif(os.environ.get("PIER_DISRUPTIVE") != "1",
                    reason="kills libvirtd, which other tests share; set PIER_DISRUPTIVE=1")
def test_kvm_libvirtd_restart_reconnects_and_resyncs(kvm_node: Node, events: Events) -> None:
    vm_id = new_id()
    kvm_node.created.append(vm_id)  # type: ignore[attr-defined]
    kvm_node.vms.create(vm_id, diskless(f"pier-test-kvm-{vm_id[:8]}"))
    pid = int(Path("/run/libvirtd.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    try:
        assert wait_until(lambda: not kvm_node.connected, 5)
        assert kvm_node.vms.status(vm_id) == "Up"
        assert kvm_node.vms.listing([vm_id]) == [{"vmId": vm_id, "status": "Up"}]
        with pytest.raises(LibvirtUnavailable, match="libvirtd"):  # at once, not after a reconnect
            kvm_node.vms.pause(vm_id)
    finally:
        subprocess.run(["libvirtd", "-d"], check=False)
    assert wait_until(lambda: kvm_node.connected, 10)
    # qemu kept running: the resync finds nothing changed, and events flow on the new link.
    subprocess.run(["virsh", "-c", "qemu:///system", "suspend", vm_id], check=False,
                   capture_output=True)
    assert events.wait_for(vm_id, ["Paused"]) == ["WaitForLaunch", "Up", "Paused"]
    assert kvm_node.vms.status(vm_id) == "Paused"

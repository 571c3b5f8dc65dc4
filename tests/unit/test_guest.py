"""The guest agent poller and VDSM's guest fields, over a fake agent (an `AgentDomain`)."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import libvirt
import pytest

from pier.host import guest as guest_module
from pier.host.guest import AgentDomain, GuestAgents
from pier.host.guestinfo import (
    filesystem_fields,
    interface_fields,
    memory_stats,
    os_fields,
    timezone_fields,
    users_fields,
)
from pier.host.stats import StatsSampler
from pier.host.vmstate import VmCache

VM_A = "a0000000-0000-4000-8000-000000000000"
VM_B = "b0000000-0000-4000-8000-000000000000"
VM_C = "c0000000-0000-4000-8000-000000000000"

ADDRESSES = {
    "lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [
        {"type": libvirt.VIR_IP_ADDR_TYPE_IPV4, "addr": "127.0.0.1", "prefix": 8},
        {"type": libvirt.VIR_IP_ADDR_TYPE_IPV6, "addr": "::1", "prefix": 128}]},
    "eth0": {"hwaddr": "52:54:00:12:34:56", "addrs": [
        {"type": libvirt.VIR_IP_ADDR_TYPE_IPV6, "addr": "fe80::5054:ff:fe12:3456", "prefix": 64},
        {"type": libvirt.VIR_IP_ADDR_TYPE_IPV4, "addr": "192.168.122.50", "prefix": 24}]},
    "eth1": {"hwaddr": "52:54:00:ab:cd:ef", "addrs": None},
}
INFO = {
    libvirt.VIR_DOMAIN_GUEST_INFO_OS: {
        "os.id": "debian", "os.name": "Debian GNU/Linux", "os.version-id": "12", "os.machine": "x86_64",
        "os.kernel-release": "6.1.0-13-cloud-amd64", "os.variant": ""},
    libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME: {"hostname": "pier-guest"},
    libvirt.VIR_DOMAIN_GUEST_INFO_TIMEZONE: {"timezone.name": "CET", "timezone.offset": 3600},
    libvirt.VIR_DOMAIN_GUEST_INFO_USERS: {"user.count": 2, "user.0.name": "root", "user.1.name": "ann",
                                          "user.1.domain": "CORP", "user.1.login-time": 1},
    libvirt.VIR_DOMAIN_GUEST_INFO_FILESYSTEM: {
        "fs.count": 2, "fs.0.mountpoint": "/", "fs.0.name": "vda1", "fs.0.fstype": "ext4",
        "fs.0.total-bytes": 1000, "fs.0.used-bytes": 400, "fs.1.mountpoint": "/proc", "fs.1.fstype": "proc"},
}


def refusal(code: int) -> libvirt.libvirtError:
    exc = libvirt.libvirtError("refused by the fake agent")
    exc.get_error_code = lambda: code  # type: ignore[method-assign]
    exc.get_error_domain = lambda: libvirt.VIR_FROM_QEMU  # type: ignore[method-assign]
    exc.get_error_message = lambda: "refused by the fake agent"  # type: ignore[method-assign]
    return exc


class FakeAgent:
    """A domain whose guest agent answers INFO and ADDRESSES (less what `lacks`), or is down,
    or hangs until `release` is set."""

    def __init__(self, vm_id: str, *, down: bool = False, lacks: tuple[int, ...] = (),
                 hang: threading.Event | None = None) -> None:
        self.vm_id = vm_id
        self.down = down
        self.lacks = lacks
        self.hang = hang
        self.calls: list[int | str] = []
        self.period: int | None = None
        self.timeout: int | None = None

    def _answer(self, kind: int | str) -> None:
        self.calls.append(kind)
        if self.hang is not None:
            self.hang.wait(10)
        if self.down:
            raise refusal(libvirt.VIR_ERR_AGENT_UNRESPONSIVE)
        if kind in self.lacks:
            raise refusal(libvirt.VIR_ERR_OPERATION_UNSUPPORTED)

    def guestInfo(self, types: int = 0, flags: int = 0) -> dict[str, Any]:  # noqa: N802
        self._answer(types)
        return copy.deepcopy(INFO[types])

    def interfaceAddresses(self, source: int, flags: int = 0) -> dict[str, Any]:  # noqa: N802
        assert source == libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT
        self._answer("interfaces")
        return copy.deepcopy(ADDRESSES)

    def setMemoryStatsPeriod(self, period: int, flags: int = 0) -> int:  # noqa: N802
        self.period = period
        return 0

    def agentSetResponseTimeout(self, timeout: int, flags: int = 0) -> int:  # noqa: N802
        self.timeout = timeout
        return 0

    def UUIDString(self) -> str:  # noqa: N802
        return self.vm_id


def as_agent_domain(agent: FakeAgent) -> AgentDomain:
    """The fake as the poller sees it (mypy checks it against the Protocol libvirt's domain meets)."""
    return agent


class FakeConnection:
    """Stands in for pier.host.connection.Connection: looks the fake agents up by VM id."""

    connected = True

    def __init__(self, *agents: FakeAgent) -> None:
        self.agents = {a.vm_id: a for a in agents}

    def current(self) -> FakeConnection:
        return self

    def lookupByUUIDString(self, vm_id: str) -> FakeAgent:  # noqa: N802
        return self.agents[vm_id]


def wait_until(check: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError("timed out")


# -- VDSM's fields -------------------------------------------------------------------------------


def test_guest_ips_leave_out_loopback_and_list_ipv4_first() -> None:
    fields = interface_fields(ADDRESSES)
    assert fields["guestIPs"] == "192.168.122.50 fe80::5054:ff:fe12:3456"
    by_name = {i["name"]: i for i in fields["netIfaces"]}
    assert by_name["eth0"] == {"name": "eth0", "hw": "52:54:00:12:34:56", "inet": ["192.168.122.50"],
                               "inet6": ["fe80::5054:ff:fe12:3456"]}
    assert by_name["eth1"] == {"name": "eth1", "hw": "52:54:00:ab:cd:ef", "inet": [], "inet6": []}
    assert by_name["lo"]["inet"] == ["127.0.0.1"]


def test_os_timezone_users_and_filesystems_have_vdsm_shapes() -> None:
    os_info = os_fields(INFO[libvirt.VIR_DOMAIN_GUEST_INFO_OS])
    assert os_info["guestOs"] == "6.1.0-13-cloud-amd64"
    assert os_info["guestOsInfo"] == {"type": "linux", "arch": "x86_64", "kernel": "6.1.0-13-cloud-amd64",
                                      "distribution": "Debian GNU/Linux", "version": "12", "codename": ""}
    assert os_info["appsList"] == ["kernel-6.1.0-13-cloud-amd64"]
    assert os_fields({"os.id": "mswindows", "os.machine": "i686"})["guestOsInfo"]["type"] == "windows"
    assert os_fields({"os.machine": "i686"})["guestOsInfo"]["arch"] == "x86"
    assert timezone_fields(INFO[libvirt.VIR_DOMAIN_GUEST_INFO_TIMEZONE]) == {
        "guestTimezone": {"offset": 60, "zone": "CET"}}
    assert timezone_fields({}) == {}
    assert users_fields(INFO[libvirt.VIR_DOMAIN_GUEST_INFO_USERS]) == {"username": "root, ann@CORP"}
    assert filesystem_fields(INFO[libvirt.VIR_DOMAIN_GUEST_INFO_FILESYSTEM]) == {
        "disksUsage": [{"path": "/", "fs": "ext4", "total": "1000", "used": "400"}]}


def test_memory_stats_come_from_balloon_figures_once_the_guest_reports() -> None:
    assert memory_stats({"balloon.current": 1024, "balloon.maximum": 1024}) == {}
    stats = memory_stats({"balloon.available": 2000, "balloon.unused": 500, "balloon.usable": 900,
                          "balloon.major_fault": 3, "balloon.minor_fault": 7, "balloon.swap_in": 1})
    assert stats == {"mem_total": "2000", "mem_unused": "500", "mem_free": "900", "mem_cached": "0",
                     "swap_in": "1", "swap_out": "0", "majflt": "3", "pageflt": "10"}


# -- polling ---------------------------------------------------------------------------------------


def test_a_poll_fills_every_field_and_their_ages() -> None:
    agents = GuestAgents(FakeConnection())  # type: ignore[arg-type]
    agent = FakeAgent(VM_A)
    agents.poll([VM_A])  # not started: nothing runs, the VM is only known
    assert agents.fields(VM_A)["guestAgentState"] == "unknown"
    agents.poll_domain(VM_A, as_agent_domain(agent))
    fields = agents.fields(VM_A)
    assert fields["guestIPs"] == "192.168.122.50 fe80::5054:ff:fe12:3456"
    assert fields["guestFQDN"] == "pier-guest" and fields["username"] == "root, ann@CORP"
    assert fields["guestTimezone"] == {"offset": 60, "zone": "CET"}
    assert fields["disksUsage"][0]["path"] == "/"
    assert fields["guestAgentState"] == "connected"
    assert set(fields["guestAgentAges"]) == {"interfaces", "users", "os", "hostname", "timezone", "filesystem"}
    assert all(0 <= float(age) < 5 for age in fields["guestAgentAges"].values())
    calls = len(agent.calls)
    agents.poll_domain(VM_A, as_agent_domain(agent))
    assert len(agent.calls) == calls  # nothing was due yet


def test_an_agent_without_one_command_still_gives_the_others() -> None:
    agents = GuestAgents(FakeConnection())  # type: ignore[arg-type]
    agents.poll([VM_A])
    agents.poll_domain(VM_A, as_agent_domain(FakeAgent(VM_A, lacks=(libvirt.VIR_DOMAIN_GUEST_INFO_USERS,))))
    fields = agents.fields(VM_A)
    assert "username" not in fields and "users" not in fields["guestAgentAges"]
    assert fields["guestFQDN"] == "pier-guest" and fields["guestAgentState"] == "connected"


def test_an_agent_that_is_down_is_asked_once_then_left_until_it_connects() -> None:
    agents = GuestAgents(FakeConnection(), retry_interval=3600)  # type: ignore[arg-type]
    agent = FakeAgent(VM_A, down=True)
    agents.poll([VM_A])
    agents.poll_domain(VM_A, as_agent_domain(agent))
    assert agent.calls == ["interfaces"]  # the first refusal ends the poll
    assert agents.fields(VM_A)["guestAgentState"] == "disconnected"
    assert "guestIPs" not in agents.fields(VM_A)


def test_a_reader_changing_its_answer_changes_no_other() -> None:
    agents = GuestAgents(FakeConnection())  # type: ignore[arg-type]
    agents.poll([VM_A])
    agents.poll_domain(VM_A, as_agent_domain(FakeAgent(VM_A)))
    first = agents.fields(VM_A)
    pristine = copy.deepcopy(first)
    first["netIfaces"][0]["inet"].append("10.0.0.1")
    first["guestOsInfo"]["kernel"] = "changed"
    first["disksUsage"].clear()
    again = agents.fields(VM_A)
    assert again["netIfaces"] == pristine["netIfaces"] and again["guestOsInfo"] == pristine["guestOsInfo"]
    assert again["disksUsage"] == pristine["disksUsage"]


def test_a_vm_that_stops_running_is_forgotten() -> None:
    agents = GuestAgents(FakeConnection())  # type: ignore[arg-type]
    agents.poll([VM_A])
    agents.poll_domain(VM_A, as_agent_domain(FakeAgent(VM_A)))
    agents.poll([])
    assert agents.fields(VM_A) == {}


def test_a_hung_agent_does_not_stall_the_other_vms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest_module, "STUCK_AFTER", 0.05)
    release = threading.Event()
    hung, b, c = FakeAgent(VM_A, hang=release), FakeAgent(VM_B), FakeAgent(VM_C)
    agents = GuestAgents(FakeConnection(hung, b, c), workers=1, max_workers=3)  # type: ignore[arg-type]
    agents.start()
    try:
        agents.poll([VM_A, VM_B, VM_C])  # the only worker takes the hung VM first
        wait_until(lambda: hung.calls)

        def others_answered() -> bool:
            agents.poll([VM_A, VM_B, VM_C])  # as the sampler does on every sample
            return "guestIPs" in agents.fields(VM_B) and "guestIPs" in agents.fields(VM_C)

        wait_until(others_answered)
        assert not release.is_set() and "guestIPs" not in agents.fields(VM_A)
        assert b.period == guest_module.MEMORY_STATS_PERIOD  # the balloon reports from the first poll on
        assert b.timeout == guest_module.AGENT_TIMEOUT  # libvirt would wait for ever
    finally:
        release.set()
        agents.stop()
    assert "guestIPs" in agents.fields(VM_A)  # it answered once released


def test_an_agent_that_connects_is_polled_at_once_even_after_a_failure() -> None:
    agent = FakeAgent(VM_A, down=True)
    agents = GuestAgents(FakeConnection(agent), retry_interval=3600)  # type: ignore[arg-type]
    agents.start()
    try:
        agents.poll([VM_A])
        wait_until(lambda: agents.state(VM_A) == "disconnected")
        agent.down = False
        agents.poll([VM_A])  # still within the retry interval: not asked
        time.sleep(0.1)
        assert "guestIPs" not in agents.fields(VM_A)
        agents.agent_changed(VM_A, True)
        wait_until(lambda: "guestIPs" in agents.fields(VM_A))
    finally:
        agents.stop()


# -- the sampler --------------------------------------------------------------------------------


class _Domain:
    def __init__(self, vm_id: str) -> None:
        self._id = vm_id

    def UUIDString(self) -> str:  # noqa: N802
        return self._id

    def name(self) -> str:
        return "vm-" + self._id[0]


class _SampledConnection:
    """One running VM (A) with balloon statistics and one paused (B)."""

    connected = True

    def get(self) -> _SampledConnection:
        return self

    def getAllDomainStats(self, groups: int, flags: int) -> list:  # noqa: N802
        return [(_Domain(VM_A), {"state.state": libvirt.VIR_DOMAIN_RUNNING, "state.reason": 1,
                                 "balloon.current": 1024, "balloon.available": 900, "balloon.unused": 300}),
                (_Domain(VM_B), {"state.state": libvirt.VIR_DOMAIN_PAUSED, "state.reason": 1})]


class _Guest:
    def __init__(self) -> None:
        self.polled: list[list[str]] = []

    def poll(self, vm_ids: Any) -> None:
        self.polled.append(list(vm_ids))

    def fields(self, vm_id: str) -> dict[str, Any]:
        return {"guestIPs": "192.0.2.1", "guestAgentState": "connected"} if vm_id == VM_A else {}


def test_the_sampler_polls_running_vms_and_serves_their_guest_fields() -> None:
    guest = _Guest()
    sampler = StatsSampler(_SampledConnection(), VmCache(), interval=3600, slow_interval=3600,  # type: ignore[arg-type]
                           guest=guest)
    sampler.start()
    try:
        wait_until(sampler.all_stats)
    finally:
        sampler.stop()
    assert guest.polled[0] == [VM_A]  # a paused guest's agent cannot answer
    stats = sampler.stats(VM_A)
    assert stats is not None
    assert stats["guestIPs"] == "192.0.2.1" and stats["memoryStats"]["mem_total"] == "900"
    stats["memoryStats"]["mem_total"] = "changed"
    assert sampler.all_stats()[0]["memoryStats"]["mem_total"] == "900"

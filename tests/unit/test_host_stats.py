"""Turning libvirt bulk stats into VDSM VmStats figures, and the libvirt state -> VmStatus map."""

from __future__ import annotations

import copy
import time

import libvirt
import pytest

from pier.host.stats import (
    HostStats,
    StatsSampler,
    balloon_info,
    cpu_stats,
    disk_stats,
    nic_stats,
    stamped_copies,
)
from pier.host.vmstate import VmCache, state_status


def test_cpu_percentages_come_from_two_samples() -> None:
    first = (10.0, {"cpu.time": 1_000_000_000, "cpu.user": 100_000_000, "cpu.system": 0})
    # 2 s later: 1 s of cpu in total, of which 0.2 s is qemu's own (user + system).
    last = (12.0, {"cpu.time": 2_000_000_000, "cpu.user": 200_000_000,
                   "cpu.system": 100_000_000})
    out = cpu_stats(first, last)
    assert out == {"cpuUser": "40.00", "cpuSys": "10.00", "cpuActual": True,
                   "cpuUsage": "300000000"}
    assert cpu_stats(None, last)["cpuActual"] is False
    assert cpu_stats(None, None) == {"cpuUser": "0.00", "cpuSys": "0.00", "cpuActual": False}


def test_disk_rates_match_devices_by_name_not_index() -> None:
    first = (0.0, {"block.count": 2, "block.0.name": "sda", "block.1.name": "vda",
                   "block.1.rd.bytes": 1000, "block.1.rd.reqs": 10, "block.1.rd.times": 1000})
    last = (2.0, {"block.count": 2, "block.0.name": "vda", "block.1.name": "sda",
                  "block.0.rd.bytes": 5000, "block.0.rd.reqs": 20, "block.0.rd.times": 6000,
                  "block.0.capacity": 1 << 20, "block.0.physical": 4096})
    out = disk_stats(first, last)
    assert out["vda"]["readRate"] == "2000.0"
    assert out["vda"]["readLatency"] == "500"
    assert (out["vda"]["readOps"], out["vda"]["readBytes"]) == ("20", "5000")
    assert (out["vda"]["apparentsize"], out["vda"]["truesize"]) == (str(1 << 20), "4096")
    assert out["sda"]["readRate"] == "0.0"


def test_nic_counters_and_rates() -> None:
    first = (0.0, {"net.count": 1, "net.0.name": "vnet0", "net.0.rx.bytes": 0})
    last = (1.0, {"net.count": 1, "net.0.name": "vnet0", "net.0.rx.bytes": 1_250_000,
                  "net.0.tx.bytes": 7, "net.0.rx.errs": 1})
    nic = nic_stats(first, last)["vnet0"]
    assert nic["rxRate"] == "1.00"  # 10 Mbit/s of a 1000 Mbit/s link
    assert (nic["rx"], nic["tx"], nic["rxErrors"], nic["speed"]) == ("1250000", "7", "1", "1000")


def test_balloon_only_when_reported() -> None:
    assert balloon_info(None) == {}
    info = balloon_info((0.0, {"balloon.current": 1024, "balloon.maximum": 2048}))
    assert (info["balloon_cur"], info["balloon_max"]) == ("1024", "2048")


def test_stamping_sets_age_and_status_time() -> None:
    entries = stamped_copies([{"vmId": "a"}, {"vmId": "b"}], 0.0, True)
    assert all(e["statsAge"] == "0.00" and int(e["statusTime"]) > 2**31 for e in entries)


def test_stamping_marks_running_vms_unresponsive_when_libvirt_does_not_answer() -> None:

    def stamped(taken: float, connected: bool) -> tuple[str, dict]:
        running, down = stamped_copies([{"vmId": "a", "monitorResponse": "0"},
                                        {"vmId": "b", "status": "Down"}], taken, connected)
        assert "monitorResponse" not in down
        return running["monitorResponse"], running

    assert stamped(time.monotonic(), True)[0] == "0"
    assert stamped(time.monotonic(), False)[0] == "-1", "libvirtd is away"
    old, entry = stamped(time.monotonic() - 61, True)
    assert old == "-1" and float(entry["statsAge"]) >= 61, "a sample older than VDSM's 60 s command timeout"


def test_host_stats_say_whether_libvirt_answers() -> None:
    assert HostStats(lambda: (0, 0, 0), lambda: False).get()["libvirtConnected"] is False
    assert HostStats(lambda: (0, 0, 0), lambda: True).get()["libvirtConnected"] is True


@pytest.mark.parametrize("state, reason, status, detail", [
    (libvirt.VIR_DOMAIN_RUNNING, 1, "Up", {}),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, "Paused", {"pauseCode": "NOERR"}),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR, "Paused", {"pauseCode": "EIO"}),
    (libvirt.VIR_DOMAIN_SHUTDOWN, 0, "Powering down", {}),
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, "Down", {"exitReason": 7}),
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, "Down", {"exitReason": 6}),
    (libvirt.VIR_DOMAIN_CRASHED, 0, "Down", {"exitCode": 1}),
])
def test_libvirt_states_map_to_vdsm_statuses(state: int, reason: int, status: str,
                                             detail: dict) -> None:
    got, details = state_status(state, reason)
    assert got == status
    assert detail.items() <= details.items()


def test_host_stats_have_vdsm_names_and_types() -> None:
    stats = HostStats(lambda: (3, 2, 0), lambda: True)
    first = stats.get()
    assert (first["vmCount"], first["vmActive"], first["vmMigrating"]) == (3, 2, 0)
    for key in ("cpuUser", "cpuSys", "cpuIdle", "cpuLoad", "memUsed", "elapsedTime"):
        assert isinstance(first[key], str), key
    for key in ("memFree", "swapTotal", "swapFree", "memShared"):
        assert isinstance(first[key], int), key
    assert first["cpuStatistics"] and all(
        set(v) == {"cpuUser", "cpuSys", "cpuIdle", "nodeIndex"}
        for v in first["cpuStatistics"].values())
    assert first["dateTime"].endswith(" GMT")


class _Domain:
    def __init__(self, vm_id: str, name: str) -> None:
        self._id, self._name = vm_id, name

    def UUIDString(self) -> str:  # noqa: N802 (libvirt's name)
        return self._id

    def name(self) -> str:
        return self._name


class _Connection:
    """Stands in for pier.host.connection.Connection: one running VM with a disk and a NIC."""

    connected = True
    values = {"state.state": libvirt.VIR_DOMAIN_RUNNING, "state.reason": 1, "vcpu.current": 1,
              "cpu.time": 10**9, "cpu.user": 10**8, "cpu.system": 0,
              "balloon.current": 1024, "balloon.maximum": 2048,
              "block.count": 1, "block.0.name": "vda", "block.0.rd.bytes": 512,
              "net.count": 1, "net.0.name": "vnet0", "net.0.rx.bytes": 64}

    def get(self) -> _Connection:
        return self

    def getAllDomainStats(self, groups: int, flags: int) -> list:  # noqa: N802 (libvirt's name)
        return [(_Domain(VM_A, "vm-a"), dict(self.values))]


VM_A = "a0000000-0000-4000-8000-000000000000"


def _mutate_everything(value: object) -> None:
    """Change every figure of a stats answer, at every depth, and add a key to every dict."""
    if isinstance(value, dict):
        for key in list(value):
            if isinstance(value[key], dict | list):
                _mutate_everything(value[key])
            else:
                value[key] = "mutated"
        value["added"] = "by a reader"
    elif isinstance(value, list):
        for item in value:
            _mutate_everything(item)


def _unstamped(stats: list[dict]) -> list[dict]:
    return [{k: v for k, v in s.items() if k not in ("statsAge", "statusTime")} for s in stats]


def test_a_readers_changes_to_its_answer_do_not_show_in_the_next() -> None:
    sampler = StatsSampler(_Connection(), VmCache(), interval=3600, slow_interval=3600)  # type: ignore[arg-type]
    sampler.start()
    try:
        deadline = time.monotonic() + 5
        while not sampler.all_stats() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sampler.stop()
    first = sampler.all_stats()
    assert first[0]["disks"]["vda"] and first[0]["network"]["vnet0"] and first[0]["balloonInfo"]
    pristine = copy.deepcopy(first)
    _mutate_everything(first)
    _mutate_everything(sampler.stats(VM_A))
    assert _unstamped(sampler.all_stats()) == _unstamped(pristine)
    assert _unstamped([sampler.stats(VM_A)]) == _unstamped(pristine)

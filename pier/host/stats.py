"""Statistics: the bulk VM sampler (`stats-sampler` thread) and the host's own statistics.

`StatsSampler` calls `getAllDomainStats` on an interval: cheap groups (state, vcpu,
interface, block) every `interval`, dear ones (cpu-total, balloon) every `slow_interval`,
with the NOWAIT flag so a VM busy in another job never stalls a sample. Each sample is
turned into VDSM VmStats dicts right away, so `all_stats()` only hands out copies of them.
Rates come from the difference between two samples. While libvirtd is away the last sample is
served, marked as VDSM marks stats it could not refresh: `statsAge` grows and `monitorResponse`
is "-1" (also when a sample is older than VDSM's 60 s command timeout). After each sample the
running VMs go to the guest agent poller (`pier.host.guest`), which never makes the sampler wait;
its fields, with their own ages, are added to each answer. `HostStats` reads /proc only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import libvirt

from pier.host.capabilities import meminfo, read
from pier.host.connection import Connection
from pier.host.domain import libvirt_errors
from pier.host.events import event_time
from pier.host.guestinfo import memory_stats
from pier.host.vmstate import DOWN, POWERING_DOWN, UP, VmCache, state_status
from pier.rpc.errors import LibvirtUnavailable
from pier.rpc.threads import OwnedThread

log = logging.getLogger(__name__)

FAST_GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_VCPU
               | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)
SLOW_GROUPS = libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON
NOWAIT = getattr(libvirt, "VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT", 0)
_NIC_SPEED_MBPS = 1000
MONITOR_TIMEOUT = 60.0  # VDSM's vm_command_timeout: stats this old mean the VM's monitor does not answer

Sample = tuple[float, dict[str, Any]]  # (monotonic time, raw libvirt stats of one VM)
_AGENT_POLLED = (UP, POWERING_DOWN)  # a paused guest's agent cannot answer


class GuestSource(Protocol):
    """Where the guest fields come from (`pier.host.guest.GuestAgents`)."""

    def poll(self, vm_ids: Iterable[str]) -> None:
        """Queue polls of these running VMs' agents; never waits."""
        ...

    def fields(self, vm_id: str) -> dict[str, Any]:
        """The VM's guest fields with their ages (the caller's own copy); {} when none."""
        ...


class StatsSampler:
    """Owns the `stats-sampler` thread and the latest VmStats of every VM."""

    THREAD_NAME = "stats-sampler"

    def __init__(self, connection: Connection, cache: VmCache, interval: float = 2.0,
                 slow_interval: float = 15.0, guest: GuestSource | None = None) -> None:
        """`guest` is told after each sample which VMs run, and adds its fields to each answer."""
        self._connection = connection
        self._guest = guest
        self._cache = cache
        self._interval = interval
        self._slow_interval = slow_interval
        self._groups = FAST_GROUPS | SLOW_GROUPS
        self._flags = NOWAIT
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: OwnedThread | None = None
        # per VM: [previous fast, latest fast, previous slow, latest slow]
        self._samples: dict[str, list[Sample | None]] = {}
        self._by_id: dict[str, dict[str, Any]] = {}
        self._all: list[dict[str, Any]] = []
        self._taken = 0.0

    # -- owner ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = OwnedThread(self.THREAD_NAME, self._run, wake=self._kick.set)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.stop()
        self._thread = None

    def kick(self) -> None:
        """Sample soon (the set of VMs changed)."""
        self._kick.set()

    # -- readers (any thread) --------------------------------------------------------------------

    def all_stats(self) -> list[dict[str, Any]]:
        """VmStats of every VM from the latest sample: the caller's own copies, stamped now."""
        return self._with_guest(stamped_copies(self._all, self._taken, self._connection.connected))

    def stats(self, vm_id: str) -> dict[str, Any] | None:
        """One VM's VmStats from the latest sample (the caller's own copy), or None."""
        found = self._by_id.get(vm_id)
        if found is None:
            return None
        return self._with_guest(stamped_copies([found], self._taken, self._connection.connected))[0]

    def _with_guest(self, stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add the guest agent's fields (as they are now, with their ages) to running VMs' stats."""
        if self._guest is not None:
            for entry in stats:
                if entry.get("status") != DOWN:
                    entry.update(self._guest.fields(entry["vmId"]))
        return stats

    def patch_status(self, vm_id: str, status: str | None) -> None:
        """Keep the prepared stats' status current between samples (called on changes)."""
        entry = self._by_id.get(vm_id)
        if entry is None:
            if status is not None:
                self.kick()
            return
        if status is None:
            self._by_id = {k: v for k, v in self._by_id.items() if k != vm_id}
            self._all = [s for s in self._all if s is not entry]
            self.kick()
        elif entry.get("status") != status:
            entry["status"] = status

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        next_slow = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            slow = now >= next_slow
            if slow:
                next_slow = now + self._slow_interval
            try:
                self._sample(slow)
            except Exception:
                log.exception("stats sample failed")
            self._kick.wait(self._interval)
            self._kick.clear()

    def _sample(self, slow: bool) -> None:
        try:
            conn = self._connection.get()
        except LibvirtUnavailable:
            return  # keep serving the last sample; statsAge tells how old it is
        groups = self._groups if slow else self._groups & FAST_GROUPS
        try:
            with libvirt_errors(self._connection, conn, action="sample the VMs' statistics"):
                try:
                    raw = conn.getAllDomainStats(groups, self._flags)
                except libvirt.libvirtError as exc:
                    if not self._degrade(exc):
                        raise
                    return
        except LibvirtUnavailable:
            return  # keep serving the last sample; statsAge tells how old it is
        taken = time.monotonic()
        seen: dict[str, tuple[str, dict[str, Any]]] = {}
        for dom, values in raw:
            seen[dom.UUIDString()] = (dom.name(), values)
        self._ingest(seen, taken, slow)

    def _degrade(self, exc: libvirt.libvirtError) -> bool:
        """Drop what the driver refuses (the NOWAIT flag, then the dear groups)."""
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
            return False
        if self._flags:
            log.info("getAllDomainStats refuses NOWAIT; sampling without it")
            self._flags = 0
            return True
        if self._groups & SLOW_GROUPS:
            log.info("getAllDomainStats refuses cpu-total/balloon; sampling without them")
            self._groups &= ~SLOW_GROUPS
            return True
        return False

    def _ingest(self, seen: dict[str, tuple[str, dict[str, Any]]], taken: float,
                slow: bool) -> None:
        samples = self._samples
        for vm_id in [v for v in samples if v not in seen]:
            del samples[vm_id]
        by_id: dict[str, dict[str, Any]] = {}
        for count, (vm_id, (name, values)) in enumerate(seen.items()):
            slots = samples.setdefault(vm_id, [None, None, None, None])
            slots[0], slots[1] = slots[1], (taken, values)
            if slow:
                slots[2], slots[3] = slots[3], (taken, values)
            by_id[vm_id] = self._vm_stats(vm_id, name, slots)
            if count % 200 == 199:
                time.sleep(0)  # let serving threads in: a long burst holding the GIL delays every reply
        self._by_id = by_id
        self._all = list(by_id.values())
        for vm_id, entry in by_id.items():  # a status change while building went to the old sample
            rec = self._cache.get(vm_id)
            if rec is not None and entry["status"] != rec.status:
                entry["status"] = rec.status
        self._taken = taken
        if self._guest is not None:
            self._guest.poll([vm_id for vm_id, entry in by_id.items() if entry["status"] in _AGENT_POLLED])

    def _vm_stats(self, vm_id: str, name: str, slots: list[Sample | None]) -> dict[str, Any]:
        fast = slots[1]
        assert fast is not None
        values = fast[1]
        rec = self._cache.get(vm_id)
        if rec is not None:
            status, details = rec.status, rec.details
        else:
            status, details = state_status(values.get("state.state", 0),
                                           values.get("state.reason", 0))
        if status == DOWN:
            return {"vmId": vm_id, "vmName": name, "status": DOWN, "timeOffset": "0",
                    "statsAge": "0.00", "statusTime": "0", **details}
        out: dict[str, Any] = {
            "vmId": vm_id,
            "vmName": name,
            "status": status,
            "vmType": "kvm",
            "kvmEnable": "true",
            "acpiEnable": "true",
            "monitorResponse": "0",
            "timeOffset": "0",
            "memUsage": "0",
            "elapsedTime": "0",
            "statsAge": "0.00",
            "statusTime": "0",
        }
        if rec is not None and rec.started_at is not None:
            out["elapsedTime"] = str(int(fast[0] - rec.started_at))
        out.update(details)
        if "vcpu.current" in values:
            out["vcpuCount"] = str(values["vcpu.current"])
        out.update(cpu_stats(slots[2], slots[3]))
        out["balloonInfo"] = balloon_info(slots[3])
        if slots[3] is not None:
            memory = memory_stats(slots[3][1])
            if memory:
                out["memoryStats"] = memory
        out["disks"] = disk_stats(slots[0], fast)
        out["network"] = nic_stats(slots[0], fast)
        return out


def stamped_copies(stats: list[dict[str, Any]], taken: float, connected: bool
                   ) -> list[dict[str, Any]]:
    """Copies of prepared VmStats for one reader, with statsAge, statusTime and (for running
    VMs) monitorResponse set at the moment of serving. The prepared entries stay untouched, so
    what one caller does with its answer never shows in another's."""
    seconds = max(0.0, time.monotonic() - taken) if taken else 0.0
    stamp = {"statsAge": f"{seconds:.2f}", "statusTime": str(event_time())}
    running = {**stamp, "monitorResponse": "0" if connected and seconds < MONITOR_TIMEOUT else "-1"}
    return [_own_copy(entry, running if "monitorResponse" in entry else stamp)
            for entry in stats]


def _own_copy(entry: dict[str, Any], stamp: dict[str, str]) -> dict[str, Any]:
    """A copy of one VM's prepared VmStats, as deep as `_vm_stats` builds them: `disks` and
    `network` map a device to a dict of figures, `balloonInfo` and `memoryStats` are dicts of figures, and every
    other value is immutable (about 1.3 ms for 1000 VMs, where copy.deepcopy takes 25 ms)."""
    out = {**entry, **stamp}
    for key in ("disks", "network"):
        devices = entry.get(key)
        if devices:
            out[key] = {name: figures.copy() for name, figures in devices.items()}
    for key in ("balloonInfo", "memoryStats"):
        figures = entry.get(key)
        if figures:
            out[key] = figures.copy()
    return out


def cpu_stats(prev: Sample | None, last: Sample | None) -> dict[str, Any]:
    """cpuUser (guest time), cpuSys (qemu's own time), in percent of one host CPU."""
    out: dict[str, Any] = {"cpuUser": "0.00", "cpuSys": "0.00", "cpuActual": False}
    if last is None or "cpu.time" not in last[1]:
        return out
    lv = last[1]
    out["cpuUsage"] = str(lv.get("cpu.user", 0) + lv.get("cpu.system", 0))
    if prev is None or last[0] <= prev[0] or "cpu.time" not in prev[1]:
        return out
    pv = prev[1]
    interval_ns = (last[0] - prev[0]) * 1e9
    overhead = ((lv.get("cpu.user", 0) - pv.get("cpu.user", 0))
                + (lv.get("cpu.system", 0) - pv.get("cpu.system", 0)))
    guest = lv["cpu.time"] - pv["cpu.time"] - overhead
    out["cpuSys"] = f"{max(0.0, 100.0 * overhead / interval_ns):.2f}"
    out["cpuUser"] = f"{max(0.0, 100.0 * guest / interval_ns):.2f}"
    out["cpuActual"] = True
    return out


def balloon_info(last: Sample | None) -> dict[str, Any]:
    if last is None or "balloon.current" not in last[1]:
        return {}
    v = last[1]
    return {
        "balloon_max": str(v.get("balloon.maximum", 0)),
        "balloon_cur": str(v.get("balloon.current", 0)),
        "balloon_target": str(v.get("balloon.current", 0)),
        "balloon_min": "0",
        "ballooning_enabled": True,
    }


def _indexed(values: dict[str, Any], prefix: str) -> dict[str, int]:
    """{device name: index} for libvirt's "block.N.name" / "net.N.name" keys."""
    out: dict[str, int] = {}
    for i in range(values.get(f"{prefix}.count", 0)):
        name = values.get(f"{prefix}.{i}.name")
        if name:
            out[name] = i
    return out


def _delta(lv: dict[str, Any], key: str, pv: dict[str, Any], pkey: str | None) -> int:
    if pkey is None:
        return 0
    return max(0, lv.get(key, 0) - pv.get(pkey, 0))


def disk_stats(prev: Sample | None, last: Sample) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    lv = last[1]
    pv = prev[1] if prev is not None else {}
    prev_index = _indexed(pv, "block")
    dt = last[0] - prev[0] if prev is not None else 0.0
    for name, i in _indexed(lv, "block").items():
        key = f"block.{i}."
        j = prev_index.get(name)
        pkey = f"block.{j}." if j is not None else None
        deltas = {f: _delta(lv, key + f, pv, pkey and pkey + f)
                  for f in ("rd.bytes", "wr.bytes", "rd.reqs", "wr.reqs", "fl.reqs",
                            "rd.times", "wr.times", "fl.times")}
        latency = {k: str(deltas[f"{k}.times"] // deltas[f"{k}.reqs"])
                   if deltas[f"{k}.reqs"] else "0" for k in ("rd", "wr", "fl")}
        out[name] = {
            "readRate": f"{deltas['rd.bytes'] / dt:.1f}" if dt > 0 else "0.0",
            "writeRate": f"{deltas['wr.bytes'] / dt:.1f}" if dt > 0 else "0.0",
            "readOps": str(lv.get(key + "rd.reqs", 0)),
            "writeOps": str(lv.get(key + "wr.reqs", 0)),
            "readBytes": str(lv.get(key + "rd.bytes", 0)),
            "writtenBytes": str(lv.get(key + "wr.bytes", 0)),
            "readLatency": latency["rd"],
            "writeLatency": latency["wr"],
            "flushLatency": latency["fl"],
            "apparentsize": str(lv.get(key + "capacity", 0)),
            "truesize": str(lv.get(key + "physical", lv.get(key + "allocation", 0))),
        }
    return out


def nic_stats(prev: Sample | None, last: Sample) -> dict[str, dict[str, Any]]:
    """Per-NIC counters; rxRate/txRate are percent of link speed, as VDSM reported them."""
    out: dict[str, dict[str, Any]] = {}
    lv = last[1]
    pv = prev[1] if prev is not None else {}
    prev_index = _indexed(pv, "net")
    dt = last[0] - prev[0] if prev is not None else 0.0
    for name, i in _indexed(lv, "net").items():
        key = f"net.{i}."
        j = prev_index.get(name)
        pkey = f"net.{j}." if j is not None else None
        rates = {}
        for field in ("rx.bytes", "tx.bytes"):
            moved = _delta(lv, key + field, pv, pkey and pkey + field)
            rates[field] = (f"{100.0 * moved * 8 / dt / (_NIC_SPEED_MBPS * 1e6):.2f}"
                            if pkey and dt > 0 else "0.0")
        out[name] = {
            "name": name,
            "speed": str(_NIC_SPEED_MBPS),
            "state": "unknown",
            "rx": str(lv.get(key + "rx.bytes", 0)),
            "tx": str(lv.get(key + "tx.bytes", 0)),
            "rxErrors": str(lv.get(key + "rx.errs", 0)),
            "txErrors": str(lv.get(key + "tx.errs", 0)),
            "rxDropped": str(lv.get(key + "rx.drop", 0)),
            "txDropped": str(lv.get(key + "tx.drop", 0)),
            "rxRate": rates["rx.bytes"],
            "txRate": rates["tx.bytes"],
            "sampleTime": last[0],
        }
    return out


class HostStats:
    """HostStats from /proc and /sys; CPU percentages are over the time since the last call."""

    MIN_INTERVAL = 0.5

    def __init__(self, vm_counts: Callable[[], tuple[int, int, int]],
                 connected: Callable[[], bool],
                 migration_counts: Callable[[], tuple[int, int]] | None = None) -> None:
        """`vm_counts` gives (all, running, migrating) VMs from the cache; `connected` whether
        libvirtd answers now (when not, the counts may be stale); `migration_counts` the
        (incoming, outgoing) migrations."""
        self._vm_counts = vm_counts
        self._migration_counts = migration_counts or (lambda: (0, 0))
        self._connected = connected
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._prev: tuple[float, dict[str, list[int]], tuple[int, int]] | None = None
        self._cpu: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        cpu = self._cpu_figures()
        mem = meminfo()
        total, active, migrating = self._vm_counts()
        incoming, outgoing = self._migration_counts()
        avail = mem.get("MemAvailable", mem.get("MemFree", 0))
        mem_total = max(mem.get("MemTotal", 1), 1)
        load = read("/proc/loadavg", "0 0 0").split()
        out: dict[str, Any] = {
            **cpu,
            "cpuLoad": load[0],
            "memFree": avail // 1024,
            "memUsed": str(100 - avail * 100 // mem_total),
            "memShared": 0,
            "memAvailable": avail // 1024,
            "swapTotal": mem.get("SwapTotal", 0) // 1024,
            "swapFree": mem.get("SwapFree", 0) // 1024,
            "anonHugePages": str(mem.get("AnonHugePages", 0) // 1024),
            "elapsedTime": str(int(time.monotonic() - self._started)),
            "bootTime": _boot_time(),
            "dateTime": time.strftime("%Y-%m-%dT%H:%M:%S GMT", time.gmtime()),
            "vmCount": total,
            "vmActive": active,
            "vmMigrating": migrating,
            "libvirtConnected": self._connected(),
            "incomingVmMigrations": incoming,
            "outgoingVmMigrations": outgoing,
            "numaNodeMemFree": _numa_free(),
            "ksmState": read("/sys/kernel/mm/ksm/run", "0") == "1",
            "ksmPages": int(read("/sys/kernel/mm/ksm/pages_to_scan", "0") or 0),
            "ksmCpu": 0,
            "ksmMergeAcrossNodes": read("/sys/kernel/mm/ksm/merge_across_nodes", "1") == "1",
            "thpState": _thp_state(),
            "momStatus": "inactive",
            "netConfigDirty": "False",
            "rxDropped": "0",
            "txDropped": "0",
            "network": {},
            "storageDomains": {},
            "diskStats": {},
        }
        return out

    def _cpu_figures(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._prev is not None and now - self._prev[0] < self.MIN_INTERVAL and self._cpu:
                return self._cpu
            cur = _proc_stat()
            own = _own_cpu()
            if self._prev is None:
                base: dict[str, list[int]] = {k: [0] * len(v) for k, v in cur.items()}
                own_base, dt = (0, 0), 0.0
            else:
                _, base, own_base = self._prev
                dt = now - self._prev[0]
            self._prev = (now, cur, own)
            total = _percentages(base.get("cpu"), cur["cpu"])
            per_cpu = {}
            nodes = _cpu_nodes()
            for name, values in cur.items():
                if name == "cpu":
                    continue
                index = name[3:]
                user, sys_, idle = _percentages(base.get(name), values)
                per_cpu[index] = {"cpuUser": user, "cpuSys": sys_, "cpuIdle": idle,
                                  "nodeIndex": nodes.get(int(index), 0)}
            ticks = os.sysconf("SC_CLK_TCK") * max(dt, 1e-9) if dt else 0
            ncpu = max(len(per_cpu), 1)
            self._cpu = {
                "cpuUser": total[0], "cpuSys": total[1], "cpuIdle": total[2],
                "cpuStatistics": per_cpu,
                "cpuUserVdsmd": f"{100.0 * (own[0] - own_base[0]) / ticks / ncpu:.2f}"
                if ticks else "0.00",
                "cpuSysVdsmd": f"{100.0 * (own[1] - own_base[1]) / ticks / ncpu:.2f}"
                if ticks else "0.00",
            }
            return self._cpu


def _proc_stat() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in read("/proc/stat").splitlines():
        if line.startswith("cpu"):
            name, *fields = line.split()
            out[name] = [int(f) for f in fields]
    return out


def _percentages(old: list[int] | None, new: list[int]) -> tuple[str, str, str]:
    """(user, sys, idle) percent between two /proc/stat cpu lines."""
    old = old or [0] * len(new)
    d = [n - o for n, o in zip(new, old, strict=False)]
    total = sum(d[:8]) or 1
    user = d[0] + d[1]
    sys_ = d[2] + d[5] + d[6]
    idle = d[3] + d[4]
    return (f"{100.0 * user / total:.2f}", f"{100.0 * sys_ / total:.2f}",
            f"{100.0 * idle / total:.2f}")


def _own_cpu() -> tuple[int, int]:
    fields = read("/proc/self/stat").rsplit(")", 1)[-1].split()
    return (int(fields[11]), int(fields[12])) if len(fields) > 12 else (0, 0)


def _cpu_nodes() -> dict[int, int]:
    out: dict[int, int] = {}
    base = "/sys/devices/system/node/"
    try:
        names = [n for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit()]
    except OSError:
        return out
    for node in names:
        for part in read(f"{base}{node}/cpulist").split(","):
            if "-" in part:
                lo, hi = part.split("-")
                for cpu in range(int(lo), int(hi) + 1):
                    out[cpu] = int(node[4:])
            elif part.strip():
                out[int(part)] = int(node[4:])
    return out


def _numa_free() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    base = "/sys/devices/system/node/"
    try:
        names = [n for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit()]
    except OSError:
        return out
    for node in sorted(names):
        total = free = 0
        for line in read(f"{base}{node}/meminfo").splitlines():
            if "MemTotal:" in line:
                total = int(line.split()[-2])
            elif "MemFree:" in line:
                free = int(line.split()[-2])
        out[node[4:]] = {"memFree": str(free // 1024),
                         "memPercent": 100 - free * 100 // total if total else 0}
    return out


def _boot_time() -> str:
    for line in read("/proc/stat").splitlines():
        if line.startswith("btime"):
            return line.split()[1]
    return "0"


def _thp_state() -> dict[str, str]:
    text = read("/sys/kernel/mm/transparent_hugepage/enabled")
    state = text[text.find("[") + 1:text.find("]")] if "[" in text else "never"
    return {"state": state}

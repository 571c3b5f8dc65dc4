"""Network statistics: the `network-sampler` thread and VDSM's HostNetworkStatistics.

Every `interval` seconds the sampler dumps the links over netlink (one request: each link's
64-bit counters come with it) and reads the NICs' speeds, then prepares the answer at once, so
`Host.getNetworkStatistics` and `Host.getStats` only hand out the latest one and never scan the
kernel per call. Rates (`rxBytesPerSec`, `txBytesPerSec`, Pier's own fields) come from the
difference between the last two samples; the loopback device is left out, as VDSM does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pier.host.network.facts import is_nic
from pier.host.network.kernel import Link

log = logging.getLogger(__name__)

Sample = tuple[float, dict[str, Link]]  # (monotonic time, links by name)


def read_speed(name: str) -> int:
    """A NIC's speed in Mb/s from sysfs (0 when unknown, down, or not reported)."""
    try:
        with open(f"/sys/class/net/{name}/speed") as f:
            speed = int(f.read().strip())
    except (OSError, ValueError):
        return 0
    return max(speed, 0)


def state_of(link: Link) -> str:
    """VDSM's interface state: up, down or unknown."""
    if not link.up:
        return "down"
    return {"UP": "up", "UNKNOWN": "unknown"}.get(link.operstate, "down")


def interface_stats(link: Link, previous: Link | None, elapsed: float, speed: int,
                    sample_time: float) -> dict[str, Any]:
    """One device's HostNetworkInterfaceStats (VDSM's numbers are strings)."""
    counters = link.stats
    out: dict[str, Any] = {
        "name": link.name, "state": state_of(link), "speed": str(speed), "sampleTime": sample_time,
        "rx": str(counters["rx_bytes"]), "tx": str(counters["tx_bytes"]),
        "rxErrors": str(counters["rx_errors"]), "txErrors": str(counters["tx_errors"]),
        "rxDropped": str(counters["rx_dropped"]), "txDropped": str(counters["tx_dropped"]),
    }
    for key, field in (("rx_bytes", "rxBytesPerSec"), ("tx_bytes", "txBytesPerSec")):
        delta = counters[key] - previous.stats[key] if previous is not None and elapsed > 0 else 0
        out[field] = str(int(max(delta, 0) / elapsed)) if elapsed > 0 else "0"
    return out


def network_statistics(previous: Sample | None, latest: Sample, speeds: dict[str, int],
                       sample_time: float) -> dict[str, Any]:
    """HostNetworkStatistics from two samples: per device, and the host's dropped totals."""
    taken, links = latest
    before = previous[1] if previous else {}
    elapsed = taken - previous[0] if previous else 0.0
    network = {name: interface_stats(link, before.get(name), elapsed, speeds.get(name, 0), sample_time)
               for name, link in links.items() if name != "lo"}
    rx_dropped = sum(int(entry["rxDropped"]) for entry in network.values())
    tx_dropped = sum(int(entry["txDropped"]) for entry in network.values())
    return {"network": network, "rxDropped": str(rx_dropped), "txDropped": str(tx_dropped)}


class NetworkSampler:
    """Owns the `network-sampler` thread and the latest HostNetworkStatistics."""

    THREAD_NAME = "network-sampler"

    def __init__(self, read_links: Callable[[], Iterable[Link]], interval: float = 2.0,
                 speed: Callable[[str], int] = read_speed) -> None:
        self._read_links = read_links
        self._interval = interval
        self._speed = speed
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: Sample | None = None
        self._latest: dict[str, Any] = {"network": {}, "rxDropped": "0", "txDropped": "0"}
        self._speeds: dict[str, int] = {}
        self.samples_taken = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self.sample()  # the first answer is ready before start() returns
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._kick.set()
        self._thread.join(5.0)
        self._thread = None

    def kick(self) -> None:
        """Sample soon (the network was changed)."""
        self._kick.set()

    def statistics(self) -> dict[str, Any]:
        """The latest HostNetworkStatistics; shared, do not mutate."""
        return self._latest

    def speeds(self) -> dict[str, int]:
        """The NICs' speeds (Mb/s) seen by the latest sample."""
        return self._speeds

    def sample(self) -> None:
        """Take one sample now (the thread's work; callable directly in tests)."""
        taken = time.monotonic()
        links = {link.name: link for link in self._read_links()}
        speeds = {name: self._speed(name) for name, link in links.items() if is_nic(link)}
        latest: Sample = (taken, links)
        self._latest = network_statistics(self._previous, latest, speeds, time.time())
        self._speeds = speeds
        self._previous = latest
        self.samples_taken += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(self._interval)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self.sample()
            except Exception:
                log.exception("network statistics sample failed")

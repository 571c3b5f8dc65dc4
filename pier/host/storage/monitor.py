"""The domain monitor: one thread checks each watched domain every `interval` seconds.

A check reads the domain's metadata file with O_DIRECT (as VDSM's `dd` check does; a plain read
where the filesystem refuses O_DIRECT) and times it (`delay`), reads the filesystem's free space,
and checks the metadata (checksum, keys). The results are kept in a cache, which
Host.getStorageRepoStats answers from without touching storage.

When a domain's state changes (valid or not, and its error code) the monitor emits the event
`|storage|domain_state|<sdUUID>` with params `{sdUUID, valid, code, message, delay, notify_time}`
(VDSM has no standard event for this; Pier names it so).

Watched domains: those asked for with Host.startMonitoringDomain, and every domain of a connected
pool (the `pool_domains` callable).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pier.host.storage import domain_md as md_
from pier.host.storage import layout
from pier.host.storage.domains import Domains, disk_space
from pier.rpc.errors import PierError
from pier.rpc.threads import OwnedThread

log = logging.getLogger(__name__)

EVENT_PREFIX = "|storage|domain_state|"
READ_SIZE = 4096


@dataclass
class Vitals:
    """The last check of one domain."""

    sd_uuid: str
    valid: bool = False
    code: int = 0
    message: str = ""
    delay: float = 0.0
    version: int = -1
    checked: float = 0.0  # monotonic time of the last check (0: none yet)
    disktotal: int = 0
    diskfree: int = 0
    host_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def repo_stats(self, now: float) -> dict[str, Any]:
        """VDSM's StorageDomainVitals (repoStats) for this domain."""
        actual = self.checked > 0
        return {"code": self.code, "lastCheck": f"{(now - self.checked) if actual else 0.0:.1f}",
                "delay": f"{self.delay:.6f}", "valid": self.valid, "version": self.version,
                "acquired": self.valid and actual, "actual": actual}


def timed_read(path: Path) -> float:
    """Seconds to read the first block of `path` with O_DIRECT (a plain read where the filesystem
    refuses O_DIRECT, as tmpfs does)."""
    start = time.monotonic()
    buf = mmap.mmap(-1, READ_SIZE)  # page-aligned, as O_DIRECT needs
    try:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            try:
                os.readv(fd, [buf])
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            with open(path, "rb") as f:
                f.read(READ_SIZE)
    finally:
        buf.close()
    return time.monotonic() - start


class DomainMonitor:
    """Checks watched domains; `emit(name, params)` publishes a state change. Its thread (an
    OwnedThread, `storage-monitor`) runs from `start()` to `stop()`; it may be started again."""

    def __init__(self, domains: Domains, emit: Callable[[str, dict[str, Any]], object], *,
                 interval: float = 10.0, pool_domains: Callable[[], Iterable[str]] = lambda: ()) -> None:
        self._thread: OwnedThread | None = None
        self.stopping = threading.Event()
        self._domains = domains
        self._emit = emit
        self.interval = interval
        self._pool_domains = pool_domains
        self._explicit: dict[str, int | None] = {}
        self._cache: dict[str, Vitals] = {}
        self._lock = threading.Lock()
        self._kick = threading.Event()

    # -- what is watched -----------------------------------------------------------------------

    def start_monitoring(self, sd_uuid: str, host_id: int | None = None) -> None:
        with self._lock:
            self._explicit[sd_uuid] = host_id
            self._cache.setdefault(sd_uuid, Vitals(sd_uuid, host_id=host_id))
        self.kick()

    def stop_monitoring(self, sd_uuid: str) -> None:
        with self._lock:
            self._explicit.pop(sd_uuid, None)
        self.kick()

    def watched(self) -> set[str]:
        with self._lock:
            explicit = set(self._explicit)
        try:
            return explicit | set(self._pool_domains())
        except PierError:
            return explicit

    def kick(self) -> None:
        """Check now rather than at the next interval."""
        self._kick.set()

    # -- answers -------------------------------------------------------------------------------

    def repo_stats(self, domains: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Host.getStorageRepoStats from the cache: every watched domain, or those named."""
        now = time.monotonic()
        with self._lock:
            cache = dict(self._cache)
        wanted = set(domains) if domains else set(cache)
        return {sd: v.repo_stats(now) for sd, v in cache.items() if sd in wanted}

    def vitals(self, sd_uuid: str) -> Vitals | None:
        with self._lock:
            return self._cache.get(sd_uuid)

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.alive:
            return
        self.stopping = threading.Event()
        self._thread = OwnedThread("storage-monitor", self._run, wake=self._kick.set)
        self.stopping = self._thread.stopping
        self._thread.start()

    def stop(self) -> bool:
        thread, self._thread = self._thread, None
        return thread.stop() if thread is not None else True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.alive

    def _run(self) -> None:
        """Thread: storage-monitor."""
        while not self.stopping.is_set():
            try:
                self.check_all()
            except Exception:  # noqa: BLE001 - one bad pass must not end the monitoring
                log.exception("storage monitor: a pass over the watched domains failed")
            self._kick.wait(self.interval)
            self._kick.clear()

    def check_all(self) -> None:
        """Check every watched domain once, and forget domains no longer watched."""
        watched = self.watched()
        with self._lock:
            for gone in set(self._cache) - watched:
                del self._cache[gone]
        for sd in sorted(watched):
            if self.stopping.is_set():
                return
            self.check(sd)

    def check(self, sd_uuid: str) -> Vitals:
        """Check one domain now; emit an event when its state changed."""
        with self._lock:
            before = self._cache.get(sd_uuid)
        now = Vitals(sd_uuid, host_id=before.host_id if before else None)
        try:
            domain = self._domains.path(sd_uuid)
            metadata = layout.metadata_path(domain)
            now.delay = timed_read(metadata)
            md = md_.read(metadata)
            md_.validate(md, metadata)
            now.version = int(md.get(md_.VERSION, "-1") or -1)
            now.disktotal, now.diskfree = disk_space(domain)
            now.valid = True
        except PierError as exc:
            now.code, now.message = exc.code, exc.message
        except (OSError, ValueError) as exc:
            now.code, now.message = 200, f"{getattr(exc, 'filename', None) or sd_uuid}: {exc}"
        now.checked = time.monotonic()
        with self._lock:
            self._cache[sd_uuid] = now
        if before is None or before.checked == 0 or (before.valid, before.code) != (now.valid, now.code):
            self._publish(now)
            if not now.valid:
                log.warning("storage domain %s is invalid: %s", sd_uuid, now.message)
        return now

    def _publish(self, v: Vitals) -> None:
        try:
            self._emit(f"{EVENT_PREFIX}{v.sd_uuid}", {"sdUUID": v.sd_uuid, "valid": v.valid, "code": v.code,
                                                     "message": v.message, "delay": f"{v.delay:.6f}"})
        except Exception:  # noqa: BLE001 - an event sink's failure must not stop the monitor
            log.exception("could not publish the state of storage domain %s", v.sd_uuid)

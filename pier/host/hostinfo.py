"""This host's facts and figures as the Host verbs serve them: capabilities, hardware, statistics.

`HostInfo` joins the cached facts (`pier.host.capabilities.HostFacts`), the figures read from /proc
(`pier.host.stats.HostStats`) and the libvirt connection, which fills what only libvirt knows when
it is there and is left out when it is not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pier.host.capabilities import HostFacts
from pier.host.connection import Connection
from pier.host.domain import libvirt_errors
from pier.host.stats import HostStats
from pier.host.vmstate import VmCache
from pier.rpc.errors import LibvirtUnavailable, PierError

log = logging.getLogger(__name__)


class HostInfo:
    """Implements `pier.host.services.HostService` over libvirt, /proc and /sys."""

    def __init__(self, connection: Connection, cache: VmCache,
                 migration_counts: Callable[[], tuple[int, int]] | None = None) -> None:
        self._connection = connection
        self._facts = HostFacts(connection.uri)
        self._stats = HostStats(cache.counts, lambda: self._connection.connected, migration_counts)

    def uuid(self) -> str:
        return self._facts.host_uuid()

    def capabilities(self) -> dict[str, Any]:
        """VdsmCapabilities (VDSM's field names and types); without libvirt, the local facts."""
        conn = self._connection.current()
        try:
            with libvirt_errors(self._connection, conn, action="read libvirt's capabilities"):
                return self._facts.capabilities(conn)
        except LibvirtUnavailable:
            return self._facts.capabilities(None)
        except PierError as exc:
            log.warning("%s; answering the local facts only", exc)
            return self._facts.capabilities(None)

    def hardware_info(self) -> dict[str, str]:
        """HardwareInformation; HardwareInfoError when the facts cannot be read."""
        return self._facts.hardware_info(self._connection.current())

    def stats(self) -> dict[str, Any]:
        """HostStats from /proc and the VM cache; never calls libvirt."""
        return self._stats.get()

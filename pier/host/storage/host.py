"""The host service with the storage monitor's figures where VDSM puts them.

VDSM's `Host.getStats` carries `storageDomains`: the repoStats of every watched domain.
`HostWithStorage` wraps any `HostService` and adds them from a `StorageService`.
"""

from __future__ import annotations

from typing import Any

from pier.host.services import HostService, StorageService


class HostWithStorage:
    """A `HostService`: `host`'s answers with `storage`'s domain vitals in its stats."""

    def __init__(self, host: HostService, storage: StorageService) -> None:
        self._host = host
        self._storage = storage

    def uuid(self) -> str:
        return self._host.uuid()

    def hardware_info(self) -> dict[str, str]:
        return self._host.hardware_info()

    def capabilities(self) -> dict[str, Any]:
        return self._host.capabilities()

    def stats(self) -> dict[str, Any]:
        return {**self._host.stats(), "storageDomains": self._storage.repo_stats()}

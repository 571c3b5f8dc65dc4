"""The host service with the network added where VDSM puts it.

VDSM's `Host.getCapabilities` carries the network facts (nics, bondings, vlans, bridges,
networks, nameservers, supportsIPv6, netConfigDirty) and its `Host.getStats` the per-device
figures (`network`) with the host's `rxDropped`/`txDropped` totals. `HostWithNetwork` wraps any
`HostService` and adds them from a `NetworkService`, so neither knows of the other.
"""

from __future__ import annotations

import logging
from typing import Any

from pier.host.services import HostService, NetworkService

log = logging.getLogger(__name__)

CAPABILITY_FIELDS = ("nics", "bondings", "vlans", "bridges", "networks", "nameservers", "supportsIPv6",
                     "netConfigDirty")


class HostWithNetwork:
    """A `HostService`: `host`'s answers with `network`'s facts and figures joined in."""

    def __init__(self, host: HostService, network: NetworkService) -> None:
        self._host = host
        self._network = network

    def uuid(self) -> str:
        return self._host.uuid()

    def hardware_info(self) -> dict[str, str]:
        return self._host.hardware_info()

    def capabilities(self) -> dict[str, Any]:
        caps = self._host.capabilities()
        try:
            network = self._network.capabilities()
        except Exception:  # the rest of the capabilities are worth more than a failed netlink read
            log.exception("could not read the network facts for Host.getCapabilities")
            return caps
        return {**caps, **{key: network[key] for key in CAPABILITY_FIELDS if key in network}}

    def stats(self) -> dict[str, Any]:
        stats = self._host.stats()
        figures = self._network.statistics()
        return {**stats, "network": figures["network"], "rxDropped": figures["rxDropped"],
                "txDropped": figures["txDropped"]}

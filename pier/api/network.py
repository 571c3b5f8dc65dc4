"""Handlers of the host network verbs: facts, statistics and the networks Pier made."""

from __future__ import annotations

from typing import Any

from pier.host.services import NetworkService
from pier.rpc.registry import CallContext, verb


class NetworkApi:
    def __init__(self, network: NetworkService) -> None:
        self._network = network

    @verb("Host.getNetworkCapabilities")
    def capabilities(self, ctx: CallContext) -> dict[str, Any]:
        return self._network.capabilities()

    @verb("Host.getNetworkStatistics")
    def statistics(self, ctx: CallContext) -> dict[str, Any]:
        return self._network.statistics()

    @verb("Host.getNetworks")
    def networks(self, ctx: CallContext) -> dict[str, Any]:
        return dict(self._network.capabilities()["networks"])

"""`Network`: the network service the verb handlers call (`pier.host.services.NetworkService`).

It reads the kernel over one netlink socket of its own (pyroute2's IPRoute, used under a lock:
one request at a time), in the network namespace of the process unless a namespace name is given
(benchmarks and tests read a namespace they made from outside it; NIC speeds and nameservers are
then not read, since /sys and /etc show the process's own namespace). Statistics come from the
`network-sampler` thread, which has its own socket.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from pier.host.network.config import ConfigStore
from pier.host.network.facts import capabilities, read_nameservers
from pier.host.network.kernel import Link, Snapshot, read_links, read_snapshot
from pier.host.network.stats import NetworkSampler

log = logging.getLogger(__name__)


def ipv6_supported() -> bool:
    """Whether the kernel has IPv6 (and it is not disabled for every device)."""
    if not os.path.exists("/proc/net/if_inet6"):
        return False
    try:
        return Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").read_text().strip() != "1"
    except OSError:
        return True


class Network:
    """This host's network facts, statistics and (later) changes."""

    def __init__(self, state_dir: str | Path | None = None, *, netns: str | None = None,
                 stats_interval: float = 2.0) -> None:
        self._netns = netns
        self._lock = threading.Lock()
        self._ipr: IPRoute | None = None
        self._sampler_ipr: IPRoute | None = None
        self.config = ConfigStore(state_dir)
        own_namespace = netns is None
        self._sampler = NetworkSampler(self._sample_links, stats_interval,
                                       **({} if own_namespace else {"speed": lambda name: 0}))
        self._supports_ipv6 = ipv6_supported() if own_namespace else True

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._sampler.start()

    def stop(self) -> None:
        self._sampler.stop()
        with self._lock:
            for ipr in (self._ipr, self._sampler_ipr):
                if ipr is not None:
                    ipr.close()
            self._ipr = self._sampler_ipr = None

    # -- reads ---------------------------------------------------------------------------------

    def _open(self) -> IPRoute:
        return IPRoute(netns=self._netns) if self._netns else IPRoute()

    def snapshot(self) -> Snapshot:
        """The kernel's links, addresses and default routes now."""
        with self._lock:
            if self._ipr is None:
                self._ipr = self._open()
            return read_snapshot(self._ipr)

    def _sample_links(self) -> tuple[Link, ...]:
        """Thread: network-sampler (and the caller of start())."""
        if self._sampler_ipr is None:
            self._sampler_ipr = self._open()
        return read_links(self._sampler_ipr)

    def capabilities(self) -> dict[str, Any]:
        """VdsmNetworkCapabilities: the kernel's devices and the networks Pier made."""
        running = self.config.running()
        nameservers = read_nameservers() if self._netns is None else []
        return capabilities(self.snapshot(), running["networks"], speeds=self._sampler.speeds(),
                            nameservers=nameservers, supports_ipv6=self._supports_ipv6,
                            dirty=self.config.dirty())

    def statistics(self) -> dict[str, Any]:
        """HostNetworkStatistics from the latest sample."""
        return self._sampler.statistics()

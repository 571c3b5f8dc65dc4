"""`Network`: the network service the verb handlers call (`pier.host.services.NetworkService`).

It reads the kernel over one netlink socket of its own (pyroute2's IPRoute, used under a lock:
one request at a time), in the network namespace of the process unless a namespace name is given
(benchmarks and tests read a namespace they made from outside it; NIC speeds and nameservers are
then not read, since /sys and /etc show the process's own namespace). Statistics come from the
`network-sampler` thread, which has its own socket.

The last snapshot is kept and served again until the kernel says something changed (watch.py:
a socket subscribed to the link, address and route notifications, checked without waiting). So the facts cost
a netlink dump only after a change, and are never older than the last change the kernel announced.

Changes (`setup`) run one at a time (a second caller waits up to `BUSY_AFTER` seconds, then gets
`busy`): the request is merged into the running configuration and checked against the kernel
(model.py), applied step by step through an undo journal (plan.py, apply.py), and undone when a
step fails or when a connectivity check is not confirmed in time. `save()` makes the running
configuration the safe one; `start()` restores the safe one when the running one differs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pier.host.network.apply import Journal, NetworkChangeError
from pier.host.network.config import Config, ConfigStore
from pier.host.network.facts import capabilities, read_nameservers
from pier.host.network.kernel import Link, Snapshot, read_links, read_snapshot
from pier.host.network.model import Desired, bond_spec, check, desired, network_spec
from pier.host.network.outside import DhcpClients, Outside
from pier.host.network.plan import Progress, apply_changes, fields
from pier.host.network.stats import NetworkSampler
from pier.host.network.watch import ChangeWatch
from pier.rpc.errors import PierError, TargetBusy, UnsupportedOperation

BUSY_AFTER = 30.0
DEFAULT_CONNECTIVITY_TIMEOUT = 120


class ConnectivityLost(PierError):
    """The change was not confirmed in time and was rolled back."""

    code, name, message, http_status = 16, "unexpected", "Connectivity check failed", 500

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
                 stats_interval: float = 2.0, libvirt_conn: Callable[[], libvirt.virConnect | None] | None = None,
                 emit: Callable[[str, dict[str, Any]], object] | None = None, manage: bool = False) -> None:
        """`manage` False: the network is only read; setup() refuses, and no configuration is restored."""
        self._manage = manage
        self._netns = netns
        self._lock = threading.RLock()  # one netlink request at a time; a change holds it across its steps
        self._changing = threading.Lock()
        self._confirmed = threading.Event()
        self._emit = emit or (lambda name, params: None)
        self._outside = Outside(DhcpClients(Path(state_dir) / "dhcp" if state_dir is not None else None, netns),
                                libvirt_conn)
        self._ipr: IPRoute | None = None
        self._sampler_ipr: IPRoute | None = None
        self._watch = ChangeWatch(netns)
        self._cached: Snapshot | None = None
        self.config = ConfigStore(state_dir)
        own_namespace = netns is None
        self._sampler = NetworkSampler(self._sample_links, stats_interval,
                                       **({} if own_namespace else {"speed": lambda name: 0}))
        self._supports_ipv6 = ipv6_supported() if own_namespace else True

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Restore the safe configuration when the running one differs, then start sampling."""
        if self._manage and self.config.dirty():
            self._restore_safe()
        self._sampler.start()

    def stop(self) -> None:
        self._sampler.stop()
        with self._lock:
            for ipr in (self._ipr, self._sampler_ipr):
                if ipr is not None:
                    ipr.close()
            self._ipr = self._sampler_ipr = None
            self._watch.close()
            self._cached = None

    # -- reads ---------------------------------------------------------------------------------

    def _open(self) -> IPRoute:
        return IPRoute(netns=self._netns) if self._netns else IPRoute()

    def snapshot(self) -> Snapshot:
        """The kernel's links, addresses and default routes now (the last ones read, when the
        kernel has announced no change since)."""
        with self._lock:
            if self._ipr is None:
                self._ipr = self._open()
            if self._watch.changed() or self._cached is None:
                self._cached = read_snapshot(self._ipr)
            assert self._cached is not None
            return self._cached

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

    # -- changes -------------------------------------------------------------------------------

    def check(self, networks: dict[str, dict[str, Any]], bondings: dict[str, dict[str, Any]]) -> None:
        """Refuse now what setup would refuse before changing anything: not managing the network, or
        a request the kernel as it is cannot take (InvalidParams naming the field)."""
        self._refuse_unless_managing()
        check(desired(self.config.running(), networks, bondings), self.snapshot())

    def _refuse_unless_managing(self) -> None:
        if not self._manage:
            raise UnsupportedOperation("pierd only reads this host's network: start it with --manage-network "
                                       "(manage_network = true in its config file) to let setupNetworks change it",
                                       data={"field": "networks", "setting": "manage_network"})

    def setup(self, networks: dict[str, dict[str, Any]], bondings: dict[str, dict[str, Any]],
              options: dict[str, Any], progress: Progress | None = None) -> None:
        """setupNetworks: make the kernel match the running configuration with this request merged
        in; undone on failure, and after `connectivityTimeout` seconds unless confirmed when
        `connectivityCheck` is asked for."""
        report = progress or (lambda percent, message: None)
        self._refuse_unless_managing()
        if not self._changing.acquire(timeout=BUSY_AFTER):
            raise TargetBusy(f"another network change has been running for over {BUSY_AFTER:.0f} s",
                             data={"field": "networks"})
        try:
            report(0, "checking the request against the kernel")
            running = self.config.running()
            old = self._specs(running)
            wanted = desired(running, networks, bondings)
            new = check(wanted, self.snapshot())
            journal = self._change(old, new, report)
            self.config.set_running(wanted)
            self._sampler.kick()
            self._emit("|net|host_conn|no_id", {})
            if options.get("connectivityCheck") not in (None, False, 0, "false", "False"):
                timeout = float(options.get("connectivityTimeout") or DEFAULT_CONNECTIVITY_TIMEOUT)
                report(90, f"waiting up to {timeout:.0f} s for Host.confirmConnectivity")
                if not self._confirmed.wait(timeout):
                    self._undo(journal, "the change was not confirmed")
                    self.config.set_running(running)
                    self._sampler.kick()
                    raise ConnectivityLost(f"Host.confirmConnectivity did not arrive within {timeout:.0f} s: "
                                           "the network change was rolled back", data={"field": "options"})
            if options.get("commitOnSuccess"):
                self.config.save()
            report(100, "done")
        finally:
            self._confirmed.clear()
            self._changing.release()

    def confirm(self) -> None:
        """Host.confirmConnectivity: keep the change waiting for it."""
        self._confirmed.set()

    def save(self) -> None:
        """Host.setSafeNetworkConfig: the running configuration becomes the safe one."""
        self.config.save()

    def _specs(self, config: Config) -> Desired:
        """The specs of a configuration already applied (not checked against the kernel again)."""
        return Desired({name: network_spec(name, attrs) for name, attrs in config["networks"].items()},
                       {name: bond_spec(name, attrs) for name, attrs in config["bondings"].items()})

    def _change(self, old: Desired, new: Desired, report: Progress) -> Journal:
        with self._lock:
            self._cached = None  # the notifications would say so too; this does not wait for them
            if self._ipr is None:
                self._ipr = self._open()
            journal = Journal(self._ipr, fields(new).get)
            try:
                apply_changes(journal, old, new, self._outside, report)
            except Exception as exc:
                failed = self._undo(journal, f"a step failed: {exc}")
                if isinstance(exc, PierError):
                    raise
                message = exc.args[-1] if isinstance(exc, NetlinkError) else str(exc)
                raise NetworkChangeError(f"the network change failed ({message}); what was done was undone"
                                         + (f", except: {'; '.join(failed)}" if failed else ""),
                                         data={"field": "networks"}) from exc
        return journal

    def _undo(self, journal: Journal, why: str) -> list[str]:
        log.warning("network: %s; undoing %d steps", why, len(journal.steps))
        with self._lock:
            self._cached = None
            return journal.undo()

    def _restore_safe(self) -> None:
        running = self.config.running()
        safe = self.config.safe() or {"networks": {}, "bondings": {}}
        log.warning("network: the running configuration (%s) differs from the safe one (%s) and was not saved: "
                    "restoring the safe one", ", ".join(sorted(running["networks"])) or "no networks",
                    ", ".join(sorted(safe["networks"])) or "no networks")
        try:
            new = check(safe, self.snapshot())
            self._change(self._specs(running), new, lambda percent, message: None)
        except PierError as exc:
            log.error("network: could not restore the safe configuration: %s", exc.message)
            return
        self.config.set_running(safe)
        log.warning("network: restored the safe configuration")

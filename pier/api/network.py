"""Handlers of the host network verbs: facts, statistics, the networks Pier made, and changing them."""

from __future__ import annotations

from typing import Any

from pier.host.services import NetworkService, VmService
from pier.rpc.errors import InvalidParams
from pier.rpc.registry import CallContext, precheck, verb

LIBVIRT_PREFIX = "vdsm-"


class NetworkApi:
    def __init__(self, network: NetworkService, vms: VmService) -> None:
        self._network = network
        self._vms = vms

    @verb("Host.getNetworkCapabilities")
    def capabilities(self, ctx: CallContext) -> dict[str, Any]:
        return self._network.capabilities()

    @verb("Host.getNetworkStatistics")
    def statistics(self, ctx: CallContext) -> dict[str, Any]:
        return self._network.statistics()

    @verb("Host.getNetworks")
    def networks(self, ctx: CallContext) -> dict[str, Any]:
        return dict(self._network.capabilities()["networks"])

    @verb("Host.setupNetworks")
    def setup(self, ctx: CallContext, networks: dict[str, Any], bondings: dict[str, Any] | None = None,
              options: dict[str, Any] | None = None) -> dict[str, Any]:
        options = options or {}
        if not options.get("force"):
            self._refuse_removing_used(networks)
        task = ctx.task
        self._network.setup(networks, bondings or {}, options, task.progress if task is not None else None)
        made = self._network.capabilities()["networks"]
        return {"networks": {name: made[name] for name in networks if name in made}}

    @precheck("Host.setupNetworks")
    def setup_allowed(self, ctx: CallContext, networks: dict[str, Any], bondings: dict[str, Any] | None = None,
                      options: dict[str, Any] | None = None) -> None:
        """Refused at the call, not in a failed task: a request the host cannot take as it is, or
        removing a network a running VM is on (unless `options.force`)."""
        if not (options or {}).get("force"):
            self._refuse_removing_used(networks)
        self._network.check(networks, bondings or {})

    @verb("Host.confirmConnectivity")
    def confirm(self, ctx: CallContext) -> None:
        self._network.confirm()

    @verb("Host.setSafeNetworkConfig")
    def save(self, ctx: CallContext) -> None:
        self._network.save()

    def _refuse_removing_used(self, networks: dict[str, Any]) -> None:
        """A network a running VM's NIC is on stays, unless `options.force`."""
        removed = {name for name, attrs in networks.items() if attrs.get("remove")}
        if not removed:
            return
        for vm in self._vms.listing(full=True):
            if vm.get("status") == "Down":
                continue
            for device in vm.get("devices") or []:
                on = str(device.get("network") or "")
                name = on[len(LIBVIRT_PREFIX):] if on.startswith(LIBVIRT_PREFIX) else on
                if device.get("deviceType", device.get("type")) == "interface" and name in removed:
                    raise InvalidParams(f"networks.{name}.remove: VM {vm.get('vmName', vm['vmId'])} ({vm['vmId']}) "
                                        "runs with a NIC on it; stop it first, or pass options.force",
                                        data={"field": f"networks.{name}.remove", "vmId": vm["vmId"]})

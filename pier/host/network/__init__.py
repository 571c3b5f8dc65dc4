"""This host's network: facts and statistics read over netlink, and (setupNetworks) a desired
state, its diff against the kernel, an apply and an undo.

- `kernel.py`   one netlink pass over links, addresses and default routes, as small records
- `facts.py`    VDSM's VdsmNetworkCapabilities from such a snapshot
- `stats.py`    the `network-sampler` thread and VDSM's HostNetworkStatistics
- `config.py`   the running and the safe configuration in the state directory
- `service.py`  `Network`, the `pier.host.services.NetworkService` the handlers call
- `host.py`     the host service with the network facts and figures added where VDSM puts them
"""

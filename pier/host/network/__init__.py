"""This host's network: facts and statistics read over netlink, and (setupNetworks) a desired
state, its diff against the kernel, an apply and an undo.

- `kernel.py`   one netlink pass over links, addresses and default routes, as small records
- `facts.py`    VDSM's VdsmNetworkCapabilities from such a snapshot
- `stats.py`    the `network-sampler` thread and VDSM's HostNetworkStatistics
- `config.py`   the running and the safe configuration in the state directory
- `model.py`    setupNetworks' request merged into the running configuration and checked (the desired state)
- `plan.py`     from one configuration to another: what goes, what comes, in which order (the diff)
- `apply.py`    each change as a netlink request that records what undoes it (the apply and the undo)
- `outside.py`  DHCP clients and the libvirt network `vdsm-<name>` of a bridged network
- `watch.py`    whether the kernel announced a change since the last look (rtnetlink groups)
- `service.py`  `Network`, the `pier.host.services.NetworkService` the handlers call
- `host.py`     the host service with the network facts and figures added where VDSM puts them
"""

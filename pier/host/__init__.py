"""Everything that touches this node's hypervisor: the libvirt connection and its event loop,
domain XML, VMs, their events and statistics, and the host's capabilities.

`pier.host.node.Node` is the entry point; nothing here knows about wires or the registry.
"""

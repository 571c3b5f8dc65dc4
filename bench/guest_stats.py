"""VM.getStats with the guest agent's fields, for 50 running VMs, served from the cache.

Each VM's guest fields (addresses, OS, time zone, users, filesystems) are those a Debian guest's
qemu-guest-agent gives, handed to the poller as if its agent had answered (the test driver has no
agents). The subject reads VM.getStats of all 50 VMs, one call each, through the verb handler
(`VmApi.stats`) and then as JSON; the floor is the same reads of the same VMs on a second node
whose agents gave nothing (what serving the stats costs without guest fields). Target: the 50
reads with guest fields under 5 ms. `Host.getAllVmStats`' path (`all_stats()`) is shown too.

Run: .venv/bin/python bench/guest_stats.py [--vms N] [--count N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import libvirt
from common import interleaved, report

from pier.api.vm import VmApi
from pier.host.node import Node
from pier.host.testdriver import NODE_XML
from pier.rpc.registry import CallContext

IPV4, IPV6 = libvirt.VIR_IP_ADDR_TYPE_IPV4, libvirt.VIR_IP_ADDR_TYPE_IPV6
INFO = {
    libvirt.VIR_DOMAIN_GUEST_INFO_OS: {"os.id": "debian", "os.name": "Debian GNU/Linux", "os.version-id": "12",
                                       "os.machine": "x86_64", "os.kernel-release": "6.1.0-13-cloud-amd64"},
    libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME: {"hostname": "guest.example.org"},
    libvirt.VIR_DOMAIN_GUEST_INFO_TIMEZONE: {"timezone.name": "UTC", "timezone.offset": 0},
    libvirt.VIR_DOMAIN_GUEST_INFO_USERS: {"user.count": 1, "user.0.name": "root"},
    libvirt.VIR_DOMAIN_GUEST_INFO_FILESYSTEM: {
        "fs.count": 2, "fs.0.mountpoint": "/", "fs.0.fstype": "ext4", "fs.0.total-bytes": 10 << 30,
        "fs.0.used-bytes": 3 << 30, "fs.1.mountpoint": "/boot", "fs.1.fstype": "ext4",
        "fs.1.total-bytes": 1 << 30, "fs.1.used-bytes": 100 << 20},
}


class Agent:
    """What a Debian guest's agent answers, for `GuestAgents.poll_domain`."""

    def __init__(self, index: int) -> None:
        self.addresses = {
            "lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [{"type": IPV4, "addr": "127.0.0.1", "prefix": 8}]},
            "eth0": {"hwaddr": f"52:54:00:00:00:{index:02x}", "addrs": [
                {"type": IPV4, "addr": f"192.168.122.{index + 10}", "prefix": 24},
                {"type": IPV6, "addr": f"fe80::5054:ff:fe00:{index:x}", "prefix": 64}]}}

    def guestInfo(self, types: int = 0, flags: int = 0) -> dict[str, Any]:  # noqa: N802
        return INFO[types]

    def interfaceAddresses(self, source: int, flags: int = 0) -> dict[str, Any]:  # noqa: N802
        return self.addresses

    def setMemoryStatsPeriod(self, period: int, flags: int = 0) -> int:  # noqa: N802
        return 0

    def agentSetResponseTimeout(self, timeout: int, flags: int = 0) -> int:  # noqa: N802
        return 0


def node_file(count: int) -> str:
    domains = "".join(
        f"<domain type='test'><name>bench-{i}</name><uuid>{uuid.UUID(int=i + 1)}</uuid>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        "<devices><interface type='network'><source network='default'/></interface></devices></domain>"
        for i in range(count))
    path = Path(tempfile.mkdtemp(prefix="pier-guest-bench-")) / "node.xml"
    path.write_text(NODE_XML.replace("</node>", domains + "</node>"))
    return f"test://{path}"


def started(uri: str, *, agents: bool) -> Node:
    """A node on `uri`; without `agents` its poller has no workers, so no VM has guest fields."""
    workers = {} if agents else {"workers": 0, "max_workers": 0}
    node = Node(uri, lambda name, params: None, stats_interval=3600, slow_stats_interval=3600,
                guest_options={"retry_interval": 3600, "fast_interval": 3600, "slow_interval": 3600, **workers})
    node.start()
    deadline = time.monotonic() + 30
    while len(node.vms.all_stats()) < len(node.vms.listing()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    libvirt.registerErrorHandler(lambda *a: None, None)
    uri = node_file(args.vms)
    with_guest, without = started(uri, agents=True), started(uri, agents=False)
    try:
        ids = [vm["vmId"] for vm in with_guest.vms.listing()]
        time.sleep(0.5)  # the first polls (the test driver answers interfaceAddresses) end
        for index, vm_id in enumerate(ids):
            with_guest._guest._agents[vm_id].due.clear()  # everything is due again
            with_guest._guest.poll_domain(vm_id, Agent(index))  # as if each agent had answered
        sample = with_guest.vms.stats(ids[0])
        assert sample["guestIPs"].startswith("192.168.122.") and sample["disksUsage"], sample
        assert "guestIPs" not in without.vms.stats(ids[0])
        api, floor_api = VmApi(with_guest.vms), VmApi(without.vms)
        ctx = CallContext("bench")

        def read_all(api: VmApi) -> None:
            for vm_id in ids:
                api.stats(ctx, vm_id)

        def read_all_json(api: VmApi) -> None:
            for vm_id in ids:
                json.dumps(api.stats(ctx, vm_id))

        print(f"{args.vms} running VMs; one answer with guest fields is {len(json.dumps(sample))} bytes "
              f"of JSON, {len(json.dumps(without.vms.stats(ids[0])))} without")
        count = max(10, args.count // args.vms)
        report(f"VM.getStats x{args.vms} (handler)", *interleaved(lambda: read_all(api), lambda: read_all(floor_api),
                                                                 count), target="< 5 ms")
        report(f"VM.getStats x{args.vms} + JSON", *interleaved(lambda: read_all_json(api),
                                                               lambda: read_all_json(floor_api), count),
               target="< 5 ms")
        report(f"all_stats() of {args.vms} (getAllVmStats)",
               *interleaved(with_guest.vms.all_stats, without.vms.all_stats, args.count))
    finally:
        with_guest.stop()
        without.stop()


if __name__ == "__main__":
    main()

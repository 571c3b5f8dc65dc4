"""200 hosts behind one broker: one engine_monitor cycle over all of them.

Starts N pierd processes, each on its own libvirt test-driver file (so each is a host with its
own id and a few VMs), all connected to one RabbitMQ. Then, as an engine would, it activates each
(ping, capabilities, hardware, stats) with that host's own token and runs polling cycles of
Host.getAllVmStats over all hosts at once (it does not discover them on the discovery topic: a
host answers there only to a token of its own, and each of these has its own). Reports the cycle
time, the broker's CPU time during the cycles, and each pierd's RSS. Targets (issue 9): a cycle p50 under
200 ms, each pierd under 60 MiB (200 pierds take about 11 GiB).

Run: .venv/bin/python bench/many_hosts.py [--hosts 200] [--vms 20] [--cycles 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import ROOT, PierdProcess, broker_cpu_seconds, delete_queues, percentile

sys.path.insert(0, str(ROOT / "contrib"))
from engine_monitor import Broker, HostMonitor, poll_cycle  # noqa: E402
from scale import node_with_vms  # noqa: E402


def host_id(pierd: PierdProcess) -> str:
    request = urllib.request.Request(pierd.http + "/api/v1", headers={"Authorization": f"Bearer {pierd.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["hostId"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="127.0.0.1:61613")
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--vms", type=int, default=20, help="VMs on each host")
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    host, _, port = args.broker.rpartition(":")
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="pier-many-"))
    node_xml = node_with_vms(args.vms)

    def start(index: int) -> PierdProcess:
        node = workdir / f"host{index}.xml"
        node.write_text(node_xml)
        return PierdProcess(f"test://{node}", None, "--stomp-broker", args.broker, "--stomp-prefix", prefix)

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        pierds = list(pool.map(start, range(args.hosts)))
    print(f"{args.hosts} pierds ({args.vms} VMs each) ready in {time.perf_counter() - started:.1f} s")
    with ThreadPoolExecutor(8) as pool:
        tokens = dict(zip(pool.map(host_id, pierds), (pierd.token for pierd in pierds), strict=True))
    broker = Broker(host, int(port), prefix=prefix, host_tokens=tokens)
    try:
        time.sleep(2)  # every pierd subscribes to the broker in the background
        monitors = [HostMonitor(broker, each, lambda record: None) for each in tokens]
        cpu_before = broker_cpu_seconds()
        started = time.perf_counter()
        for monitor in monitors:
            monitor.activate()
        activation = time.perf_counter() - started
        cpu_activation = broker_cpu_seconds() - cpu_before
        print(f"activation of {len(monitors)} hosts (5 calls and a subscription each, one host after another): "
              f"{activation * 1000:.0f} ms, broker CPU {cpu_activation * 1000:.0f} ms")
        time.sleep(2.5)  # a stats sample on every host
        cycles = []
        cpu_before = broker_cpu_seconds()
        for _ in range(args.cycles):
            cycles.append(poll_cycle(monitors))
        cpu_cycles = broker_cpu_seconds() - cpu_before
        print(f"Host.getAllVmStats cycle over {len(monitors)} hosts: p50 {statistics.median(cycles):.1f} ms, "
              f"max {max(cycles):.1f} ms over {len(cycles)} cycles; broker CPU {cpu_cycles / len(cycles) * 1000:.0f} ms"
              " a cycle (engine target: a cycle every 15 s)")
        rss = [pierd.rss_mib() for pierd in pierds]
        print(f"pierd RSS: min {min(rss):.1f} MiB, median {statistics.median(rss):.1f} MiB, "
              f"p90 {percentile(rss, 0.9):.1f} MiB, max {max(rss):.1f} MiB, total {sum(rss):.0f} MiB")
    finally:
        broker.close()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(PierdProcess.stop, pierds))
        delete_queues(prefix)


if __name__ == "__main__":
    main()

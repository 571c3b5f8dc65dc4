"""The host network verbs beside the netlink work they cannot avoid, in a namespace of their own.

  Host.getNetworkCapabilities, 50 interfaces   vs a bare pyroute2 dump of the same links and
                                                  addresses (target: ratio <= 1.5 at p50); as
                                                  served (a snapshot is read again only after the
                                                  kernel announces a change), and with a change
                                                  (an MTU) before each call, on both sides
  the same through pierd (REST on its socket)  vs the same floor (what the wire adds; no target)
  Host.setupNetworks of one bridged network    vs the raw netlink requests it makes, replayed
                                                  through pyroute2 (and taken down again, untimed)

The namespace `pier-bench-<pid>` holds 25 veth pairs (50 interfaces) with an IPv4 address each
and is deleted at the end, whatever happens. Needs root; changes nothing outside the namespace.

Run: .venv/bin/python bench/network.py [--count N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, interleaved, report
from pyroute2 import IPRoute

from pier.host.network.apply import Journal
from pier.host.network.service import Network
from pier.host.testdriver import make_test_uri

PAIRS = 25


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def make_namespace(name: str) -> None:
    sh("ip", "netns", "add", name)
    batch = ["link set lo up"]
    for i in range(PAIRS):
        batch += [f"link add a{i} type veth peer name b{i}", f"addr add 10.{i}.0.1/24 dev a{i}",
                  f"addr add 10.{i}.0.2/24 dev b{i}", f"link set a{i} up", f"link set b{i} up"]
    subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True,
                   capture_output=True)


def bench_capabilities(name: str, count: int) -> None:
    network = Network(netns=name, stats_interval=3600)
    network.start()
    floor_ipr = IPRoute(netns=name)
    try:
        caps = network.capabilities()
        assert len(caps["nics"]) == 2 * PAIRS, sorted(caps["nics"])

        def floor() -> object:
            return floor_ipr.get_links(), floor_ipr.get_addr()

        subject, base = interleaved(network.capabilities, floor, count)
        report("getNetworkCapabilities (service)", subject, base, "<= 1.5")
        nic = floor_ipr.link_lookup(ifname="a0")[0]
        mtu = iter(range(10**9))

        def change() -> None:  # a change the kernel announces, so that the facts are read again
            floor_ipr.link("set", index=nic, mtu=1280 + next(mtu) % 200)

        subject, base = interleaved(lambda: (change(), network.capabilities()), lambda: (change(), floor()), count)
        report("  the same, each after a change", subject, base, "<= 1.5")
    finally:
        floor_ipr.close()
        network.stop()


def bench_pierd(name: str, count: int) -> None:
    from tests.integration.clients import unix_request

    state = Path(tempfile.mkdtemp(prefix="pier-bench-net-"))
    sock = str(state / "pier.sock")
    process = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-m", "pier.daemon", "--libvirt-uri",
                                make_test_uri(state / "testnode.xml"), "--http", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--state-dir", str(state),
                                "--unix-socket", sock, "--insecure-loopback"],
                               stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    floor_ipr = IPRoute(netns=name)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)

        def call() -> object:
            status, caps = unix_request(sock, "GET", "/api/v1/host/network")
            assert status == 200
            return caps

        def floor() -> object:
            return floor_ipr.get_links(), floor_ipr.get_addr()

        subject, base = interleaved(call, floor, max(100, count // 2))
        report("GET /host/network (pierd, unix socket)", subject, base)
    finally:
        floor_ipr.close()
        process.terminate()
        process.wait(15)


def bench_setup(name: str, rounds: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="pier-bench-net-"))
    network = Network(state, netns=name, stats_interval=3600, manage=True)
    network.start()
    ipr = IPRoute(netns=name)
    pub = {"nic": "a0", "ipaddr": "10.200.0.1/24", "mtu": 1400}
    nic = ipr.link_lookup(ifname="a0")[0]
    subject: list[float] = []
    floor: list[float] = []
    sent = {"n": 0}
    real_send = Journal._send

    def counting(self: Journal, command: str, **kwargs: object) -> object:
        sent["n"] += 1
        return real_send(self, command, **kwargs)

    def raw_make() -> None:
        """The changing requests setupNetworks sends for `pub`, and nothing else."""
        ipr.link("set", index=nic, mtu=1400)
        ipr.link("add", ifname="pub", kind="bridge", br_stp_state=0)
        bridge = ipr.link_lookup(ifname="pub")[0]
        ipr.link("set", index=nic, master=bridge)
        ipr.link("set", index=bridge, mtu=1400)
        ipr.link("set", index=bridge, state="up")
        ipr.addr("add", index=bridge, address="10.200.0.1", prefixlen=24)

    try:
        Journal._send = counting  # type: ignore[method-assign]
        network.setup({"pub": pub}, {}, {})
        requests = sent["n"]
        network.setup({"pub": {"remove": True}}, {}, {})
        Journal._send = real_send  # type: ignore[method-assign]
        for _ in range(rounds):
            started = time.perf_counter()
            network.setup({"pub": pub}, {}, {})
            subject.append(time.perf_counter() - started)
            network.setup({"pub": {"remove": True}}, {}, {})
            started = time.perf_counter()
            raw_make()
            floor.append(time.perf_counter() - started)
            ipr.link("del", ifname="pub")
            ipr.link("set", index=nic, mtu=1500)
        report(f"setupNetworks, one bridged ({requests} requests)", subject, floor)
    finally:
        Journal._send = real_send  # type: ignore[method-assign]
        ipr.close()
        network.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py needs root (network namespaces)", file=sys.stderr)
        return 2
    name = f"pier-bench-{os.getpid()}"
    make_namespace(name)
    try:
        bench_capabilities(name, args.count)
        bench_pierd(name, args.count)
        bench_setup(name, max(20, args.count // 50))
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
